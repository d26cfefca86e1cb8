"""The ONNX Runtime encoder backend gives fp32 torch's vectors and top-3 results."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from searchr1.config import EncoderConfig
from searchr1.retrieval.encoder import Encoder
from searchr1.retrieval.synthetic import synthetic_corpus

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it


@pytest.fixture(scope="module")
def encoders():
    return Encoder(EncoderConfig(backend="torch"), device="cpu"), Encoder(EncoderConfig(backend="onnx"), device="cpu")


def test_onnx_vectors_match_torch_for_any_batch_shape(encoders):
    torch_enc, onnx_enc = encoders
    assert onnx_enc.backend == "onnx"
    texts = ["a", "who painted the glass bells of Marrowby?", "x " * 300]  # 300 words: truncated to 256
    for batch in (texts, texts[1:2], texts * 5):
        np.testing.assert_allclose(onnx_enc.encode_queries(batch), torch_enc.encode_queries(batch), atol=1e-5)


def test_onnx_queries_against_torch_index_agree_with_torch_top3(encoders):
    torch_enc, onnx_enc = encoders
    rows, pairs = synthetic_corpus(200, seed=3)
    queries = [q for q, _ in pairs[:100]]
    index = faiss.IndexFlatIP(torch_enc.dim)
    index.add(torch_enc.encode_passages([r["contents"] for r in rows]))  # index once with fp32 torch
    truth = index.search(torch_enc.encode_queries(queries), 3)[1]
    got = index.search(onnx_enc.encode_queries(queries), 3)[1]
    same = np.mean([set(a) == set(b) for a, b in zip(got, truth)])
    assert same >= 0.98, f"onnx top-3 equals torch top-3 on only {same:.1%} of queries"


def test_auto_backend_is_onnx_on_cpu_when_installed_and_torch_elsewhere():
    assert Encoder(EncoderConfig(), device="cpu").backend == "onnx"  # the test install has onnxruntime + onnx
