"""Web search backend (retrieval.method=web) against a fake SerpAPI / Google Custom Search server running
as a real HTTP process (tests/fake_search_provider.py): result mapping, paging, the disk cache, the one
retry policy (429 + Retry-After, 5xx, timeouts), clear key errors, the key kept secret, and `searchr1 ask`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from searchr1.config import RetrievalConfig, WebSearchConfig, dump_settings, load_settings
from searchr1.retrieval import load_retriever
from searchr1.retrieval.base import RetrievalError
from searchr1.retrieval.client import retry_after_s
from searchr1.retrieval.process import free_port
from searchr1.retrieval.web import WebRetriever
from tests.test_rollout import ScriptedEngine, enc, tiny_tok  # noqa: F401  (tiny_tok: a fixture)

KEY = "sk-fake-0123456789abcdef"
FAKE = Path(__file__).with_name("fake_search_provider.py")


@pytest.fixture(scope="module")
def provider():
    """The fake provider's base URL; the process lives for the module."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE), str(port)], env={**os.environ, "FAKE_SEARCH_KEY": KEY},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/_control/stats", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def fake(provider, monkeypatch):
    """A clean fake (no scripted failures, no counted requests) and the key in the environment."""
    httpx.post(f"{provider}/_control/reset", json={})
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    return provider


def stats(url: str) -> dict:
    return httpx.get(f"{url}/_control/stats").json()


def script(url: str, *responses: dict) -> None:
    httpx.post(f"{url}/_control/script", json={"responses": list(responses)})


def web(url: str, tmp_path: Path, provider: str = "serpapi", **kw) -> WebRetriever:
    path = "/search.json" if provider == "serpapi" else "/customsearch/v1"
    cfg = WebSearchConfig(provider=provider, base_url=url + path, cx="cx-1" if provider == "google" else None,
                          cache_dir=str(tmp_path / "cache"), **{"rate_limit_per_s": 0, **kw})
    return WebRetriever(cfg, backoff_s=0.01)


def test_serpapi_results_become_title_and_snippet_passages_best_first_answer_box_on_top(fake, tmp_path):
    with web(fake, tmp_path, gl="us", hl="en") as r:
        plain, boxed = r.search(["capital of Zorbland", "the answer to life"], 3)
    assert [d.id for d in plain] == [f"https://example.org/capital-of-zorbland/{i}" for i in (1, 2, 3)]
    assert plain[0].contents == '"capital of Zorbland result 1"\nSnippet 1 about capital of Zorbland. Second line.'
    assert plain[0].title == "capital of Zorbland result 1" and plain[0].score > plain[1].score > plain[2].score
    assert boxed[0].title == "The answer box" and boxed[0].text == "Direct answer to the answer to life."
    assert len(boxed) == 3 and boxed[1].title == "the answer to life result 1"  # related_questions are not passages
    sent = next(r["params"] for r in stats(fake)["requests"] if r["params"]["q"] == "capital of Zorbland")
    assert sent == {"engine": "google", "q": "capital of Zorbland", "num": "3", "gl": "us", "hl": "en", "api_key": KEY}


def test_google_topk_beyond_one_page_is_fetched_in_pages_with_the_key_in_a_header_not_the_url(fake, tmp_path):
    with web(fake, tmp_path, provider="google", safe="active") as r:
        (docs,) = r.search(["tallest tower"], 15)
    assert [d.title for d in docs] == [f"tallest tower result {i}" for i in range(1, 16)]
    assert docs[14].text == "Snippet 15 about tallest tower. Second line."
    pages = stats(fake)["requests"]
    assert [(p["params"]["start"] if "start" in p["params"] else "1", p["params"]["num"]) for p in pages] == [("1", "10"), ("11", "5")]
    assert all(p["params"]["cx"] == "cx-1" and p["params"]["safe"] == "active" and "key" not in p["params"] for p in pages)
    assert pages[0]["headers"]["X-Goog-Api-Key"] == KEY


