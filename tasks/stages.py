"""One Prefect task per pipeline stage. Each loads the settings and calls the stage function.

Prefect retries only what a whole stage may retry: the cheap, idempotent data stages, on a transient
failure (I/O). Bad settings or bad data fail at once with the error that names the problem; a
retrieval error comes after the HTTP client's own retries (retrieval/client.py), so it is not retried
again; and the long stages (sft, train, evaluate) are not re-run from scratch: train resumes from its
checkpoint with `searchr1 train --resume`, evaluation from its saved predictions.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from searchr1 import stages
from searchr1.config import ConfigError, load_settings
from searchr1.io import DataError, read_json
from searchr1.retrieval.base import RetrievalError
from tasks.caching import (
    cached_result,
    dvc_record,
    dvc_unchanged,
    input_key,
    metrics_file,
    record_success,
    uses_dvc_lock,
)


def _transient(task, task_run, state) -> bool:
    """Retry unless the failure is a user error that a retry cannot fix."""
    try:
        state.result()
    except (ConfigError, DataError, FileNotFoundError, ValueError, RetrievalError):
        return False
    except Exception:
        return True
    return False


def stage_task(name: str, retries: int = 1):
    """A retried Prefect task running ``searchr1.stages.STAGES[name]``, skipped when unchanged."""

    @task(
        name=name,
        retries=retries,
        retry_delay_seconds=2,
        retry_condition_fn=_transient,
    )
    def run(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
        overrides = overrides or []
        if params == "params.yaml" and uses_dvc_lock(overrides):  # dvc.lock is the record (tasks/caching.py)
            metrics = metrics_file(name)
            if metrics.exists() and dvc_unchanged(name):
                get_run_logger().info("%s: unchanged since dvc.lock recorded it: skipped", name)
                return read_json(metrics)
            result = stages.STAGES[name](load_settings(params, overrides))
            dvc_record(name)
            return result
        key = input_key(name, params, overrides)
        cached = cached_result(name, key)
        if cached is not None:
            get_run_logger().info("%s: inputs, params and outputs unchanged since its last run: skipped", name)
            return cached
        result = stages.STAGES[name](load_settings(params, overrides))
        record_success(name, key, result)
        return result

    return run


world = stage_task("world")
corpus = stage_task("corpus")
qa = stage_task("qa")
index = stage_task("index")
policy = stage_task("policy")
sft = stage_task("sft", retries=0)
train = stage_task("train", retries=0)
evaluate = stage_task("evaluate", retries=0)
promote = stage_task("promote", retries=0)


@task(name="report")
def report(params: str = "params.yaml", overrides: list[str] | None = None) -> str:
    """reports/results.md (+ reports/results/training_curves.png) from every run in the MLflow store."""
    from searchr1.evaluation.results import write_results

    return str(write_results(load_settings(params, overrides or []).tracking, "reports/results.md", "reports/results"))
