"""Pure tensor functions shared by every RL algorithm: masked statistics, KL estimators, losses.

All per-token tensors are ``[batch, response_len]``; ``mask`` is 1 where a token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * m)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * m) / max(sum(m), 1)  (an all-masked input gives 0, not NaN)."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over masked entries: sum(m (x - mean)^2) / (sum(m) - 1)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return masked_sum((x - mean) ** 2, mask) / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over masked entries; masked-out entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate; k1 = logp - ref, k3 = exp(ref - logp) - (ref - logp) - 1."""
    if kind == "k1":
        return logp - ref_logp
    log_ratio = ref_logp - logp
    k3 = torch.exp(log_ratio) - log_ratio - 1
    if kind == "k3":
        return k3
    if kind == "low_var_kl":
        # verl's low_var_kl: k3 with the log-ratio and the result clamped for numerical safety.
        log_ratio = log_ratio.clamp(-20, 20)
        return (torch.exp(log_ratio) - log_ratio - 1).clamp(-10, 10)
    raise ValueError(f"kl estimator {kind!r}: expected 'k1', 'k3' or 'low_var_kl'")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum(softmax(z) * z), over the last dim."""
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = token-mean(max(-A r, -A clip(r, 1-c, 1+c))), r = exp(logp - old); returns (L, clip_frac, approx_kl)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(loss1, loss2), mask)
    with torch.no_grad():
        clip_frac = masked_mean((loss2 > loss1).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = 0.5 token-mean(max((v - R)^2, (old + clip(v - old, -c, c) - R)^2)); returns (L, clip_frac)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss1, loss2), mask)
    with torch.no_grad():
        clip_frac = masked_mean((loss2 > loss1).float(), mask)
    return loss, clip_frac
