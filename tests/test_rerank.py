"""Retrieve-then-rerank: the inner retriever is asked for top_n, the cross-encoder's own scores pick the topk
(whatever the batch size, each pair scored once), the server reranks /retrieve through its batching and cache
and answers Search-R1's /rerank shape, a real server process agrees with in-process, and bad settings or
requests are errors naming the setting or field. A tiny random cross-encoder made here stands in for a real one."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import torch

from searchr1.config import ConfigError, RerankConfig, RetrievalConfig, ServerConfig, load_settings
from searchr1.retrieval import load_retriever
from searchr1.retrieval.base import Doc, RetrievalError
from searchr1.retrieval.build import build_indexes
from searchr1.retrieval.process import running_server
from searchr1.retrieval.rerank import CrossEncoderReranker, RerankingRetriever, passage_text
from searchr1.retrieval.server import create_app
from searchr1.retrieval.synthetic import write_synthetic_corpus


def _save_cross_encoder(path, num_labels: int = 1) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from searchr1.retrieval.encoder import resolve_encoder_path

    tok = AutoTokenizer.from_pretrained(resolve_encoder_path("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=num_labels,
                     initializer_range=0.5)  # BERT's 0.02 gives all pairs one score to 1e-5; this spreads them by ~1
    torch.manual_seed(0)  # fixed weights: the reorderings asserted below are not luck of the draw
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> str:
    return _save_cross_encoder(tmp_path_factory.mktemp("cross_encoder"))


class SpyRetriever:
    """Returns ``topk`` made-up passages per query, best first, and records what it was asked."""

    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []
        self.lock = threading.Lock()

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        with self.lock:
            self.calls.append((list(queries), topk))
        words = ["river", "castle", "engine", "violin", "harbour", "comet", "orchard", "glacier", "lantern", "falcon"]
        return [[Doc(id=f"{q}-{i}", contents=f'"{words[i % 10]} {q}"\nA passage about {words[(i * 3) % 10]} number {i}.',
                     score=float(topk - i)) for i in range(topk)] for q in queries]


QUERIES = ["who built the harbour", "when did the comet return", "where is the glacier", "what is a lantern"]


def _scores(results: list[list[Doc]]) -> list[float]:
    return [d.score for docs in results for d in docs]


def _direct_scores(path: str, query: str, docs: list[Doc]) -> list[float]:
    """The cross-encoder called on each pair alone: no batching, padding, sorting or cache involved."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return [model(**tok(query, passage_text(d.contents), return_tensors="pt")).logits[0, 0].item() for d in docs]


def test_inner_retriever_is_asked_for_top_n_and_topk_follow_the_cross_encoders_scores(cross_encoder):
    spy = SpyRetriever()
    retriever = RerankingRetriever(spy, CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder, batch_size=4)), top_n=6)
    got = retriever.search(QUERIES, 3)
    assert spy.calls == [(QUERIES, 6)]
    candidates = spy.search(QUERIES, 6)
    reordered = 0
    for query, docs, found in zip(QUERIES, candidates, got):
        scores = _direct_scores(cross_encoder, query, docs)
        best = sorted(range(6), key=lambda i: -scores[i])[:3]
        assert [d.id for d in found] == [docs[i].id for i in best]
        assert [d.score for d in found] == pytest.approx([scores[i] for i in best], abs=1e-4)
        reordered += [d.id for d in found] != [d.id for d in docs[:3]]
    assert reordered >= 2  # the cross-encoder really changed the retriever's order


def test_batch_size_does_not_change_the_ranking_and_each_pair_is_scored_once(cross_encoder, monkeypatch):
    one = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder, batch_size=1)), 5)
    many = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder, batch_size=64)), 5)
    a, b = one.search(QUERIES, 5), many.search(QUERIES, 5)
    assert [[d.id for d in docs] for docs in a] == [[d.id for d in docs] for docs in b]
    assert _scores(a) == pytest.approx(_scores(b), abs=1e-4)

    scored: list[int] = []
    forward = CrossEncoderReranker._forward
    monkeypatch.setattr(CrossEncoderReranker, "_forward", lambda self, pairs: scored.append(len(pairs)) or forward(self, pairs))
    fresh = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), 5)
    fresh.search([QUERIES[0], QUERIES[0], QUERIES[1]], 3)  # a GRPO group asks the same question again
    fresh.search([QUERIES[1]], 3)
    assert scored == [10, 0]  # 2 distinct queries x 5 candidates, then all cached


def test_topk_above_top_n_and_a_classifier_with_two_outputs_are_refused_naming_the_setting(cross_encoder, tmp_path):
    retriever = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), 4)
    with pytest.raises(RetrievalError, match=r"topk=5 > retrieval.rerank.top_n=4"):
        retriever.search(["q"], 5)
    two = _save_cross_encoder(tmp_path / "two", num_labels=2)
    with pytest.raises(RetrievalError, match=r"retrieval.rerank.name_or_path=.* has 2 outputs"):
        CrossEncoderReranker(RerankConfig(name_or_path=two))
    with pytest.raises(RetrievalError, match=r"retrieval.rerank.name_or_path='.*missing'"):
        CrossEncoderReranker(RerankConfig(name_or_path=str(tmp_path / "missing")))


def test_top_n_below_topk_is_a_config_error_naming_retrieval_rerank_top_n():
    with pytest.raises(ConfigError, match=r"retrieval.rerank.top_n=2 < retrieval.topk=3"):
        load_settings(None, ["retrieval.rerank.name_or_path=some/model", "retrieval.rerank.top_n=2"])
    assert load_settings(None, ["retrieval.rerank.top_n=2"]).retrieval.rerank.name_or_path is None  # off: no check


def _run(app, fn):
    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await fn(client)

    return asyncio.run(main())


