"""Pure tensor functions shared by every RL algorithm: masked statistics, KL estimators, losses.

All per-token tensors are ``[batch, response_len]``; ``mask`` is 1 where a token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """(x - mean) / sqrt(var + eps) over masked entries; masked-out entries become 0.

    Mean and (unbiased) variance are over the masked entries of every data-parallel rank, so the
    baseline is the whole batch's however it is split (float64 sums; a no-op reduction on one rank).
    """
    from searchr1.distributed import all_reduce_sum

    m = mask.to(torch.float64)
    x64 = x.to(torch.float64)
    total, squares, n = all_reduce_sum(torch.stack([(x64 * m).sum(), (x64 * x64 * m).sum(), m.sum()])).tolist()
    mean = total / max(n, 1.0)
    var = max(squares - n * mean * mean, 0.0) / max(n - 1.0, 1.0)
    out = (x - mean) * (var + eps) ** -0.5
    if not shift_mean:
        out = out + mean
    return out * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked entries of every rank: 1 when the critic
    predicts the returns, 0 when it does no better than their mean, negative when worse."""
    from searchr1.distributed import all_reduce_sum

    m, v, r = mask.to(torch.float64), values.to(torch.float64), returns.to(torch.float64)
    err = r - v
    n, sr, srr, se, see = all_reduce_sum(torch.stack([m.sum(), (r * m).sum(), (r * r * m).sum(), (err * m).sum(),
                                                      (err * err * m).sum()])).tolist()
    if n < 2:
        return 0.0
    var_r, var_e = srr / n - (sr / n) ** 2, see / n - (se / n) ** 2
    return 1.0 - var_e / var_r if var_r > 1e-12 else 0.0


def turn_of_position(generated_mask: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """For every response position, how many retrieved (``<information>``) blocks precede it: 0 before the
    first search's results, 1 after them, and so on."""
    retrieved = (valid_mask.bool() & ~generated_mask.bool()).to(torch.long)
    starts = (retrieved.diff(dim=1, prepend=torch.zeros_like(retrieved[:, :1])) > 0).to(torch.long)
    return starts.cumsum(1)


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


@dataclass(frozen=True)
class Aggregation:
    """How per-token losses of a micro-batch become its share of the minibatch loss.

    ``token_mean``: sum(l * m) / ``tokens``; ``seq_mean``: sum over rows of each row's token-mean /
    ``sequences``. With ``tokens``/``sequences`` counted over the whole minibatch (verl's global
    token-mean), the shares of its micro-batches add up to the minibatch loss, however it is split.
    None counts this micro-batch alone.
    """

    mode: str = "token_mean"
    tokens: float | None = None
    sequences: float | None = None

    def __call__(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "token_mean":
            return masked_sum(per_token, mask) / (mask.sum().clamp(min=1) if self.tokens is None else self.tokens)
        if self.mode == "seq_mean":
            rows = (mask.sum(1) > 0).sum().clamp(min=1) if self.sequences is None else self.sequences
            return masked_mean(per_token, mask, dim=1).sum() / rows
        raise ValueError(f"loss aggregation {self.mode!r}: expected 'token_mean' or 'seq_mean'")

    @classmethod
    def over(cls, mode: str, mask: torch.Tensor) -> Aggregation:
        """Normalise by the tokens and sequences of ``mask``, a whole minibatch's loss mask, counted over
        every data-parallel rank's share of the minibatch (so the update does not depend on the split)."""
        from searchr1.distributed import all_reduce_sum

        tokens, sequences = all_reduce_sum(torch.stack([mask.sum(), (mask.sum(1) > 0).sum()]).float()).tolist()
        return cls(mode, max(tokens, 1.0), max(sequences, 1.0))


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float,
    agg: Aggregation = Aggregation(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = agg(max(-A r, -A clip(r, 1-c, 1+c))), r = exp(logp - old); returns (L, clip_frac, approx_kl)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = agg(torch.maximum(loss1, loss2), mask)
    with torch.no_grad():
        clip_frac = agg((loss2 > loss1).float(), mask)
        approx_kl = agg(-log_ratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float,
    agg: Aggregation = Aggregation(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = 0.5 agg(max((v - R)^2, (old + clip(v - old, -c, c) - R)^2)); returns (L, clip_frac)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * agg(torch.maximum(loss1, loss2), mask)
    with torch.no_grad():
        clip_frac = agg((loss2 > loss1).float(), mask)
    return loss, clip_frac
