"""DeepSpeed engines for actor, critic and reference model, set up from ``DeepSpeedConfig``.

Works single-process on CPU (gloo, ``DS_ACCELERATOR=cpu``) and under ``deepspeed``/``torchrun``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
# DeepSpeed JIT-builds a small comm extension once; keep it in the project cache, not ~/.cache.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))

import deepspeed  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (must follow deepspeed: avoids a ZeRO-3 'Signature mismatch' crash)
from deepspeed.accelerator import get_accelerator  # noqa: E402
from torch import nn  # noqa: E402

from searchr1.config import DeepSpeedConfig  # noqa: E402
from searchr1.models import lora  # noqa: E402
from searchr1.models.loading import enable_checkpointing  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set beside the rank variables a plain process gives itself: "<pid>:<port>". A child process (dvc repro
# -> searchr1 train) inherits them all; the marker tells it they are its parent's, not a launcher's.
_SELF_RANK_MARKER = "SEARCHR1_SELF_RANK"


def _launched_by_a_launcher() -> bool:
    if "RANK" not in os.environ:
        return False
    pid, _, port = os.environ.get(_SELF_RANK_MARKER, "").partition(":")
    if pid == str(os.getpid()):  # set by this process for an earlier world of 1 (then destroyed, e.g. by vLLM's
        return False             # teardown, which may also drop some of them): make a fresh one
    inherited = pid and port == os.environ.get("MASTER_PORT", "")
    return not inherited


def init_distributed() -> None:
    """Join the process group; a plain ``python`` process becomes rank 0 of a world of 1."""
    if torch.distributed.is_initialized():
        # A group made by someone else (vLLM's in-process engine makes a world of 1): DeepSpeed adopts it,
        # and reads the rank variables from the environment.
        if "LOCAL_RANK" not in os.environ and torch.distributed.get_world_size() == 1:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            # Ours, not a launcher's: once that group is destroyed, the next call makes a fresh world of 1.
            os.environ[_SELF_RANK_MARKER] = f"{os.getpid()}:{os.environ.get('MASTER_PORT', '')}"
        if _holds_destroyed_groups():  # DeepSpeed's cache is from a default group since destroyed and replaced
            _forget_destroyed_groups()
        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)
        return
    if not _launched_by_a_launcher():  # not deepspeed/torchrun: rank 0 of 1 on a free port
        port = str(_free_port())
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ[_SELF_RANK_MARKER] = f"{os.getpid()}:{port}"
    _forget_destroyed_groups()
    if os.environ.get("WORLD_SIZE") == "1":
        # One process has no peer to share memory with: skip DeepSpeed's shared-memory collective op, a C++
        # JIT build (~30 s on a fresh machine) that only speeds up collectives between processes of a node.
        # (importlib: the attribute deepspeed.comm.torch is the torch package itself, not this module.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    # Each rank on its own GPU before anything (vLLM, the retriever's encoder, evaluation) picks "cuda" = GPU 0.
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _group_caches() -> list[str]:
    """Names of DeepSpeed's module-level process-group caches (``_DATA_PARALLEL_GROUP``, ``_EXPERT_..._GROUPS``)."""
    from deepspeed.utils import groups

    return [n for n in dir(groups) if n.startswith("_") and n.endswith(("_GROUP", "_GROUPS")) and n.isupper()]


def _holds_destroyed_groups() -> bool:
    """Whether DeepSpeed's cached process groups include one torch no longer knows (destroyed)."""
    from deepspeed.utils import groups
    from torch.distributed import distributed_c10d

    live = getattr(getattr(distributed_c10d, "_world", None), "pg_map", None)
    if live is None:
        return False
    cached = []
    for name in _group_caches():
        value = getattr(groups, name)
        cached += list(value.values()) if isinstance(value, dict) else [value]
    return any(isinstance(g, torch.distributed.ProcessGroup) and g not in live for g in cached)


def _forget_destroyed_groups() -> None:
    """Drop DeepSpeed's cached process groups when the group they belong to is gone: a vLLM engine torn down
    in this process destroys the default process group it adopted (vLLM 0.32's engine-core shutdown), and a
    later trainer would otherwise reuse groups that no longer exist ("Group ... is not registered")."""
    from deepspeed.comm import comm
    from deepspeed.utils import groups

    if comm.cdb is None:
        return
    comm.cdb = None
    for name in _group_caches():
        value = getattr(groups, name)
        setattr(groups, name, {} if isinstance(value, dict) else None)


def device() -> torch.device:
    return torch.device(get_accelerator().current_device_name())


