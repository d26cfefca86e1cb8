"""HTTP retrieval server speaking Search-R1's protocol (``POST /retrieve``), with cross-request
micro-batching, query dedup and an LRU cache in front of one retriever.

Concurrent requests wait up to ``batch_window_ms`` in an asyncio queue (unless they already hold
``batch_min_queries`` queries between them: a big request is a batch already); their cache misses are
deduplicated and sent to the retriever as one batch in a worker thread (the encoder dominates cost,
so one batch of 64 is far cheaper than 64 batches of 1). Requests that arrive while a batch runs
join the next one. If the batching worker dies, the requests of its batch fail with 500 and a new
worker takes over the same queue, so no waiting request is lost.

With ``retrieval.rerank`` set, the served retriever reranks (retrieval/rerank.py), so ``/retrieve`` is
reranked, batched and cached as above; ``POST /rerank`` takes Search-R1's rerank_server.py body (queries and
their candidates) and reorders them with the same cross-encoder.

Optional bearer-token auth (the token from ``$SEARCHR1_RETRIEVAL_TOKEN`` or ``server.token_file``) and a
per-client rate limit (``server.rate_limit_per_s``: 429 with Retry-After).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import resource
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from searchr1.config import RetrievalConfig, ServerConfig
from searchr1.retrieval.base import Doc, Retriever, bearer_token

log = logging.getLogger(__name__)


class QueryRequest(BaseModel):
    """Search-R1's request body."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class CandidateDoc(BaseModel):
    """A candidate as ``/retrieve`` returns it without scores; other keys (title, text) are ignored."""

    model_config = ConfigDict(coerce_numbers_to_str=True)
    id: str = ""
    contents: str


class ScoredCandidateDoc(BaseModel):
    """A candidate as ``/retrieve`` returns it with scores (the score is replaced)."""

    document: CandidateDoc
    score: float | None = None


