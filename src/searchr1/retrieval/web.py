"""Web search as a retriever (``retrieval.method=web``): SerpAPI or the Google Custom Search JSON API.

A query is one GET to the provider (one per page of 10 when topk is larger), its results mapped to our
passage shape, ``Doc(id=url, contents='"title"\\nsnippet')``. A batch's distinct queries run in a small
thread pool under one token-bucket rate limit, and every request goes through the project's one retry
policy (retrieval/client.py: timeouts, 429 and 5xx retried, Retry-After honoured). Answers are cached on
disk, one JSON file per query: training replays the same queries, and a rerun must not pay twice.

The API key comes from an environment variable or a file (``retrieval.web.key_env`` / ``key_file``),
never from settings: they are logged to MLflow and show in ``ps``. It is not in cache keys or file names,
Google gets it in a header, and httpx's request log lines have it redacted (SerpAPI takes it only in the URL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from searchr1.config import WebSearchConfig
from searchr1.io import DataError, read_json, write_json
from searchr1.retrieval.base import Doc, RetrievalError, read_secret
from searchr1.retrieval.client import TransientError, send, with_retries
from searchr1.retrieval.server import RateLimiter

log = logging.getLogger(__name__)

DEFAULT_URL = {"serpapi": "https://serpapi.com/search.json", "google": "https://www.googleapis.com/customsearch/v1"}
DEFAULT_KEY_ENV = {"serpapi": "SERPAPI_API_KEY", "google": "GOOGLE_API_KEY"}
PAGE_SIZE = 10  # results per request: Google CSE's maximum `num`, and a Google results page for SerpAPI
GOOGLE_MAX_RESULTS = 100  # the Custom Search JSON API serves no result past the 100th (start + num <= 101)
BACKOFF_S = 0.5


class _RedactKeys(logging.Filter):
    """Replaces API keys in log records: httpx logs every request's URL at INFO, query string included.
    One filter for the process; a key stays redacted after its retriever is gone."""

    def __init__(self):
        super().__init__()
        self.keys: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(key in message for key in self.keys):
            for key in self.keys:
                message = message.replace(key, "<api-key>")
            record.msg, record.args = message, ()
        return True


_REDACT = _RedactKeys()
logging.getLogger("httpx").addFilter(_REDACT)


def web_api_key(cfg: WebSearchConfig) -> str:
    """The provider's API key: ``$key_env`` (default per provider), else the first line of ``key_file``."""
    env = cfg.key_env or DEFAULT_KEY_ENV[cfg.provider]
    key = read_secret(env, cfg.key_file, "retrieval.web.key_file")
    if key is None:
        raise RetrievalError(f"retrieval.method=web with provider {cfg.provider} needs an API key: set ${env} "
                             "(or retrieval.web.key_env to another variable), or retrieval.web.key_file to a file holding it")
    return key


def _doc(title, snippet, link, rank: int) -> Doc | None:
    """A provider result as a passage (one-line title, whitespace-normalised snippet; score = 1 / rank)."""
    title, text, link = " ".join(str(title or "").split()), " ".join(str(snippet or "").split()), str(link or "")
    if not title and not text:
        return None
    return Doc(id=link or title, contents=f'"{title or link}"\n{text}', score=1.0 / rank)


