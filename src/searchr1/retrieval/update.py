"""Incremental index update after a corpus refresh: encode only new or changed passages, swap in atomically.

Dense vectors are reused by passage content (the encoder sees nothing else), so only passages whose text
is new are encoded. The FAISS index is then extended in place when the refresh only appended passages,
trimmed with ``remove_ids`` + extended for a flat index, or rebuilt from the (reused) embedding shards when
the index type cannot remove (HNSW; IVF-PQ keeps explicit ids), the kept rows were reordered, or more than
``faiss.rebuild_fraction`` of the passages went away. The docstore (a linear copy) and BM25 (cheap to
tokenize; bm25s has no incremental add) are rebuilt. Everything is staged in a sibling of ``index_dir``
(unchanged files hard-linked, not copied) and renamed into place, so a failed update leaves the old
indexes whole.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from searchr1.config import RetrievalConfig
from searchr1.io import atomic_path, read_json, write_json
from searchr1.retrieval.build import build_indexes
from searchr1.retrieval.dense import build_faiss, encoder_identity, index_identity
from searchr1.retrieval.docstore import DocStore, corpus_fingerprint, iter_rows
from searchr1.retrieval.encoder import Encoder

log = logging.getLogger(__name__)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _incremental_ok(cfg: RetrievalConfig, root: Path) -> str | None:
    """Why the dense index cannot be updated incrementally (then it is built in full), or None."""
    meta_path, store_meta = root / "dense" / "meta.json", root / "docstore" / "meta.json"
    if not meta_path.exists() or not store_meta.exists() or not (root / "dense" / "index.faiss").exists():
        return "no complete dense index to update"
    meta = read_json(meta_path)
    if meta["corpus"]["sha256"] != read_json(store_meta)["corpus"]["sha256"]:
        return "dense index and docstore come from different corpora"
    if meta["encoder"] != encoder_identity(cfg.encoder) or meta["index"] != index_identity(cfg.faiss):
        return "encoder or index settings changed"
    shard_dir = root / "dense" / "shards"
    if not (shard_dir / "manifest.json").exists() or read_json(shard_dir / "manifest.json")["corpus"] != meta["corpus"]["sha256"]:
        return "embedding shards missing or from another corpus"
    return None


def plan_rows(store: DocStore, corpus_path: str | Path) -> tuple[np.ndarray, list[str]]:
    """For each row of the new corpus, the old row with the same contents (or -1), and the texts to encode."""
    # 16-byte digests, not texts: about 100 bytes per passage in RAM (2 GB for wiki-18's 21M).
    old: dict[bytes, int] = {}
    for i in range(len(store)):
        old.setdefault(_digest(store.get(i)["contents"]), i)
    reuse, texts = [], []
    for row in iter_rows(corpus_path):
        r = old.get(_digest(row["contents"]), -1)
        reuse.append(r)
        if r < 0:
            texts.append(row["contents"])
    return np.asarray(reuse, dtype=np.int64), texts


def _index_mode(reuse: np.ndarray, n_old: int, faiss_type: str, rebuild_fraction: float) -> tuple[str, np.ndarray]:
    """``append`` | ``remove+add`` | ``rebuild``, and the old rows to remove."""
    kept = reuse[reuse >= 0]
    removed = np.setdiff1d(np.arange(n_old, dtype=np.int64), kept)
    # In place only if kept rows keep their order and every encoded row comes after them.
    in_order = bool(np.all(np.diff(kept) > 0)) and bool(np.all(reuse[: len(kept)] >= 0))
    if in_order and len(removed) == 0:
        return "append", removed
    if in_order and faiss_type == "flat" and len(removed) <= rebuild_fraction * n_old:
        return "remove+add", removed  # IndexFlat compacts on removal, so ids stay row numbers
    return "rebuild", removed


def _write_shards(old_dir: Path, new_dir: Path, reuse: np.ndarray, new_emb: np.ndarray, old_size: int, size: int) -> int:
    """Assemble the new corpus's shards from old shards (by row) and fresh vectors; returns the shard count."""
    new_dir.mkdir(parents=True)
    new_pos = np.cumsum(reuse < 0) - 1  # row of new_emb holding each encoded passage
    n_shards = math.ceil(len(reuse) / size)
    for k in range(n_shards):
        span = slice(k * size, (k + 1) * size)
        rows, path = reuse[span], new_dir / f"emb_{k:05d}.npy"
        if size == old_size and len(rows) == size and np.array_equal(rows, np.arange(k * size, (k + 1) * size)):
            os.link(old_dir / path.name, path)  # an untouched full shard: linked, not copied
            continue
        out = np.empty((len(rows), new_emb.shape[1]), dtype=np.float32)
        fresh = rows < 0
        out[fresh] = new_emb[new_pos[span][fresh]]
        for s in np.unique(rows[~fresh] // old_size):
            pick = ~fresh & (rows // old_size == s)
            out[pick] = np.load(old_dir / f"emb_{s:05d}.npy", mmap_mode="r")[rows[pick] % old_size]
        np.save(path, out)
    return n_shards


def _update_dense(cfg: RetrievalConfig, dense_dir: Path, store: DocStore, corpus_path: str | Path, fp: dict) -> dict:
    """Bring ``dense_dir`` (a staged copy) to the new corpus, encoding only passages with new text."""
    t0 = time.time()
    manifest = read_json(dense_dir / "shards" / "manifest.json")
    reuse, texts = plan_rows(store, corpus_path)
    index = faiss.read_index(str(dense_dir / "index.faiss"))
    new_emb = Encoder(cfg.encoder).encode_passages(texts, progress=True) if texts else np.empty((0, index.d), np.float32)
    mode, removed = _index_mode(reuse, len(store), cfg.faiss.type, cfg.faiss.rebuild_fraction)

    n_shards = _write_shards(dense_dir / "shards", dense_dir / "shards.new", reuse, new_emb, manifest["shard_size"], cfg.faiss.shard_size)
    shutil.rmtree(dense_dir / "shards")  # unlinks this staged copy's links only; the live shards stay
    (dense_dir / "shards.new").rename(dense_dir / "shards")
    write_json(dense_dir / "shards" / "manifest.json",
               {"encoder": encoder_identity(cfg.encoder), "shard_size": cfg.faiss.shard_size, "corpus": fp["sha256"]})

    if mode == "rebuild":
        index = build_faiss(dense_dir / "shards", n_shards, cfg.faiss)
    else:
        if len(removed):
            index.remove_ids(removed)
        if len(new_emb):
            index.add(new_emb)
    if index.ntotal != len(reuse):
        raise RuntimeError(f"dense update: index holds {index.ntotal} vectors for {len(reuse)} passages")
    (dense_dir / "index.faiss").unlink()  # a staged hard link: write a new file, never into the live one
    faiss.write_index(index, str(dense_dir / "index.faiss"))
    seconds = time.time() - t0
    stats = {"mode": mode, "encoded_passages": len(texts), "reused_passages": int((reuse >= 0).sum()),
             "removed_passages": len(removed), "count": int(index.ntotal), "seconds": seconds}
    write_json(dense_dir / "meta.json", {
        "encoder": encoder_identity(cfg.encoder), "dim": index.d, "index": index_identity(cfg.faiss),
        "corpus": fp, "count": int(index.ntotal), "build_seconds": round(seconds, 3), "update": stats,
    })
    return stats


def update_indexes(cfg: RetrievalConfig, corpus_path: str | Path) -> dict:
    """Bring the indexes under ``cfg.index_dir`` to ``corpus_path``, incrementally where possible.

    Returns ``build_indexes``-style stats; ``stats["dense"]["mode"]`` says how the dense index was updated.
    """
    root = Path(cfg.index_dir)
    store_meta = root / "docstore" / "meta.json"
    fp = corpus_fingerprint(corpus_path)
    up_to_date = store_meta.exists() and read_json(store_meta)["corpus"]["sha256"] == fp["sha256"]
    reason = None if "dense" not in cfg.build else _incremental_ok(cfg, root)
    if up_to_date or reason is not None:
        if reason and not up_to_date:
            log.info("index update: %s: building in full", reason)
        return build_indexes(cfg, corpus_path)  # resumable in place, and a no-op when up to date

    with atomic_path(root) as staged:
        # Hard links: the staged tree costs no copy, and files are only ever replaced, never written into.
        shutil.copytree(root, staged, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
        dense = None
        if "dense" in cfg.build:
            dense = _update_dense(cfg, staged / "dense", DocStore(staged / "docstore"), corpus_path, fp)
        stats = build_indexes(cfg.model_copy(update={"index_dir": str(staged)}), corpus_path)
    if dense is not None:
        stats["dense"].update(dense, skipped=False)
    return stats
