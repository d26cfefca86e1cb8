"""Which precision the policy computes in: bf16 where the hardware has it, float32 elsewhere.

``policy.dtype: auto`` (the default) means bfloat16 for a pretrained policy (``kind`` smol or hf) on a
device with fast bf16 arithmetic (a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX), and
float32 otherwise: the ``micro`` and ``tiny`` policies are too small to gain and their recipes were tuned
in float32. ``policy.dtype: float32`` forces float32 everywhere.

Inference (rollout, evaluation, ``ask``) loads the weights in that dtype. Training keeps float32 master
weights and optimizer state and computes in bf16 under ``torch.autocast`` (on a GPU the RL stage's
DeepSpeed engines use DeepSpeed's bf16 mode as well). The HF rollout engine inside training keeps the
actor's fp32 weights: its one-token decoding steps (16 rows of SmolLM2) measured slower in bf16 than in
float32 on this CPU, small-row bf16 matrix products being slow here (benchmarks/precision.py); vLLM,
with prepacked kernels, rolls out in bf16. Log-probs, their ratios and every loss reduction are computed
in float32 from the logits (rl/logprobs.py, sft/train.py).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRETRAINED_KINDS = ("smol", "hf")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell cheaply, stay in float32
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_has_fast_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: CUDA if present, else CPU) computes bf16 natively."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_fast_bf16()


def resolve_dtype(policy, device: str | torch.device | None = None) -> str:
    """``policy.dtype`` with ``auto`` resolved for ``device`` (default: CUDA if present, else CPU)."""
    if policy.dtype != "auto":
        return policy.dtype
    if policy.kind in PRETRAINED_KINDS and device_has_fast_bf16(device):
        return "bfloat16"
    return "float32"


def compute_autocast(dtype: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on fp32 master weights: matrix products in bf16 under ``torch.autocast`` when
    ``dtype`` is bfloat16, a no-op otherwise. (Under DeepSpeed's bf16 mode on a GPU the weights are bf16
    already and autocast changes nothing.) Run the backward pass outside it."""
    if dtype == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
