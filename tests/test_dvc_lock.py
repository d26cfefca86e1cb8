"""One record of what is fresh: after the Prefect pipeline, DVC agrees every stage is up to date,
`dvc exp run -S train.lr=...` re-runs only train and what follows it, a Prefect run after that skips
what DVC ran, and the key store of runs outside dvc.lock decides like `dvc status` when code, params,
data or an output change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_flow import inside_tiny_project

STAGES = ["world", "corpus", "qa", "index", "policy", "sft", "train", "evaluate", "promote"]


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def repo(harness, tmp_path_factory):
    from flows.pipeline import pipeline

    with inside_tiny_project(tmp_path_factory.mktemp("locked")) as path:
        sh("git", "init", "-q", cwd=path)
        sh("dvc", "init", "-q", cwd=path)
        sh("dvc", "config", "core.analytics", "false", cwd=path)
        pipeline(params="params.yaml")
        sh("git", "add", "-A", cwd=path)
        sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline", cwd=path)
        yield path


def dvc_changed(path: Path) -> set[str]:
    status = json.loads(sh("dvc", "status", "--json", cwd=path).strip().splitlines()[-1] or "{}")
    return {name.split(":")[-1] for name in status}


def store_changed(path: Path, monkeypatch, record: bool = False) -> set[str]:
    """The stages the key store of --workdir / --set runs would re-run (``record``: mark all fresh first)."""
    import tasks.caching as caching

    monkeypatch.setattr(caching, "ROOT", path)  # code deps from this project's src, as dvc reads them
    monkeypatch.setattr(caching, "DVC_FILE", path / "dvc.yaml")
    if record:
        for s in STAGES:
            caching.record_success(s, caching.input_key(s, "params.yaml", []), {})
    return {s for s in STAGES if caching.cached_result(s, caching.input_key(s, "params.yaml", [])) is None}


def test_after_the_pipeline_dvc_says_everything_is_up_to_date(repo):
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo)


def test_dvc_exp_run_with_a_new_lr_reruns_only_train_and_what_follows(repo):
    out = sh("dvc", "exp", "run", "-S", "train.lr=0.0003", cwd=repo)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    skipped = {s for s in STAGES if f"Stage '{s}' didn't change, skipping" in out}
    # train runs; evaluate and promote run when its model changed (DVC compares the new output's hash)
    assert "train" in ran and skipped >= {"world", "corpus", "qa", "index", "policy", "sft"}, out[-3000:]


def test_a_flow_after_a_dvc_run_skips_what_dvc_ran(repo, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.chdir(repo)
    from tasks.caching import metrics_file

    before = {s: (repo / metrics_file(s)).stat().st_mtime_ns for s in STAGES}
    pipeline(params="params.yaml")
    after = {s: (repo / metrics_file(s)).stat().st_mtime_ns for s in STAGES}
    assert before == after  # every stage skipped: dvc.lock already recorded them
    assert dvc_changed(repo) == set()


@pytest.mark.parametrize("change", ["params", "code", "data", "output"])
def test_prefect_skip_decision_equals_dvc_status(repo, monkeypatch, change):
    monkeypatch.chdir(repo)
    sh("dvc", "commit", "--force", "--quiet", cwd=repo)  # both records fresh to start with
    assert dvc_changed(repo) == set() and store_changed(repo, monkeypatch, record=True) == set()
    params_before = (repo / "params.yaml").read_text()
    code = repo / "src/searchr1/rewards/qa.py"
    code_before = code.read_text()
    data = repo / "data/qa/test.jsonl"
    data_before = data.read_bytes()
    try:
        if change == "params":
            params = yaml.safe_load(params_before)
            params["evaluation"]["bootstrap_samples"] = 7
            (repo / "params.yaml").write_text(yaml.safe_dump(params))
        elif change == "code":
            code.write_text(code_before + "\n# changed\n")
        elif change == "data":
            data.write_bytes(data_before + b"\n")
        else:
            (repo / "reports/train.json").unlink()
        dvc, store = dvc_changed(repo), store_changed(repo, monkeypatch)
        assert dvc, "the change must reach some stage"
        assert store == dvc
    finally:
        (repo / "params.yaml").write_text(params_before)
        code.write_text(code_before)
        data.write_bytes(data_before)
        if change == "output":
            sh("dvc", "checkout", "--quiet", "train", cwd=repo)


def test_dvc_lock_is_the_record_only_inside_a_git_repository(tmp_path, monkeypatch):
    """DVC needs git: the project copied without .git (an archive) keeps the flow's own record instead of
    failing at the first stage; with --set overrides the flow's own record too (dvc.lock holds params.yaml's run)."""
    from tasks.caching import uses_dvc_lock

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / ".dvc").mkdir()
    assert not uses_dvc_lock([])
    (tmp_path / ".git").mkdir()
    assert uses_dvc_lock([]) and not uses_dvc_lock(["seed=1"])
