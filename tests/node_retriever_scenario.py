"""Run under ``torchrun --nproc_per_node 2`` by tests/test_retrieval_client.py: every rank takes the
training retriever (retrieval/process.py node_retriever), searches its own queries, and records what it
got, how many indexes it loaded in its own process, and (rank 0, after both searched) the server's count.
Writes ``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from searchr1 import distributed as dist
from searchr1.config import RetrievalConfig
from searchr1.retrieval import bm25
from searchr1.retrieval.process import node_retriever
from searchr1.rl.deepspeed_engines import init_distributed


def main(cfg_json: str, corpus: str, queries: list[str], out: Path) -> None:
    init_distributed()
    loads = []
    real_init = bm25.BM25Retriever.__init__

    def counted(self, *args, **kwargs):  # an index loaded in this rank's own process
        loads.append(1)
        real_init(self, *args, **kwargs)

    bm25.BM25Retriever.__init__ = counted
    cfg = RetrievalConfig.model_validate_json(cfg_json)
    rank = dist.rank()
    mine = queries[rank::2]
    with node_retriever(cfg, corpus) as retriever:
        docs = retriever.search(mine, 3)
        url = getattr(retriever, "url", None)
        dist.barrier()
        health = httpx.get(url.removesuffix("/retrieve") + "/health").json() if url and rank == 0 else None
    record = {"type": type(retriever).__name__, "url": url, "in_process_loads": len(loads),
              "top": [d[0].id for d in docs], "queries": mine, "health": health}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]))
