"""Adopting a FAISS file in the layout of Search-R1's index_builder.py (Flat / HNSW64, inner product, one e5-style
vector per corpus line): the same top-3 as a Search-R1-style search over the same file, in process and served;
checks that name the setting to fix; nothing half-written; linked, not copied."""

from __future__ import annotations

import json
import os

import faiss
import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from searchr1.config import ConfigError, RetrievalConfig
from searchr1.retrieval import load_retriever
from searchr1.retrieval.build import build_indexes
from searchr1.retrieval.process import running_server
from searchr1.retrieval.synthetic import write_synthetic_corpus

N = 300  # passages, and one query per passage


# --- Search-R1's side, written here from its index_builder.py / retrieval_server.py (not imported) ---------


def _sr1_encode(model_path: str, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Their Encoder: batches in input order, max_length 256, masked mean pooling, L2 normalisation."""
    tok, model = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            inputs = tok(texts[s : s + batch_size], max_length=256, padding=True, truncation=True, return_tensors="pt")
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"]
            emb = hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(1) / mask.sum(1)[..., None]
            out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def _sr1_write(path, vectors: np.ndarray, faiss_type: str, metric=faiss.METRIC_INNER_PRODUCT) -> str:
    index = faiss.index_factory(vectors.shape[1], faiss_type, metric)
    index.add(vectors)
    faiss.write_index(index, str(path))
    return str(path)


def _sr1_search(index_path: str, lines: list[str], model_path: str, queries: list[str], k: int = 3):
    """Their DenseRetriever: the file as stored (its efSearch too), "query: " prefix, rows looked up by line."""
    index = faiss.read_index(index_path)
    scores, ids = index.search(_sr1_encode(model_path, [f"query: {q}" for q in queries]), k)
    return [[json.loads(lines[i]) for i in row] for row in ids], scores


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wiki(tmp_path_factory, tiny_encoder):
    """A wiki-18-shaped corpus ({"id", "contents": "\\"Title\\"\\ntext"}), its queries, its e5-style passage vectors."""
    d = tmp_path_factory.mktemp("wiki")
    queries = [q for q, _ in write_synthetic_corpus(d / "wiki.jsonl", N, seed=2)]
    lines = (d / "wiki.jsonl").read_text().splitlines()
    vectors = _sr1_encode(tiny_encoder, [f"passage: {json.loads(line)['contents']}" for line in lines])
    return d / "wiki.jsonl", lines, queries, vectors


def _cfg(tmp_path, tiny_encoder, prebuilt, **faiss_cfg) -> RetrievalConfig:
    encoder = {"name_or_path": tiny_encoder, "pooling": "mean", "normalize": True, "query_prefix": "query: ",
               "passage_prefix": "passage: ", "max_length": 256, "backend": "torch"}
    return RetrievalConfig(index_dir=str(tmp_path / "idx"), method="dense", build=["dense"], encoder=encoder,
                           faiss={"prebuilt_index": str(prebuilt), **faiss_cfg})


# --- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("faiss_type, settings", [("Flat", {"type": "flat"}),
                                                  ("HNSW64", {"type": "hnsw", "hnsw_m": 64, "hnsw_ef_search": 16})])
def test_adopted_index_gives_search_r1s_top3_without_encoding_the_corpus(faiss_type, settings, wiki, tiny_encoder,
                                                                         tmp_path):
    path, lines, queries, vectors = wiki
    index_file = _sr1_write(tmp_path / f"e5_{faiss_type}.index", vectors, faiss_type)
    cfg = _cfg(tmp_path, tiny_encoder, index_file, **settings)  # hnsw_ef_search 16: faiss's default, stored in the file

    stats = build_indexes(cfg, path)["dense"]
    assert stats["prebuilt"] and stats["count"] == N and stats["max_relative_difference"] < 1e-5
    assert not (tmp_path / "idx" / "dense" / "shards").exists()  # nothing was encoded but the 64 sampled passages

    want, want_scores = _sr1_search(index_file, lines, tiny_encoder, queries)
    got = load_retriever(cfg, path).search(queries, 3)
    assert [[d.id for d in docs] for docs in got] == [[r["id"] for r in rows] for rows in want]
    assert [[d.contents for d in docs] for docs in got] == [[r["contents"] for r in rows] for rows in want]
    np.testing.assert_allclose([[d.score for d in docs] for docs in got], want_scores, atol=1e-5)


def test_adopted_index_is_served_with_search_r1s_top3(wiki, tiny_encoder, tmp_path):
    path, lines, queries, vectors = wiki
    index_file = _sr1_write(tmp_path / "e5_Flat.index", vectors, "Flat")
    cfg = _cfg(tmp_path, tiny_encoder, index_file)
    build_indexes(cfg, path)
    want, _ = _sr1_search(index_file, lines, tiny_encoder, queries)
    with running_server(cfg, path, port=0) as url:
        body = httpx.post(f"{url}/retrieve", json={"queries": queries, "topk": 3}, timeout=60).json()
        health = httpx.get(f"{url}/health").json()
    assert body["result"] == [[{"id": r["id"], "contents": r["contents"]} for r in rows] for rows in want]
    assert health["index"]["dense"]["prebuilt"]["path"] == str(tmp_path / "e5_Flat.index")


def _wrong_files(tmp_path, vectors: np.ndarray, tiny_encoder: str, lines: list[str]) -> dict:
    rng = np.random.default_rng(0)
    unprefixed = _sr1_encode(tiny_encoder, [json.loads(line)["contents"] for line in lines])
    return {
        "prefix": (_sr1_write(tmp_path / "a.index", unprefixed, "Flat"),
                   r"300 of 300 sampled passages differ .*passage_prefix='passage: '"),
        "dimension": (_sr1_write(tmp_path / "b.index", rng.standard_normal((N, 16)).astype(np.float32), "Flat"),
                      r"holds 16-d vectors but retrieval.encoder.name_or_path=.* gives 32-d"),
        "count": (_sr1_write(tmp_path / "c.index", vectors[:-1], "Flat"),
                  r"holds 299 vectors but the corpus .*wiki.jsonl has 300 passages.*corpus.max_passages"),
        "metric": (_sr1_write(tmp_path / "d.index", vectors, "Flat", faiss.METRIC_L2),
                   r"uses faiss METRIC_L2, not METRIC_INNER_PRODUCT"),
        "type": (_sr1_write(tmp_path / "e.index", vectors, "HNSW64"),
                 r": a faiss IndexHNSWFlat, but the settings say retrieval.faiss.type=flat: set "
                 r"retrieval.faiss.type=hnsw retrieval.faiss.hnsw_m=64"),
        "order": (_sr1_write(tmp_path / "f.index", vectors[::-1].copy(), "Flat"), r"rows are not this corpus's lines"),
    }


def test_a_file_that_does_not_match_the_settings_is_refused_naming_the_setting_and_nothing_is_written(
        wiki, tiny_encoder, tmp_path):
    path, lines, _, vectors = wiki
    for name, (index_file, message) in _wrong_files(tmp_path, vectors, tiny_encoder, lines).items():
        cfg = _cfg(tmp_path, tiny_encoder, index_file, prebuilt_check_passages=N)
        with pytest.raises(ConfigError, match=r"retrieval.faiss.prebuilt_index=.*" + message):
            build_indexes(cfg, path)
        dense = tmp_path / "idx" / "dense"
        assert not dense.exists() or not any(dense.iterdir()), name  # no index.faiss, no meta.json, no temporaries
    with pytest.raises(FileNotFoundError, match=r"retrieval.faiss.prebuilt_index=.*missing.index: no such file"):
        build_indexes(_cfg(tmp_path, tiny_encoder, tmp_path / "missing.index"), path)


def test_a_refused_file_leaves_the_adopted_index_as_it_was(wiki, tiny_encoder, tmp_path):
    path, lines, queries, vectors = wiki
    good = _cfg(tmp_path, tiny_encoder, _sr1_write(tmp_path / "good.index", vectors, "Flat"))
    build_indexes(good, path)
    dense = tmp_path / "idx" / "dense"
    before = {p.name: p.read_bytes() for p in dense.iterdir()}
    bad = _cfg(tmp_path, tiny_encoder, _sr1_write(tmp_path / "bad.index", vectors[:-1], "Flat"))
    with pytest.raises(ConfigError, match="holds 299 vectors"):
        build_indexes(bad, path)
    assert {p.name: p.read_bytes() for p in dense.iterdir()} == before
    assert len(load_retriever(good, path).search(queries[:3], 3)[2]) == 3


def test_the_file_is_linked_not_copied_and_adopted_once(wiki, tiny_encoder, tmp_path, monkeypatch):
    path, _, _, vectors = wiki
    index_file = _sr1_write(tmp_path / "e5_Flat.index", vectors, "Flat")
    cfg = _cfg(tmp_path, tiny_encoder, index_file)
    adopted = tmp_path / "idx" / "dense" / "index.faiss"
    (adopted.parent / "shards").mkdir(parents=True)  # an earlier, interrupted build's: not this index's vectors
    assert build_indexes(cfg, path)["dense"]["link"] == "hardlink" and os.path.samefile(adopted, index_file)
    assert not (adopted.parent / "shards").exists()
    assert build_indexes(cfg, path)["dense"]["skipped"]
    no_setting = cfg.model_copy(update={"faiss": cfg.faiss.model_copy(update={"prebuilt_index": None})})
    assert build_indexes(no_setting, path)["dense"]["skipped"]  # kept, not re-encoded, when the setting is dropped

    os.unlink(index_file)  # a fresh download at the same path is adopted again; across filesystems, by symlink
    _sr1_write(index_file, vectors, "Flat")

    def no_hard_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_hard_links)
    stats = build_indexes(cfg, path)["dense"]
    assert not stats["skipped"] and stats["link"] == "symlink" and adopted.is_symlink()
    assert os.path.samefile(adopted, index_file)


def test_no_sample_check_when_prebuilt_check_passages_is_0(wiki, tiny_encoder, tmp_path):
    path, lines, _, vectors = wiki
    reversed_rows = _sr1_write(tmp_path / "a.index", vectors[::-1].copy(), "Flat")  # would fail the check
    stats = build_indexes(_cfg(tmp_path, tiny_encoder, reversed_rows, prebuilt_check_passages=0), path)["dense"]
    assert stats["checked_passages"] == 0 and stats["max_relative_difference"] is None
