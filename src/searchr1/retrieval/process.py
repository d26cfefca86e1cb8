"""Run the retrieval server as a real subprocess (for the pipeline, tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from searchr1.config import RetrievalConfig
from searchr1.retrieval.base import RetrievalError, Retriever


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cfg: RetrievalConfig, corpus_path: str | Path | None = None, port: int | None = None,
                   start_timeout_s: float = 300.0) -> Iterator[str]:
    """Start ``python -m searchr1.retrieval.server``, wait for ``/health``, yield its base URL, stop it.

    ``port=None`` uses ``cfg.server.port``; ``port=0`` picks a free one.
    """
    port = cfg.server.port if port is None else (port or free_port())
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"port": port, "url": None})})
    url = f"http://{cfg.server.host}:{port}"
    cmd = [sys.executable, "-m", "searchr1.retrieval.server", "--config-json", cfg.model_dump_json()]
    if corpus_path is not None:
        cmd += ["--corpus", str(corpus_path)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
        try:
            _wait_healthy(proc, url, log, start_timeout_s)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, log, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-3000:]
            raise RetrievalError(f"retrieval server exited with code {proc.returncode} before {url}/health:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RetrievalError(f"retrieval server did not answer {url}/health within {timeout_s:.0f}s")


@contextlib.contextmanager
def node_retriever(cfg: RetrievalConfig, corpus_path: str | Path | None = None) -> Iterator[Retriever]:
    """This rank's retriever for training. One process, or ``retrieval.server.url`` set: ``load_retriever``.
    Under a launcher (N ranks): local rank 0 of each node starts one retrieval server on
    ``retrieval.server.port`` and every rank of the node queries it over HTTP, so a node loads the index and
    the query encoder once, not once per rank (a 21M-passage flat e5 index is 64 GB)."""
    from searchr1 import distributed as dist
    from searchr1.retrieval import load_retriever

    if cfg.server.url or dist.world_size() == 1:
        yield load_retriever(cfg, corpus_path)
        return
    serves = int(os.environ.get("LOCAL_RANK", "0")) == 0
    url = f"http://127.0.0.1:{cfg.server.port}"
    with contextlib.ExitStack() as stack:
        error = None
        if serves:
            try:
                stack.enter_context(running_server(cfg, corpus_path))
            except Exception as exc:  # every rank must hear of it, or the others wait at the barrier forever
                error = exc
        if dist.any_rank(error is not None):  # also the barrier: the node's server answers /health
            raise RetrievalError(f"the node's retrieval server did not start: {error or 'see the serving rank'}")
        client = cfg.model_copy(update={"server": cfg.server.model_copy(update={"url": url})})
        try:
            yield load_retriever(client)
        finally:
            dist.barrier()  # every rank of the node is done with it before local rank 0 stops it
