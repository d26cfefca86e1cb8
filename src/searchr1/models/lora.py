"""LoRA adapters on a policy or value model (the peft package): which weights train, and the plain
weights a rollout engine, a checkpoint and the registry read.

``add_lora`` puts an adapter on the target Linear layers and freezes everything else; the model object
stays the same HF class (peft replaces its target layers in place), so the trainer, the heads code and
the HF rollout engine use it unchanged. The adapter computes ``W x + s B A x`` (s = alpha / rank) and is
never merged into the trained model: a merge and unmerge in place would not give the base weights back
bit for bit, and the base is the KL reference. Engines and checkpoints get ``merged`` tensors instead,
``W + s B A`` computed per layer on the side, under the names of the plain model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

ADAPTER = "default"  # peft's name for a model's one adapter
ADAPTER_DIR = "adapter"  # beside the merged weights: <final_dir>/adapter, <sft out_dir>/adapter
ADAPTER_CONFIG = "adapter_config.json"
MERGED_CACHE = Path(".cache/merged_adapters")
_PARTS = (".base_layer.", ".lora_A.", ".lora_B.")


def add_lora(model: nn.Module, cfg, setting: str, task_type: str | None = "CAUSAL_LM"):
    """Put a LoRA adapter (``cfg``, a LoraConfig named ``setting`` in errors) on ``model``'s target layers
    and freeze every other weight; returns the ``PeftModel`` around it (for ``disable_adapter`` and saving
    the adapter). ``model`` itself is changed in place and is what trains."""
    import peft

    config = peft.LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        bias="none", task_type=task_type,
    )
    try:
        wrapped = peft.get_peft_model(model, config, adapter_name=ADAPTER)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"{setting}.target_modules={cfg.target_modules!r}: {exc} (this model's Linear layers: "
                         f"{', '.join(names)})") from None
    other = sorted({type(m).__name__ for m in model.modules()
                    if isinstance(m, peft.tuners.lora.LoraLayer) and not isinstance(m, peft.tuners.lora.Linear)})
    if other:  # merged() folds B @ A into a Linear weight only
        raise ValueError(f"{setting}.target_modules={cfg.target_modules!r} adapts non-Linear layers ({', '.join(other)}): "
                         "only Linear layers are supported")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(head, "lora_A"):
        # A merged head would differ from the embedding it shares its weight with: no plain checkpoint holds that.
        raise ValueError(f"{setting}.target_modules={cfg.target_modules!r} adapts the LM head, which this model ties to "
                         "its input embeddings: leave it out")
    return wrapped


def lora_layers(module: nn.Module) -> dict[str, float]:
    """Name -> scaling (alpha / rank) of every LoRA layer in ``module``; empty for a plain model. (Known by
    peft's attributes: importing peft takes seconds, which a model without adapters need not pay.)"""
    return {name: m.scaling[ADAPTER] for name, m in module.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def layer_of(name: str, layers: Mapping[str, float]) -> str | None:
    """The LoRA layer a tensor name belongs to (its base weight or bias, A or B), or None."""
    for part in _PARTS:
        if part in name:
            prefix = name.split(part, 1)[0]
            return prefix if prefix in layers else None
    return None


def merged(named: Iterable[tuple[str, torch.Tensor]], layers: Mapping[str, float]) -> list[tuple[str, torch.Tensor]]:
    """``named`` tensors as the plain model names them, each LoRA layer's weight replaced by W + s B @ A
    (in float32, then W's dtype) and its A and B left out. A layer's base weight, A and B must all be in
    ``named``; other tensors pass through as they are (without LoRA layers this is the identity)."""
    tensors = dict(named)
    out = []
    for name, t in tensors.items():
        layer = layer_of(name, layers)
        if layer is None:
            out.append((name, t))
            continue
        rest = name[len(layer) + 1 :]
        if not rest.startswith("base_layer."):
            continue  # the adapter's own A and B: folded into the weight
        rest = rest[len("base_layer.") :]
        if rest == "weight":
            a, b = tensors[f"{layer}.lora_A.{ADAPTER}.weight"], tensors[f"{layer}.lora_B.{ADAPTER}.weight"]
            t = (t.float() + layers[layer] * (b.float() @ a.float())).to(t.dtype)
        out.append((f"{layer}.{rest}", t))
    return out


def save_policy(module: nn.Module, adapter, state: Mapping[str, torch.Tensor], out: Path) -> None:
    """Write the merged weights as a plain HF checkpoint into ``out`` (what evaluation, ``ask`` and vLLM
    load) and the adapter into ``out/adapter`` (peft's format). ``state`` is ``module``'s full state dict
    (gathered under ZeRO-3); ``adapter`` the PeftModel ``add_lora`` returned."""
    module.save_pretrained(out, state_dict=dict(merged(state.items(), lora_layers(module))))
    # peft names a model's tensors from the PeftModel around it: base_model.model.<the model's own name>.
    adapter_state = {f"base_model.model.{k}": v for k, v in state.items() if ".lora_" in k}
    adapter.save_pretrained(out / ADAPTER_DIR, state_dict=adapter_state, save_embedding_layers=False)


def is_adapter_only(folder: str | Path) -> bool:
    """Whether ``folder`` holds a peft adapter and no model of its own."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).exists() and not (folder / "config.json").exists()


def merged_checkpoint(adapter_dir: str | Path) -> Path:
    """A plain HF checkpoint of an adapter folder's base model with the adapter merged in, written once
    under ``.cache/merged_adapters`` (keyed by the adapter's and the base's contents), so every loader
    (HF, vLLM) reads an adapter like any checkpoint."""
    import peft

    from searchr1.io import atomic_path
    from searchr1.models.loading import load_policy
    from searchr1.tracking import path_hash

    adapter_dir = Path(adapter_dir)
    base = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path: cannot tell which model it adapts")
    if not Path(base).exists():
        raise FileNotFoundError(f"{adapter_dir / ADAPTER_CONFIG}: its base model {base} is not here (relative paths "
                                "are from the project root); register the merged weights instead (registry.artifact=merged)")
    key = hashlib.md5(f"{path_hash(adapter_dir)}:{path_hash(base)}".encode()).hexdigest()[:16]
    out = MERGED_CACHE / key
    if not (out / "config.json").exists():
        model, tokenizer = load_policy(base)
        with atomic_path(out) as tmp:
            peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out
