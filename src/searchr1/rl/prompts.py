"""Which prompts each step trains on, and which of them each data-parallel rank rolls out.

The step's prompt list is global: every rank draws the same one from a seeded permutation per epoch,
then takes its own contiguous share. So ranks see disjoint prompts whose union is the step's, and
(epoch, position) is all the state a checkpoint needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class PromptSampler:
    """``prompts_per_step`` prompts per call, in a fresh seeded order each epoch (every prompt once per epoch)."""

    def __init__(self, items: list[Any], prompts_per_step: int, seed: int):
        if not items:
            raise ValueError("no training prompts")
        self.items, self.prompts_per_step, self.seed = items, prompts_per_step, seed
        self.epoch, self.pos = 0, 0

    def next_prompts(self) -> list[Any]:
        n, out = self.prompts_per_step, []
        while len(out) < n:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))
            take = order[self.pos : self.pos + n - len(out)]
            out.extend(self.items[i] for i in take)
            self.pos += len(take)
            if self.pos >= len(self.items):
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def shard(prompts: list[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s contiguous share of ``prompts`` (their count must divide by ``world_size``)."""
    if len(prompts) % world_size:
        raise ValueError(f"{len(prompts)} prompts cannot be split evenly over {world_size} ranks")
    per_rank = len(prompts) // world_size
    return prompts[rank * per_rank : (rank + 1) * per_rank]
