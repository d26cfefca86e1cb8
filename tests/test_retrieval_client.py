"""Retrieval client: retries with backoff then a clear error, both response shapes, and one real
server subprocess answered over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from searchr1.config import RetrievalConfig
from searchr1.retrieval import load_retriever
from searchr1.retrieval.base import RetrievalError
from searchr1.retrieval.build import build_indexes
from searchr1.retrieval.client import RetrievalClient
from searchr1.retrieval.process import free_port, running_server
from searchr1.retrieval.synthetic import write_synthetic_corpus


def test_dead_server_fails_fast_with_url_in_error():
    url = f"http://127.0.0.1:{free_port()}"
    client = RetrievalClient(url, retries=2, timeout_s=1.0, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RetrievalError, match=rf"{url}/retrieve failed after 3 attempts: ConnectError"):
        client.search(["q"])
    assert time.monotonic() - t0 < 5


def test_retries_5xx_then_succeeds_and_reads_plain_shape():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, text="warming up")
        # Search-R1 without scores; its BM25 rows carry title/text instead of id
        return httpx.Response(200, json={"result": [[{"title": "T", "text": "body", "contents": '"T"\nbody'}]]})

    client = RetrievalClient("http://x:1/retrieve", retries=3, backoff_s=0.01, transport=httpx.MockTransport(handler))
    docs = client.search(["q"], topk=1)
    assert len(calls) == 3 and docs[0][0].title == "T" and docs[0][0].text == "body"
    assert calls[0].url.path == "/retrieve"


def test_4xx_is_not_retried_and_5xx_gives_up():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400 if len(calls) == 1 else 500, text="nope")

    client = RetrievalClient("http://x:1", retries=2, backoff_s=0.01, transport=httpx.MockTransport(handler))
    with pytest.raises(RetrievalError, match="rejected the request: HTTP 400"):
        client.search(["q"])
    with pytest.raises(RetrievalError, match="failed after 3 attempts: HTTP 500"):
        client.search(["q"])
    assert len(calls) == 4


def test_attempts_counted_a_400_once_a_503_then_success_twice_and_429_waits_for_retry_after():
    script = {"bad": [400], "flaky": [503, 200], "busy": [429, 200]}
    seen: dict[str, int] = {}

    def handler(request):
        q = __import__("json").loads(request.content)["queries"][0]
        status = script[q][seen.get(q, 0)]
        seen[q] = seen.get(q, 0) + 1
        if status == 200:
            return httpx.Response(200, json={"result": [[{"document": {"id": "1", "contents": "x"}, "score": 1.0}]]})
        headers = {"Retry-After": "0.3"} if status == 429 else {}
        return httpx.Response(status, text="no", headers=headers)

    client = RetrievalClient("http://x:1", retries=3, backoff_s=0.01, transport=httpx.MockTransport(handler))
    with pytest.raises(RetrievalError, match="HTTP 400"):
        client.search(["bad"])
    assert client.attempts == 1
    assert client.search(["flaky"])[0][0].id == "1" and client.attempts == 2
    t0 = time.monotonic()
    assert client.search(["busy"])[0][0].id == "1" and client.attempts == 2
    assert time.monotonic() - t0 >= 0.3  # waited as the server asked


def test_large_batches_are_split_under_the_server_limit():
    sizes = []

    def handler(request):
        n = len(__import__("json").loads(request.content)["queries"])
        sizes.append(n)
        return httpx.Response(200, json={"result": [[{"document": {"id": "1", "contents": "x"}, "score": 2.0}]] * n})

    client = RetrievalClient("http://x:1", max_batch=4, transport=httpx.MockTransport(handler))
    docs = client.search([f"q{i}" for i in range(10)])
    assert sizes == [4, 4, 2] and len(docs) == 10 and docs[9][0].score == 2.0


def test_real_server_subprocess_answers_over_http_with_the_token_never_in_its_argv(tmp_path, monkeypatch):
    import subprocess

    queries = write_synthetic_corpus(tmp_path / "corpus.jsonl", 100)
    (tmp_path / "token").write_text("t0k-secret\n")
    cfg = RetrievalConfig(index_dir=str(tmp_path / "idx"), method="bm25", build=["bm25"],
                          server={"token_file": str(tmp_path / "token")})
    build_indexes(cfg, tmp_path / "corpus.jsonl")
    with running_server(cfg, tmp_path / "corpus.jsonl", port=0) as url:
        assert httpx.get(f"{url}/health").json()["index"]["bm25"]["count"] == 100
        remote = load_retriever(cfg.model_copy(update={"server": cfg.server.model_copy(update={"url": url})}))
        local = load_retriever(cfg)
        qs = [q for q, _ in queries[:10]]
        got, want = remote.search(qs, 3), local.search(qs, 3)
        assert [[d.id for d in docs] for docs in got] == [[d.id for d in docs] for docs in want]
        assert all(docs[0].id == gold for docs, (_, gold) in zip(got, queries[:10]))
        assert httpx.post(f"{url}/retrieve", json={"queries": ["x"]}).status_code == 401
        argv = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "searchr1.retrieval.server" in argv and "t0k-secret" not in argv
    monkeypatch.setenv("SEARCHR1_RETRIEVAL_TOKEN", "from-env")  # the environment wins over the file
    from searchr1.retrieval.base import bearer_token

    assert bearer_token(str(tmp_path / "token")) == "from-env"


@pytest.mark.slow
def test_under_two_ranks_one_server_per_node_holds_the_index_and_both_ranks_query_it(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    queries = write_synthetic_corpus(tmp_path / "corpus.jsonl", 100)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "idx"), method="bm25", build=["bm25"], server={"port": free_port()})
    build_indexes(cfg, tmp_path / "corpus.jsonl")
    qs = [q for q, _ in queries[:8]]
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "SEARCHR1_SELF_RANK")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tests" / "node_retriever_scenario.py"), cfg.model_dump_json(), str(tmp_path / "corpus.jsonl"),
           json.dumps(qs), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["type"] == r1["type"] == "RetrievalClient" and r0["url"] == r1["url"]
    assert r0["in_process_loads"] == r1["in_process_loads"] == 0  # no rank loaded the index itself
    assert r0["health"]["searched_queries"] == len(qs)  # one server answered both ranks' queries
    gold = dict(queries[:8])
    assert all(top == gold[q] for r in (r0, r1) for q, top in zip(r["queries"], r["top"]))
