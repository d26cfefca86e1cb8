"""HTTP retrieval server speaking Search-R1's protocol (``POST /retrieve``), with cross-request
micro-batching, query dedup and an LRU cache in front of one retriever.

Concurrent requests wait up to ``batch_window_ms`` in an asyncio queue; their cache misses are
deduplicated and sent to the retriever as one batch in a worker thread (the encoder dominates cost,
so one batch of 64 is far cheaper than 64 batches of 1). Requests that arrive while a batch runs
join the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import resource
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from searchr1.config import RetrievalConfig, ServerConfig
from searchr1.retrieval.base import Doc, Retriever


class QueryRequest(BaseModel):
    """Search-R1's request body."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class LRUCache:
    def __init__(self, size: int):
        self.size, self.data, self.hits, self.misses = size, OrderedDict(), 0, 0

    def get(self, key):
        value = self.data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


class Batcher:
    """Collects concurrent requests and answers them with one deduplicated retriever call."""

    def __init__(self, retriever: Retriever, window_ms: float, cache_size: int):
        self.retriever, self.window_s = retriever, window_ms / 1000.0
        self.cache = LRUCache(cache_size)
        self.calls = 0  # retriever.search calls (exposed in /health; tests count them)
        self.queries = 0  # queries sent to the retriever after dedup and cache
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, queries: list[str], topk: int) -> list[list[Doc]]:
        if self.task is None or self.task.done():  # started lazily inside the server's event loop
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._run())
        results: list = [self.cache.get((q, topk)) for q in queries]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fut = asyncio.get_running_loop().create_future()
            await self.queue.put(([queries[i] for i in missing], topk, fut))
            for i, docs in zip(missing, await fut):
                results[i] = docs
        return results

    async def _collect(self) -> list[tuple]:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        deadline = loop.time() + self.window_s
        while (left := deadline - loop.time()) > 0:
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            unique = list(dict.fromkeys(q for queries, _, _ in items for q in queries))
            k = max(topk for _, topk, _ in items)
            try:
                self.calls += 1
                self.queries += len(unique)
                found = dict(zip(unique, await asyncio.to_thread(self.retriever.search, unique, k)))
            except Exception as exc:  # the requests fail with 500, the server keeps serving
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for queries, topk, fut in items:
                answer = [found[q][:topk] for q in queries]
                for q, docs in zip(queries, answer):
                    self.cache.put((q, topk), docs)
                if not fut.done():
                    fut.set_result(answer)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would include the parent's peak from before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _doc_json(doc: Doc, with_score: bool) -> dict:
    body = {"id": doc.id, "contents": doc.contents}
    return {"document": body, "score": doc.score} if with_score else body


def create_app(retriever: Retriever, cfg: ServerConfig, default_topk: int = 3, info: dict | None = None) -> FastAPI:
    """FastAPI app serving ``retriever``: ``POST /retrieve`` (Search-R1 shapes) and ``GET /health``."""
    app = FastAPI(title="searchr1 retrieval")
    batcher = Batcher(retriever, cfg.batch_window_ms, cfg.cache_size)
    app.state.batcher = batcher
    expected_auth = f"Bearer {cfg.token}" if cfg.token else None

    def check(req: QueryRequest, request: Request) -> int:
        if expected_auth and not hmac.compare_digest(request.headers.get("authorization", ""), expected_auth):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not req.queries:
            raise HTTPException(400, "queries is empty")
        if len(req.queries) > cfg.max_queries_per_request:
            raise HTTPException(413, f"{len(req.queries)} queries > max_queries_per_request={cfg.max_queries_per_request}")
        longest = max(len(q) for q in req.queries)
        if longest > cfg.max_query_chars:
            raise HTTPException(413, f"a query has {longest} chars > max_query_chars={cfg.max_query_chars}")
        topk = default_topk if req.topk is None else req.topk
        if not 1 <= topk <= cfg.max_topk:
            raise HTTPException(400, f"topk={topk} outside [1, max_topk={cfg.max_topk}]")
        return topk

    @app.post("/retrieve")
    async def retrieve(req: QueryRequest, request: Request) -> JSONResponse:
        topk = check(req, request)
        try:
            results = await batcher.submit(req.queries, topk)
        except Exception as exc:
            raise HTTPException(500, f"retrieval failed: {type(exc).__name__}: {exc}") from exc
        body = [[_doc_json(d, req.return_scores) for d in docs] for docs in results]
        return JSONResponse({"result": body})

    @app.get("/health")
    async def health() -> dict:
        c = batcher.cache
        return {
            "status": "ok", "retriever": type(retriever).__name__, "index": info or {},
            "searches": batcher.calls, "searched_queries": batcher.queries,
            "cache": {"entries": len(c.data), "hits": c.hits, "misses": c.misses},
            "peak_rss_mb": peak_rss_mb(),
        }

    return app


def index_info(cfg: RetrievalConfig) -> dict:
    """What /health reports about the served indexes (their meta.json files)."""
    root = Path(cfg.index_dir)
    info: dict = {"method": cfg.method, "index_dir": str(root)}
    for name in ("bm25", "dense"):
        meta = root / name / "meta.json"
        if meta.exists():
            info[name] = json.loads(meta.read_text())
    return info


def serve(cfg: RetrievalConfig, corpus_path: str | Path | None = None) -> None:
    """Load the in-process retriever for ``cfg`` and serve it with uvicorn (blocks)."""
    import uvicorn

    from searchr1.retrieval import load_retriever

    local = cfg.model_copy(update={"server": cfg.server.model_copy(update={"url": None})})
    retriever = load_retriever(local, corpus_path)
    app = create_app(retriever, cfg.server, default_topk=cfg.topk, info=index_info(cfg))
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a searchr1 retriever over HTTP.")
    parser.add_argument("--config-json", required=True, help="RetrievalConfig as JSON")
    parser.add_argument("--corpus", default=None, help="corpus jsonl to verify the indexes against")
    args = parser.parse_args()
    serve(RetrievalConfig.model_validate_json(args.config_json), args.corpus)


if __name__ == "__main__":
    main()
