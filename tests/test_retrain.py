"""The retrain flow: a transient failure is retried, a persistent one fails the flow naming the stage with
the stage's previous outputs intact, and a cycle on a refreshed world (v2) serves the changed fact from
the updated index, then trains from the current policy, evaluates and promotes. Also: the multi-GPU
launcher command line, the cron schedule, and `dvc exp run -S` on the data stages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from searchr1.config import ConfigError, load_settings
from searchr1.retrain import RetrainError, launch_command
from searchr1.tracking import path_hash
from tests.test_pipeline_flow import TINY_WORLD, assert_rl_updated, inside_tiny_project

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project(harness, tmp_path_factory):
    """A tiny project with data, BM25 index, base and cold-start policies (no RL policy, no champion yet),
    and the bundled world's version 2 as the refresh drop."""
    from searchr1 import stages
    from searchr1.data.world import generate_world

    with inside_tiny_project(tmp_path_factory.mktemp("retrain")) as path:
        settings = load_settings("params.yaml")
        for name in ("world", "corpus", "qa", "index", "policy", "sft"):
            stages.STAGES[name](settings)
        generate_world(settings.world.model_copy(update={"version": 2}), out_dir=path / "drop_v2")
        yield path


def test_transient_failure_is_retried_then_succeeds(project, monkeypatch):
    from prefect import flow

    from searchr1 import retrain
    from tasks import retrain as rt

    calls = []
    real = retrain.refresh

    def flaky(settings, drop, extend_qa=True):
        calls.append(drop)
        if len(calls) == 1:
            raise OSError("NFS hiccup")
        return real(settings, drop, extend_qa)

    monkeypatch.setattr(retrain, "refresh", flaky)

    @flow
    def one_task():
        return rt.refresh(str(project / "drop_v2"), "params.yaml", [])

    result = one_task()
    assert len(calls) == 2  # failed once, retried once
    assert result["corpus"]["num_passages"] == sum(1 for _ in open(project / "drop_v2/corpus.jsonl"))


def test_persistent_failure_names_stage_and_keeps_previous_outputs(project, monkeypatch):
    import bm25s

    from flows.retrain import retrain

    before = path_hash(project / "indexes")
    report = (project / "reports/index.json").read_text()
    attempts = []

    def disk_full(self, *args, **kwargs):
        attempts.append(1)
        raise OSError("No space left on device")

    monkeypatch.setattr(bm25s.BM25, "save", disk_full)
    with pytest.raises(RetrainError, match=r"stage 'index' failed: OSError: No space left"):
        retrain(drop=str(project / "drop_v2"), params="params.yaml")
    assert len(attempts) == 3  # the first try and two retries
    assert path_hash(project / "indexes") == before  # the old indexes, whole
    assert (project / "reports/index.json").read_text() == report
    assert not list(project.glob(".indexes.*"))  # no staging left behind


def test_retrain_cycle_on_refreshed_world_serves_changed_fact_and_promotes(project):
    from flows.retrain import retrain
    from searchr1 import retrain as lib
    from searchr1.retrieval import load_retriever

    changes = json.loads((project / "drop_v2/changes.json").read_text())
    moved = next(f for f in changes["facts"] if f["attribute"] == "headquarters")
    question = next(q for q in changes["qa"] if q["metadata"]["template"] == "org_headquarters"
                    and q["metadata"]["supporting_ids"] == [moved["entity"]])
    v1 = {r["id"]: r["contents"] for r in map(json.loads, open(project / "data/world/corpus.jsonl"))}
    v2 = {r["id"]: r["contents"] for r in map(json.loads, open(project / "drop_v2/corpus.jsonl"))}

    results = retrain(drop=str(project / "drop_v2"), params="params.yaml", overrides=["retrieval.server.launch=true"])

    assert results["index"]["docstore"]["count"] == len(v2)
    assert results["init_from"] == "sft"  # no champion and no RL policy yet: train.init_from
    assert results["train"]["steps"] == 2
    assert_rl_updated(project)
    assert results["evaluate"]["complete"] is True and "champion/search-r1" not in results["evaluate"]["results"]
    assert results["promote"]["promoted"] == 1

    settings = load_settings("params.yaml")
    docs = load_retriever(settings.retrieval, settings.corpus.out_path).search([question["question"]], 3)[0]
    hit = next(d for d in docs if d.id == moved["entity"])
    assert hit.contents == v2[moved["entity"]] != v1[moved["entity"]]
    assert question["golden_answers"][0] in hit.contents
    # The next cycle starts from the champion just promoted, by exact version.
    assert lib.init_source(settings) == f"models:/{settings.registry.model_name}/1"


