"""The frozen reference policy: log-probs for the KL penalty that keeps the actor near its start."""

from __future__ import annotations

import torch
from torch import nn

from searchr1.rl.batch import Batch
from searchr1.rl.logprobs import logprobs_of


class Reference:
    def __init__(self, model: nn.Module, temperature: float, micro_batch_size: int, chunk_size: int = 0):
        self.model, self.temperature = model, temperature
        self.micro_batch_size, self.chunk_size = micro_batch_size, chunk_size

    def logprobs(self, batch: Batch) -> torch.Tensor:
        logp, _ = logprobs_of(
            self.model, batch, self.micro_batch_size, self.temperature, with_entropy=False, chunk_size=self.chunk_size
        )
        return logp
