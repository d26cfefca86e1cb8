"""The PPO critic: a value model (the policy's backbone with a scalar head) and its training role."""

from __future__ import annotations

import copy

import torch
from torch import nn

from searchr1.config import LoraConfig, TrainConfig
from searchr1.distributed import world_size
from searchr1.models.loading import enable_checkpointing
from searchr1.models.lora import add_lora
from searchr1.models.precision import compute_autocast
from searchr1.rl.batch import Batch
from searchr1.rl.core import Aggregation, value_loss
from searchr1.rl.logprobs import hidden_or_logits, values_of


class ValueModel(nn.Module):
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
        with torch.autocast(h.device.type, enabled=False):  # values in float32, whatever the backbone's precision
            return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def activation_checkpointing_enable(self) -> None:
        enable_checkpointing(self.backbone)


def build_value_model(policy: nn.Module, lora_cfg: LoraConfig | None = None) -> ValueModel:
    """A value model initialised from a copy of ``policy``'s backbone (a HF ``*ForCausalLM``). With
    ``lora_cfg`` (train.lora) the backbone gets LoRA adapters and stays frozen, as OpenRLHF's LoRA critic:
    the value head is new, with no base to adapt, and trains in full."""
    backbone = copy.deepcopy(getattr(policy, policy.base_model_prefix))
    model = ValueModel(backbone, policy.config.hidden_size).to(next(policy.parameters()).dtype)
    if lora_cfg is not None:
        add_lora(model.backbone, lora_cfg, "train.lora", task_type=None)
    return model


class Critic:
    """Scores positions with the value model and fits it to the returns (clipped value loss)."""

    def __init__(self, engine: nn.Module, cfg: TrainConfig, micro_batch_size: int, compute_dtype: str = "float32"):
        self.engine, self.cfg, self.micro_batch_size, self.compute_dtype = engine, cfg, micro_batch_size, compute_dtype

    def _autocast(self):
        return compute_autocast(self.compute_dtype, next(self.engine.parameters()).device)

    def mask(self, batch: Batch) -> torch.Tensor:
        """Positions the value loss and GAE count: generated tokens only when ``train.mask_critic``."""
        return batch.generated_mask if self.cfg.mask_critic else batch.valid_mask

    def values(self, batch: Batch) -> torch.Tensor:
        self.engine.eval()
        with self._autocast():
            return values_of(self.engine, batch, self.micro_batch_size)

    def update(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step over the minibatch in ``gas`` micro-batches (see ``Actor.update``)."""
        gas = self.cfg.deepspeed.gradient_accumulation_steps
        agg = Aggregation.over(self.cfg.loss_agg, self.mask(minibatch))
        stats = {"value_loss": 0.0, "value_clip_frac": 0.0}
        self.engine.train()
        for mb in minibatch.split(gas):
            with self._autocast():
                values = hidden_or_logits(self.engine, mb)
            loss, clip_frac = value_loss(
                values, mb.old_values, mb.returns, self.mask(mb), self.cfg.clip_range_value, agg
            )
            self.engine.backward(loss * gas * world_size())
            self.engine.step()
            stats["value_loss"] += loss.item()
            stats["value_clip_frac"] += clip_frac.item()
        return stats
