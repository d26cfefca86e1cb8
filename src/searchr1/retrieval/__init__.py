"""Retrieval: BM25 / dense (FAISS) / hybrid retrievers, their index build, an HTTP server and client, and web search."""

from __future__ import annotations

from pathlib import Path

from searchr1.config import RetrievalConfig
from searchr1.retrieval.base import Doc, RetrievalError, Retriever, bearer_token


def load_retriever(cfg: RetrievalConfig, corpus_path: str | Path | None = None) -> Retriever:
    """An HTTP client when ``cfg.server.url`` is set, else the in-process ``cfg.method`` retriever (web: a search API).

    With ``corpus_path`` the indexes are checked to come from that corpus (sha256).
    With ``retrieval.rerank.name_or_path`` set, a cross-encoder reranks the in-process retriever's candidates.
    """
    if cfg.server.url:
        from searchr1.retrieval.client import RetrievalClient

        s = cfg.server
        return RetrievalClient(s.url, topk=cfg.topk, timeout_s=s.timeout_s, retries=s.retries, token=bearer_token(s.token_file))
    retriever = _in_process(cfg, corpus_path)
    if cfg.rerank.name_or_path:  # where the index is: with server.url set, the server reranks
        from searchr1.retrieval.rerank import CrossEncoderReranker, RerankingRetriever

        retriever = RerankingRetriever(retriever, CrossEncoderReranker(cfg.rerank), cfg.rerank.top_n)
    return retriever


def _in_process(cfg: RetrievalConfig, corpus_path: str | Path | None) -> Retriever:
    if cfg.method == "web":  # a web search API: no index to load, no corpus to check against
        from searchr1.retrieval.web import WebRetriever

        return WebRetriever(cfg.web)

    from searchr1.retrieval.docstore import DocStore

    root = Path(cfg.index_dir)
    store = DocStore(root / "docstore")
    store.check_corpus(corpus_path)
    if cfg.method == "bm25":
        from searchr1.retrieval.bm25 import BM25Retriever

        return BM25Retriever(root / "bm25", store)
    from searchr1.retrieval.dense import DenseRetriever

    dense = DenseRetriever(root / "dense", store, cfg.encoder, cfg.faiss)
    if cfg.method == "dense":
        return dense
    from searchr1.retrieval.bm25 import BM25Retriever
    from searchr1.retrieval.hybrid import HybridRetriever

    return HybridRetriever(BM25Retriever(root / "bm25", store), dense, rrf_k=cfg.rrf_k)


__all__ = ["Doc", "RetrievalError", "Retriever", "load_retriever"]
