"""Trajectories on disk: one Sample record per jsonl line, written atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from searchr1.io import iter_jsonl, write_jsonl
from searchr1.rollout.types import Sample


def save_trajectories(path: str | Path, samples: Iterable[Sample], extra: dict | None = None) -> int:
    """Write ``samples`` (plus ``extra`` keys on every record, e.g. the training step); returns the count."""
    return write_jsonl(path, ({**s.to_record(), **(extra or {})} for s in samples))


def load_trajectories(path: str | Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]
