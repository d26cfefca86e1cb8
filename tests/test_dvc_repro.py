"""`dvc repro` runs the CLI stages in a real git repo; `dvc metrics show` reads their metrics."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_flow import TINY_WORLD

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str, cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture
def repo(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update(TINY_WORLD)
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _run("git", "init", "-q", cwd=tmp_path)
    _run("dvc", "init", "-q", cwd=tmp_path)
    _run("dvc", "config", "core.analytics", "false", cwd=tmp_path)
    return tmp_path


def test_dvc_repro_runs_data_stages_and_reports_metrics(repo):
    _run("dvc", "repro", cwd=repo)
    assert (repo / "data/qa/train.parquet").exists()
    metrics = json.loads(_run("dvc", "metrics", "show", "--json", cwd=repo))
    shown = json.dumps(metrics)
    assert '"num_passages"' in shown and '"num_questions"' in shown

    status = _run("dvc", "status", cwd=repo)
    assert "changed" not in status  # everything up to date after repro

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["world"]["seed"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "world" in _run("dvc", "status", cwd=repo)  # a param change invalidates the stage
