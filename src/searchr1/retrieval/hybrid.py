"""Hybrid retrieval: reciprocal-rank fusion (RRF) of BM25 and dense rankings."""

from __future__ import annotations

from searchr1.retrieval.base import Doc
from searchr1.retrieval.bm25 import BM25Retriever
from searchr1.retrieval.dense import DenseRetriever


def rrf_fuse(rankings: list[list[int]], k: int, topk: int) -> list[tuple[int, float]]:
    """Score each id by sum(1 / (k + rank)) over the rankings it appears in (rank from 1)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:topk]


class HybridRetriever:
    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever, rrf_k: int = 60, depth: int = 20):
        self.bm25, self.dense, self.rrf_k, self.depth = bm25, dense, rrf_k, depth

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        # Fuse deeper lists than topk so a passage ranked 4th by both can beat one ranked 1st by one.
        depth = max(topk, self.depth)
        sparse = self.bm25.scored_ids(queries, depth)
        dense = self.dense.scored_ids(queries, depth)
        out = []
        for s, d in zip(sparse, dense):
            fused = rrf_fuse([[i for i, _ in s], [i for i, _ in d]], self.rrf_k, topk)
            out.append([Doc(score=score, **self.dense.store.get(i)) for i, score in fused])
        return out
