"""Score response tokens under a model: log-probs, entropy and critic values, memory-bounded.

Full-vocabulary fp32 logits are the largest tensor in RL training (8 x 4k tokens x 151,936 x 4 bytes
is 20 GB for Qwen; the softmax for the entropy doubles it). When the model's logits are a plain
``lm_head(hidden)``, the head runs over ``chunk_size`` response positions at a time and, with
gradients, each chunk is recomputed in the backward pass (activation checkpointing), so only one
chunk's logits are ever alive. Other heads (our copy head, soft-capped logits), and the update pass
under ZeRO-3, take one pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from searchr1.rl.batch import Batch
from searchr1.rl.core import entropy_from_logits


def hidden_or_logits(model: nn.Module, batch: Batch, **kwargs) -> torch.Tensor:
    """Run ``model`` on the padded sequences and keep the R positions that predict response tokens."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **kwargs,
    )
    x = out if isinstance(out, torch.Tensor) else out.logits
    P, R = batch.prompt_len, batch.response_len
    start = P - 1 - (batch.input_ids.shape[1] - x.shape[1])  # x may hold only the last positions
    return x[:, start : start + R]


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


def _logp_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool,
                      entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
    return logp, entropy


def forward_logprobs(
    model: nn.Module, batch: Batch, temperature: float = 1.0, with_entropy: bool = True,
    entropy_grad: bool = True, chunk_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | y_<t) of each response token (logits / temperature, as sampled), and the entropy
    (with ``entropy_grad=False`` a detached value, for logging, that builds no graph).

    ``chunk_size`` > 0 bounds the logits held at once to ``B x chunk_size x vocab`` (see module doc)."""
    R = batch.response_len
    parts = plain_head(model) if 0 < chunk_size < R else None
    if parts is not None and torch.is_grad_enabled() and any(hasattr(p, "ds_id") for p in parts[1].parameters()):
        # ZeRO-3 partitions the head: called once per chunk it lost part of the (tied) weight's gradient
        # (grad norm 0.36 vs 0.48 in tests/test_distributed.py), so its update pass takes one pass.
        parts = None
    if parts is None:
        # Only the R + 1 last positions predict response tokens: skip the LM head over the prompt.
        logits = hidden_or_logits(model, batch, logits_to_keep=R + 1)
        return _logp_and_entropy(logits, batch.responses, temperature, with_entropy, entropy_grad)

    backbone, head = parts
    hidden = backbone(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state[:, batch.prompt_len - 1 : batch.prompt_len - 1 + R]

    def score(h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logp, entropy = _logp_and_entropy(head(h), targets, temperature, with_entropy, entropy_grad)
        return (logp,) if entropy is None else (logp, entropy)

    logps, entropies = [], []
    for start in range(0, R, chunk_size):
        args = (hidden[:, start : start + chunk_size], batch.responses[:, start : start + chunk_size])
        out = checkpoint(score, *args, use_reentrant=False) if torch.is_grad_enabled() else score(*args)
        logps.append(out[0])
        if with_entropy:
            entropies.append(out[1])
    return torch.cat(logps, 1), torch.cat(entropies, 1) if with_entropy else None


@torch.no_grad()
def logprobs_of(
    model: nn.Module, batch: Batch, micro_batch_size: int = 8, temperature: float = 1.0, with_entropy: bool = True,
    chunk_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``forward_logprobs`` without gradients, in micro-batches; returns ``[B, R]`` (logp, entropy or None)."""
    device = next(model.parameters()).device
    logps = torch.zeros(len(batch), batch.response_len)
    ents = torch.zeros(len(batch), batch.response_len) if with_entropy else None
    for idx, mb in batch.length_sorted_chunks(micro_batch_size):
        logp, ent = forward_logprobs(model, mb.to(device), temperature, with_entropy, chunk_size=chunk_size)
        logps[idx, : logp.shape[1]] = logp.cpu()
        if ents is not None:
            ents[idx, : ent.shape[1]] = ent.cpu()
    return logps, ents


@torch.no_grad()
def values_of(critic: nn.Module, batch: Batch, micro_batch_size: int = 8) -> torch.Tensor:
    """The critic's value of each response position, ``[B, R]``, in length-sorted micro-batches."""
    device = next(critic.parameters()).device
    values = torch.zeros(len(batch), batch.response_len)
    for idx, mb in batch.length_sorted_chunks(micro_batch_size):
        v = hidden_or_logits(critic, mb.to(device))
        values[idx, : v.shape[1]] = v.float().cpu()
    return values
