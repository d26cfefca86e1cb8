"""A fake web search provider for tests: SerpAPI's ``/search.json`` and Google Custom Search's
``/customsearch/v1``, answering with their documented payload shapes, status codes and error bodies.

Run: ``python tests/fake_search_provider.py PORT``; the valid API key is ``$FAKE_SEARCH_KEY``. Every
query has 25 results (``<query> result <i>``); the query ``nothing`` has none; a query starting with
``slow`` is answered after 0.3 s. Control endpoints: ``POST /_control/script`` queues responses that the
next provider requests get instead (``{"status", "headers", "body"}``, or ``{"delay": s}`` to answer
late), ``GET /_control/stats`` counts requests, ``POST /_control/reset`` clears both.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

KEY = os.environ.get("FAKE_SEARCH_KEY", "")
RESULTS_PER_QUERY = 25
LOCK = threading.Lock()
STATE: dict = {"inflight": 0}  # requests being answered (a late one may outlive a reset)


def reset() -> None:
    STATE.update(requests=[], script=[], max_inflight=0)


def slug(query: str) -> str:
    return re.sub(r"\W+", "-", query.lower()).strip("-")


def serpapi(params: dict) -> tuple[int, dict]:
    if params.get("api_key") != KEY:
        return 401, {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"}
    q = params.get("q")
    if not q:
        return 400, {"error": "Missing query `q` parameter."}
    meta = {"search_metadata": {"status": "Success"}, "search_parameters": {"engine": params.get("engine"), "q": q}}
    if q == "nothing":
        return 200, {**meta, "search_information": {"organic_results_state": "Fully empty"},
                     "error": "Google hasn't returned any results for this query."}
    start, num = int(params.get("start", 0)), int(params.get("num", 10))
    organic = [{"position": i + 1, "title": f"{q} result {i + 1}", "link": f"https://example.org/{slug(q)}/{i + 1}",
                "snippet": f"Snippet {i + 1} about {q}.\n  Second   line."}
               for i in range(start, min(start + num, RESULTS_PER_QUERY))]
    body = {**meta, "organic_results": organic, "related_questions": [{"question": "Unused?", "snippet": "No."}]}
    if "answer" in q and start == 0:
        body["answer_box"] = {"type": "organic_result", "title": "The answer box", "snippet": f"Direct answer to {q}.",
                              "link": "https://example.org/answer"}
    return 200, body


def google_error(code: int, message: str, status: str, reason: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global",
                                                                           "reason": reason}], "status": status}}


def google(params: dict, headers) -> tuple[int, dict]:
    if (headers.get("X-Goog-Api-Key") or params.get("key")) != KEY:
        return google_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", "badRequest")
    q, cx = params.get("q"), params.get("cx")
    if not q or not cx:
        return google_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT", "badRequest")
    start, num = int(params.get("start", 1)), int(params.get("num", 10))
    if not 1 <= num <= 10 or start + num > 101:
        return google_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT", "badRequest")
    total = 0 if q == "nothing" else RESULTS_PER_QUERY
    request = {"title": "Google Custom Search - " + q, "totalResults": str(total), "searchTerms": q, "count": num,
               "startIndex": start, "cx": cx}
    body = {"kind": "customsearch#search", "queries": {"request": [request]},
            "searchInformation": {"totalResults": str(total), "formattedTotalResults": str(total)}}
    items = [{"kind": "customsearch#result", "title": f"{q} result {i}", "htmlTitle": f"<b>{q}</b> result {i}",
              "link": f"https://example.org/{slug(q)}/{i}", "displayLink": "example.org",
              "snippet": f"Snippet {i} about {q}.\n  Second   line.", "htmlSnippet": f"Snippet {i} about <b>{q}</b>."}
             for i in range(start, min(start + num, total + 1))]
    if items:  # Google leaves `items` out when there are no results
        body["items"] = items
    if start + num <= total:
        body["queries"]["nextPage"] = [{**request, "startIndex": start + num}]
    return 200, body


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            if self.path == "/_control/script":
                STATE["script"].extend(body["responses"])
            elif self.path == "/_control/reset":
                reset()
        self.reply(200, {"ok": True})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/_control/stats":
            with LOCK:
                return self.reply(200, {k: STATE[k] for k in ("requests", "max_inflight")})
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        with LOCK:
            STATE["requests"].append({"path": url.path, "params": params, "headers": dict(self.headers)})
            scripted = STATE["script"].pop(0) if STATE["script"] else None
            STATE["inflight"] += 1
            STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
        try:
            if scripted is not None and "delay" in scripted:
                time.sleep(scripted["delay"])
            elif scripted is not None:
                return self.reply(scripted["status"], scripted.get("body", {}), scripted.get("headers"))
            if params.get("q", "").startswith("slow"):
                time.sleep(0.3)
            if url.path == "/search.json":
                self.reply(*serpapi(params))
            elif url.path == "/customsearch/v1":
                self.reply(*google(params, self.headers))
            else:
                self.reply(404, {"error": f"no route {url.path}"})
        finally:
            with LOCK:
                STATE["inflight"] -= 1


if __name__ == "__main__":
    reset()
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
