"""QA preparation: the bundled world's questions or the paper's 7 benchmarks (local FlashRAG files or HF),
validated and written as FlashRAG jsonl plus Search-R1's parquet layout."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from searchr1.config import QAConfig
from searchr1.io import DataError, atomic_path, iter_jsonl, write_json, write_jsonl
from searchr1.prompts import make_prompt

SPLITS = ("train", "test")
# Search-R1 evaluates on test, or on dev where a benchmark has no public test answers.
SPLIT_FALLBACKS = {"train": ("train",), "test": ("test", "dev")}

PARQUET_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("question", pa.string()),
    ("golden_answers", pa.list_(pa.string())),
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.struct([("target", pa.list_(pa.string()))]))])),
    ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
])


def validate_qa_row(row: dict, where: str) -> dict:
    """Return ``{id, question, golden_answers, metadata}`` of one QA row; ``where`` names file:line."""
    qid = row.get("id")
    if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise DataError(f"{where}: id: missing or empty")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question: missing or empty")
    answers = row.get("golden_answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where}: golden_answers: missing or empty (expected a non-empty list of strings)")
    if not all(isinstance(a, str) and a.strip() for a in answers):
        raise DataError(f"{where}: golden_answers: every answer must be a non-empty string, got {answers!r}")
    metadata = row.get("metadata")
    return {"id": str(qid).strip(), "question": question.strip(), "golden_answers": [a.strip() for a in answers],
            "metadata": metadata if isinstance(metadata, dict) else {}}


def load_qa(path: str | Path) -> list[dict]:
    """Read a prepared split (``train.jsonl`` / ``test.jsonl``), validated, with its ``data_source``."""
    rows, seen = [], set()
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        out = validate_qa_row(row, where)
        if out["id"] in seen:
            raise DataError(f"{where}: id: duplicate id {out['id']!r}")
        if not isinstance(row.get("data_source"), str) or not row["data_source"]:
            raise DataError(f"{where}: data_source: missing")
        seen.add(out["id"])
        rows.append({**out, "data_source": row["data_source"]})
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows


def read_question_types(path: str | Path) -> dict[str, str]:
    """``{id: type}`` from a jsonl of ``{"id", "type"}`` rows (a bad row is an error naming file:line)."""
    types = {}
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("id"), (str, int)) or not isinstance(row.get("type"), str) or not row["type"]:
            raise DataError(f"{path}:{lineno}: expected {{\"id\": ..., \"type\": \"...\"}}")
        types[str(row["id"])] = row["type"]
    return types


def _flashrag_rows(root: Path, dataset: str, split: str) -> Iterator[tuple[str, dict]]:
    for name in SPLIT_FALLBACKS[split]:
        path = root / dataset / f"{name}.jsonl"
        if path.exists():
            return ((f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path))
    raise DataError(f"{root / dataset}: no {' or '.join(SPLIT_FALLBACKS[split])} split (.jsonl)")


def _hf_rows(hf_path: str, dataset: str, split: str) -> Iterator[tuple[str, dict]]:
    import datasets  # heavy import, only for this source

    if Path(hf_path).is_dir():  # a DatasetDict saved with save_to_disk under {hf_path}/{dataset}
        loaded = datasets.load_from_disk(str(Path(hf_path) / dataset))
        name = next((s for s in SPLIT_FALLBACKS[split] if s in loaded), None)
        if name is None:
            raise DataError(f"{hf_path}/{dataset}: no {' or '.join(SPLIT_FALLBACKS[split])} split")
        data = loaded[name]
    else:
        for name in SPLIT_FALLBACKS[split]:
            try:
                data = datasets.load_dataset(hf_path, dataset, split=name)
                break
            except ValueError:  # unknown split: try the fallback
                continue
        else:
            raise DataError(f"{hf_path} {dataset}: no {' or '.join(SPLIT_FALLBACKS[split])} split")
    return ((f"{hf_path}/{dataset}[{name}]:{i + 1}", row) for i, row in enumerate(data))


def _world_rows(world_dir: Path, split: str) -> Iterator[tuple[str, dict]]:
    path = world_dir / f"qa_{split}.jsonl"
    return ((f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path))


def _read(rows: Iterable[tuple[str, dict]], dataset: str) -> list[dict]:
    out, seen = [], set()
    for where, row in rows:
        r = validate_qa_row(row, where)
        if r["id"] in seen:
            raise DataError(f"{where}: id: duplicate id {r['id']!r} in {dataset}")
        seen.add(r["id"])
        out.append({"id": f"{dataset}_{r['id']}", "question": r["question"], "golden_answers": r["golden_answers"],
                    "data_source": dataset, "metadata": r["metadata"]})
    if not out:
        raise DataError(f"{dataset}: no questions")
    return out


def _sample(rows: list[dict], k: int | None, rng: random.Random) -> list[dict]:
    if k is None or len(rows) <= k:
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), k))]  # keep the source order


def load_split(cfg: QAConfig, split: str, world_dir: str | Path = "data/world") -> list[dict]:
    """The merged, validated, subsampled rows of one split from the configured source."""
    if cfg.source == "world":
        names = ["world"]
    else:
        names = cfg.train_datasets if split == "train" else cfg.test_datasets
        if cfg.source == "flashrag" and not cfg.flashrag_dir:
            raise DataError("qa.flashrag_dir: required when qa.source=flashrag")
    rng = random.Random(f"qa-{cfg.seed}-{split}")
    rows: list[dict] = []
    for name in dict.fromkeys(names):  # a dataset listed twice is read once
        if cfg.source == "world":
            source = _world_rows(Path(world_dir), split)
        elif cfg.source == "flashrag":
            source = _flashrag_rows(Path(cfg.flashrag_dir), name, split)
        else:
            source = _hf_rows(cfg.hf_path, name, split)
        part = _read(source, name)
        rows += _sample(part, cfg.max_test_per_dataset, rng) if split == "test" else part
    return _sample(rows, cfg.max_train, rng) if split == "train" else rows


def to_search_r1(rows: list[dict], split: str, template: str) -> pa.Table:
    """Search-R1's training parquet: data_source, prompt, ability, reward_model, extra_info (+ the QA columns)."""
    records = [{
        "id": r["id"], "question": r["question"], "golden_answers": r["golden_answers"], "data_source": r["data_source"],
        "prompt": [{"role": "user", "content": make_prompt(r["question"], template)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": r["golden_answers"]}},
        "extra_info": {"split": split, "index": i},
    } for i, r in enumerate(rows)]
    return pa.Table.from_pylist(records, schema=PARQUET_SCHEMA)


def split_stats(rows: list[dict]) -> dict:
    """Counts per source and question type, and mean question length (a split's stats.json entry)."""
    return {
        "num_questions": len(rows),
        "mean_question_words": round(sum(len(r["question"].split()) for r in rows) / len(rows), 2),
        "by_source": dict(sorted(Counter(r["data_source"] for r in rows).items())),
        "by_type": dict(sorted(Counter(r["metadata"].get("type", "unknown") for r in rows).items())),
    }


def prepare_qa(cfg: QAConfig, world_dir: str | Path = "data/world") -> dict:
    """Write train/test jsonl + parquet and stats.json into ``cfg.out_dir`` (replaced atomically); returns the stats."""
    make_prompt("probe", cfg.template)  # a bad template fails before any reading
    splits = {split: load_split(cfg, split, world_dir) for split in SPLITS}
    stats = {split: split_stats(rows) for split, rows in splits.items()}
    with atomic_path(cfg.out_dir) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
            pq.write_table(to_search_r1(rows, split, cfg.template), tmp / f"{split}.parquet")
        write_json(tmp / "stats.json", stats)
    return stats
