"""Tiny randomly initialised causal LMs for tests: real transformers models, seconds to build."""

from __future__ import annotations

import torch


def build_tiny_policy(vocab_size: int, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A 2-layer Llama-architecture model with the given vocabulary size (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
