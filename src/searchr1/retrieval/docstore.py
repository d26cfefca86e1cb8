"""On-disk passage store: a normalised jsonl copy of the corpus plus int64 byte offsets.

Indexes return row numbers; the store turns them into (id, contents) with one seek each, so a
21M-passage corpus is served without loading it into RAM. BM25 and dense share one store.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from searchr1.io import DataError, atomic_path, file_sha256, iter_jsonl, read_json, write_json


def corpus_fingerprint(corpus_path: str | Path, known: dict | None = None) -> dict:
    """{"sha256", "size", "mtime_ns"} of a corpus; reuses ``known["sha256"]`` if size and mtime match."""
    st = os.stat(corpus_path)
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return {"sha256": known["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"sha256": file_sha256(corpus_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _normalise(path: Path, lineno: int, row: dict, index: int) -> dict:
    contents = row.get("contents")
    if contents is None and "text" in row:  # also accept {"title", "text"} rows
        contents = f'"{row.get("title", "")}"\n{row["text"]}'
    if not isinstance(contents, str):
        raise DataError(f"{path}:{lineno}: field 'contents' missing or not a string")
    doc_id = row.get("id", index)
    return {"id": str(doc_id), "contents": contents}


class DocStore:
    """Random access to passages by row number (memory-mapped)."""

    def __init__(self, store_dir: str | Path):
        self.dir = Path(store_dir)
        if not (self.dir / "meta.json").exists():
            raise FileNotFoundError(f"{self.dir}: no docstore (run the index build first)")
        self.meta = read_json(self.dir / "meta.json")
        self.offsets = np.load(self.dir / "offsets.npy", mmap_mode="r")
        self._fh = open(self.dir / "docs.jsonl", "rb")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> dict:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(self._mm[start:end])

    def contents(self, start: int, stop: int) -> list[str]:
        """Contents of rows [start, stop) (sequential read, for encoding shards)."""
        return [self.get(i)["contents"] for i in range(start, min(stop, len(self)))]

    def check_corpus(self, corpus_path: str | Path | None) -> None:
        """Raise if ``corpus_path`` is not the corpus this store (and its indexes) was built from."""
        if corpus_path is None:
            return
        fp = corpus_fingerprint(corpus_path, self.meta["corpus"])
        if fp["sha256"] != self.meta["corpus"]["sha256"]:
            raise ValueError(
                f"corpus mismatch: {corpus_path} has sha256 {fp['sha256']}, but the indexes in "
                f"{self.dir.parent} were built from sha256 {self.meta['corpus']['sha256']}; rebuild the indexes"
            )


def iter_rows(corpus_path: str | Path) -> Iterator[dict]:
    path = Path(corpus_path)
    for index, (lineno, row) in enumerate(iter_jsonl(path)):
        yield _normalise(path, lineno, row, index)


def build_docstore(corpus_path: str | Path, store_dir: str | Path) -> dict:
    """Copy the corpus into ``store_dir`` (docs.jsonl + offsets.npy + meta.json); skip if up to date."""
    store_dir = Path(store_dir)
    meta_path = store_dir / "meta.json"
    old = read_json(meta_path) if meta_path.exists() else None
    fp = corpus_fingerprint(corpus_path, old["corpus"] if old else None)
    if old and old["corpus"]["sha256"] == fp["sha256"]:
        return {"count": old["count"], "skipped": True, "seconds": 0.0, "bytes": _dir_bytes(store_dir)}
    t0 = time.time()
    offsets = [0]
    with atomic_path(store_dir) as tmp:
        tmp.mkdir()
        with open(tmp / "docs.jsonl", "wb") as out:
            for row in tqdm(iter_rows(corpus_path), desc="docstore", unit=" docs", mininterval=2):
                line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
                out.write(line)
                offsets.append(offsets[-1] + len(line))
        if len(offsets) == 1:
            raise DataError(f"{corpus_path}: corpus has no passages")
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        write_json(tmp / "meta.json", {"corpus": fp, "corpus_path": str(corpus_path), "count": len(offsets) - 1})
    return {"count": len(offsets) - 1, "skipped": False, "seconds": time.time() - t0, "bytes": _dir_bytes(store_dir)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
