"""HTTP retriever client: pooled connections, timeouts, and the project's one retry policy.

Only transient failures are retried (connection errors, timeouts, HTTP 429 and 5xx), a bounded number
of times with exponential backoff and jitter (tenacity), honouring a server's Retry-After (seconds or an
HTTP date). A 4xx is the request's fault and fails at once. Nothing above this client retries a retrieval
again: the rollout calls it once, and Prefect retries only whole stages. The web search backend
(retrieval/web.py) sends its requests through the same ``send`` and ``with_retries``.

Reads both Search-R1 response shapes (with and without scores), so it also works against
Search-R1's own ``retrieval_server.py``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from searchr1.retrieval.base import Doc, RetrievalError

MAX_RETRY_AFTER_S = 30.0  # a server asking for longer than this is treated as down


class TransientError(RetrievalError):
    """A failure that may pass on its own: connection, timeout, HTTP 429 or 5xx."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _parse_doc(item: dict) -> Doc:
    doc, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
    contents = doc.get("contents")
    if contents is None:  # Search-R1's BM25 rows carry title/text
        contents = f'"{doc.get("title", "")}"\n{doc.get("text", "")}'
    return Doc(id=str(doc.get("id", "")), contents=contents, score=float(score))


def retry_after_s(resp: httpx.Response) -> float | None:
    """The wait a response's Retry-After asks for (delay-seconds or an HTTP date), capped; None if absent."""
    value = resp.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def send(http: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    """One HTTP attempt. A transport failure (connection, timeout), 429 or 5xx raises TransientError,
    carrying the Retry-After the server asked for; any other response is returned to the caller."""
    try:
        resp = http.request(method, url, **kwargs)
    except httpx.TransportError as exc:  # the message names no URL: a query string may hold an API key
        raise TransientError(f"{type(exc).__name__}: {exc}") from None
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientError(f"HTTP {resp.status_code}: {resp.text[:300]}", retry_after_s(resp))
    return resp


T = TypeVar("T")


def with_retries(call: Callable[[], T], retries: int, backoff_s: float) -> T:
    """``call()``, called again on TransientError up to ``retries`` times: exponential backoff with jitter,
    and never sooner than the server's Retry-After. The last TransientError is raised when all fail."""
    backoff = wait_exponential_jitter(initial=backoff_s, max=10 * max(backoff_s, 0.1), jitter=backoff_s)

    def wait(state: RetryCallState) -> float:  # the server's Retry-After when it gave one
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        return max(asked, backoff(state)) if asked is not None else backoff(state)

    retrying = Retrying(stop=stop_after_attempt(retries + 1), wait=wait,
                        retry=retry_if_exception_type(TransientError), reraise=True)
    return retrying(call)


class RetrievalClient:
    def __init__(self, url: str, topk: int = 3, timeout_s: float = 30.0, retries: int = 3,
                 token: str | None = None, max_batch: int = 512, backoff_s: float = 0.2,
                 transport: httpx.BaseTransport | None = None):
        base = url.rstrip("/")
        self.url = base if base.endswith("/retrieve") else base + "/retrieve"
        self.topk, self.retries, self.max_batch, self.backoff_s = topk, retries, max_batch, backoff_s
        self.attempts = 0  # HTTP attempts of the last request (tests and logs)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers,
                                 limits=httpx.Limits(max_keepalive_connections=16), transport=transport)

    def search(self, queries: list[str], topk: int | None = None) -> list[list[Doc]]:
        topk = topk or self.topk
        out: list[list[Doc]] = []
        for s in range(0, len(queries), self.max_batch):  # stay under the server's request bound
            out.extend(self._post(queries[s : s + self.max_batch], topk))
        return out

    def _post(self, queries: list[str], topk: int) -> list[list[Doc]]:
        body = {"queries": queries, "topk": topk, "return_scores": True}
        self.attempts = 0
        try:
            return with_retries(lambda: self._post_once(body, len(queries)), self.retries, self.backoff_s)
        except TransientError as exc:
            raise RetrievalError(f"retrieval server {self.url} failed after {self.attempts} attempts: {exc}") from None

    def _post_once(self, body: dict, n_queries: int) -> list[list[Doc]]:
        self.attempts += 1
        resp = send(self.http, "POST", self.url, json=body)
        if resp.status_code != 200:  # the request's fault: a retry cannot fix it
            raise RetrievalError(f"retrieval server {self.url} rejected the request: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            result = resp.json()["result"]
            docs = [[_parse_doc(item) for item in row] for row in result]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RetrievalError(f"retrieval server {self.url} sent a malformed response: {exc!r}") from None
        if len(docs) != n_queries:
            raise RetrievalError(f"retrieval server {self.url} answered {len(docs)} rows for {n_queries} queries")
        return docs

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
