"""Cache keys for stage tasks, derived from dvc.yaml so Prefect and DVC agree on what a stage reads.

A key hashes the stage's declared deps (DVC's md5 of each file/dir), its params sections from the
resolved settings, and its outputs: an unchanged stage whose outputs are intact is skipped; a
deleted or edited output makes it run again.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from searchr1.config import load_settings
from searchr1.tracking import path_hash


@lru_cache(maxsize=4)
def _dvc_stages(dvc_file: str, mtime: float) -> dict[str, Any]:
    return yaml.safe_load(Path(dvc_file).read_text())["stages"]


def stage_spec(stage: str, dvc_file: str = "dvc.yaml") -> dict[str, Any]:
    """The deps/params/outs/metrics DVC declares for a stage."""
    path = Path(dvc_file)
    stages = _dvc_stages(str(path), path.stat().st_mtime)
    if stage not in stages:
        raise KeyError(f"{dvc_file}: no stage named {stage!r}")
    return stages[stage]


def _names(entries: list) -> list[str]:
    """DVC lists entries as plain strings or one-key mappings (``- path: {cache: false}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def stage_key(stage: str, params: str, overrides: list[str]) -> str:
    spec = stage_spec(stage)
    settings = load_settings(params, overrides).model_dump(mode="json")
    material = {
        "stage": stage,
        "deps": {d: path_hash(d) for d in _names(spec.get("deps"))},
        "params": {p: settings.get(p) for p in _names(spec.get("params"))},
        "outs": {o: path_hash(o) for o in _names(spec.get("outs")) + _names(spec.get("metrics"))},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def cache_key(context, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: the task's name is the stage name."""
    return stage_key(context.task.name, parameters["params"], parameters.get("overrides") or [])
