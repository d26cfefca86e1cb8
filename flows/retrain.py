"""Scheduled retraining on a refreshed corpus, as one Prefect flow.

    python flows/retrain.py --drop data/drop             # one cycle now (= searchr1 retrain --drop data/drop)
    searchr1 schedule --cron "0 3 * * 0" --drop data/drop  # every Sunday 03:00, served by this process

Each cycle: refresh (apply the drop folder to the corpus and QA sets) → incremental index update →
train, starting from the registry's champion (else the local policy) → evaluate (policy vs champion)
→ promote by the registry rule. Unchanged stages are skipped as in flows/pipeline.py, so a cycle
with nothing new does nothing. With ``retrieval.server.launch=true`` one retrieval server serves
train and evaluate; with ``train.launcher=deepspeed|torchrun`` training runs on ``train.num_gpus``.
A stage that still fails after its retries fails the flow with a RetrainError naming the stage;
every stage writes atomically, so its previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python flows/retrain.py` puts flows/ first, not the project root
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry ERROR lines

from prefect import flow  # noqa: E402

from searchr1.config import ConfigError, load_settings  # noqa: E402
from searchr1.retrain import RetrainError, served_retrieval  # noqa: E402
from searchr1.tracking import git_commit, pipeline_run  # noqa: E402
from tasks import retrain as rt  # noqa: E402
from tasks import stages as t  # noqa: E402


def _stage(name: str, task, *args):
    """Call a task; a final failure becomes a RetrainError that names the stage."""
    try:
        return task(*args)
    except Exception as exc:
        raise RetrainError(f"retrain stage {name!r} failed: {type(exc).__name__}: {exc}") from exc


@flow(name="searchr1-retrain", log_prints=True)
def retrain(drop: str, params: str = "params.yaml", overrides: list[str] | None = None, extend_qa: bool = True) -> dict:
    """refresh → index update → train (from the champion) → evaluate → promote."""
    overrides = list(overrides or [])
    settings = load_settings(params, overrides)
    results: dict = {}
    with pipeline_run(settings.tracking, name="retrain", tags={"git.commit": git_commit(), "drop": drop}):
        results["refresh"] = _stage("refresh", rt.refresh, drop, params, overrides, extend_qa)
        results["index"] = _stage("index", rt.update_index, params, overrides)
        results["init_from"] = _stage("champion", rt.init_source, params, overrides)
        stage_overrides = [*overrides, f"train.init_from={results['init_from']}"]
        train = t.train if settings.train.launcher == "none" else rt.launched_train
        with served_retrieval(settings) as server:
            # This host's server is out of reach of other nodes: there each node's local rank 0 serves its own
            # (retrieval/process.py node_retriever).
            train_server = server if settings.train.num_nodes == 1 else []
            results["train"] = _stage("train", train, params, stage_overrides + train_server)
            results["evaluate"] = _stage("evaluate", t.evaluate, params, stage_overrides + server)
        if settings.tracking.enabled:
            results["promote"] = _stage("promote", t.promote, params, stage_overrides)
    return results


def schedule(cron: str, drop: str, params: str = "params.yaml", overrides: list[str] | None = None,
             name: str = "searchr1-retrain") -> None:
    """Serve the retrain flow on a cron schedule from this process (needs a Prefect server: PREFECT_API_URL)."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)  # a bad expression fails here, not at 03:00 on Sunday
    except ValueError:
        raise ConfigError(f"--cron {cron!r}: not a valid cron expression (e.g. '0 3 * * 0')") from None
    # Absolute paths: scheduled runs must not depend on where the server was started from.
    parameters = {"drop": str(Path(drop).resolve()), "params": str(Path(params).resolve()), "overrides": list(overrides or [])}
    retrain.serve(name=name, cron=cron, parameters=parameters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drop", required=True, help="refresh drop folder (upserts.jsonl, deletes.txt, qa_*.jsonl) or a world v2 folder")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cron", default=None, help="serve on this cron schedule instead of running once")
    args = parser.parse_args(argv)
    if args.cron:
        schedule(args.cron, args.drop, args.params, args.overrides)
    else:
        retrain(drop=args.drop, params=args.params, overrides=args.overrides)


if __name__ == "__main__":
    main()
