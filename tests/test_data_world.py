"""The fictional world: deterministic, big enough, and its questions need the corpus (and, for bridges, two searches).

Style 2 (the check world) must keep all of that while sharing no phrasing or name pattern with style 1.
"""

import json
import re
import time
from collections import Counter

import bm25s
import pytest

from searchr1.config import QAConfig, WorldConfig
from searchr1.data.qa import load_split, read_question_types
from searchr1.data.world import BRIDGE, COMPARISON, SINGLE, STYLES, generate_world

FILES = ("corpus.jsonl", "qa_train.jsonl", "qa_test.jsonl", "world.json", "stats.json",
         "flashrag/world/train.jsonl", "flashrag/world/test.jsonl", "question_types.jsonl")
SMALL = dict(num_people=60, num_places=30, num_organizations=40, num_inventions=40, num_events=40,
             num_train_questions=120, num_test_questions=40)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(out, cfg):
    start = time.perf_counter()
    stats = generate_world(cfg, out)
    seconds = time.perf_counter() - start
    corpus = _jsonl(out / "corpus.jsonl")
    return {"dir": out, "stats": stats, "seconds": seconds, "corpus": corpus,
            "passages": {p["id"]: p["contents"] for p in corpus},
            "train": _jsonl(out / "qa_train.jsonl"), "test": _jsonl(out / "qa_test.jsonl")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("world") / "world", WorldConfig())


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("world2") / "world", WorldConfig(**SMALL, style=2))


BOTH = pytest.mark.parametrize("name", ["world", "world2"])  # the default world and a small style-2 world


def test_default_world_meets_minimum_sizes_quickly(world):
    assert len(world["corpus"]) >= 5000
    assert len(world["train"]) >= 2000 and len(world["test"]) >= 300
    assert world["stats"]["num_passages"] == len(world["corpus"])
    assert world["stats"]["passages_by_kind"]["mention"] > 0 and world["stats"]["namesakes"] > 0
    assert world["seconds"] < 30


@BOTH
def test_passages_are_short_flashrag_rows_with_unique_ids(name, request):
    world = request.getfixturevalue(name)
    assert len(world["passages"]) == len(world["corpus"])
    for p in world["corpus"]:
        assert set(p) == {"id", "contents"} and isinstance(p["id"], str)
        title, _, text = p["contents"].partition("\n")
        assert title.startswith('"') and title.endswith('"') and text
        assert 25 <= len(p["contents"].split()) <= 80, p


@BOTH
def test_question_types_are_mixed_about_50_35_15(name, request):
    world = request.getfixturevalue(name)
    for split in ("train", "test"):
        counts = Counter(q["metadata"]["type"] for q in world[split])
        n = len(world[split])
        assert abs(counts["single"] / n - 0.50) < 0.02
        assert abs(counts["bridge"] / n - 0.35) < 0.02
        assert abs(counts["comparison"] / n - 0.15) < 0.02


@BOTH
def test_every_gold_answer_is_in_the_last_supporting_passage(name, request):
    world = request.getfixturevalue(name)
    for q in world["train"] + world["test"]:
        meta = q["metadata"]
        assert q["golden_answers"] and all(isinstance(a, str) and a for a in q["golden_answers"])
        assert len(meta["gold_queries"]) == len(meta["supporting_ids"])
        if meta["type"] == "comparison":
            assert q["golden_answers"][0] in q["question"]
            assert all(world["passages"][i] for i in meta["supporting_ids"])
        else:
            assert q["golden_answers"][0].lower() in world["passages"][meta["supporting_ids"][-1]].lower(), q


@BOTH
def test_bridge_questions_need_two_passages_and_the_first_lacks_the_answer(name, request):
    world = request.getfixturevalue(name)
    bridges = [q for q in world["train"] + world["test"] if q["metadata"]["type"] == "bridge"]
    assert bridges
    for q in bridges:
        first, second = q["metadata"]["supporting_ids"]
        assert first != second
        assert not any(a.lower() in world["passages"][first].lower() for a in q["golden_answers"]), q


@BOTH
def test_train_and_test_share_no_question(name, request):
    world = request.getfixturevalue(name)
    train = {q["question"] for q in world["train"]}
    test = {q["question"] for q in world["test"]}
    assert len(train) == len(world["train"]) and len(test) == len(world["test"])
    assert not train & test
    assert not {q["id"] for q in world["train"]} & {q["id"] for q in world["test"]}