def test_server_reranks_retrieve_through_its_batching_and_cache(cross_encoder):
    spy = SpyRetriever()
    retriever = RerankingRetriever(spy, CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), top_n=6)
    app = create_app(retriever, ServerConfig(batch_window_ms=200))

    async def fn(c):
        together = await asyncio.gather(*[c.post("/retrieve", json={"queries": [q], "topk": 3, "return_scores": True})
                                          for q in QUERIES])
        again = await c.post("/retrieve", json={"queries": [QUERIES[0]], "topk": 3, "return_scores": True})
        return [r.json()["result"][0] for r in together], again.json()["result"][0]

    served, again = _run(app, fn)
    assert len(spy.calls) == 1 and sorted(spy.calls[0][0]) == sorted(QUERIES) and spy.calls[0][1] == 6
    want = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), 6).search(QUERIES, 3)
    assert [[item["document"]["id"] for item in row] for row in served] == [[d.id for d in docs] for docs in want]
    assert again == served[0] and len(spy.calls) == 1  # the repeat came from the cache


def test_rerank_endpoint_answers_search_r1_shapes(cross_encoder):
    retriever = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), top_n=6)
    candidates = SpyRetriever().search(QUERIES[:2], 6)
    scored = [[{"document": {"id": d.id, "contents": d.contents}, "score": d.score} for d in docs] for docs in candidates]
    plain = [[{"id": i, "contents": d.contents, "title": "ignored"} for i, d in enumerate(docs)] for docs in candidates]
    app = create_app(retriever, ServerConfig())

    async def fn(c):
        a = await c.post("/rerank", json={"queries": QUERIES[:2], "documents": scored, "rerank_topk": 2, "return_scores": True})
        b = await c.post("/rerank", json={"queries": QUERIES[:2], "documents": plain})
        return a.json(), b.json()

    with_scores, without = _run(app, fn)
    want = retriever.reranker.rerank(QUERIES[:2], candidates, 3)
    assert [[item["document"]["id"] for item in row] for row in with_scores["result"]] == [[d.id for d in docs[:2]] for docs in want]
    assert with_scores["result"][0][0] == {"document": {"id": want[0][0].id, "contents": want[0][0].contents},
                                           "score": pytest.approx(want[0][0].score, abs=1e-4)}
    # No rerank_topk: the server's default topk (3); ids as sent (Search-R1 ids may be numbers).
    index = {d.contents: str(i) for docs in candidates for i, d in enumerate(docs)}
    assert without["result"][1] == [{"id": index[d.contents], "contents": d.contents} for d in want[1]]


@pytest.mark.parametrize("path, body, status, names", [
    ("/rerank", {"queries": ["q"], "documents": [[{"id": "1", "contents": "x"}], []]}, 400, "documents has 2 candidate lists"),
    ("/rerank", {"queries": ["q"], "documents": [[{"id": "1", "text": "no contents"}]]}, 422, "contents"),
    ("/rerank", {"queries": ["q"], "documents": [[{"id": "1", "contents": "x"}]], "rerank_topk": 0}, 400, "rerank_topk=0"),
    ("/rerank", {"queries": ["q"], "documents": [[{"id": "1", "contents": "x"}] * 51]}, 413, "max_topk=50"),
    ("/rerank", {"queries": [], "documents": []}, 400, "queries is empty"),
    ("/retrieve", {"queries": ["q"], "topk": 7}, 400, "retrieval.rerank.top_n=6"),
])
def test_bad_rerank_requests_get_4xx_naming_the_field(cross_encoder, path, body, status, names):
    retriever = RerankingRetriever(SpyRetriever(), CrossEncoderReranker(RerankConfig(name_or_path=cross_encoder)), top_n=6)
    resp = _run(create_app(retriever, ServerConfig()), lambda c: c.post(path, json=body))
    assert resp.status_code == status and names in resp.text, resp.text


def test_rerank_endpoint_without_a_reranker_is_404_naming_the_setting():
    resp = _run(create_app(SpyRetriever(), ServerConfig()),
                lambda c: c.post("/rerank", json={"queries": ["q"], "documents": [[{"id": "1", "contents": "x"}]]}))
    assert resp.status_code == 404 and "retrieval.rerank.name_or_path" in resp.text


def test_real_server_process_reranks_like_in_process(cross_encoder, tmp_path):
    queries = write_synthetic_corpus(tmp_path / "corpus.jsonl", 100)
    cfg = RetrievalConfig(index_dir=str(tmp_path / "idx"), method="bm25", build=["bm25"],
                          rerank={"name_or_path": cross_encoder, "top_n": 8})
    build_indexes(cfg, tmp_path / "corpus.jsonl")
    local = load_retriever(cfg)
    assert isinstance(local, RerankingRetriever)
    qs = [q for q, _ in queries[:6]]
    want = local.search(qs, 3)
    with running_server(cfg, tmp_path / "corpus.jsonl", port=0) as url:
        assert httpx.get(f"{url}/health").json()["index"]["rerank"]["top_n"] == 8
        remote = load_retriever(cfg.model_copy(update={"server": cfg.server.model_copy(update={"url": url})}))
        got = remote.search(qs, 3)
        candidates = local.retriever.search(qs[:2], 8)
        body = {"queries": qs[:2], "documents": [[{"id": d.id, "contents": d.contents} for d in docs] for docs in candidates],
                "rerank_topk": 3, "return_scores": True}
        reranked = httpx.post(f"{url}/rerank", json=body).json()["result"]
    assert [[d.id for d in docs] for docs in got] == [[d.id for d in docs] for docs in want]
    assert _scores(got) == pytest.approx(_scores(want), abs=1e-4)
    assert [[item["document"]["id"] for item in row] for row in reranked] == [[d.id for d in docs] for docs in want[:2]]
