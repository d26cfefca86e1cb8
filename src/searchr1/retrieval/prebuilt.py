"""Adopt a FAISS index written by Search-R1's ``index_builder.py`` (its e5 ``Flat`` / ``HNSW64`` files) as the
dense index, checked against the settings, instead of encoding the corpus.

Search-R1's layout: ``faiss.index_factory(d, "Flat" | "HNSW<M>", METRIC_INNER_PRODUCT)`` holding one vector per
corpus line, in line order (for e5: the mean-pooled, L2-normalised embedding of ``"passage: " + contents``), so
index row i is corpus row i, as in our docstore. The file is linked into ``<index_dir>/dense`` (a hard link, else
a symlink: never a copy of wiki-18's 64.6 GB e5 Flat file) beside our ``meta.json``, so ``DenseRetriever`` and the
server load it as if the index stage had built it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from searchr1.config import ConfigError, EncoderConfig, FaissConfig
from searchr1.io import atomic_path, write_json
from searchr1.retrieval.dense import dense_meta
from searchr1.retrieval.docstore import DocStore
from searchr1.retrieval.encoder import Encoder

SETTING = "retrieval.faiss.prebuilt_index"

# A sampled passage matches its stored vector when ||ours - stored|| <= REL_TOL * ||stored||. Measured with
# MiniLM on CPU: fp16 (Search-R1 encodes with --use_fp16) is within 0.0015 of fp32 and bf16 within 0.011, while
# dropping the "passage: " prefix moves every vector by 0.085 or more.
REL_TOL = 0.02

# What Search-R1's e5 files were encoded with (build_index.sh, index_builder.py); profiles/paper.yaml says the same.
SEARCH_R1_E5 = ("name_or_path='intfloat/e5-base-v2', pooling='mean', passage_prefix='passage: ', max_length=256, "
                "normalize=True")


def _kind(index: faiss.Index) -> dict | None:
    """The ``retrieval.faiss`` settings that describe ``index`` (None: a type searchr1 does not adopt)."""
    if isinstance(index, faiss.IndexFlat):
        return {"type": "flat"}
    if isinstance(index, faiss.IndexHNSWFlat):
        return {"type": "hnsw", "hnsw_m": int(index.hnsw.nb_neighbors(1))}  # level 0 has 2*M links, the others M
    return None


def _check_layout(index: faiss.Index, where: str, faiss_cfg: FaissConfig, n: int, corpus: str) -> None:
    kind = _kind(index)
    if kind is None:
        raise ConfigError(f"{where} is a faiss {type(index).__name__}; only Flat and HNSW<M> files (index_builder.py "
                          "--faiss_type Flat / HNSW64) can be adopted")
    want = {"type": faiss_cfg.type, **({"hnsw_m": faiss_cfg.hnsw_m} if faiss_cfg.type == "hnsw" else {})}
    if kind != want:
        have = " ".join(f"retrieval.faiss.{k}={v}" for k, v in want.items())
        fix = " ".join(f"retrieval.faiss.{k}={v}" for k, v in kind.items())
        raise ConfigError(f"{where}: a faiss {type(index).__name__}, but the settings say {have}: set {fix}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        # Search-R1 writes METRIC_INNER_PRODUCT; searchr1 ranks by inner product (higher is better) everywhere.
        metric = "METRIC_L2" if index.metric_type == faiss.METRIC_L2 else f"metric_type {index.metric_type}"
        raise ConfigError(f"{where} uses faiss {metric}, not METRIC_INNER_PRODUCT: searchr1 searches by inner product; "
                          f"drop {SETTING} to let the index stage build the index")
    if index.ntotal != n:
        raise ConfigError(f"{where} holds {index.ntotal} vectors but the corpus {corpus} has {n} passages: the index "
                          "must come from this corpus file, one vector per line in order (wiki-18.jsonl: 21,015,324); "
                          "check corpus.path and corpus.max_passages")


def _check_vectors(index: faiss.Index, where: str, store: DocStore, encoder: Encoder, sample: int) -> float:
    """Re-encode ``sample`` passages spread over the corpus (first and last included, so a shifted or truncated
    corpus shows) and compare them with the stored vectors; returns the largest relative difference."""
    n = len(store)
    rows = np.unique(np.linspace(0, n - 1, min(sample, n)).round().astype(np.int64))
    stored = index.reconstruct_batch(rows)  # HNSWFlat reconstructs from its flat storage
    ours = encoder.encode_passages([store.get(int(r))["contents"] for r in rows])
    err = np.linalg.norm(ours - stored, axis=1) / np.maximum(np.linalg.norm(stored, axis=1), 1e-12)
    bad = err > REL_TOL
    if bad.any():
        worst = int(np.argmax(err))
        keys = ("name_or_path", "pooling", "passage_prefix", "max_length", "normalize")
        now = ", ".join(f"{k}={getattr(encoder.cfg, k)!r}" for k in keys)
        unit_stored, unit_ours = (bool(np.all(np.abs(np.linalg.norm(v, axis=1) - 1) < 1e-2)) for v in (stored, ours))
        hint = ""
        if unit_stored != unit_ours:
            hint = (f" The stored vectors are{'' if unit_stored else ' not'} unit length: "
                    f"set retrieval.encoder.normalize={unit_stored}.")
        row = int(rows[worst])
        raise ConfigError(
            f"{where}: {int(bad.sum())} of {len(rows)} sampled passages differ from their stored vectors (worst: "
            f"passage {row}, id {store.get(row)['id']!r}: relative difference {err[worst]:.3f} > {REL_TOL}). "
            f"Either the index was encoded with other retrieval.encoder settings than {now}, or its rows are not this "
            f"corpus's lines in order. Search-R1's e5 files: {SEARCH_R1_E5}.{hint}"
        )
    return float(err.max())


def _link(src: Path, dst: Path) -> str:
    """Put ``src`` at ``dst`` without copying it: a hard link (the download may then be deleted), else a symlink."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
            how = "hardlink"
        except OSError:  # another filesystem, or hard links not allowed here
            os.symlink(src, tmp)
            how = "symlink"
    return how