def test_a_rerun_is_served_from_the_disk_cache_with_zero_requests(fake, tmp_path):
    queries = ["who built the bridge", "river length", "who built the bridge"]
    with web(fake, tmp_path) as r:
        first = r.search(queries, 3)
    assert len(stats(fake)["requests"]) == 2  # the repeated query is searched once
    with web(fake, tmp_path) as again:  # a new process would do the same: the cache is on disk
        assert again.search(queries, 3) == first and again.search(queries, 2)[0] == first[0][:2]
        assert again.requests == 0 and len(stats(fake)["requests"]) == 2
        again.search(["river length"], 5)  # more than was cached: searched again, and cached
        assert again.requests == 1 and again.search(["river length"], 4)[0][3].title == "river length result 4"
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2 and all(KEY not in f.name and KEY not in f.read_text() for f in files)


def test_a_batch_searches_its_distinct_queries_concurrently(fake, tmp_path):
    queries = [f"slow query {i}" for i in range(6)] * 2
    with web(fake, tmp_path, concurrency=6) as r:
        t0 = time.monotonic()
        docs = r.search(queries, 1)
    assert [d[0].title for d in docs] == [f"slow query {i % 6} result 1" for i in range(12)]
    assert len(stats(fake)["requests"]) == 6 and stats(fake)["max_inflight"] >= 2
    assert time.monotonic() - t0 < 6 * 0.3  # not one round trip after another


def test_the_rate_limit_spaces_requests_over_all_threads(fake, tmp_path):
    with web(fake, tmp_path, rate_limit_per_s=20, concurrency=4) as r:
        t0 = time.monotonic()
        r.search([f"q{i}" for i in range(6)], 1)
    assert time.monotonic() - t0 >= 5 / 20 - 0.02  # six requests at 20/s: five gaps of 50 ms


def test_429_waits_for_retry_after_then_succeeds(fake, tmp_path):
    script(fake, {"status": 429, "headers": {"Retry-After": "1"}, "body": {"error": "Your account has run out of searches."}})
    with web(fake, tmp_path) as r:
        t0 = time.monotonic()
        (docs,) = r.search(["busy"], 2)
    assert time.monotonic() - t0 >= 1.0 and r.requests == 2 and docs[0].title == "busy result 1"


def test_5xx_and_timeouts_are_retried_and_a_provider_that_stays_down_is_a_clear_error(fake, tmp_path):
    script(fake, {"status": 503, "body": {"error": "Internal error"}}, {"delay": 1.5})
    with web(fake, tmp_path, provider="google", timeout_s=0.5) as r:
        assert r.search(["flaky"], 1)[0][0].title == "flaky result 1" and r.requests == 3
    script(fake, *[{"status": 500, "body": {"error": {"code": 500, "message": "Backend Error", "status": "INTERNAL"}}}] * 2)
    with web(fake, tmp_path, retries=1) as r, pytest.raises(
            RetrievalError, match=r"web search \(serpapi, .*/search.json\) failed after 2 attempts: HTTP 500"):
        r.search(["down"], 1)


def test_retry_after_as_an_http_date_is_honoured():
    later = httpx.Response(429, headers={"Retry-After": formatdate(time.time() + 5, usegmt=True)})
    assert 3.5 <= retry_after_s(later) <= 5.0
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "2"})) == 2.0
    assert retry_after_s(httpx.Response(429)) is None


