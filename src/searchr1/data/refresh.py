"""Apply a corpus refresh (new, changed and deleted passages, plus optional new questions) to the prepared data.

A drop folder holds any of::

    upserts.jsonl    {"id", "contents"} (or "title" + "text") rows: a new id is added, a known id replaced
    deletes.txt      one passage id per line ('#' comments and blank lines ignored)
    qa_train.jsonl   FlashRAG rows {"id", "question", "golden_answers"[, "data_source"]} upserted into the
    qa_test.jsonl    train / test split by "<data_source>_<id>" (the prepared ids); data_source defaults to "refresh"

or is the output folder of ``searchr1 world --set world.version=2`` (it has ``changes.json``): the
upserts, deletions and questions are then derived from it. Kept passages stay in place; a changed
passage is removed and appended at the end, like a new one, so the index update only removes and adds.
Applying the same drop twice changes nothing (a retried task is safe).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from searchr1.config import CorpusConfig, QAConfig
from searchr1.data.corpus import iter_passages
from searchr1.data.qa import load_qa, split_stats, to_search_r1, validate_qa_row
from searchr1.io import DataError, atomic_open, atomic_path, file_sha256, iter_jsonl, read_json, write_json, write_jsonl


def _world_drop(drop: Path) -> tuple[dict[str, str], list[str], dict[str, list[dict]]]:
    """Upserts, deletions and QA rows from a generated world of version > 1 (see data/world.py)."""
    changes = read_json(drop / "changes.json")
    wanted = set(changes["changed_ids"]) | set(changes["new_ids"])
    upserts = {pid: contents for pid, contents in iter_passages(drop / "corpus.jsonl") if pid in wanted}
    missing = wanted - set(upserts)
    if missing:
        raise DataError(f"{drop / 'changes.json'}: ids not in corpus.jsonl: {sorted(missing)[:5]}")
    # The whole refreshed QA set: same ids as before with updated answers, plus questions about what changed.
    qa = {"train": [{**r, "data_source": "world"} for _, r in iter_jsonl(drop / "qa_train.jsonl")],
          "test": [{**r, "data_source": "world"} for _, r in iter_jsonl(drop / "qa_test.jsonl")]}
    qa["train"] += [{**r, "data_source": "world"} for r in changes["qa"]]
    return upserts, list(changes["deleted_ids"]), qa


def read_drop(drop: str | Path) -> tuple[dict[str, str], list[str], dict[str, list[dict]]]:
    """``(upserts {id: contents}, deleted ids, {"train"/"test": qa rows})`` of a drop folder, validated."""
    drop = Path(drop)
    if not drop.is_dir():
        raise DataError(f"{drop}: refresh drop folder not found")
    if (drop / "changes.json").exists():
        upserts, deletes, qa = _world_drop(drop)
    else:
        upserts, deletes, qa = {}, [], {"train": [], "test": []}
        if (drop / "upserts.jsonl").exists():
            upserts = dict(iter_passages(drop / "upserts.jsonl"))  # validated; duplicate ids are errors
        if (drop / "deletes.txt").exists():
            lines = (drop / "deletes.txt").read_text(encoding="utf-8").splitlines()
            deletes = [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]
        for split in qa:
            path = drop / f"qa_{split}.jsonl"
            if path.exists():
                qa[split] = [row for _, row in iter_jsonl(path)]
        if not upserts and not deletes and not any(qa.values()):
            raise DataError(f"{drop}: empty drop (expected upserts.jsonl, deletes.txt, qa_train.jsonl or qa_test.jsonl)")
    both = set(upserts) & set(deletes)
    if both:
        raise DataError(f"{drop}: ids both upserted and deleted: {sorted(both)[:5]}")
    return upserts, deletes, qa


def apply_corpus_refresh(cfg: CorpusConfig, upserts: dict[str, str], deletes: list[str], source: str = "refresh") -> dict:
    """Rewrite ``cfg.out_path`` (and ``cfg.stats_path``) with the refresh applied, atomically; returns counts."""
    deleted, counts = set(deletes), {"added": 0, "changed": 0, "unchanged": 0, "deleted": 0}
    seen: set[str] = set()
    moved: set[str] = set()
    n = words = 0
    path = Path(cfg.out_path)
    with atomic_open(path) as out:
        def write(pid: str, contents: str) -> None:
            nonlocal n, words
            out.write(json.dumps({"id": pid, "contents": contents}, ensure_ascii=False) + "\n")
            n += 1
            words += len(contents.split())

        for pid, contents in iter_passages(path):  # the prepared corpus, re-validated while streaming
            seen.add(pid)
            if pid in deleted:
                counts["deleted"] += 1
            elif pid in upserts and upserts[pid] != contents:
                moved.add(pid)  # written at the end: a removal plus an add for the index
            else:
                counts["unchanged"] += 1
                write(pid, contents)
        for pid, contents in upserts.items():
            if pid in moved or pid not in seen:
                write(pid, contents)
        counts["changed"], counts["added"] = len(moved), len(set(upserts) - seen)
        if n == 0:
            raise DataError(f"refresh {source}: would leave {path} with no passages")
    sha = file_sha256(path)
    write_json(cfg.stats_path, {"num_passages": n, "mean_words": round(words / n, 2), "sha256": sha, "source": source})
    return {**counts, "missing_deletes": len(deleted - seen), "num_passages": n, "sha256": sha}


def _upsert_rows(current: list[dict], new: list[dict], where: str) -> tuple[list[dict], int, int]:
    """Replace rows by id, append unknown ids; returns (rows, added, changed)."""
    by_id = {r["id"]: i for i, r in enumerate(current)}
    rows, added, changed = list(current), 0, 0
    for k, raw in enumerate(new, start=1):
        r = validate_qa_row(raw, f"{where}:{k}")
        source = str(raw.get("data_source") or "refresh")
        row = {"id": f"{source}_{r['id']}", "question": r["question"], "golden_answers": r["golden_answers"],
               "data_source": source, "metadata": r["metadata"]}
        if row["id"] in by_id:
            if rows[by_id[row["id"]]] != row:
                rows[by_id[row["id"]]] = row
                changed += 1
        else:
            by_id[row["id"]] = len(rows)
            rows.append(row)
            added += 1
    return rows, added, changed


def apply_qa_refresh(cfg: QAConfig, qa: dict[str, list[dict]], where: str = "refresh") -> dict:
    """Upsert new questions into the prepared train/test splits (jsonl + parquet + stats, replaced atomically)."""
    out_dir = Path(cfg.out_dir)
    splits, counts = {}, {}
    for split in ("train", "test"):
        rows, added, changed = _upsert_rows(load_qa(out_dir / f"{split}.jsonl"), qa.get(split, []), f"{where}/qa_{split}")
        splits[split], counts[f"{split}_added"], counts[f"{split}_changed"] = rows, added, changed
    if not any(counts.values()):
        return counts  # nothing new: leave the files (and their mtimes) alone
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
            pq.write_table(to_search_r1(rows, split, cfg.template), tmp / f"{split}.parquet")
        write_json(tmp / "stats.json", {split: split_stats(rows) for split, rows in splits.items()})
    return counts


def apply_refresh(corpus_cfg: CorpusConfig, qa_cfg: QAConfig, drop: str | Path, extend_qa: bool = True) -> dict:
    """Apply a drop folder to the prepared corpus (and QA sets); returns ``{"corpus": counts, "qa": counts}``."""
    upserts, deletes, qa = read_drop(drop)
    stats = {"corpus": apply_corpus_refresh(corpus_cfg, upserts, deletes, source=str(drop))}
    if extend_qa and any(qa.values()):
        stats["qa"] = apply_qa_refresh(qa_cfg, qa, where=str(drop))
    return stats
