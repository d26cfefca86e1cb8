"""The Prefect flow runs every real stage end to end on tiny settings, skips unchanged stages, and
nests all stage runs under one MLflow parent run."""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY_WORLD = {
    "num_people": 40,
    "num_places": 20,
    "num_organizations": 20,
    "num_inventions": 20,
    "num_events": 20,
    "num_train_questions": 40,
    "num_test_questions": 12,
}
# Everything small enough for seconds per stage on a 2-core CPU. RL must have something to learn from:
# a cold start long enough that the tiny policy writes the tags some of the time, and the format reward,
# give every GRPO step groups whose rewards differ (assert_rl_updated checks it).
TINY_SETTINGS = {
    "world": TINY_WORLD,
    "retrieval": {"build": ["bm25"]},
    "policy": {"kind": "tiny", "micro_vocab_size": 512},
    # One turn per rollout (max_turns 1): the comparison trajectories' two searches could never finish.
    "sft": {"num_examples": 40, "epochs": 20, "lr": 3e-3, "batch_size": 8, "mine_comparisons": False, "number_drills": 0},
    "rollout": {"max_turns": 1, "max_turn_tokens": 64, "max_obs_tokens": 128},
    "reward": {"format_reward": True},
    "train": {
        "algorithm": "grpo",
        "steps": 2,
        "prompts_per_step": 4,
        "num_generations": 4,
        "minibatch_size": 8,
        "eval_size": 4,
        "eval_every": 2,
        "save_every": 1,
        "lr": 1e-4,
    },
    "evaluation": {"max_examples": 4, "methods": ["direct", "search-r1"], "models": ["sft", "policy"], "bootstrap_samples": 50},
}


def assert_rl_updated(path: Path, rl_dir: str = "models/policy", start_dir: str = "models/sft") -> None:
    """The train stage made RL updates: it trained on some samples, and the saved policy's weights differ
    from the ones it started from."""
    from safetensors.torch import load_file

    history = json.loads((path / "reports/train_history.json").read_text())
    trained = [(step["samples_trained"], step["reward_mean"]) for step in history]
    assert history and sum(n for n, _ in trained) > 0, f"(samples trained, mean reward) per step: {trained}"
    start, end = load_file(path / start_dir / "model.safetensors"), load_file(path / rl_dir / "model.safetensors")
    shared = start.keys() & end.keys()  # a tied head may be saved under one name or both
    assert "model.embed_tokens.weight" in shared
    assert any(not torch.equal(start[k], end[k]) for k in shared)


def write_tiny_project(path: Path, tracking_uri: str | None) -> None:
    """A scratch project: the repo's dvc.yaml + src, and params.yaml with TINY_SETTINGS merged in."""
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_SETTINGS.items():
        params[section].update(values)
    if tracking_uri is None:
        params["tracking"]["enabled"] = False
    else:
        params["tracking"]["tracking_uri"] = tracking_uri
    (path / "params.yaml").write_text(yaml.safe_dump(params))


@contextlib.contextmanager
def inside_tiny_project(path: Path) -> Iterator[Path]:
    """Write a tiny project tracking to its own sqlite store, and work inside it: the working directory
    and MLFLOW_TRACKING_URI (which would override the project's store) are restored on exit."""
    write_tiny_project(path, f"sqlite:///{path / 'mlflow.db'}")
    old = os.getcwd()
    os.chdir(path)
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield path
    finally:
        os.chdir(old)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="module")
def project(harness, tmp_path_factory):
    """The tiny pipeline, run once for the whole module."""
    from flows.pipeline import pipeline

    with inside_tiny_project(tmp_path_factory.mktemp("project")) as path:
        yield path, pipeline(params="params.yaml")


def _mtimes(path: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (path / "reports").glob("*.json")}


def test_pipeline_produces_every_stage_output(project):
    path, results = project
    assert list(results) == ["world", "corpus", "qa", "index", "policy", "sft", "train", "evaluate", "promote", "report"]
    outs = ("data/qa/train.parquet", "indexes/bm25", "models/base", "models/sft", "models/policy", "reports/eval.md",
            "reports/results.md", "reports/results/training_curves.png")
    for out in outs:
        assert (path / out).exists(), out
    assert results["train"]["steps"] == 2
    assert_rl_updated(path)
    assert results["evaluate"]["complete"] is True
    assert set(results["evaluate"]["results"]) >= {"sft/direct", "sft/search-r1", "policy/direct", "policy/search-r1"}
    assert results["promote"]["promoted"] == 1  # the first version becomes champion
    report = (path / "reports/results.md").read_text()
    assert "| sft | search-r1 |" in report and "policy/search-r1 - sft/search-r1" in report


def test_rerun_skips_unchanged_stages_and_reruns_damaged_ones(project, monkeypatch):
    from flows.pipeline import pipeline

    path, _ = project
    monkeypatch.chdir(path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = _mtimes(path)
    pipeline(params="params.yaml", overrides=["tracking.enabled=false"])  # promote needs tracking: left out
    after = _mtimes(path)
    assert {k: after[k] for k in before if k != "promote.json"} == {k: v for k, v in before.items() if k != "promote.json"}

    os.remove(path / "data/qa/test.jsonl")  # a damaged output makes its stage run again
    pipeline(params="params.yaml", overrides=["tracking.enabled=false"])
    again = _mtimes(path)
    assert (path / "data/qa/test.jsonl").exists()
    assert again["qa.json"] != before["qa.json"]
    assert again["world.json"] == before["world.json"]
    # The regenerated QA set is byte-identical, so nothing downstream of it reruns.
    assert again["train.json"] == before["train.json"]


def test_stage_runs_nest_under_one_mlflow_parent(project):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("searchr1")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert children == {"world", "corpus", "qa", "index", "policy", "sft", "train", "evaluate", "promote"}
