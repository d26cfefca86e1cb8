"""Logits where a loss reads them: the LM head run on selected positions only.

A loss reads log-probs of the policy's own tokens only: about a sixth of the positions of a cold-start
example (the prompt and retrieved passages are context), about half of an RL response. The vocabulary-
wide part of a forward pass (the head's matmul, softmax, the copy head's mixing) is then computed for
those positions, not for every position: less time, and far less memory for a large vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn


def plain_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, lm_head) when the model's logits are exactly ``lm_head(backbone(x).last_hidden_state)``."""
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    config = getattr(module, "config", None)
    if config is None or getattr(module, "logits_need_context", False):  # e.g. the copy head
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1.0):
        return None
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    backbone = getattr(module, getattr(module, "base_model_prefix", ""), None)
    if head is None or backbone is None or backbone is module:
        return None
    return backbone, head


def head_to_run_apart(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``plain_head(model)`` when its head may also run outside the model's own forward: not in a ZeRO-3
    backward, where DeepSpeed's partitioned (tied) head lost part of its gradient so (grad norm 0.36 vs
    0.48, tests/test_distributed.py)."""
    parts = plain_head(model)
    if parts is not None and torch.is_grad_enabled() and any(hasattr(p, "ds_id") for p in parts[1].parameters()):
        return None
    return parts


def logits_at(model: nn.Module, at: torch.Tensor, input_ids: torch.Tensor, **inputs) -> torch.Tensor:
    """The logits at the positions ``at`` (bool, same shape as ``input_ids``) marks, as (N, vocab) in
    row-major order: the same values as ``model(input_ids, **inputs).logits[at]``."""
    module = getattr(model, "module", model)
    if getattr(module, "supports_logits_at", False):  # the copy head: its own selection
        return model(input_ids=input_ids, logits_at=at, use_cache=False, **inputs).logits
    parts = head_to_run_apart(model)
    if parts is not None:
        backbone, head = parts
        hidden = backbone(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state
        return head(hidden[at])
    return model(input_ids=input_ids, use_cache=False, **inputs).logits[at]
