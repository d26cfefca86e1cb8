"""Skip unchanged stages: one record of what is fresh for the CLI, DVC and Prefect.

In the project itself (a DVC repo, params.yaml as it is), that record is dvc.lock: a Prefect stage is
skipped exactly when `dvc status` says it is unchanged, and a stage that ran is committed to dvc.lock at
once. So after `searchr1 pipeline`, `dvc status` is up to date and `dvc repro` / `dvc exp run -S ...`
re-run only what a change reaches, and runs made with DVC are seen by the next flow.

Runs outside it (``--workdir`` elsewhere, or ``--set`` overrides that params.yaml does not hold) key on
the same dvc.yaml deps/params/outs in a small store of their own: a stage is unchanged when the hashes of
its deps (DVC's md5) and its params equal those of its last successful run and its outputs are intact.
tests/test_dvc_lock.py shows that decision equals `dvc status` for a change of code, params, data or
an output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from searchr1.config import load_settings
from searchr1.io import read_json, write_json
from searchr1.tracking import path_hash

LOCK_DIR = Path(".cache/stages")
ROOT = Path(__file__).resolve().parent.parent  # the project: dvc.yaml and the code under src/
DVC_FILE = ROOT / "dvc.yaml"


def stage_spec(stage: str, dvc_file: str | Path = DVC_FILE) -> dict[str, Any]:
    """The deps/params/outs/metrics that dvc.yaml declares for a stage."""
    stages = yaml.safe_load(Path(dvc_file).read_text())["stages"]
    if stage not in stages:
        raise KeyError(f"{dvc_file}: no stage named {stage!r}")
    return stages[stage]


def _names(entries: list | None) -> list[str]:
    """DVC lists entries as plain strings or one-key mappings (``- path: {cache: false}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _lookup(settings: dict, dotted: str) -> Any:
    """``"retrieval.faiss"`` → settings["retrieval"]["faiss"] (DVC params may name nested keys)."""
    node: Any = settings
    for part in dotted.split("."):
        node = node[part]
    return node


def _dep_path(dep: str) -> Path:
    """Code deps live in the project; data deps in the working folder (``searchr1 pipeline --workdir``)."""
    return ROOT / dep if dep.startswith("src/") else Path(dep)


def _fingerprint(path: str) -> list:
    """Cheap identity of an output (size + mtime of every file), like DVC's state database."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files] or ["missing"]


def input_key(stage: str, params: str, overrides: list[str]) -> str:
    """Hash of what the stage reads: its deps' content and its params sections."""
    spec = stage_spec(stage)
    settings = load_settings(params, overrides).model_dump(mode="json")
    material = {
        "stage": stage,
        "deps": {d: path_hash(_dep_path(d)) for d in _names(spec.get("deps"))},
        "params": {p: _lookup(settings, p) for p in _names(spec.get("params"))},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _outputs(stage: str) -> dict[str, list]:
    spec = stage_spec(stage)
    return {o: _fingerprint(o) for o in _names(spec.get("outs")) + _names(spec.get("metrics"))}


def record_success(stage: str, key: str, result: dict) -> None:
    """Called after a stage succeeds: remember its input key, the outputs it left and its result."""
    write_json(LOCK_DIR / f"{stage}.json", {"key": key, "outs": _outputs(stage), "result": result})


def cached_result(stage: str, key: str) -> dict | None:
    """The last run's result if the stage is unchanged (same inputs and params, outputs intact), else None."""
    lock_file = LOCK_DIR / f"{stage}.json"
    if not lock_file.exists():
        return None
    lock = read_json(lock_file)
    if lock.get("key") != key or lock.get("outs") != _outputs(stage):
        return None
    return lock.get("result")


def metrics_file(stage: str) -> Path:
    """The stage's metrics file as dvc.yaml declares it (its result, e.g. reports/eval.json)."""
    return Path(_names(stage_spec(stage).get("metrics"))[0])


def uses_dvc_lock(overrides: list[str]) -> bool:
    """Whether dvc.lock is the record: the flow runs in a DVC project on params.yaml as it is, inside a git
    repository (DVC needs one: a copy of the project without .git, e.g. an archive, keeps the flow's own record)."""
    here = Path.cwd().resolve()
    in_git = any((d / ".git").exists() for d in (here, *here.parents))
    return not overrides and Path("dvc.yaml").is_file() and Path(".dvc").is_dir() and in_git


def dvc_unchanged(stage: str) -> bool:
    """`dvc status <stage>` finds nothing changed (deps, params and outs as dvc.lock records them)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return not repo.status(targets=[stage])


def dvc_record(stage: str) -> None:
    """`dvc commit <stage>`: dvc.lock now records the stage's deps, params and outputs as they are."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        repo.commit(stage, force=True)
