"""The whole searchr1 pipeline as one Prefect flow: the same stages, in the same order, as dvc.yaml.

    python flows/pipeline.py                 # embedded default
    python flows/pipeline.py --set train.steps=50
    searchr1 pipeline                        # the same

Stages are cached on the hashes of their inputs, params and outputs (see tasks/caching.py): an
unchanged stage is skipped and Prefect reports it as Cached. All stage runs nest under one MLflow
parent run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python flows/pipeline.py` puts flows/ first, not the project root
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry ERROR lines

from prefect import flow  # noqa: E402

from searchr1.config import load_settings  # noqa: E402
from searchr1.tracking import git_commit, pipeline_run  # noqa: E402
from tasks import stages as t  # noqa: E402

log = logging.getLogger("searchr1.pipeline")


@flow(name="searchr1-pipeline", log_prints=True)
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """world → corpus → qa → index → policy → sft (cold start) → train (RL) → evaluate → promote, then
reports/results.md (EM tables with CIs and RL curves, from every run in the MLflow store)."""
    overrides = list(overrides or [])
    settings = load_settings(params, overrides)
    results: dict[str, dict] = {}
    with pipeline_run(settings.tracking, tags={"git.commit": git_commit()}):
        if "world" in (settings.corpus.source, settings.qa.source):  # real data needs no generated world
            results["world"] = t.world(params, overrides)
        results["corpus"] = t.corpus(params, overrides)
        results["qa"] = t.qa(params, overrides)
        results["index"] = t.index(params, overrides)
        results["policy"] = t.policy(params, overrides)
        if settings.sft.enabled:
            results["sft"] = t.sft(params, overrides)
        if settings.train.launcher == "none":
            results["train"] = t.train(params, overrides)
        else:  # deepspeed / torchrun on train.num_gpus (x train.num_nodes) processes
            from tasks.retrain import launched_train

            results["train"] = launched_train(params, overrides)
        results["evaluate"] = t.evaluate(params, overrides)
        if settings.tracking.enabled:
            results["promote"] = t.promote(params, overrides)
    if settings.tracking.enabled:  # after the parent run closes, so its stage runs are all FINISHED
        results["report"] = {"path": str(t.report(params, overrides))}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    pipeline(params=args.params, overrides=args.overrides)


if __name__ == "__main__":
    main()
