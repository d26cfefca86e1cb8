"""Incremental index update: added passages become retrievable, deleted ones vanish, unchanged ones are
never re-encoded, the result equals a full rebuild, and a failed update leaves the old indexes whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from searchr1.config import CorpusConfig, RetrievalConfig
from searchr1.data.refresh import apply_corpus_refresh
from searchr1.retrieval import load_retriever
from searchr1.retrieval.build import build_indexes
from searchr1.retrieval.encoder import Encoder
from searchr1.retrieval.synthetic import write_synthetic_corpus
from searchr1.retrieval.update import update_indexes
from searchr1.tracking import path_hash

NEW = '"Zorblat Quennis"\nZorblat Quennis is a lighthouse keeper from Quenth who collected amber lenses.'
CHANGED = '"Changed passage"\nThis passage was rewritten: the guild moved to Marrowby in 1911.'


def _setup(tmp_path, encoder, **faiss):
    corpus = tmp_path / "corpus.jsonl"
    write_synthetic_corpus(corpus, 150, seed=2)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "idx"), method="dense", build=["bm25", "dense"],
                          encoder={"name_or_path": encoder, "batch_size": 64}, faiss={"shard_size": 32, **faiss})
    build_indexes(cfg, corpus)
    return cfg, CorpusConfig(out_path=str(corpus), stats_path=str(tmp_path / "stats.json"))


@pytest.fixture
def count_encoded(monkeypatch):
    encoded: list[str] = []
    original = Encoder.encode_passages

    def spy(self, texts, progress=False):
        encoded.extend(texts)
        return original(self, texts, progress)

    monkeypatch.setattr(Encoder, "encode_passages", spy)
    return encoded


def _contents(corpus_cfg, pid):
    rows = [json.loads(line) for line in open(corpus_cfg.out_path)]
    return next(r["contents"] for r in rows if r["id"] == pid)


def test_flat_update_encodes_only_new_text_and_matches_full_rebuild(tiny_encoder, tmp_path, count_encoded):
    cfg, ccfg = _setup(tmp_path, tiny_encoder)
    gone = _contents(ccfg, "7")
    counts = apply_corpus_refresh(ccfg, {"new-1": NEW, "3": CHANGED}, ["7", "40"])
    assert counts["added"] == 1 and counts["changed"] == 1 and counts["deleted"] == 2

    count_encoded.clear()
    stats = update_indexes(cfg, ccfg.out_path)
    assert stats["dense"]["mode"] == "remove+add"
    assert sorted(count_encoded) == sorted([NEW, CHANGED])  # 147 unchanged passages not re-encoded
    assert stats["dense"]["count"] == stats["bm25"]["count"] == 149

    for method in ("dense", "bm25"):
        r = load_retriever(cfg.model_copy(update={"method": method}), ccfg.out_path)
        top = r.search([NEW, CHANGED, gone], 3)
        assert top[0][0].id == "new-1" and top[0][0].contents == NEW
        assert top[1][0].id == "3" and top[1][0].contents == CHANGED
        assert all(d.id != "7" for d in top[2])

    # The updated index holds exactly the vectors a from-scratch build makes.
    import faiss

    full = cfg.model_copy(update={"index_dir": str(tmp_path / "full")})
    build_indexes(full, ccfg.out_path)
    a = faiss.read_index(str(tmp_path / "idx/dense/index.faiss"))
    b = faiss.read_index(str(tmp_path / "full/dense/index.faiss"))
    np.testing.assert_allclose(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal), atol=1e-5)

    count_encoded.clear()
    again = update_indexes(cfg, ccfg.out_path)  # nothing changed: nothing done
    assert again["dense"]["skipped"] and again["bm25"]["skipped"] and count_encoded == []


def test_append_only_refresh_extends_index_in_place(tiny_encoder, tmp_path, count_encoded):
    cfg, ccfg = _setup(tmp_path, tiny_encoder, type="hnsw")
    apply_corpus_refresh(ccfg, {"new-1": NEW}, [])
    count_encoded.clear()
    stats = update_indexes(cfg, ccfg.out_path)
    assert stats["dense"]["mode"] == "append" and count_encoded == [NEW]
    assert load_retriever(cfg, ccfg.out_path).search([NEW], 1)[0][0].id == "new-1"


def test_hnsw_deletion_rebuilds_from_kept_embeddings_without_reencoding(tiny_encoder, tmp_path, count_encoded):
    cfg, ccfg = _setup(tmp_path, tiny_encoder, type="hnsw")
    gone = _contents(ccfg, "12")
    apply_corpus_refresh(ccfg, {}, ["12"])
    count_encoded.clear()
    stats = update_indexes(cfg, ccfg.out_path)
    assert stats["dense"]["mode"] == "rebuild" and count_encoded == []
    assert stats["dense"]["count"] == 149
    assert all(d.id != "12" for d in load_retriever(cfg, ccfg.out_path).search([gone], 5)[0])


def test_failed_update_leaves_old_indexes_whole(tiny_encoder, tmp_path, monkeypatch):
    import faiss

    cfg, ccfg = _setup(tmp_path, tiny_encoder)
    before = path_hash(tmp_path / "idx")
    apply_corpus_refresh(ccfg, {"new-1": NEW}, ["7"])

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="No space"):
        update_indexes(cfg, ccfg.out_path)
    assert path_hash(tmp_path / "idx") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx")]  # no staging left behind
