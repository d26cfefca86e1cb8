"""PPO advantages: generalised advantage estimation over the generated tokens of a trajectory."""

from __future__ import annotations

import torch

from searchr1.rl.core import masked_whiten


@torch.no_grad()
def compute_gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = d_t + gamma*lam*A_next, d_t = r_t + gamma*V_next - V_t, "next" = next position with mask 1.

    Positions with mask 0 are skipped by the recursion, so a generated token bootstraps from the next
    GENERATED token, not from a retrieved one (``mask_critic=True``: pass the generated-token mask).
    Passing the all-response mask gives Search-R1's unmasked GAE (``mask_critic=False``).
    Returns (whitened advantages, returns = raw advantages + values), both 0 where mask is 0.
    """
    mask = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # Only generated positions update the carried state; others pass it through unchanged.
        next_value = m * values[:, t] + (1 - m) * next_value
        next_adv = m * adv + (1 - m) * next_adv
    returns = (advantages + values) * mask
    return masked_whiten(advantages, mask), returns