def test_launcher_command_lines():
    base = ["train.launcher=deepspeed", "train.num_gpus=4"]
    cmd = launch_command(load_settings(None, base), "params.yaml", ["train.lr=1e-5"])
    assert cmd == ["deepspeed", "--num_gpus", "4", "--no_local_rank", "--module", "searchr1.cli", "train",
                   "--params", "params.yaml", "--set", "train.lr=1e-5"]
    multi = load_settings(None, [*base, "train.hostfile=/job/hostfile", "train.num_nodes=2", "train.master_port=29600"])
    assert launch_command(multi, "p.yaml", [])[:10] == [
        "deepspeed", "--num_gpus", "4", "--hostfile", "/job/hostfile", "--num_nodes", "2", "--master_port", "29600", "--no_local_rank"]
    torch_cmd = launch_command(load_settings(None, ["train.launcher=torchrun", "train.num_gpus=2"]), "p.yaml", [])
    assert torch_cmd == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "searchr1.cli", "train", "--params", "p.yaml"]
    with pytest.raises(ConfigError, match="hostfile"):
        launch_command(load_settings(None, [*base, "train.num_nodes=2"]), "p.yaml", [])


def test_schedule_validates_cron_and_serves_with_absolute_paths(monkeypatch, tmp_path):
    import flows.retrain as fr

    served = {}
    monkeypatch.setattr(fr.retrain, "serve", lambda **kw: served.update(kw))
    monkeypatch.chdir(tmp_path)
    fr.schedule("0 3 * * 0", "drop", overrides=["train.steps=5"])
    assert served == {"name": "searchr1-retrain", "cron": "0 3 * * 0", "parameters": {
        "drop": str(tmp_path / "drop"), "params": str(tmp_path / "params.yaml"), "overrides": ["train.steps=5"]}}
    with pytest.raises(ConfigError, match="not a valid cron"):
        fr.schedule("every sunday", "drop")


def _run(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_dvc_exp_run_sets_a_param_on_the_data_stages(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update(TINY_WORLD)
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(*cmd, cwd=tmp_path)
    _run("dvc", "exp", "run", "-S", "world.seed=3", "world", cwd=tmp_path)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["world"]["seed"] == 3
    assert json.loads((tmp_path / "reports/world.json").read_text())["num_passages"] > 0
    shown = json.loads(_run("dvc", "exp", "show", "--json", cwd=tmp_path))
    assert '"seed": 3' in json.dumps(shown)


def test_deepspeed_env_forwards_what_remote_ranks_need_but_no_secret_and_keeps_a_users_file(tmp_path):
    from searchr1.retrain import write_deepspeed_env

    environ = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "4", "SEARCHR1_RETRIEVAL_TOKEN": "s3cret",
               "HF_TOKEN": "hf_secret", "MLFLOW_TRACKING_URI": "http://mlflow:5000", "HOME": "/root"}
    path = tmp_path / ".deepspeed_env"
    assert write_deepspeed_env(path, environ) == ["HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI", "VLLM_CPU_KVCACHE_SPACE"]
    lines = path.read_text().splitlines()
    assert lines[1:] == ["HF_HUB_OFFLINE=1", "MLFLOW_TRACKING_URI=http://mlflow:5000", "VLLM_CPU_KVCACHE_SPACE=4"]
    assert "s3cret" not in path.read_text() and "hf_secret" not in path.read_text()
    path.write_text("MY_VAR=1\n")  # the user's own file is never overwritten
    assert write_deepspeed_env(path, environ) == [] and path.read_text() == "MY_VAR=1\n"