def use_bf16(cfg: DeepSpeedConfig, compute_dtype: str = "float32") -> bool:
    """Whether DeepSpeed's bf16 mode is on. ``bf16: auto``: on a CUDA device, when the policy computes in
    bfloat16 (``compute_dtype``, policy.dtype resolved). A CPU computing in bf16 keeps DeepSpeed in fp32 and
    runs its forward passes under autocast instead (models/precision.py): the same speed here, and the
    weights the rollout engine and checkpoints read stay float32."""
    if cfg.bf16 == "auto":
        return compute_dtype == "bfloat16" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cfg.bf16)


def ds_config(cfg: DeepSpeedConfig, micro_batch_size: int, train: bool = True, compute_dtype: str = "float32") -> dict:
    """The DeepSpeed JSON config for one engine (``train=False``: frozen reference model)."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    stage = cfg.zero_stage if train else (3 if cfg.zero_stage == 3 else 0)
    zero: dict = {"stage": stage}
    if train and cfg.offload_optimizer and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload_param and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps if train else 1,
        "train_batch_size": micro_batch_size * (cfg.gradient_accumulation_steps if train else 1) * world,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg, compute_dtype)},
        # We pass a torch AdamW: DeepSpeed's fused Adam would JIT-compile for minutes on first use.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def setup_engine(
    model: nn.Module, cfg: DeepSpeedConfig, lr: float, micro_batch_size: int, weight_decay: float = 0.01,
    compute_dtype: str = "float32",
) -> deepspeed.DeepSpeedEngine:
    """A trainable engine (actor or critic) with a torch AdamW; the lr is set by the trainer each step."""
    init_distributed()
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    config = ds_config(cfg, micro_batch_size, compute_dtype=compute_dtype)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def setup_reference(model: nn.Module, cfg: DeepSpeedConfig, compute_dtype: str = "float32") -> nn.Module:
    """A frozen reference model: a ZeRO-3 inference engine under stage 3, else a plain module, held in
    bf16 when the policy computes in bf16 (it only scores: no master weights needed)."""
    init_distributed()
    model.requires_grad_(False).eval()
    if cfg.zero_stage == 3:
        engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg, 1, train=False, compute_dtype=compute_dtype))
        engine.eval()
        return engine
    bf16 = use_bf16(cfg, compute_dtype) or compute_dtype == "bfloat16"
    return model.to(device=device(), dtype=torch.bfloat16 if bf16 else None)


def is_zero3(model: nn.Module) -> bool:
    return isinstance(model, deepspeed.DeepSpeedEngine) and model.zero_optimization_stage() == 3


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Yield the underlying module with full parameters (ZeRO-3 gathers its shards), e.g. to generate."""
    module = unwrapped(model)
    if not is_zero3(model):
        yield module
        return
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield module


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DeepSpeed engine (under ZeRO-3 its parameters are this rank's shards)."""
    return model.module if isinstance(model, deepspeed.DeepSpeedEngine) else model


def parameter_buckets(model: nn.Module, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The full parameters as buckets of (name, tensor) of about ``bucket_bytes`` each, e.g. to load into
    a rollout engine. Under ZeRO-3 each bucket is gathered alone and released when the next is asked for,
    so the whole model is never gathered at once (a collective: every rank must take every bucket). The
    tensors are the parameters themselves, valid until the next bucket: copy what you keep. A model with
    LoRA adapters gives the plain model's parameters, each adapted weight merged (models/lora.py): a
    layer's weight, A and B share a bucket."""
    module = unwrapped(model)
    params = list(module.named_parameters())
    layers = lora.lora_layers(module)
    zero3 = is_zero3(model)
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for i, (name, p) in enumerate(params):
        bucket.append((name, p))
        size += (p.ds_numel if zero3 else p.numel()) * p.element_size()
        last = i + 1 == len(params)
        layer = lora.layer_of(name, layers)
        same_layer = not last and layer is not None and layer == lora.layer_of(params[i + 1][0], layers)
        if not last and (size < bucket_bytes or same_layer):
            continue
        if zero3:
            with deepspeed.zero.GatheredParameters([t for _, t in bucket], modifier_rank=None):
                yield lora.merged([(n, t.detach()) for n, t in bucket], layers)
        else:
            yield lora.merged([(n, t.detach()) for n, t in bucket], layers)
        bucket, size = [], 0


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU, on every rank, e.g. to sync weights to each rank's rollout
    engine or save. Under ZeRO-3 it is a collective: every rank must call it."""
    with gathered(model) as module:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
