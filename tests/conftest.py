"""Test settings: everything offline, quiet, and inside a temporary directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tasks/ and flows/ are importable as in `python flows/pipeline.py`

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
# Bin dir of this interpreter first, so `searchr1`/`dvc` in subprocesses are the venv's.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """SmolLM2's real tokenizer (read from the GGUF once, then from a saved copy)."""
    from transformers import AutoTokenizer

    cache = tmp_path_factory.getbasetemp() / "smollm2_tokenizer"
    if not cache.exists():
        from searchr1.models.smollm2 import load_smollm2_tokenizer

        load_smollm2_tokenizer().save_pretrained(cache)
    return AutoTokenizer.from_pretrained(cache)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A random 1-layer BERT with MiniLM's tokenizer: same code path as a real encoder, ~50x faster."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from searchr1.retrieval.encoder import resolve_encoder_path

    path = tmp_path_factory.mktemp("tiny_encoder")
    tok = AutoTokenizer.from_pretrained(resolve_encoder_path("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)  # fixed weights: thresholds on what a random encoder retrieves must not be luck
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
