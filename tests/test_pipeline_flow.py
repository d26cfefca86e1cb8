"""The Prefect flow runs the real stages, caches unchanged ones, and logs to MLflow."""

import os
import shutil
from pathlib import Path

import pytest
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


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project: the repo's dvc.yaml + src, and a params.yaml with a tiny world."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update(TINY_WORLD)
    params["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_flow_runs_stages_then_skips_unchanged_ones(harness, project):
    from flows.pipeline import pipeline

    pipeline(params="params.yaml")
    reports = {p: p.stat().st_mtime_ns for p in (project / "reports").glob("*.json")}
    assert {p.name for p in reports} >= {"world.json", "corpus.json", "qa.json"}
    assert (project / "data/qa/train.parquet").exists()

    pipeline(params="params.yaml")  # nothing changed: every stage is a cache hit
    assert {p: p.stat().st_mtime_ns for p in reports} == reports

    os.remove(project / "data/qa/test.jsonl")  # a damaged output makes its stage run again
    pipeline(params="params.yaml")
    assert (project / "data/qa/test.jsonl").exists()
    assert (project / "reports/qa.json").stat().st_mtime_ns != reports[project / "reports/qa.json"]
    assert (project / "reports/world.json").stat().st_mtime_ns == reports[project / "reports/world.json"]


def test_flow_stage_runs_nest_under_one_mlflow_parent(harness, project):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    pipeline(params="params.yaml", overrides=["world.seed=7"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("searchr1")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 1
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert children == {"world", "corpus", "qa"}
