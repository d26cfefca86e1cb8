"""Retrieve-then-rerank: a cross-encoder scores (query, passage) pairs and reorders a retriever's top_n
candidates, keeping the best topk (Search-R1's rerank_server.py and retrieval_rerank_server.py)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from searchr1.config import RerankConfig
from searchr1.retrieval.base import Doc, RetrievalError, Retriever
from searchr1.retrieval.server import LRUCache


def passage_text(contents: str) -> str:
    """A passage as Search-R1's reranker shows it to the cross-encoder: ``(Title: <first line>) <rest>``
    (the same input text, so the same scores as theirs for the same model)."""
    title, _, text = contents.partition("\n")
    return f"(Title: {title}) {text}"


class CrossEncoderReranker:
    """A cross-encoder (an HF sequence classifier with one output) as a relevance scorer of (query, passage)."""

    def __init__(self, cfg: RerankConfig, device: str | None = None):
        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(cfg.name_or_path, dtype=dtype)
        except OSError as exc:
            raise RetrievalError(f"retrieval.rerank.name_or_path={cfg.name_or_path!r}: no cross-encoder there: {exc}") from exc
        if model.config.num_labels != 1:
            raise RetrievalError(
                f"retrieval.rerank.name_or_path={cfg.name_or_path!r} has {model.config.num_labels} outputs; a "
                "cross-encoder reranker has one relevance logit (num_labels=1), like cross-encoder/ms-marco-*"
            )
        self.model = model.to(self.device).eval()
        self.cache = LRUCache(cfg.cache_size)  # (query, contents) -> score: GRPO asks each question num_generations times
        self.lock = threading.Lock()  # the server's batching worker and its /rerank share one model and cache

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The relevance logit of each (query, passage contents) pair; higher is more relevant."""
        with self.lock:
            cached = [self.cache.get(pair) for pair in pairs]
            todo = list(dict.fromkeys(pair for pair, s in zip(pairs, cached) if s is None))
            found = dict(zip(todo, self._forward(todo)))
            for pair, s in found.items():
                self.cache.put(pair, s)
            return [found[pair] if s is None else s for pair, s in zip(pairs, cached)]

    @torch.inference_mode()
    def _forward(self, pairs: list[tuple[str, str]]) -> list[float]:
        out = np.empty(len(pairs), dtype=np.float32)
        # Longest first so each batch pads to similar lengths; scattered back by index.
        order = np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")
        for start in range(0, len(pairs), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            batch = self.tokenizer(
                [pairs[i][0] for i in idx], [passage_text(pairs[i][1]) for i in idx],
                max_length=self.cfg.max_length, padding=True, truncation=True, return_tensors="pt",
            ).to(self.device)
            out[idx] = self.model(**batch).logits[:, 0].float().cpu().numpy()
        return out.tolist()

    def rerank(self, queries: list[str], candidates: list[list[Doc]], topk: int) -> list[list[Doc]]:
        """Each query's candidates sorted by cross-encoder score (ties keep their order), the best ``topk``,
        with the score in ``Doc.score``."""
        scores = iter(self.score([(q, d.contents) for q, docs in zip(queries, candidates) for d in docs]))
        out = []
        for docs in candidates:
            scored = [replace(d, score=next(scores)) for d in docs]
            out.append(sorted(scored, key=lambda d: -d.score)[:topk])
        return out


class RerankingRetriever:
    """``retriever``'s ``top_n`` candidates per query, reordered by ``reranker``: a Retriever like any other."""

    def __init__(self, retriever: Retriever, reranker: CrossEncoderReranker, top_n: int):
        self.retriever, self.reranker, self.top_n = retriever, reranker, top_n

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        # Not "rerank max(top_n, topk)": the server answers a batch with its largest topk and slices, so a
        # topk=3 answer would then depend on which requests shared its batch (and the cache would keep it).
        if topk > self.top_n:
            raise RetrievalError(f"topk={topk} > retrieval.rerank.top_n={self.top_n}: the reranker sees only top_n candidates")
        return self.reranker.rerank(queries, self.retriever.search(queries, self.top_n), topk)
