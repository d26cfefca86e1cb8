"""Score response tokens under a model: log-probs, entropy and critic values, memory-bounded.

Full-vocabulary fp32 logits are the largest tensor in RL training (8 x 4k tokens x 151,936 x 4 bytes
is 20 GB for Qwen; the softmax for the entropy doubles it). They are computed only at the policy's own
tokens (``loss_mask``), never at retrieved passages or padding. When the model's logits are a plain
``lm_head(hidden)``, the head runs over ``chunk_size`` of those positions at a time and, with
gradients, each chunk is recomputed in the backward pass (activation checkpointing), so only one
chunk's logits are ever alive. Other heads (our copy head, soft-capped logits), and the update pass
under ZeRO-3, take one pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from searchr1.models.heads import head_to_run_apart, hidden_at, logits_at
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
    entropy_grad: bool = True, chunk_size: int = 0, share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | y_<t) of each response token the policy generated (logits / temperature, as
    sampled), and the entropy (with ``entropy_grad=False`` a detached value, for logging, that builds no
    graph), both ``[B, R]``.

    Logits are computed only where a loss reads them, ``batch.loss_mask`` (models/heads.py); other
    positions get 0, which every loss, KL and entropy mean weighs by loss_mask = 0. ``chunk_size`` > 0
    bounds the logits held at once to ``chunk_size x vocab`` (see module doc). ``share_prefix`` runs the
    prompt the rows share (a GRPO group's) once (models/heads.py ``hidden_at``)."""
    keep = batch.loss_mask.bool()
    if not keep.any():  # a row padded in for equal passes over ranks: one position keeps the graph whole
        keep = torch.zeros_like(keep)
        keep[0, 0] = True
    targets = batch.responses[keep]
    at = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    at[:, batch.prompt_len - 1 : batch.prompt_len - 1 + batch.response_len] = keep  # position t predicts t + 1
    inputs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids}

    parts = head_to_run_apart(model) if 0 < chunk_size < len(targets) else None  # ZeRO-3's update: one pass
    if parts is None:
        logits = logits_at(model, at, batch.input_ids, share_prefix, **inputs)
        logp, entropy = _logp_and_entropy(logits, targets, temperature, with_entropy, entropy_grad)
    else:
        backbone, head = parts
        hidden = hidden_at(backbone, at, batch.input_ids, share_prefix, **inputs)

        def score(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logp, entropy = _logp_and_entropy(head(h), y, temperature, with_entropy, entropy_grad)
            return (logp,) if entropy is None else (logp, entropy)

        chunks = []
        for start in range(0, len(targets), chunk_size):
            args = (hidden[start : start + chunk_size], targets[start : start + chunk_size])
            chunks.append(checkpoint(score, *args, use_reentrant=False) if torch.is_grad_enabled() else score(*args))
        logp = torch.cat([c[0] for c in chunks])
        entropy = torch.cat([c[1] for c in chunks]) if with_entropy else None
    where = keep.nonzero(as_tuple=True)
    logp = logp.new_zeros(keep.shape).index_put(where, logp)
    return logp, None if entropy is None else entropy.new_zeros(keep.shape).index_put(where, entropy)


@torch.no_grad()
def logprobs_of(
    model: nn.Module, batch: Batch, micro_batch_size: int = 8, temperature: float = 1.0, with_entropy: bool = True,
    chunk_size: int = 0, share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``forward_logprobs`` without gradients, in micro-batches (``share_prefix``: a group's rows together,
    their prompt run once); returns ``[B, R]`` (logp, entropy or None)."""
    device = next(model.parameters()).device
    logps = torch.zeros(len(batch), batch.response_len)
    ents = torch.zeros(len(batch), batch.response_len) if with_entropy else None
    for idx, mb in batch.length_sorted_chunks(micro_batch_size, by_group=share_prefix):
        logp, ent = forward_logprobs(model, mb.to(device), temperature, with_entropy, chunk_size=chunk_size,
                                     share_prefix=share_prefix)
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
