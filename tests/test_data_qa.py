"""QA preparation: FlashRAG / HF / world sources merged as in Search-R1, validated, written in its parquet layout."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from searchr1.config import QAConfig, WorldConfig
from searchr1.data.qa import load_qa, prepare_qa
from searchr1.data.world import generate_world
from searchr1.io import DataError
from searchr1.prompts import make_prompt

FLASHRAG = Path(__file__).parent / "fixtures" / "flashrag"
ALL7 = ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _count(path):
    return len(Path(path).read_text().splitlines())


@pytest.fixture
def flashrag_out(tmp_path):
    cfg = QAConfig(source="flashrag", flashrag_dir=str(FLASHRAG), out_dir=str(tmp_path / "qa"))
    return cfg, prepare_qa(cfg)


def test_train_merges_nq_and_hotpotqa_train_splits(flashrag_out):
    cfg, stats = flashrag_out
    train = load_qa(Path(cfg.out_dir) / "train.jsonl")
    n_nq, n_hotpot = _count(FLASHRAG / "nq/train.jsonl"), _count(FLASHRAG / "hotpotqa/train.jsonl")
    assert len(train) == n_nq + n_hotpot == stats["train"]["num_questions"]
    assert stats["train"]["by_source"] == {"hotpotqa": n_hotpot, "nq": n_nq}
    assert train[0]["id"] == "nq_train_0" and train[0]["data_source"] == "nq"
    assert train[-1]["metadata"]["level"] == "hard"  # FlashRAG metadata kept


def test_test_merges_all_seven_falling_back_to_dev(flashrag_out):
    cfg, stats = flashrag_out
    test = load_qa(Path(cfg.out_dir) / "test.jsonl")
    assert [s for s in dict.fromkeys(r["data_source"] for r in test)] == ALL7
    for ds in ALL7:
        split = "test" if (FLASHRAG / ds / "test.jsonl").exists() else "dev"
        expected = _rows(FLASHRAG / ds / f"{split}.jsonl")
        got = [r for r in test if r["data_source"] == ds]
        assert [r["id"] for r in got] == [f"{ds}_{e['id']}" for e in expected]
    assert stats["test"]["by_source"]["hotpotqa"] == _count(FLASHRAG / "hotpotqa/dev.jsonl")
    assert stats["test"]["mean_question_words"] > 3


def test_bare_string_answer_becomes_a_list(tmp_path):
    # triviaqa/dev.jsonl row 1 has golden_answers "Silver Swan"; without a test split, dev is read.
    shutil.copytree(FLASHRAG / "triviaqa", tmp_path / "fr" / "triviaqa", ignore=shutil.ignore_patterns("test.jsonl"))
    cfg = QAConfig(source="flashrag", flashrag_dir=str(tmp_path / "fr"), train_datasets=["triviaqa"],
                   test_datasets=["triviaqa"], out_dir=str(tmp_path / "qa"))
    prepare_qa(cfg)
    assert load_qa(tmp_path / "qa" / "test.jsonl")[0]["golden_answers"] == ["Silver Swan"]


def test_parquet_matches_search_r1_layout(flashrag_out):
    cfg, _ = flashrag_out
    table = pq.read_table(Path(cfg.out_dir) / "test.parquet")
    assert table.column_names == ["id", "question", "golden_answers", "data_source", "prompt", "ability",
                                  "reward_model", "extra_info"]
    rows = table.to_pylist()
    jsonl = _rows(Path(cfg.out_dir) / "test.jsonl")
    assert len(rows) == len(jsonl)
    for i, (row, ref) in enumerate(zip(rows, jsonl)):
        assert row["data_source"] == ref["data_source"]
        assert row["prompt"] == [{"role": "user", "content": make_prompt(ref["question"], "search_r1")}]
        assert row["prompt"][0]["content"].rstrip().endswith("?")
        assert row["ability"] == "fact-reasoning"
        assert row["reward_model"] == {"style": "rule", "ground_truth": {"target": ref["golden_answers"]}}
        assert row["extra_info"] == {"split": "test", "index": i}
    assert pq.read_table(Path(cfg.out_dir) / "train.parquet").to_pylist()[0]["extra_info"]["split"] == "train"


def test_stats_are_numbers_for_dvc(flashrag_out):
    cfg, stats = flashrag_out
    assert json.loads((Path(cfg.out_dir) / "stats.json").read_text()) == stats

    def leaves(d):
        return [x for v in d.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    assert all(isinstance(x, (int, float)) for x in leaves(stats))


def test_subsampling_is_deterministic_and_bounded(tmp_path):
    def run(name, seed=0):
        cfg = QAConfig(source="flashrag", flashrag_dir=str(FLASHRAG), out_dir=str(tmp_path / name), max_train=3,
                       max_test_per_dataset=2, seed=seed)
        prepare_qa(cfg)
        return (tmp_path / name / "train.jsonl").read_bytes(), (tmp_path / name / "test.jsonl").read_bytes()

    a, b = run("a"), run("b")
    assert a == b
    train, test = (load_qa(tmp_path / "a" / f) for f in ("train.jsonl", "test.jsonl"))
    assert len(train) == 3 and len(test) == 2 * len(ALL7)
    assert any(run(f"s{s}", seed=s) != a for s in range(1, 6))


def _broken(tmp_path, mutate):
    root = tmp_path / "fr"
    shutil.copytree(FLASHRAG, root)
    path = root / "nq" / "train.jsonl"
    rows = _rows(path)
    mutate(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return QAConfig(source="flashrag", flashrag_dir=str(root), out_dir=str(tmp_path / "qa"))


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[1].update(question="  "), "train.jsonl:2: question"),
    (lambda rows: rows[2].pop("golden_answers"), "train.jsonl:3: golden_answers"),
    (lambda rows: rows[0].update(golden_answers=[]), "train.jsonl:1: golden_answers"),
    (lambda rows: rows[0].update(golden_answers=[1834]), "train.jsonl:1: golden_answers"),
    (lambda rows: rows[3].update(id=rows[0]["id"]), "train.jsonl:4: id: duplicate"),
])
def test_bad_rows_fail_naming_file_line_and_field_and_write_nothing(tmp_path, mutate, message):
    cfg = _broken(tmp_path, mutate)
    with pytest.raises(DataError) as err:
        prepare_qa(cfg)
    assert message in str(err.value) and "nq" in str(err.value)
    assert not Path(cfg.out_dir).exists()


def test_missing_split_is_an_error(tmp_path):
    cfg = QAConfig(source="flashrag", flashrag_dir=str(FLASHRAG), train_datasets=["bamboogle"], out_dir=str(tmp_path / "q"))
    with pytest.raises(DataError, match="bamboogle: no train split"):
        prepare_qa(cfg)


def test_hf_source_reads_a_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "hf"
    for ds in ("nq", "bamboogle"):
        splits = {s: datasets.Dataset.from_list(_rows(p)) for s in ("train", "dev", "test")
                  if (p := FLASHRAG / ds / f"{s}.jsonl").exists()}
        datasets.DatasetDict(splits).save_to_disk(str(root / ds))
    cfg = QAConfig(source="hf", hf_path=str(root), train_datasets=["nq"], test_datasets=["nq", "bamboogle"],
                   out_dir=str(tmp_path / "qa"))
    stats = prepare_qa(cfg)
    assert stats["train"]["by_source"] == {"nq": _count(FLASHRAG / "nq/train.jsonl")}
    assert stats["test"]["by_source"] == {"bamboogle": _count(FLASHRAG / "bamboogle/test.jsonl"),
                                          "nq": _count(FLASHRAG / "nq/test.jsonl")}
    test = load_qa(tmp_path / "qa" / "test.jsonl")
    assert test[0]["id"] == "nq_test_0" and test[0]["golden_answers"] == ["1902"]


def test_world_source_keeps_question_types(tmp_path):
    world = tmp_path / "world"
    generate_world(WorldConfig(num_people=40, num_places=20, num_organizations=20, num_inventions=20, num_events=20,
                               num_train_questions=40, num_test_questions=20), world)
    stats = prepare_qa(QAConfig(out_dir=str(tmp_path / "qa")), world_dir=world)
    assert stats["train"]["num_questions"] == 40 and stats["test"]["num_questions"] == 20
    assert stats["test"]["by_type"] == {"bridge": 7, "comparison": 3, "single": 10}
    row = load_qa(tmp_path / "qa" / "train.jsonl")[0]
    assert row["id"].startswith("world_train-") and row["data_source"] == "world"
    assert row["metadata"]["gold_queries"]


def test_load_qa_rejects_rows_without_data_source(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": "1", "question": "q?", "golden_answers": ["a"]}) + "\n")
    with pytest.raises(DataError, match="x.jsonl:1: data_source"):
        load_qa(path)
