"""BM25 over the docstore with bm25s: batched retrieval of all queries at once, mmap-loaded index."""

from __future__ import annotations

import time
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

from searchr1.io import atomic_path, read_json, write_json
from searchr1.retrieval.base import Doc
from searchr1.retrieval.docstore import DocStore

STOPWORDS = "en"


def _backend(n_docs: int) -> str:
    # numba's JIT costs a few seconds once per process; it pays off only on large corpora.
    if n_docs < 200_000:
        return "numpy"
    try:
        import numba  # noqa: F401

        return "numba"
    except ImportError:
        return "numpy"


def build_bm25(store: DocStore, out_dir: str | Path) -> dict:
    """Tokenize the store as a stream (vocab grows on the fly) and write the index to ``out_dir``."""
    t0 = time.time()
    tokenizer = Tokenizer(stopwords=STOPWORDS)
    texts = (store.get(i)["contents"] for i in range(len(store)))
    tokens = tokenizer.tokenize(texts, length=len(store), update_vocab=True, return_as="tuple", show_progress=True)
    model = bm25s.BM25()
    model.index(tokens, show_progress=True)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.save(str(tmp), show_progress=False)
        tokenizer.save_vocab(str(tmp))
        tokenizer.save_stopwords(str(tmp))
        write_json(tmp / "meta.json", {
            "corpus": store.meta["corpus"], "count": len(store), "stopwords": STOPWORDS,
            "build_seconds": round(time.time() - t0, 3),
        })
    return {"count": len(store), "seconds": time.time() - t0}


class BM25Retriever:
    def __init__(self, index_dir: str | Path, store: DocStore):
        self.dir = Path(index_dir)
        if not (self.dir / "meta.json").exists():
            raise FileNotFoundError(f"{self.dir}: no BM25 index (run the index build first)")
        self.meta = read_json(self.dir / "meta.json")
        if self.meta["corpus"]["sha256"] != store.meta["corpus"]["sha256"]:
            raise ValueError(f"{self.dir}: BM25 index and docstore {store.dir} come from different corpora")
        self.store = store
        self.model = bm25s.BM25.load(str(self.dir), mmap=True, show_progress=False)
        self.tokenizer = Tokenizer(stopwords=STOPWORDS)
        self.tokenizer.load_vocab(str(self.dir))
        self.backend = _backend(len(store))

    def scored_ids(self, queries: list[str], topk: int) -> list[list[tuple[int, float]]]:
        """Row numbers and scores per query; queries sharing no term with the corpus get nothing."""
        if not queries:
            return []
        k = min(topk, len(self.store))
        ids = self.tokenizer.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        rows, scores = self.model.retrieve(
            ids, k=k, show_progress=False, backend_selection=self.backend, n_threads=-1
        )
        rows, scores = np.asarray(rows), np.asarray(scores)
        return [[(int(r), float(s)) for r, s in zip(rr, ss) if s > 0] for rr, ss in zip(rows, scores)]

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        return [
            [Doc(score=s, **self.store.get(r)) for r, s in hits] for hits in self.scored_ids(queries, topk)
        ]
