"""REINFORCE++: token-level discounted returns (KL folded into the reward), whitened over the batch."""

from __future__ import annotations

import torch

from searchr1.rl.core import masked_whiten


@torch.no_grad()
def reinforce_pp_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_next, "next" = next position with mask 1 (retrieved tokens are skipped)."""
    mask = mask.to(token_rewards.dtype)
    running = torch.zeros_like(token_rewards[:, 0])
    returns = torch.zeros_like(token_rewards)
    for t in reversed(range(token_rewards.shape[1])):
        m = mask[:, t]
        g = token_rewards[:, t] + gamma * running
        returns[:, t] = g * m
        running = m * g + (1 - m) * running
    return returns


@torch.no_grad()
def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A = whiten(G) over all masked tokens of the batch (the batch-level baseline); returns (A, G)."""
    returns = reinforce_pp_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask), returns
