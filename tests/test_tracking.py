import pytest

from searchr1.config import TrackingConfig
from searchr1.tracking import PARENT_ENV, path_hash, pipeline_run, stage_run


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="test-tracking")


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_stage_runs_nest_under_the_pipeline_run_with_lineage_tags(cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"id": "1", "contents": "x"}\n')
    with pipeline_run(cfg) as parent:
        with stage_run(cfg, "corpus", params={"corpus": {"source": "world"}}, inputs={"corpus": data}) as run:
            run.log_metrics({"passages": 1, "nested": {"mean_words": 2.5}, "flag": True})
    import os

    assert PARENT_ENV not in os.environ
    r = _client().get_run(run.run_id)
    assert r.data.tags["mlflow.parentRunId"] == parent.run_id
    assert r.data.tags["input.corpus"] == path_hash(data)
    assert len(r.data.tags["git.commit"]) > 0
    assert r.data.params["corpus.source"] == "world"
    assert r.data.metrics == {"passages": 1.0, "nested.mean_words": 2.5}
    assert r.info.status == "FINISHED"


def test_failed_stage_is_marked_failed(cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError):
        with stage_run(cfg, "broken") as run:
            raise ValueError("bad row")
    assert _client().get_run(run.run_id).info.status == "FAILED"


def test_disabled_tracking_is_a_no_op():
    with stage_run(TrackingConfig(enabled=False), "x") as run:
        run.log_metrics({"a": 1})
    assert run.run_id is None


def test_path_hash_matches_dvc_md5_for_files(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"hello")
    assert path_hash(p) == hashlib.md5(b"hello").hexdigest()
    assert path_hash(tmp_path / "nope") == "missing"
    assert path_hash(tmp_path).endswith(".dir")


def test_a_big_folder_is_read_once_and_rehashed_only_when_a_file_changes(tmp_path, monkeypatch):
    import searchr1.tracking as tracking

    monkeypatch.setattr(tracking, "HASH_STATE", tmp_path / "state.json")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x" * 1000)
    reads = []
    real = tracking._content_hash
    monkeypatch.setattr(tracking, "_content_hash", lambda p: (reads.append(p) if p == folder else None) or real(p))
    first = tracking.path_hash(folder)
    assert tracking.path_hash(folder) == first and len(reads) == 1  # the second call is a stat walk
    (folder / "weights.bin").write_bytes(b"y" * 1000)
    assert tracking.path_hash(folder) != first and len(reads) == 2
    assert tracking.path_hash(tmp_path / "nope") == "missing"
