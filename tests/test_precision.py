"""bf16 where the hardware has it (models/precision.py): which dtype ``policy.dtype: auto`` picks, and a
cold start in bf16 that keeps float32 master weights and learns."""

from __future__ import annotations

import pytest
import torch

from searchr1.config import PolicyConfig, SFTConfig
from searchr1.models import precision
from searchr1.models.precision import compute_autocast, resolve_dtype
from searchr1.models.tiny import build_tiny_policy
from searchr1.sft.train import train_on_examples


@pytest.mark.parametrize("kind,fast,dtype,expected", [
    ("smol", True, "auto", "bfloat16"),
    ("hf", True, "auto", "bfloat16"),
    ("smol", False, "auto", "float32"),  # a CPU without bf16 instructions
    ("micro", True, "auto", "float32"),  # too small to gain; its recipe was tuned in float32
    ("tiny", True, "auto", "float32"),
    ("smol", True, "float32", "float32"),  # the setting forces float32
    ("micro", False, "bfloat16", "bfloat16"),  # and an explicit bfloat16 is taken as asked
])
def test_auto_dtype_is_bf16_only_for_pretrained_policies_on_hardware_that_has_it(monkeypatch, kind, fast, dtype,
                                                                                  expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert resolve_dtype(PolicyConfig(kind=kind, dtype=dtype), "cpu") == expected


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    real_path = precision.Path
    for flags, expected in (("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("fpu avx2", False)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "Path", lambda p, f=cpuinfo: f if p == "/proc/cpuinfo" else real_path(p))
        precision.cpu_has_fast_bf16.cache_clear()
        assert precision.cpu_has_fast_bf16() is expected
    precision.cpu_has_fast_bf16.cache_clear()


def test_bf16_cold_start_keeps_fp32_weights_computes_in_bf16_and_learns():
    """The cold-start loop in bf16: the matrix products of the forward pass run in bf16, the weights and
    AdamW's moments stay float32, and the loss falls as in float32."""
    gen = torch.Generator().manual_seed(0)
    rows = [(ids, [0] * 4 + [1] * 8) for ids in torch.randint(3, 60, (8, 12), generator=gen).tolist()]

    class Tok:
        pad_token_id = 0

    cfg = SFTConfig(lr=1e-2, epochs=30, batch_size=4, micro_batch_size=2, warmup_ratio=0.0)
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = build_tiny_policy(64, seed=0)
        seen = []
        model.lm_head.register_forward_hook(lambda m, i, out, s=seen: s.append(out.dtype))
        metrics = train_on_examples(model, Tok(), rows, cfg, seed=0, compute_dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert set(seen) == {torch.bfloat16 if dtype == "bfloat16" else torch.float32}
        results[dtype] = metrics
    for m in results.values():
        assert m["final_loss"] < 0.5 * m["first_loss"], m["loss_curve"]
    assert results["bfloat16"]["final_loss"] == pytest.approx(results["float32"]["final_loss"], rel=0.25, abs=0.05)


def test_compute_autocast_is_a_no_op_in_float32():
    with compute_autocast("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with compute_autocast("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