class RerankRequest(BaseModel):
    """Search-R1's rerank_server.py body: ``documents[i]`` are the candidates of ``queries[i]``."""

    queries: list[str]
    documents: list[list[ScoredCandidateDoc | CandidateDoc]]
    rerank_topk: int | None = None
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


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, time)

    def wait_s(self, client: str) -> float:
        """0 when ``client`` may send now (a token is taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Batcher:
    """Collects concurrent requests and answers them with one deduplicated retriever call."""

    def __init__(self, retriever: Retriever, window_ms: float, cache_size: int, min_queries: int = 16):
        self.retriever, self.window_s, self.min_queries = retriever, window_ms / 1000.0, min_queries
        self.cache = LRUCache(cache_size)
        self.calls = 0  # retriever.search calls (exposed in /health; tests count them)
        self.queries = 0  # queries sent to the retriever after dedup and cache
        self.restarts = 0  # batching workers that died and were replaced
        self.queue: asyncio.Queue | None = None  # one queue for the server's life: it outlives any worker
        self.task: asyncio.Task | None = None

    def _ensure_worker(self) -> None:
        if self.queue is None:  # created lazily inside the server's event loop
            self.queue = asyncio.Queue()
        if self.task is None or self.task.done():
            if self.task is not None:
                self.restarts += 1
                log.warning("retrieval batching worker had stopped (%d restarts): started a new one", self.restarts)
            self.task = asyncio.create_task(self._run())
            self.task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task) -> None:
        # A worker only ends by dying. Requests still queued must not wait for the next arrival.
        if self.queue is not None and not self.queue.empty():
            self._ensure_worker()

    async def submit(self, queries: list[str], topk: int) -> list[list[Doc]]:
        self._ensure_worker()
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
        try:
            deadline = loop.time() + self.window_s
            while sum(len(item[0]) for item in items) < self.min_queries and (left := deadline - loop.time()) > 0:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
        except BaseException:  # stopped while gathering: give the requests back to the next worker
            for item in items:
                self.queue.put_nowait(item)
            raise
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            try:
                await self._answer(items)
            except BaseException as exc:  # this batch's requests fail (500); the server keeps serving
                failure = exc if isinstance(exc, Exception) else RuntimeError("retrieval worker stopped")
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(failure)
                if not isinstance(exc, Exception):  # cancelled or killed: this worker ends, another takes over
                    raise

    async def _answer(self, items: list[tuple]) -> None:
        unique = list(dict.fromkeys(q for queries, _, _ in items for q in queries))
        k = max(topk for _, topk, _ in items)
        self.calls += 1
        self.queries += len(unique)
        found = dict(zip(unique, await asyncio.to_thread(self.retriever.search, unique, k)))
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


def _candidate(item: ScoredCandidateDoc | CandidateDoc) -> Doc:
    doc = item.document if isinstance(item, ScoredCandidateDoc) else item
    return Doc(id=doc.id, contents=doc.contents)


def create_app(retriever: Retriever, cfg: ServerConfig, default_topk: int = 3, info: dict | None = None,
               token: str | None = None) -> FastAPI:
    """FastAPI app serving ``retriever``: ``POST /retrieve`` (Search-R1 shapes), ``POST /rerank`` (Search-R1's
    rerank server; 404 unless ``retriever`` reranks) and ``GET /health``; ``token``: the bearer token requests
    must carry (None: no auth)."""
    app = FastAPI(title="searchr1 retrieval")
    batcher = Batcher(retriever, cfg.batch_window_ms, cfg.cache_size, cfg.batch_min_queries)
    limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)
    app.state.batcher = batcher
    expected_auth = f"Bearer {token}" if token else None
    reranker = getattr(retriever, "reranker", None)  # a RerankingRetriever's cross-encoder also serves /rerank

    def check(queries: list[str], topk: int | None, request: Request, field: str = "topk") -> int:
        if expected_auth and not hmac.compare_digest(request.headers.get("authorization", ""), expected_auth):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        wait = limiter.wait_s(request.client.host if request.client else "unknown")
        if wait > 0:
            raise HTTPException(
                429, f"rate limit of {cfg.rate_limit_per_s:g} requests/s per client exceeded",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if not queries:
            raise HTTPException(400, "queries is empty")
        if len(queries) > cfg.max_queries_per_request:
            raise HTTPException(413, f"{len(queries)} queries > max_queries_per_request={cfg.max_queries_per_request}")
        longest = max(len(q) for q in queries)
        if longest > cfg.max_query_chars:
            raise HTTPException(413, f"a query has {longest} chars > max_query_chars={cfg.max_query_chars}")
        topk = default_topk if topk is None else topk
        if not 1 <= topk <= cfg.max_topk:
            raise HTTPException(400, f"{field}={topk} outside [1, max_topk={cfg.max_topk}]")
        return topk

    @app.post("/retrieve")
    async def retrieve(req: QueryRequest, request: Request) -> JSONResponse:
        topk = check(req.queries, req.topk, request)
        if reranker is not None and topk > retriever.top_n:  # (RerankingRetriever.search would refuse it: a 500)
            raise HTTPException(400, f"topk={topk} > retrieval.rerank.top_n={retriever.top_n}, the candidates reranked")
        try:
            results = await batcher.submit(req.queries, topk)
        except Exception as exc:
            raise HTTPException(500, f"retrieval failed: {type(exc).__name__}: {exc}") from exc
        body = [[_doc_json(d, req.return_scores) for d in docs] for docs in results]
        return JSONResponse({"result": body})

    @app.post("/rerank")
    async def rerank(req: RerankRequest, request: Request) -> JSONResponse:
        if reranker is None:
            raise HTTPException(404, "this server has no reranker: set retrieval.rerank.name_or_path")
        topk = check(req.queries, req.rerank_topk, request, field="rerank_topk")
        if len(req.documents) != len(req.queries):
            raise HTTPException(400, f"documents has {len(req.documents)} candidate lists for {len(req.queries)} queries")
        most = max(len(docs) for docs in req.documents)
        if most > cfg.max_topk:
            raise HTTPException(413, f"documents: a query has {most} candidates > max_topk={cfg.max_topk}")
        candidates = [[_candidate(item) for item in docs] for docs in req.documents]
        try:
            results = await asyncio.to_thread(reranker.rerank, req.queries, candidates, topk)
        except Exception as exc:
            raise HTTPException(500, f"reranking failed: {type(exc).__name__}: {exc}") from exc
        body = [[_doc_json(d, req.return_scores) for d in docs] for docs in results]
        return JSONResponse({"result": body})

    @app.get("/health")
    async def health() -> dict:
        c = batcher.cache
        return {
            "status": "ok", "retriever": type(retriever).__name__, "index": info or {},
            "searches": batcher.calls, "searched_queries": batcher.queries,
            "cache": {"entries": len(c.data), "hits": c.hits, "misses": c.misses},
            "worker_restarts": batcher.restarts,
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
    if cfg.rerank.name_or_path:
        info["rerank"] = cfg.rerank.model_dump()
    return info


def serve(cfg: RetrievalConfig, corpus_path: str | Path | None = None) -> None:
    """Load the in-process retriever for ``cfg`` and serve it with uvicorn (blocks)."""
    import uvicorn

    from searchr1.retrieval import load_retriever

    local = cfg.model_copy(update={"server": cfg.server.model_copy(update={"url": None})})
    retriever = load_retriever(local, corpus_path)
    app = create_app(retriever, cfg.server, default_topk=cfg.topk, info=index_info(cfg), token=bearer_token(cfg.server.token_file))
    uvicorn.run(app, host=cfg.server.host, port=cfg.server.port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a searchr1 retriever over HTTP.")
    parser.add_argument("--config-json", required=True, help="RetrievalConfig as JSON")
    parser.add_argument("--corpus", default=None, help="corpus jsonl to verify the indexes against")
    args = parser.parse_args()
    serve(RetrievalConfig.model_validate_json(args.config_json), args.corpus)


if __name__ == "__main__":
    main()
