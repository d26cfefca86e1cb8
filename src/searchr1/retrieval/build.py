"""Build the indexes listed in ``retrieval.build`` (idempotent: an up-to-date index is skipped)."""

from __future__ import annotations

import time
from pathlib import Path

from searchr1.config import RetrievalConfig
from searchr1.io import read_json
from searchr1.retrieval.bm25 import build_bm25
from searchr1.retrieval.dense import build_dense, encoder_identity, index_identity
from searchr1.retrieval.docstore import DocStore, build_docstore
from searchr1.retrieval.prebuilt import adopt_prebuilt, holds_prebuilt


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _meta(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def build_indexes(cfg: RetrievalConfig, corpus_path: str | Path) -> dict:
    """Build docstore + BM25 and/or dense indexes under ``cfg.index_dir``; returns per-index stats
    ``{name: {"count", "seconds", "bytes", "skipped", ...}}``."""
    root = Path(cfg.index_dir)
    stats = {"docstore": build_docstore(corpus_path, root / "docstore")}
    store = DocStore(root / "docstore")
    sha = store.meta["corpus"]["sha256"]

    if "bm25" in cfg.build:
        meta = _meta(root / "bm25" / "meta.json")
        if meta and meta["corpus"]["sha256"] == sha:
            stats["bm25"] = {"count": meta["count"], "seconds": 0.0, "skipped": True}
        else:
            stats["bm25"] = {**build_bm25(store, root / "bm25"), "skipped": False}
        stats["bm25"]["bytes"] = _dir_bytes(root / "bm25")

    if "dense" in cfg.build:
        dense_dir = root / "dense"
        meta = _meta(dense_dir / "meta.json")
        up_to_date = (
            meta is not None and (dense_dir / "index.faiss").exists() and meta["corpus"]["sha256"] == sha
            and meta["encoder"] == encoder_identity(cfg.encoder) and meta["index"] == index_identity(cfg.faiss)
            and holds_prebuilt(meta, dense_dir, cfg.faiss)
        )
        t0 = time.time()
        if up_to_date:
            stats["dense"] = {"count": meta["count"], "seconds": 0.0, "skipped": True}
        elif cfg.faiss.prebuilt_index:  # Search-R1's published index: checked and linked in, not encoded
            stats["dense"] = {**adopt_prebuilt(store, dense_dir, cfg.encoder, cfg.faiss), "skipped": False}
        else:
            stats["dense"] = {**build_dense(store, dense_dir, cfg.encoder, cfg.faiss), "skipped": False}
            stats["dense"]["seconds"] = time.time() - t0
        stats["dense"]["bytes"] = (dense_dir / "index.faiss").stat().st_size
    return stats
