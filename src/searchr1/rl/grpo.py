"""GRPO advantages: each sample's outcome reward normalised within its prompt group."""

from __future__ import annotations

from collections import defaultdict

import torch


@torch.no_grad()
def group_advantages(
    rewards: torch.Tensor, group_ids: list[str], eps: float = 1e-6, norm_by_std: bool = True
) -> torch.Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps) over samples sharing a prompt id g (std unbiased).

    Groups are keyed by the prompt id string, so duplicates of one question in a batch share a
    baseline. A group of one sample has mean 0 and std 1 (as verl), i.e. A = r.
    ``norm_by_std=False`` gives Dr. GRPO-style A_i = r_i - mean_g.
    """
    if len(group_ids) != rewards.shape[0]:
        raise ValueError(f"group_advantages: {rewards.shape[0]} rewards but {len(group_ids)} group ids")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        members[g].append(i)
    adv = torch.empty_like(rewards, dtype=torch.float32)
    for idx in members.values():
        r = rewards[idx].float()
        mean, std = (r.mean(), r.std()) if len(idx) > 1 else (r.new_tensor(0.0), r.new_tensor(1.0))
        adv[idx] = (r - mean) / (std + eps) if norm_by_std else r - mean
    return adv


def informative_rows(rewards: torch.Tensor, group_ids: list[str]) -> list[int]:
    """Rows of the groups whose rewards are not all equal: every other group has zero advantage
    (DAPO's dynamic-sampling filter)."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        members[g].append(i)
    keep = [idx for idx in members.values() if len(idx) > 1 and bool((rewards[idx] != rewards[idx[0]]).any())]
    return sorted(i for idx in keep for i in idx)