@BOTH
def test_gold_queries_retrieve_supporting_passages_in_bm25_top3(name, request):
    world = request.getfixturevalue(name)
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


def _grams(texts, n=3):
    """Word n-grams of the fixed text of templates (never across a {placeholder})."""
    out = set()
    for text in texts:
        for part in re.split(r"\{\w+\}", text):
            words = re.findall(r"[a-z]+", part.lower())
            out |= {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    return out


def _sentences(style):
    """Every passage-side template text of a style."""
    return [*style.passages.values(), *(x for m in style.mentions.values() for x in m), *style.person_fillers,
            *style.place_fillers, *style.devices.values(), *style.events.values(), *style.occupations.values()]


def test_every_style_phrases_every_question_template_as_a_question():
    for style in STYLES.values():
        assert set(style.questions) == set(SINGLE) | set(BRIDGE) | set(COMPARISON)
        assert all(q.endswith("?") for q in style.questions.values())


def test_style_two_shares_no_question_or_passage_phrasing_with_style_one():
    one, two = STYLES[1], STYLES[2]
    assert not set(one.questions.values()) & set(two.questions.values())
    assert not _grams(one.questions.values()) & _grams(two.questions.values())
    assert not _grams(_sentences(one)) & _grams(_sentences(two))
    for vocab in ("occupations", "industries", "devices", "events", "org_suffixes"):
        assert not set(getattr(one, vocab)) & set(getattr(two, vocab)), vocab


def _names(out):
    """(every word of every entity name, the invented words among them) of a generated world."""
    w = json.loads((out / "world.json").read_text())
    words = {x for c in ("countries", "places", "people", "organizations", "inventions", "events") for e in w[c]
             for x in e["name"].split()}
    invented = {e["name"] for c in ("countries", "places") for e in w[c]}
    invented |= {x for e in w["people"] for x in (e["first"], e["last"])}
    invented |= {e["name"].split()[0] for c in ("organizations", "inventions", "events") for e in w[c]}
    return words, invented


def test_style_two_names_share_no_word_or_word_ending_with_style_one(world, world2):
    words1, invented1 = _names(world["dir"])
    words2, invented2 = _names(world2["dir"])
    assert not words1 & words2
    assert not {w[-2:] for w in invented1} & {w[-2:] for w in invented2}


def test_style_two_is_deterministic_and_differs_from_style_one(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    stats = generate_world(WorldConfig(**SMALL, seed=7, style=2), a)
    generate_world(WorldConfig(**SMALL, seed=7, style=2), b)
    generate_world(WorldConfig(**SMALL, seed=7), c)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert stats["style"] == 2 and "style" not in json.loads((c / "stats.json").read_text())
    assert stats["entities"].keys() == json.loads((c / "stats.json").read_text())["entities"].keys()
    questions1 = {q["question"] for q in _jsonl(c / "qa_train.jsonl")}
    assert not questions1 & {q["question"] for q in _jsonl(a / "qa_train.jsonl")}


@BOTH
def test_every_question_ends_with_a_question_mark(name, request):
    world = request.getfixturevalue(name)
    assert all(q["question"].endswith("?") for q in world["train"] + world["test"])


@BOTH
def test_flashrag_export_is_the_questions_without_metadata(name, request, tmp_path):
    world = request.getfixturevalue(name)
    keys = ("id", "question", "golden_answers")
    for split in ("train", "test"):
        rows = _jsonl(world["dir"] / "flashrag" / "world" / f"{split}.jsonl")
        assert all(set(r) == set(keys) for r in rows)
        assert rows == [{k: q[k] for k in keys} for q in world[split]]
    # It reads as a user's FlashRAG dataset named "world", with no question types.
    cfg = QAConfig(source="flashrag", flashrag_dir=str(world["dir"] / "flashrag"), train_datasets=["world"],
                   test_datasets=["world"], out_dir=str(tmp_path / "qa"))
    test = load_split(cfg, "test")
    assert [r["id"] for r in test] == [f"world_{q['id']}" for q in world["test"]]
    assert all(r["metadata"] == {} for r in test)


@BOTH
def test_question_types_file_matches_the_test_metadata(name, request):
    world = request.getfixturevalue(name)
    types = read_question_types(world["dir"] / "question_types.jsonl")
    assert types == {q["id"]: q["metadata"]["type"] for q in world["test"]}
