"""The retrain cycle's own steps (refresh, incremental index update, champion start point, launched
training, a flow-owned retrieval server); train, evaluate and promote are the pipeline stages."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from searchr1.config import ConfigError, Settings
from searchr1.errors import SearchR1Error
from searchr1.io import read_json
from searchr1.stages import REPORTS, finish_stage
from searchr1.tracking import stage_run

log = logging.getLogger(__name__)


class RetrainError(SearchR1Error, RuntimeError):
    """A retrain stage failed (after its retries); the message names the stage."""


def refresh(settings: Settings, drop: str | Path, extend_qa: bool = True) -> dict:
    """Apply a corpus refresh drop folder (see data/refresh.py) to the prepared corpus and QA sets."""
    from searchr1.data.refresh import apply_refresh

    started = time.time()
    with stage_run(settings.tracking, "refresh", params={"drop": str(drop), "extend_qa": extend_qa}, inputs={"drop": drop}) as run:
        stats = apply_refresh(settings.corpus, settings.qa, drop, extend_qa=extend_qa)
        return finish_stage(run, "refresh", stats, started)


def update_index(settings: Settings) -> dict:
    """Bring the indexes to the (refreshed) corpus, encoding only new or changed passages."""
    from searchr1.retrieval.update import update_indexes

    cfg, corpus = settings.retrieval, settings.corpus.out_path
    started = time.time()
    with stage_run(settings.tracking, "index", params={"retrieval": cfg.model_dump()}, inputs={"corpus": corpus}) as run:
        return finish_stage(run, "index", update_indexes(cfg, corpus), started)


def init_source(settings: Settings) -> str:
    """Where a retrain starts: the champion's exact version (``models:/NAME/VERSION``, so a later champion
    changes the stage's cache key), else the local trained policy, else ``train.init_from``."""
    if settings.tracking.enabled:
        import mlflow

        from searchr1.evaluation.registry import champion_version
        from searchr1.tracking import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(settings.tracking))
        champion = champion_version(settings.registry.model_name)
        if champion is not None:
            return f"models:/{settings.registry.model_name}/{champion.version}"
    if Path(settings.train.final_dir).exists():
        return settings.train.final_dir
    log.info("retrain: no champion and no %s: starting from train.init_from=%s", settings.train.final_dir, settings.train.init_from)
    return settings.train.init_from


def launch_command(settings: Settings, params: str, overrides: list[str]) -> list[str]:
    """The ``deepspeed`` / ``torchrun`` command line running ``searchr1 train`` on ``train.num_gpus`` GPUs."""
    cfg = settings.train
    args = ["searchr1.cli", "train", "--params", params, *[a for o in overrides for a in ("--set", o)]]
    if cfg.launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(cfg.num_gpus)]
        if cfg.hostfile:
            cmd += ["--hostfile", cfg.hostfile, "--num_nodes", str(cfg.num_nodes)]
        elif cfg.num_nodes > 1:
            raise ConfigError(f"train.num_nodes={cfg.num_nodes} needs train.hostfile (lines 'host slots=N')")
        if cfg.master_port:
            cmd += ["--master_port", str(cfg.master_port)]
        return cmd + ["--no_local_rank", "--module", *args]  # ranks read LOCAL_RANK from the environment
    if cfg.launcher == "torchrun":
        if cfg.num_nodes > 1:
            raise ConfigError("train.launcher=torchrun runs on one node here; use launcher=deepspeed with a hostfile")
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(cfg.num_gpus)]
        if cfg.master_port:
            cmd += ["--master_port", str(cfg.master_port)]
        return cmd + ["-m", *args]
    raise ConfigError(f"train.launcher={cfg.launcher!r}: nothing to launch (train runs in-process)")


# What ranks on other nodes need from this environment. DeepSpeed's multi-node runner forwards only some
# variables (NCCL_*, PYTHON*, ...) and the lines of .deepspeed_env. Secrets are left out: the runner puts
# them on remote command lines; give them by file on shared storage (retrieval.server.token_file).
FORWARDED_PREFIXES = ("HF_", "TRANSFORMERS_", "VLLM_", "MLFLOW_", "SEARCHR1_", "OMP_", "TORCH_EXTENSIONS_DIR")
SECRETS = ("SEARCHR1_RETRIEVAL_TOKEN", "HF_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
DEEPSPEED_ENV_MARK = "# written by searchr1 (retrain.write_deepspeed_env)"


def write_deepspeed_env(path: str | Path = ".deepspeed_env", environ: dict[str, str] | None = None) -> list[str]:
    """Write ``path`` (DeepSpeed's runner reads it from the working directory) with the forwarded variables
    of ``environ``; returns their names. A file the user wrote (no searchr1 mark) is kept as it is."""
    from searchr1.io import atomic_open

    path, environ = Path(path), os.environ if environ is None else environ
    if path.exists() and not path.read_text().startswith(DEEPSPEED_ENV_MARK):
        log.warning("%s exists and was not written by searchr1: left as it is", path)
        return []
    names = sorted(k for k in environ if k.startswith(FORWARDED_PREFIXES) and k not in SECRETS and "\n" not in environ[k])
    with atomic_open(path) as f:
        f.write(DEEPSPEED_ENV_MARK + "\n" + "".join(f"{k}={environ[k]}\n" for k in names))
    return names


def launched_train(settings: Settings, params: str, overrides: list[str]) -> dict:
    """Run ``searchr1 train`` under the configured launcher; its rank 0 writes reports/train.json."""
    cmd = launch_command(settings, params, overrides)
    if settings.train.launcher == "deepspeed" and settings.train.num_nodes > 1:
        log.info("train: .deepspeed_env forwards %s to the other nodes", ", ".join(write_deepspeed_env()) or "nothing")
    log.info("train: %s", " ".join(cmd))
    # The child gets the parent pipeline run id through the environment, so its MLflow run nests too.
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=sys.stdout, stderr=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:3])} ... train` exited with code {proc.returncode}")
    return read_json(REPORTS / "train.json")


@contextlib.contextmanager
def served_retrieval(settings: Settings) -> Iterator[list[str]]:
    """With ``retrieval.server.launch`` and no ``url``: start a retrieval server for the block and yield
    the override pointing the stages at it; otherwise yield no overrides (in-process, or the given url)."""
    server = settings.retrieval.server
    if not server.launch or server.url:
        yield []
        return
    from searchr1.retrieval.process import running_server

    with running_server(settings.retrieval, settings.corpus.out_path, port=0) as url:
        log.info("retrieval server for this flow: %s", url)
        yield [f"retrieval.server.url={url}"]
