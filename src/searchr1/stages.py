"""The pipeline stages: each is one plain function of the settings.

This is the single implementation that the three drivers share: the ``searchr1`` CLI (and so
``dvc repro``), the Prefect tasks in ``tasks/``, and tests. A stage calls the library, writes its
outputs and a metrics file under ``reports/``, and logs params/metrics/artifacts to MLflow.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from searchr1.config import Settings
from searchr1.io import write_json
from searchr1.tracking import stage_run

log = logging.getLogger(__name__)

REPORTS = Path("reports")


def _finish(run, stage: str, metrics: dict, started: float) -> dict:
    metrics = {**metrics, "seconds": round(time.time() - started, 3)}
    write_json(REPORTS / f"{stage}.json", metrics)
    run.log_metrics(metrics)
    log.info("%s: done in %.1fs: %s", stage, metrics["seconds"], _summary(metrics))
    return metrics


def _summary(metrics: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(items[:limit])


def make_world(settings: Settings) -> dict:
    """Generate the bundled fictional knowledge world (corpus + questions)."""
    from searchr1.data.world import generate_world

    started = time.time()
    with stage_run(settings.tracking, "world", params={"world": settings.world.model_dump()}) as run:
        stats = generate_world(settings.world)
        return _finish(run, "world", stats, started)


def prepare_corpus(settings: Settings) -> dict:
    """Validate and normalise the corpus (bundled world or a wiki-18-style jsonl)."""
    from searchr1.data.corpus import prepare_corpus as _prepare

    cfg = settings.corpus
    source = Path(cfg.path) if cfg.source == "jsonl" and cfg.path else Path(settings.world.out_dir) / "corpus.jsonl"
    started = time.time()
    with stage_run(settings.tracking, "corpus", params={"corpus": cfg.model_dump()}, inputs={"corpus": source}) as run:
        stats = _prepare(cfg, world_dir=settings.world.out_dir)
        return _finish(run, "corpus", stats, started)


def prepare_qa(settings: Settings) -> dict:
    """Prepare train/test question sets (FlashRAG jsonl + Search-R1 parquet)."""
    from searchr1.data.qa import prepare_qa as _prepare

    cfg = settings.qa
    inputs = {"world": settings.world.out_dir} if cfg.source == "world" else {}
    if cfg.source == "flashrag" and cfg.flashrag_dir:
        inputs = {"flashrag": cfg.flashrag_dir}
    started = time.time()
    with stage_run(settings.tracking, "qa", params={"qa": cfg.model_dump()}, inputs=inputs) as run:
        stats = _prepare(cfg, world_dir=settings.world.out_dir)
        return _finish(run, "qa", stats, started)


STAGES = {
    "world": make_world,
    "corpus": prepare_corpus,
    "qa": prepare_qa,
}