def test_a_refused_key_is_a_clear_error_at_once_for_both_providers(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", "sk-refused-key")
    with web(fake, tmp_path) as r, pytest.raises(RetrievalError, match=r"refused the API key \(HTTP 401\): Invalid API key"):
        r.search(["q"], 1)
    monkeypatch.setenv("GOOGLE_API_KEY", "sk-refused-key")
    with web(fake, tmp_path, provider="google") as r, pytest.raises(
            RetrievalError, match=r"rejected the request \(HTTP 400\): INVALID_ARGUMENT API key not valid"):
        r.search(["q"], 1)
    assert len(stats(fake)["requests"]) == 2  # a 4xx is not retried


def test_provider_error_payloads_surface_their_message(fake, tmp_path):
    blocked = {"code": 403, "message": "Requests to this API customsearch method are blocked.", "status": "PERMISSION_DENIED"}
    script(fake, {"status": 403, "body": {"error": blocked}})
    with web(fake, tmp_path, provider="google") as r, pytest.raises(RetrievalError, match="PERMISSION_DENIED Requests to this API"):
        r.search(["q"], 1)
    script(fake, {"status": 200, "body": {"search_metadata": {"status": "Error"}, "error": "Unsupported `nope` engine."}})
    with web(fake, tmp_path) as r, pytest.raises(RetrievalError, match=r"web search \(serpapi, .*\) failed: Unsupported `nope` engine"):
        r.search(["q"], 1)


def test_no_results_is_an_empty_passage_list_for_both_providers(fake, tmp_path):
    for provider in ("serpapi", "google"):
        with web(fake, tmp_path / provider, provider=provider) as r:
            assert r.search(["nothing", "  "], 3) == [[], []]
            assert r.search(["nothing"], 3) == [[]] and r.requests == 1  # empty answers are cached too


def test_a_missing_key_names_the_variable_and_the_file_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    with pytest.raises(RetrievalError, match=r"\$SERPAPI_API_KEY .*retrieval.web.key_file"):
        WebRetriever(WebSearchConfig())
    monkeypatch.setenv("MY_KEY", "sk-from-my-variable")
    with WebRetriever(WebSearchConfig(key_env="MY_KEY")) as r:
        assert r.key == "sk-from-my-variable"
    with pytest.raises(RetrievalError, match=r"retrieval.web.key_file .*missing: no such file"):
        WebRetriever(WebSearchConfig(key_file=str(tmp_path / "missing")))
    (tmp_path / "key").write_text("sk-from-the-file\n")
    with WebRetriever(WebSearchConfig(key_file=str(tmp_path / "key"))) as r:
        assert r.key == "sk-from-the-file"


def test_the_key_is_in_no_setting_log_line_or_error(fake, tmp_path, caplog, monkeypatch):
    settings = load_settings(None, ["retrieval.method=web", f"retrieval.web.base_url={fake}/search.json",
                                    f"retrieval.web.cache_dir={tmp_path}"])
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="httpx")  # vLLM sets httpx to WARNING when an earlier test imported it
    httpx_log = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_log, "propagate", True)
    monkeypatch.setattr(httpx_log, "disabled", False)
    with load_retriever(settings.retrieval) as r:
        r.search(["logged query"], 1)
    assert "q=logged+query" in caplog.text and "api_key=<api-key>" in caplog.text  # httpx's request line, redacted
    script(fake, {"status": 400, "body": {"error": f"bad request {KEY}"}})  # even a provider echoing it
    with load_retriever(settings.retrieval) as r, pytest.raises(RetrievalError) as err:
        r.search(["other"], 1)
    assert KEY not in str(err.value) and KEY not in caplog.text and KEY not in dump_settings(settings)


def test_web_needs_no_index_and_google_needs_a_search_engine_id(tmp_path, monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    cfg = RetrievalConfig(method="web", index_dir=str(tmp_path / "no-index-here"))
    assert cfg.build == ["bm25"]  # nothing added for web
    with load_retriever(cfg, tmp_path / "no-corpus.jsonl") as r:
        assert isinstance(r, WebRetriever)
    with pytest.raises(ValueError, match="retrieval.web.cx"):
        RetrievalConfig(method="web", web={"provider": "google"})


def test_searchr1_ask_with_web_search_answers_from_the_fake_provider(fake, tmp_path, monkeypatch, capsys, tiny_tok):
    from searchr1 import cli
    from searchr1.rollout import engine

    question = "Who founded the capital of Zorbland"
    turns = {question: [enc(tiny_tok, "<think>x</think><search> capital of Zorbland </search>"),
                        enc(tiny_tok, "<think>y</think><answer> Mira Fenwick </answer>")]}
    monkeypatch.setattr(engine, "load_engine", lambda settings, source: (ScriptedEngine(tiny_tok, turns), tiny_tok))
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults, and web's cache lands in tmp_path
    rc = cli.main(["ask", question, "--model", "any", "--set", "retrieval.method=web",
                   "--set", f"retrieval.web.base_url={fake}/search.json", "--set", "rollout.max_turns=2"])
    out = capsys.readouterr().out
    assert rc == 0 and "search: 'capital of Zorbland'" in out and "1. capital of Zorbland result 1" in out
    assert "Answer: Mira Fenwick" in out
    assert [r["params"]["q"] for r in stats(fake)["requests"]] == ["capital of Zorbland"]
    assert len(list((tmp_path / "cache" / "web").rglob("*.json"))) == 1
