"""Experiment tracking through MLflow, in one small module so nothing else imports mlflow directly.

Backend store: ``sqlite:///mlflow.db`` in the project by default; any server via ``MLFLOW_TRACKING_URI``.
Every stage run carries the git commit and the hashes of its inputs as tags; runs started while a
pipeline run is open (``SEARCHR1_PARENT_RUN_ID``) are nested under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from searchr1.config import TrackingConfig, flatten

log = logging.getLogger(__name__)

PARENT_ENV = "SEARCHR1_PARENT_RUN_ID"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative sqlite path is made absolute (stages run from any cwd)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment id (created on first use)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = resolve_tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = cfg.artifact_location
    if location is None and uri.startswith("sqlite:///"):
        # Keep artifacts beside the sqlite store instead of ./mlruns of whatever cwd runs the stage.
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


HASH_STATE = Path(".cache/hash_state.json")  # like DVC's state db: path -> (stat stamp, content hash)


def path_hash(path: str | Path) -> str:
    """md5 of a file (what DVC records for a file), or of a directory's sorted (name, md5) listing.

    Big folders (models, indexes) are read once: the hash is remembered with a stamp of every file's
    size, mtime and inode, and reused while the stamp is the same (a stat walk, no reading).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    stamp = _stamp(path)
    key = str(path.resolve())
    state = _read_state()
    if state.get(key, {}).get("stamp") == stamp:
        return state[key]["hash"]
    digest = _content_hash(path)
    state[key] = {"stamp": stamp, "hash": digest}
    try:
        from searchr1.io import write_json

        write_json(HASH_STATE, state)
    except OSError:  # a read-only project still hashes, just every time
        pass
    return digest


def _stamp(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(f.relative_to(path)) if f != path else "", *(lambda st: (st.st_size, st.st_mtime_ns, st.st_ino))(f.stat()))
             for f in files]
    return hashlib.md5(json.dumps(stats).encode()).hexdigest()


def _read_state() -> dict:
    try:
        return json.loads(HASH_STATE.read_text())
    except (OSError, ValueError):
        return {}


def _content_hash(path: Path) -> str:
    if path.is_file():
        h = hashlib.md5()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()
    listing = [(str(p.relative_to(path)), _content_hash(p)) for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.md5(json.dumps(listing).encode()).hexdigest() + ".dir"


def input_tags(inputs: dict[str, str | Path]) -> dict[str, str]:
    """Tags ``input.<name>`` = content hash, so a run can be traced to exactly what it read."""
    return {f"input.{name}": path_hash(p) for name, p in inputs.items()}


class StageRun:
    """Handle to an open MLflow run (or a no-op when tracking is disabled)."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run_id is None:
            return
        import mlflow

        clean = {k: float(v) for k, v in flatten(metrics).items() if _is_number(v)}
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            MlflowClient().log_batch(self.run_id, params=items[i : i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is None or not Path(path).exists():
            return
        from mlflow import MlflowClient

        client = MlflowClient()
        if Path(path).is_dir():
            client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient

        for k, v in tags.items():
            MlflowClient().set_tag(self.run_id, k, str(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig,
    stage: str,
    params: dict[str, Any] | None = None,
    inputs: dict[str, str | Path] | None = None,
) -> Iterator[StageRun]:
    """Open an MLflow run for one pipeline stage; it is marked FAILED if the block raises."""
    if not cfg.enabled:
        yield StageRun(None)
        return
    experiment_id = _setup(cfg)
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {"searchr1.stage": stage, "git.commit": git_commit(), **input_tags(inputs or {})}
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=stage, tags=tags)
    handle = StageRun(run.info.run_id)
    handle.log_params(params or {})
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


@contextlib.contextmanager
def pipeline_run(cfg: TrackingConfig, name: str = "pipeline", tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
    """Parent run for one pipeline execution: stage runs opened inside (also in subprocesses) nest under it."""
    with stage_run(cfg, name) as run:
        run.set_tags(tags or {})
        previous = os.environ.get(PARENT_ENV)
        if run.run_id:
            os.environ[PARENT_ENV] = run.run_id
        try:
            yield run
        finally:
            if previous is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = previous
