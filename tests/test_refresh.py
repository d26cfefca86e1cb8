"""Corpus refresh: a drop folder (or a generated world v2) is applied to the prepared corpus and QA sets
atomically and idempotently, with bad rows named by file and line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from searchr1.config import CorpusConfig, QAConfig, WorldConfig
from searchr1.data.corpus import prepare_corpus
from searchr1.data.qa import load_qa, prepare_qa
from searchr1.data.refresh import apply_refresh, read_drop
from searchr1.data.world import generate_world
from searchr1.io import DataError, file_sha256, write_jsonl
from tests.test_pipeline_flow import TINY_WORLD


@pytest.fixture
def prepared(tmp_path):
    world = WorldConfig(**TINY_WORLD, out_dir=str(tmp_path / "world"))
    generate_world(world)
    corpus = CorpusConfig(out_path=str(tmp_path / "corpus/corpus.jsonl"), stats_path=str(tmp_path / "corpus/stats.json"))
    qa = QAConfig(out_dir=str(tmp_path / "qa"))
    prepare_corpus(corpus, world.out_dir)
    prepare_qa(qa, world.out_dir)
    return world, corpus, qa


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_drop_folder_upserts_deletes_and_extends_qa(prepared, tmp_path):
    _, corpus, qa = prepared
    before = _rows(corpus.out_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    changed_id, deleted_id = before[0]["id"], before[1]["id"]
    write_jsonl(drop / "upserts.jsonl", [
        {"id": changed_id, "contents": '"X"\nA rewritten passage.'},
        {"id": "brand-new", "title": "Y", "text": "A new passage."},
        {"id": before[2]["id"], "contents": before[2]["contents"]},  # same text: unchanged, stays in place
    ])
    (drop / "deletes.txt").write_text(f"# retired\n{deleted_id}\nnot-there\n")
    write_jsonl(drop / "qa_train.jsonl", [{"id": "q1", "question": "Where is Y?", "golden_answers": ["Quenth"]}])

    stats = apply_refresh(corpus, qa, drop)
    assert stats["corpus"] | {"sha256": None} == {
        "added": 1, "changed": 1, "unchanged": len(before) - 2, "deleted": 1, "missing_deletes": 1,
        "num_passages": len(before), "sha256": None,
    }
    after = _rows(corpus.out_path)
    # Kept passages keep their order; changed and new ones are appended (a removal plus an add for the index).
    assert [r["id"] for r in after] == [r["id"] for r in before[2:]] + [changed_id, "brand-new"]
    assert after[-1]["contents"] == '"Y"\nA new passage.'
    assert json.loads(open(corpus.stats_path).read())["sha256"] == file_sha256(corpus.out_path)
    train = load_qa(tmp_path / "qa/train.jsonl")
    assert train[-1]["id"] == "refresh_q1" and stats["qa"]["train_added"] == 1
    assert pq.read_table(tmp_path / "qa/train.parquet").num_rows == len(train)

    sha = file_sha256(corpus.out_path)
    again = apply_refresh(corpus, qa, drop)  # a retried task re-applies the same drop: a no-op
    assert file_sha256(corpus.out_path) == sha
    assert again["corpus"]["added"] == again["corpus"]["changed"] == again["corpus"]["deleted"] == 0
    assert again["qa"] == {"train_added": 0, "train_changed": 0, "test_added": 0, "test_changed": 0}


def test_bad_drop_row_is_named_and_corpus_untouched(prepared, tmp_path):
    _, corpus, qa = prepared
    sha = file_sha256(corpus.out_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "upserts.jsonl").write_text('{"id": "a", "contents": "ok"}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"upserts.jsonl:2: contents: missing"):
        apply_refresh(corpus, qa, drop)
    (drop / "upserts.jsonl").write_text('{"id": "a", "contents": "ok"}\n')
    (drop / "deletes.txt").write_text("a\n")
    with pytest.raises(DataError, match="both upserted and deleted"):
        read_drop(drop)
    with pytest.raises(DataError, match="not found"):
        read_drop(tmp_path / "nowhere")
    assert file_sha256(corpus.out_path) == sha


def test_world_v2_output_is_a_drop_that_yields_the_v2_corpus(prepared, tmp_path):
    world, corpus, qa = prepared
    v2 = world.model_copy(update={"version": 2, "out_dir": str(tmp_path / "world_v2")})
    generate_world(v2)
    stats = apply_refresh(corpus, qa, v2.out_dir)
    changes = json.loads(open(tmp_path / "world_v2/changes.json").read())
    assert stats["corpus"]["changed"] == len(changes["changed_ids"]) > 0
    assert stats["corpus"]["added"] == len(changes["new_ids"]) > 0
    assert stats["corpus"]["deleted"] == len(changes["deleted_ids"])
    want = {r["id"]: r["contents"] for r in _rows(tmp_path / "world_v2/corpus.jsonl")}
    assert {r["id"]: r["contents"] for r in _rows(corpus.out_path)} == want

    train = {r["id"]: r for r in load_qa(tmp_path / "qa/train.jsonl")}
    for row in changes["qa"]:  # questions about the changed facts, with the new answers
        assert train[f"world_{row['id']}"]["golden_answers"] == row["golden_answers"]
    v2_test = {f"world_{r['id']}": r["golden_answers"] for r in _rows(tmp_path / "world_v2/qa_test.jsonl")}
    assert {r["id"]: r["golden_answers"] for r in load_qa(tmp_path / "qa/test.jsonl")} == v2_test
