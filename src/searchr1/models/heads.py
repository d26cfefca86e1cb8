"""Logits where a loss reads them: the LM head run on selected positions only.

A loss reads log-probs of the policy's own tokens only: about a sixth of the positions of a cold-start
example (the prompt and retrieved passages are context), about half of an RL response. The vocabulary-
wide part of a forward pass (the head's matmul, softmax, the copy head's mixing) is then computed for
those positions, not for every position: less time, and far less memory for a large vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from searchr1.models.copy_llama import CACHE_ARG  # the KV-cache keyword of this transformers version


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


def logits_at(model: nn.Module, at: torch.Tensor, input_ids: torch.Tensor, share_prefix: bool = False,
              **inputs) -> torch.Tensor:
    """The logits at the positions ``at`` (bool, same shape as ``input_ids``) marks, as (N, vocab) in
    row-major order: the same values as ``model(input_ids, **inputs).logits[at]``.

    ``share_prefix``: the tokens every row starts with (the instruction of a cold-start batch, a GRPO
    group's prompt) are run once, not once per row (``hidden_at``)."""
    module = getattr(model, "module", model)
    if getattr(module, "supports_logits_at", False):  # the copy head: its own selection
        return model(input_ids=input_ids, logits_at=at, use_cache=False, **inputs).logits
    parts = head_to_run_apart(model)
    if parts is not None:
        backbone, head = parts
        return head(hidden_at(backbone, at, input_ids, share_prefix, **inputs))
    return model(input_ids=input_ids, use_cache=False, **inputs).logits[at]


MIN_SHARED_PREFIX = 16  # below this the extra pass costs more than it saves


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, at: torch.Tensor) -> int:
    """How many leading positions every row has in common (same tokens, no padding, no logits asked for),
    keeping at least one position per row to run; 0 when fewer than ``MIN_SHARED_PREFIX`` or one row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & ~at.any(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    length = min(int(same.int().cumprod(0).sum()), input_ids.shape[1] - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def can_share_prefix(model: nn.Module) -> bool:
    """Whether running a shared prefix once (``hidden_at``) pays for ``model``: a plain LM head, no
    activation checkpointing (it drops the KV cache the prefix is handed on in) and no ZeRO-3 partitions
    (each extra pass would gather the parameters again)."""
    parts = plain_head(model)
    if parts is None:
        return False
    backbone = parts[0]
    zero3 = any(hasattr(p, "ds_id") for p in backbone.parameters())
    return not zero3 and not any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())


def hidden_at(backbone: nn.Module, at: torch.Tensor, input_ids: torch.Tensor, share_prefix: bool = False,
              **inputs) -> torch.Tensor:
    """The backbone's last hidden states at ``at``, (N, hidden). With ``share_prefix`` the positions every
    row shares (``shared_prefix_length``) are run for one row and their KV cache handed to every row;
    gradients flow back through that one pass as through each row's own. Same values either way."""
    shared = shared_prefix_length(input_ids, inputs.get("attention_mask"), at) if share_prefix else 0
    checkpointing = backbone.training and getattr(backbone, "gradient_checkpointing", False)  # drops caches
    if not shared or checkpointing:
        return backbone(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state[at]
    rows, width = input_ids.shape
    positions = inputs.get("position_ids")
    if positions is None:
        positions = torch.arange(width, device=input_ids.device).expand(rows, -1)
    prefix = backbone(input_ids=input_ids[:1, :shared], position_ids=positions[:1, :shared], use_cache=True)
    cache = getattr(prefix, CACHE_ARG)
    cache.batch_repeat_interleave(rows)  # differentiable: each row's gradient flows back into the one prefix
    rest = backbone(input_ids=input_ids[:, shared:], attention_mask=inputs.get("attention_mask"),
                    position_ids=positions[:, shared:], use_cache=True, **{CACHE_ARG: cache}).last_hidden_state
    return rest[at[:, shared:]]
