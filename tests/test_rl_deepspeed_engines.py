"""DeepSpeed configs built from DeepSpeedConfig: stages, offload, bf16 auto."""

from __future__ import annotations

import torch

from searchr1.config import DeepSpeedConfig
from searchr1.rl.deepspeed_engines import ds_config, use_bf16


def test_bf16_auto_only_with_cuda_bf16_support():
    expected = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert use_bf16(DeepSpeedConfig(bf16="auto")) is expected
    assert use_bf16(DeepSpeedConfig(bf16=False)) is False


def test_ds_config_stages_offload_and_accumulation():
    cfg = DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_param=True, gradient_accumulation_steps=4,
                          max_grad_norm=0.5)
    train = ds_config(cfg, micro_batch_size=2)
    assert train["train_batch_size"] == 8 and train["gradient_accumulation_steps"] == 4
    assert train["gradient_clipping"] == 0.5
    assert train["zero_optimization"]["stage"] == 3
    assert train["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert train["zero_optimization"]["offload_param"]["device"] == "cpu"
    ref = ds_config(cfg, micro_batch_size=1, train=False)
    assert ref["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in ref["zero_optimization"]
    # Reference models outside ZeRO-3 are not sharded; offload_param only exists for stage 3.
    two = ds_config(DeepSpeedConfig(zero_stage=2, offload_param=True), 1, train=False)
    assert two["zero_optimization"] == {"stage": 0}


def test_a_child_of_a_self_initialised_process_gets_its_own_port():
    """A process that made itself rank 0 of 1 leaves RANK/MASTER_PORT in its environment; a child (e.g.
    `dvc repro` -> `searchr1 train`) must not take them for a launcher's and bind the parent's port."""
    import os
    import subprocess
    import sys

    script = (
        "import os, sys; from searchr1.rl.deepspeed_engines import init_distributed; init_distributed(); "
        "import torch.distributed as d; print('PORT', os.environ['MASTER_PORT'], d.get_world_size()); sys.stdout.flush(); "
        "import subprocess; subprocess.run([sys.executable, '-c', sys.argv[1]], check=True)"
    )
    child = ("import os; from searchr1.rl.deepspeed_engines import init_distributed; init_distributed(); "
             "import torch.distributed as d; print('PORT', os.environ['MASTER_PORT'], d.get_world_size())")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    out = subprocess.run([sys.executable, "-c", script, child], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("PORT ")]
    (parent_port, parent_world), (child_port, child_world) = lines
    assert parent_world == child_world == "1" and parent_port != child_port


def test_one_process_skips_the_shared_memory_comm_build(tmp_path):
    """DeepSpeed JIT-compiles a shared-memory collective op (~30 s on a fresh machine) when it sets up its
    process group; a world of one has no peer to share with, so that build is skipped."""
    import os
    import subprocess
    import sys

    script = ("from searchr1.rl.deepspeed_engines import init_distributed; init_distributed(); "
              "from deepspeed.comm import comm; print('SHM', comm.cdb.shm_comm_op)")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "ext")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SHM None" in out.stdout
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").iterdir())
