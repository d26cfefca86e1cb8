"""`dvc repro` runs every CLI stage in a real git repo; `dvc metrics show` and `dvc plots` read the outputs."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_flow import assert_rl_updated, write_tiny_project


def _run(*cmd: str, cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("dvcrepo")
    write_tiny_project(path, f"sqlite:///{path / 'mlflow.db'}")
    _run("git", "init", "-q", cwd=path)
    _run("dvc", "init", "-q", cwd=path)
    _run("dvc", "config", "core.analytics", "false", cwd=path)
    _run("dvc", "repro", cwd=path)
    return path


def test_dvc_repro_runs_every_stage_and_reports_metrics(repo):
    for out in ("data/qa/train.parquet", "indexes/bm25", "models/sft", "models/policy", "reports/eval.md"):
        assert (repo / out).exists(), out
    assert_rl_updated(repo)
    metrics = json.loads(_run("dvc", "metrics", "show", "--json", cwd=repo))
    shown = json.dumps(metrics)
    for key in ('"num_passages"', '"num_questions"', '"final_reward_mean"', '"complete"', '"promoted"'):
        assert key in shown, key
    assert "changed" not in _run("dvc", "status", cwd=repo)  # everything up to date after repro


def test_param_change_invalidates_only_downstream_stages(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluation"]["bootstrap_samples"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = _run("dvc", "status", cwd=repo)
    assert "evaluate" in status and "world" not in status and "train:" not in status


def test_dvc_plots_render_training_curves(repo):
    out = _run("dvc", "plots", "show", "--json", cwd=repo)
    assert "reward_mean" in out
