"""The frozen reference policy: log-probs for the KL penalty that keeps the actor near its start."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from searchr1.models.heads import can_share_prefix
from searchr1.models.precision import compute_autocast
from searchr1.rl.batch import Batch
from searchr1.rl.logprobs import logprobs_of


class Reference:
    """``model`` scores as the reference under ``as_reference()``: a frozen copy of the initial policy under
    no context, or (LoRA) the actor under its ``disable_adapter`` (rl/trainer.py)."""

    def __init__(self, model: nn.Module, temperature: float, micro_batch_size: int, chunk_size: int = 0,
                 compute_dtype: str = "float32",
                 as_reference: Callable[[], AbstractContextManager] = contextlib.nullcontext):
        self.model, self.temperature, self.as_reference = model, temperature, as_reference
        self.micro_batch_size, self.chunk_size, self.compute_dtype = micro_batch_size, chunk_size, compute_dtype
        self.share_prefix = can_share_prefix(model)  # a group's prompt run once (models/heads.py)

    def logprobs(self, batch: Batch) -> torch.Tensor:
        self.model.eval()
        with self.as_reference(), compute_autocast(self.compute_dtype, next(self.model.parameters()).device):
            logp, _ = logprobs_of(
                self.model, batch, self.micro_batch_size, self.temperature, with_entropy=False,
                chunk_size=self.chunk_size, share_prefix=self.share_prefix,
            )
        return logp
