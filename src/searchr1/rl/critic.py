"""PPO critic: the policy's transformer backbone with a scalar value head on every position."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Critic(nn.Module):
    """V(s_t) for every position t of a sequence: ``value_head(backbone(x).last_hidden_state)``."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        # Zero init: V = 0 at the start, so early advantages are the plain returns (no random bias).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False) -> torch.Tensor:
        h = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
        ).last_hidden_state
        return self.value_head(h).squeeze(-1).float()

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable()


def build_critic(policy: nn.Module) -> Critic:
    """A critic initialised from a copy of ``policy``'s backbone (a HF ``*ForCausalLM``)."""
    backbone = copy.deepcopy(getattr(policy, policy.base_model_prefix))
    return Critic(backbone, policy.config.hidden_size).to(next(policy.parameters()).dtype)
