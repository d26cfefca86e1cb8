"""The frozen reference policy: log-probs for the KL penalty that keeps the actor near its start."""

from __future__ import annotations

import torch
from torch import nn

from searchr1.models.heads import can_share_prefix
from searchr1.models.precision import compute_autocast
from searchr1.rl.batch import Batch
from searchr1.rl.logprobs import logprobs_of


class Reference:
    def __init__(self, model: nn.Module, temperature: float, micro_batch_size: int, chunk_size: int = 0,
                 compute_dtype: str = "float32"):
        self.model, self.temperature = model, temperature
        self.micro_batch_size, self.chunk_size, self.compute_dtype = micro_batch_size, chunk_size, compute_dtype
        self.share_prefix = can_share_prefix(model)  # a group's prompt run once (models/heads.py)

    def logprobs(self, batch: Batch) -> torch.Tensor:
        with compute_autocast(self.compute_dtype, next(self.model.parameters()).device):
            logp, _ = logprobs_of(
                self.model, batch, self.micro_batch_size, self.temperature, with_entropy=False,
                chunk_size=self.chunk_size, share_prefix=self.share_prefix,
            )
        return logp
