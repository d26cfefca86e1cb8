"""Per-token rewards for the advantage estimators.

The outcome reward (exact match, computed by the rollout from the answer) sits on the last generated
token. With ``train.kl_in_reward`` the KL to the reference becomes a per-token penalty in the reward
(PPO's and REINFORCE++'s classic form) instead of a loss term.
"""

from __future__ import annotations

import torch

from searchr1.rl.batch import Batch
from searchr1.rl.core import kl_penalty


def token_rewards(batch: Batch, kl_coef: float = 0.0, kl_estimator: str = "k1") -> torch.Tensor:
    """``[B, R]``: outcome reward on the last generated token, minus ``kl_coef`` x KL(actor || ref) on
    every trained token when ``batch.ref_logp`` is set (the sampling policy's ``old_logp`` is needed)."""
    rewards = batch.token_rewards
    if kl_coef > 0 and batch.ref_logp is not None:
        if batch.old_logp is None:
            raise ValueError("a KL reward term needs the sampling policy's log-probs (batch.old_logp)")
        rewards = rewards - kl_coef * kl_penalty(batch.old_logp, batch.ref_logp, kl_estimator) * batch.loss_mask
    return rewards
