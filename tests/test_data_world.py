"""The fictional world: deterministic, big enough, and its questions need the corpus (and, for bridges, two searches)."""

import json
import time
from collections import Counter

import bm25s
import pytest

from searchr1.config import WorldConfig
from searchr1.data.world import generate_world

FILES = ("corpus.jsonl", "qa_train.jsonl", "qa_test.jsonl", "world.json", "stats.json")
SMALL = dict(num_people=60, num_places=30, num_organizations=40, num_inventions=40, num_events=40,
             num_train_questions=120, num_test_questions=40)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "world"
    start = time.perf_counter()
    stats = generate_world(WorldConfig(), out)
    seconds = time.perf_counter() - start
    corpus = _jsonl(out / "corpus.jsonl")
    return {"dir": out, "stats": stats, "seconds": seconds, "corpus": corpus,
            "passages": {p["id"]: p["contents"] for p in corpus},
            "train": _jsonl(out / "qa_train.jsonl"), "test": _jsonl(out / "qa_test.jsonl")}


def test_default_world_meets_minimum_sizes_quickly(world):
    assert len(world["corpus"]) >= 5000
    assert len(world["train"]) >= 2000 and len(world["test"]) >= 300
    assert world["stats"]["num_passages"] == len(world["corpus"])
    assert world["stats"]["passages_by_kind"]["mention"] > 0 and world["stats"]["namesakes"] > 0
    assert world["seconds"] < 30


def test_passages_are_short_flashrag_rows_with_unique_ids(world):
    assert len(world["passages"]) == len(world["corpus"])
    for p in world["corpus"]:
        assert set(p) == {"id", "contents"} and isinstance(p["id"], str)
        title, _, text = p["contents"].partition("\n")
        assert title.startswith('"') and title.endswith('"') and text
        assert 25 <= len(p["contents"].split()) <= 80, p


def test_question_types_are_mixed_about_50_35_15(world):
    for split in ("train", "test"):
        counts = Counter(q["metadata"]["type"] for q in world[split])
        n = len(world[split])
        assert abs(counts["single"] / n - 0.50) < 0.02
        assert abs(counts["bridge"] / n - 0.35) < 0.02
        assert abs(counts["comparison"] / n - 0.15) < 0.02


def test_every_gold_answer_is_in_the_last_supporting_passage(world):
    for q in world["train"] + world["test"]:
        meta = q["metadata"]
        assert q["golden_answers"] and all(isinstance(a, str) and a for a in q["golden_answers"])
        assert len(meta["gold_queries"]) == len(meta["supporting_ids"])
        if meta["type"] == "comparison":
            assert q["golden_answers"][0] in q["question"]
            assert all(world["passages"][i] for i in meta["supporting_ids"])
        else:
            assert q["golden_answers"][0].lower() in world["passages"][meta["supporting_ids"][-1]].lower(), q


def test_bridge_questions_need_two_passages_and_the_first_lacks_the_answer(world):
    bridges = [q for q in world["train"] + world["test"] if q["metadata"]["type"] == "bridge"]
    assert bridges
    for q in bridges:
        first, second = q["metadata"]["supporting_ids"]
        assert first != second
        assert not any(a.lower() in world["passages"][first].lower() for a in q["golden_answers"]), q


def test_train_and_test_share_no_question(world):
    train = {q["question"] for q in world["train"]}
    test = {q["question"] for q in world["test"]}
    assert len(train) == len(world["train"]) and len(test) == len(world["test"])
    assert not train & test
    assert not {q["id"] for q in world["train"]} & {q["id"] for q in world["test"]}


def test_gold_queries_retrieve_supporting_passages_in_bm25_top3(world):
    ids = [p["id"] for p in world["corpus"]]
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize([p["contents"] for p in world["corpus"]], stopwords="en", show_progress=False),
               show_progress=False)
    questions = world["test"]
    queries = [g for q in questions for g in q["metadata"]["gold_queries"]]
    wanted = [s for q in questions for s in q["metadata"]["supporting_ids"]]
    found, _ = bm25.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=3, show_progress=False)
    misses = [(q, s) for q, s, row in zip(queries, wanted, found) if s not in {ids[j] for j in row}]
    assert not misses, misses[:5]


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(WorldConfig(**SMALL, seed=7), a)
    generate_world(WorldConfig(**SMALL, seed=7), b)
    generate_world(WorldConfig(**SMALL, seed=8), c)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "corpus.jsonl").read_bytes() != (c / "corpus.jsonl").read_bytes()
    assert (a / "qa_test.jsonl").read_bytes() != (c / "qa_test.jsonl").read_bytes()


def test_version_two_records_changed_new_and_deleted_passages(world, tmp_path):
    out = tmp_path / "v2"
    stats = generate_world(WorldConfig(version=2), out)
    changes = json.loads((out / "changes.json").read_text())
    v1, v2 = world["passages"], {p["id"]: p["contents"] for p in _jsonl(out / "corpus.jsonl")}
    assert changes["version"] == 2 and stats["changes"]["facts"] == len(changes["facts"])
    assert changes["changed_ids"] and changes["new_ids"] and changes["deleted_ids"]
    assert all(v1[i] != v2[i] for i in changes["changed_ids"])
    assert all(i not in v1 and i in v2 for i in changes["new_ids"])
    assert all(i in v1 and i not in v2 for i in changes["deleted_ids"])
    assert {f["attribute"] for f in changes["facts"]} == {"headquarters", "population"}
    # QA about changed facts: new answer in the new corpus, and it differs from the old one.
    assert changes["qa"]
    for q in changes["qa"]:
        assert q["golden_answers"][0].lower() in v2[q["metadata"]["supporting_ids"][-1]].lower()
        assert q["golden_answers"] != q["metadata"]["previous_answers"]
    # Same questions as version 1; the answers about moved companies follow the new facts.
    train2 = _jsonl(out / "qa_train.jsonl")
    assert [q["question"] for q in train2] == [q["question"] for q in world["train"]]
    assert any(q1["golden_answers"] != q2["golden_answers"] for q1, q2 in zip(world["train"], train2))
    # Re-running version 1 into the same folder replaces it whole: no stale changes.json.
    generate_world(WorldConfig(**SMALL), out)
    assert not (out / "changes.json").exists()
