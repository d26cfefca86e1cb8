"""Prefect tasks of the retrain flow that the pipeline does not have: refresh, incremental index update,
the champion start point and launched (multi-GPU) training. Thin wrappers over ``searchr1.retrain``."""

from __future__ import annotations

from prefect import get_run_logger, task

from searchr1 import retrain
from searchr1.config import load_settings
from tasks.caching import cached_result, input_key, record_success
from tasks.stages import _transient


@task(name="refresh", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def refresh(drop: str, params: str = "params.yaml", overrides: list[str] | None = None, extend_qa: bool = True) -> dict:
    # Idempotent: a retry after a partial failure re-applies the same drop to the same result.
    return retrain.refresh(load_settings(params, overrides or []), drop, extend_qa=extend_qa)


def _cached(stage: str, params: str, overrides: list[str], run) -> dict:
    """Run ``run()`` unless the stage's inputs, params and outputs are unchanged (as tasks/stages.py does)."""
    key = input_key(stage, params, overrides)
    cached = cached_result(stage, key)
    if cached is not None:
        get_run_logger().info("%s: inputs, params and outputs unchanged since its last run: skipped", stage)
        return cached
    result = run()
    record_success(stage, key, result)
    return result


@task(name="index-update", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def update_index(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    overrides = overrides or []
    return _cached("index", params, overrides, lambda: retrain.update_index(load_settings(params, overrides)))


@task(name="champion", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def init_source(params: str = "params.yaml", overrides: list[str] | None = None) -> str:
    return retrain.init_source(load_settings(params, overrides or []))


@task(name="train-launched", retries=0)  # a whole training run is never restarted from scratch
def launched_train(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    overrides = overrides or []
    settings = load_settings(params, overrides)
    return _cached("train", params, overrides, lambda: retrain.launched_train(settings, params, overrides))