def adopt_prebuilt(store: DocStore, dense_dir: str | Path, enc_cfg: EncoderConfig, faiss_cfg: FaissConfig) -> dict:
    """Check ``faiss_cfg.prebuilt_index`` against the settings and corpus, then make it ``dense_dir``'s index.

    Every check runs before ``dense_dir`` is touched, so a failed one leaves whatever was there as it was.
    """
    t0 = time.time()
    src = Path(faiss_cfg.prebuilt_index).resolve()
    where = f"{SETTING}={faiss_cfg.prebuilt_index}"
    if not src.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    index = faiss.read_index(str(src), faiss.IO_FLAG_MMAP_IFC)  # mapped, not read into RAM
    _check_layout(index, where, faiss_cfg, len(store), store.meta["corpus_path"])
    encoder = Encoder(enc_cfg)
    if index.d != encoder.dim:
        raise ConfigError(f"{where} holds {index.d}-d vectors but retrieval.encoder.name_or_path="
                          f"{enc_cfg.name_or_path!r} gives {encoder.dim}-d ones: use the encoder the index was built "
                          f"with (Search-R1's e5 files: {SEARCH_R1_E5})")
    sample = faiss_cfg.prebuilt_check_passages
    max_diff = _check_vectors(index, where, store, encoder, sample) if sample else None

    dense_dir = Path(dense_dir)
    (dense_dir / "meta.json").unlink(missing_ok=True)  # an interrupted adoption must not look complete
    # An earlier build's embedding shards do not hold this index's vectors: update.py must not extend it from them.
    shutil.rmtree(dense_dir / "shards", ignore_errors=True)
    how = _link(src, dense_dir / "index.faiss")
    seconds = time.time() - t0
    prebuilt = {"path": str(src), "link": how, "bytes": src.stat().st_size,
                "checked_passages": min(sample, len(store)), "max_relative_difference": max_diff}
    write_json(dense_dir / "meta.json", {**dense_meta(store, enc_cfg, faiss_cfg, index, seconds), "prebuilt": prebuilt})
    return {"count": index.ntotal, "seconds": seconds, "prebuilt": True, "link": how,
            "checked_passages": prebuilt["checked_passages"], "max_relative_difference": max_diff}


def holds_prebuilt(meta: dict, dense_dir: str | Path, faiss_cfg: FaissConfig) -> bool:
    """Whether ``dense_dir`` already holds the file ``faiss_cfg.prebuilt_index`` names. True when none is named:
    an adopted index was checked to hold the encoder's vectors, so it stays when the setting is dropped."""
    if faiss_cfg.prebuilt_index is None:
        return True
    src = Path(faiss_cfg.prebuilt_index).resolve()
    if meta.get("prebuilt", {}).get("path") != str(src):
        return False
    # a new file at the same path (a fresh download) is adopted again; a deleted one was hard-linked and stays
    return not src.exists() or os.path.samefile(src, Path(dense_dir) / "index.faiss")
