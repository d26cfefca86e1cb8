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
from searchr1.retrieval.base import RetrievalError


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
