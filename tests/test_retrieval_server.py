"""Retrieval server: Search-R1 request/response shapes, validation, auth, cache, cross-request
micro-batching and dedup, and error isolation (in-process ASGI, a fake retriever that counts calls)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from searchr1.config import ServerConfig
from searchr1.retrieval.base import Doc
from searchr1.retrieval.server import create_app


class CountingRetriever:
    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.calls: list[list[str]] = []
        self.delay_s, self.fail = delay_s, fail
        self.lock = threading.Lock()

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        with self.lock:
            self.calls.append(list(queries))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("index exploded")
        return [[Doc(id=f"{q}-{i}", contents=f'"{q}"\npassage {i}', score=1.0 / (i + 1)) for i in range(topk)]
                for q in queries]


def _run(app, fn):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await fn(client)

    return asyncio.run(main())


def test_response_shapes_match_search_r1():
    app = create_app(CountingRetriever(), ServerConfig())

    async def fn(c):
        scored = (await c.post("/retrieve", json={"queries": ["a", "b"], "topk": 2, "return_scores": True})).json()
        plain = (await c.post("/retrieve", json={"queries": ["a"]})).json()
        return scored, plain

    scored, plain = _run(app, fn)
    assert scored["result"][1] == [
        {"document": {"id": "b-0", "contents": '"b"\npassage 0'}, "score": 1.0},
        {"document": {"id": "b-1", "contents": '"b"\npassage 1'}, "score": 0.5},
    ]
    assert plain == {"result": [[{"id": f"a-{i}", "contents": f'"a"\npassage {i}'} for i in range(3)]]}


@pytest.mark.parametrize("body, status", [
    (b"{not json", 422),
    (b'{"queries": "not a list"}', 422),
    (b'{"queries": []}', 400),
    (b'{"queries": ["q"], "topk": 51}', 400),
    (b'{"queries": ["q"], "topk": 0}', 400),
    (b'{"queries": [' + b",".join([b'"q"'] * 9) + b"]}", 413),
    (b'{"queries": ["' + b"x" * 101 + b'"]}', 413),
])
def test_bad_requests_get_4xx_and_server_keeps_answering(body, status):
    retriever = CountingRetriever()
    app = create_app(retriever, ServerConfig(max_queries_per_request=8, max_query_chars=100, max_topk=50))

    async def fn(c):
        bad = await c.post("/retrieve", content=body, headers={"content-type": "application/json"})
        good = await c.post("/retrieve", json={"queries": ["ok"], "topk": 1})
        return bad, good

    bad, good = _run(app, fn)
    assert bad.status_code == status, bad.text
    assert good.status_code == 200 and good.json()["result"][0][0]["id"] == "ok-0"
    assert retriever.calls == [["ok"]]  # rejected requests never reach the retriever


def test_bearer_token_required_when_configured():
    app = create_app(CountingRetriever(), ServerConfig(), token="s3cret")

    async def fn(c):
        body = {"queries": ["a"]}
        return [
            (await c.post("/retrieve", json=body)).status_code,
            (await c.post("/retrieve", json=body, headers={"Authorization": "Bearer wrong"})).status_code,
            (await c.post("/retrieve", json=body, headers={"Authorization": "Bearer s3cret"})).status_code,
        ]

    assert _run(app, fn) == [401, 401, 200]


def test_repeated_query_is_served_from_cache():
    retriever = CountingRetriever()
    app = create_app(retriever, ServerConfig(cache_size=10))

    async def fn(c):
        first = (await c.post("/retrieve", json={"queries": ["a", "b"]})).json()
        second = (await c.post("/retrieve", json={"queries": ["b", "a", "c"]})).json()
        health = (await c.get("/health")).json()
        return first, second, health

    first, second, health = _run(app, fn)
    assert retriever.calls == [["a", "b"], ["c"]]
    assert second["result"][:2] == first["result"][::-1]
    assert health["cache"]["hits"] == 2 and health["searches"] == 2


def test_concurrent_requests_are_batched_and_deduplicated():
    retriever = CountingRetriever(delay_s=0.05)
    app = create_app(retriever, ServerConfig(batch_window_ms=20, cache_size=0))

    async def fn(c):
        # 32 clients; every query appears in two requests
        reqs = [c.post("/retrieve", json={"queries": [f"q{i % 16}"], "topk": 2}) for i in range(32)]
        return await asyncio.gather(*reqs)

    responses = _run(app, fn)
    for i, r in enumerate(responses):
        assert r.json()["result"][0][0]["id"] == f"q{i % 16}-0"
    assert len(retriever.calls) <= 3  # not 32
    assert sum(len(c) for c in retriever.calls) == 16  # each distinct query encoded once


def test_a_big_request_does_not_wait_the_batching_window():
    # Search-R1 sends one request per rollout turn: it is a batch already, so the window would only add latency.
    retriever = CountingRetriever()
    app = create_app(retriever, ServerConfig(batch_window_ms=2000, batch_min_queries=4, cache_size=0))

    async def fn(c):
        start = time.perf_counter()
        await c.post("/retrieve", json={"queries": ["a", "b", "c", "d"]})
        big = time.perf_counter() - start
        start = time.perf_counter()
        await c.post("/retrieve", json={"queries": ["e"]})  # a small request still waits for company
        return big, time.perf_counter() - start

    big, small = _run(app, fn)
    assert big < 1.0 <= 2.0 <= small + 0.05


def test_requests_with_different_topk_share_a_batch():
    retriever = CountingRetriever(delay_s=0.02)
    app = create_app(retriever, ServerConfig(batch_window_ms=20))

    async def fn(c):
        return await asyncio.gather(c.post("/retrieve", json={"queries": ["a"], "topk": 1}),
                                    c.post("/retrieve", json={"queries": ["a"], "topk": 5}))

    small, big = _run(app, fn)
    assert len(small.json()["result"][0]) == 1 and len(big.json()["result"][0]) == 5
    assert retriever.calls == [["a"]]


def test_retriever_failure_is_500_and_server_recovers():
    retriever = CountingRetriever(fail=True)
    app = create_app(retriever, ServerConfig())

    async def fn(c):
        bad = await c.post("/retrieve", json={"queries": ["a"]})
        retriever.fail = False
        good = await c.post("/retrieve", json={"queries": ["a"]})
        return bad, good

    bad, good = _run(app, fn)
    assert bad.status_code == 500 and "index exploded" in bad.text
    assert good.status_code == 200


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_are_not_slowed():
    app = create_app(CountingRetriever(), ServerConfig(rate_limit_per_s=0.5, rate_limit_burst=2))

    async def fn(c):
        body = {"queries": ["a"]}
        first = [(await c.post("/retrieve", json=body)) for _ in range(3)]
        return first

    ok1, ok2, limited = _run(app, fn)
    assert ok1.status_code == ok2.status_code == 200
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"  # 1 token at 0.5/s
    from searchr1.retrieval.server import RateLimiter

    clock = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: clock[0])
    assert limiter.wait_s("a") == 0 and limiter.wait_s("a") == pytest.approx(1.0)
    assert limiter.wait_s("b") == 0  # per client
    clock[0] = 1.0
    assert limiter.wait_s("a") == 0


def test_a_dead_batching_worker_is_replaced_and_no_queued_request_is_lost():
    retriever = CountingRetriever(delay_s=0.3)
    app = create_app(retriever, ServerConfig(batch_window_ms=0, cache_size=0))
    batcher = app.state.batcher

    async def fn(c):
        first = asyncio.create_task(c.post("/retrieve", json={"queries": ["a"]}))
        await asyncio.sleep(0.1)  # the worker is inside the retriever call with "a"
        queued = [asyncio.create_task(c.post("/retrieve", json={"queries": [q]})) for q in ("b", "c")]
        await asyncio.sleep(0.05)  # "b" and "c" wait in the queue
        batcher.task.cancel()  # the worker dies
        return await first, await asyncio.gather(*queued)

    first, queued = _run(app, fn)
    assert first.status_code == 500  # its batch was in flight
    assert [r.status_code for r in queued] == [200, 200]
    assert [r.json()["result"][0][0]["id"] for r in queued] == ["b-0", "c-0"]
    assert batcher.restarts == 1
