"""HTTP retriever client: pooled connections, timeouts, bounded retries with exponential backoff.

Reads both Search-R1 response shapes (with and without scores), so it also works against
Search-R1's own ``retrieval_server.py``.
"""

from __future__ import annotations

import time

import httpx

from searchr1.retrieval.base import Doc, RetrievalError


def _parse_doc(item: dict) -> Doc:
    doc, score = (item["document"], item.get("score", 0.0)) if "document" in item else (item, 0.0)
    contents = doc.get("contents")
    if contents is None:  # Search-R1's BM25 rows carry title/text
        contents = f'"{doc.get("title", "")}"\n{doc.get("text", "")}'
    return Doc(id=str(doc.get("id", "")), contents=contents, score=float(score))


class RetrievalClient:
    def __init__(self, url: str, topk: int = 3, timeout_s: float = 30.0, retries: int = 3,
                 token: str | None = None, max_batch: int = 512, backoff_s: float = 0.2,
                 transport: httpx.BaseTransport | None = None):
        base = url.rstrip("/")
        self.url = base if base.endswith("/retrieve") else base + "/retrieve"
        self.topk, self.retries, self.max_batch, self.backoff_s = topk, retries, max_batch, backoff_s
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
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.http.post(self.url, json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                continue
            if resp.status_code != 200:  # a client error will not fix itself: no retry
                raise RetrievalError(f"retrieval server {self.url} rejected the request: HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                result = resp.json()["result"]
                docs = [[_parse_doc(item) for item in row] for row in result]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RetrievalError(f"retrieval server {self.url} sent a malformed response: {exc!r}") from None
            if len(docs) != len(queries):
                raise RetrievalError(f"retrieval server {self.url} answered {len(docs)} rows for {len(queries)} queries")
            return docs
        raise RetrievalError(f"retrieval server {self.url} failed after {self.retries + 1} attempts: {last}")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