class WebRetriever:
    """The Retriever protocol over a web search API; ``requests`` counts HTTP attempts (retries included)."""

    def __init__(self, cfg: WebSearchConfig, backoff_s: float = BACKOFF_S):
        self.cfg, self.backoff_s = cfg, backoff_s
        self.key = web_api_key(cfg)
        self.url = cfg.base_url or DEFAULT_URL[cfg.provider]
        self.cache_dir = Path(cfg.cache_dir) / cfg.provider if cfg.cache_dir else None
        self.http = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s),
                                 limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency))
        self.limiter = RateLimiter(cfg.rate_limit_per_s, burst=1)  # burst 1: never more than the rate in any second
        self.lock = threading.Lock()
        self.requests = 0
        _REDACT.keys.add(self.key)

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        found: dict[str, list[Doc]] = {}
        todo = []
        for q in dict.fromkeys(queries):  # GRPO groups repeat queries: each distinct one is searched once
            cached = self._cached(q, topk)
            if cached is not None:
                found[q] = cached
            else:
                todo.append(q)
        if todo:
            # Each answer is cached as it arrives: after a failure a rerun pays only for the rest.
            with ThreadPoolExecutor(min(self.cfg.concurrency, len(todo)), thread_name_prefix="web-search") as pool:
                found.update(zip(todo, pool.map(lambda q: self._search_one(q, topk), todo)))
        return [found[q] for q in queries]

    def _search_one(self, query: str, topk: int) -> list[Doc]:
        if not query.strip():  # nothing to search; providers answer 400
            return []
        docs: list[Doc] = []
        seen: set[str] = set()
        limit = min(topk, GOOGLE_MAX_RESULTS) if self.cfg.provider == "google" else topk
        for offset in range(0, limit, PAGE_SIZE):
            results, more = self._page(query, offset, min(PAGE_SIZE, limit - offset))
            for title, snippet, link in results:
                doc = _doc(title, snippet, link, len(docs) + 1)
                if doc is not None and doc.id not in seen:
                    seen.add(doc.id)
                    docs.append(doc)
            if not more or len(docs) >= topk:
                break
        docs = docs[:topk]
        self._store(query, topk, docs)
        return docs

    def _page(self, query: str, offset: int, num: int) -> tuple[list[tuple], bool]:
        """One page of (title, snippet, link) results from ``offset``, and whether a next page may exist."""
        c = self.cfg
        extra = {k: v for k, v in (("gl", c.gl), ("hl", c.hl), ("safe", c.safe)) if v is not None}
        if c.provider == "serpapi":
            params = {"engine": c.engine, "q": query, "num": num, **extra, "api_key": self.key}
            if offset:
                params["start"] = offset  # SerpAPI: 0-based result offset
            headers = {}
        else:
            params = {"cx": c.cx, "q": query, "num": num, **extra}
            if offset:
                params["start"] = offset + 1  # Google CSE: 1-based index of the first result
            headers = {"X-Goog-Api-Key": self.key}  # documented alternative to ?key=: keeps it out of URLs
        try:
            resp = with_retries(lambda: self._get(params, headers), c.retries, self.backoff_s)
        except TransientError as exc:
            raise RetrievalError(f"web search ({c.provider}, {self.url}) failed after {c.retries + 1} attempts: "
                                 f"{self._redacted(str(exc))}") from None
        body = self._json(resp)
        if c.provider == "serpapi":
            return self._serpapi_results(body, offset, num)
        items = body.get("items") or []  # no results: no `items` key at all
        return [(i.get("title"), i.get("snippet"), i.get("link")) for i in items], "nextPage" in body.get("queries", {})

    def _get(self, params: dict, headers: dict) -> httpx.Response:
        while True:  # the rate limit counts every attempt: a retry is a request too
            with self.lock:
                wait = self.limiter.wait_s("provider")
                if wait <= 0:
                    self.requests += 1
            if wait <= 0:
                break
            time.sleep(wait)
        return send(self.http, "GET", self.url, params=params, headers=headers)

    def _json(self, resp: httpx.Response) -> dict:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200:  # 429 / 5xx were retried in send(): this is the request's fault
            message = self._redacted(self._error_message(body) or resp.text[:300])
            if resp.status_code in (401, 403):
                raise RetrievalError(f"web search ({self.cfg.provider}, {self.url}) refused the API key "
                                     f"(HTTP {resp.status_code}): {message}")
            raise RetrievalError(f"web search ({self.cfg.provider}, {self.url}) rejected the request "
                                 f"(HTTP {resp.status_code}): {message}")
        if not isinstance(body, dict):
            raise RetrievalError(f"web search ({self.cfg.provider}, {self.url}) sent a response that is not a JSON "
                                 f"object: {self._redacted(resp.text[:300])}")
        return body

    @staticmethod
    def _error_message(body) -> str | None:
        """SerpAPI: ``{"error": "..."}``; Google: ``{"error": {"code", "message", "status"}}``."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return " ".join(str(error[k]) for k in ("status", "message") if error.get(k))
        return str(error) if error else None

    def _serpapi_results(self, body: dict, offset: int, num: int) -> tuple[list[tuple], bool]:
        if "error" in body:  # a 200 with an error: "no results" is a successful search; anything else is not
            if body.get("search_metadata", {}).get("status") == "Success":
                return [], False
            raise RetrievalError(f"web search (serpapi, {self.url}) failed: {self._redacted(self._error_message(body))}")
        organic = body.get("organic_results") or []
        results = [(r.get("title"), r.get("snippet"), r.get("link")) for r in organic]
        box = body.get("answer_box") or {}
        answer = box.get("snippet") or box.get("answer") or box.get("result")
        if offset == 0 and isinstance(answer, str):  # Google's direct answer, first as on the page (as Search-R1)
            results.insert(0, (box.get("title"), answer, box.get("link")))
        return results, len(organic) >= num

    def _redacted(self, text: str) -> str:
        return text.replace(self.key, "<api-key>")

    # -- the disk cache: one JSON file per (provider, search settings, query) --

    def _cache_path(self, query: str) -> Path | None:
        if self.cache_dir is None:
            return None
        c = self.cfg  # everything that changes the results, and nothing secret
        ident = {"provider": c.provider, "engine": c.engine if c.provider == "serpapi" else None,
                 "cx": c.cx if c.provider == "google" else None, "gl": c.gl, "hl": c.hl, "safe": c.safe, "q": query}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def _cached(self, query: str, topk: int) -> list[Doc] | None:
        """The cached answer if it holds ``topk`` results, or all there were; a larger topk searches again."""
        path = self._cache_path(query)
        if path is None or not path.exists():
            return None
        try:
            entry = read_json(path)
            docs = [Doc(**d) for d in entry["docs"]]
            complete = entry["topk"] >= topk or len(docs) < entry["topk"]
        except (DataError, KeyError, TypeError) as exc:  # a damaged entry costs one search, not the run
            log.warning("web search cache %s unreadable (%s): searching again", path, exc)
            return None
        return docs[:topk] if complete else None

    def _store(self, query: str, topk: int, docs: list[Doc]) -> None:
        path = self._cache_path(query)
        if path is None:
            return
        # Atomic rename: ranks and processes sharing the directory never read half a file; two that
        # search the same new query at once both pay for it, and the last rename wins.
        write_json(path, {"query": query, "topk": topk, "provider": self.cfg.provider,
                          "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "docs": [{"id": d.id, "contents": d.contents, "score": d.score} for d in docs]})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WebRetriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
