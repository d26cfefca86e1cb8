"""Generation engines: token ids in, sampled token ids (+ their log-probs) out, stopping on stop strings.

The rollout talks only to the ``GenerationEngine`` protocol; ``HFEngine`` runs transformers ``generate``
(CPU or GPU), ``VLLMEngine`` (vllm_engine.py) runs vLLM on GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    greedy: bool = False


@dataclass
class Generation:
    token_ids: list[int]  # exactly the sampled ids, ending with the stop string's last token or EOS when hit
    logprobs: list[float] | None  # log p(token) under softmax(logits / temperature), one per token
    finish_reason: FinishReason


@runtime_checkable
class GenerationEngine(Protocol):
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str]
    ) -> list[Generation]: ...

    def update_weights(self, weights) -> None:
        """Load new policy weights (a state dict or a model with the same architecture)."""
        ...


def cut_at_stop(ids: list[int], tokenizer, stop: Sequence[str], eos_ids: set[int]) -> tuple[int, FinishReason]:
    """Length of ``ids`` to keep: through the first token that completes a stop string, else through the
    first EOS (kept: it is a sampled action), else all of it."""
    eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    limit = len(ids) if eos_at is None else eos_at

    def has_stop(k: int) -> bool:
        text = tokenizer.decode(ids[:k], skip_special_tokens=False)
        return any(s in text for s in stop)

    if stop and limit > 0 and has_stop(limit):
        lo, hi = 1, limit  # smallest k with has_stop(k): once a stop string is complete, it stays
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if has_stop(mid) else (mid + 1, hi)
        return lo, "stop"
    if eos_at is not None:
        return eos_at + 1, "eos"
    return len(ids), "length"


class _StopOnStrings:
    """Per-row stopping criterion: a row is done once its generated tail decodes to text holding a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.start = tokenizer, list(stop), prompt_width
        self.window = max(len(s) for s in stop) + 2  # a stop string spans at most len(s) tokens

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window) :].tolist()
        done = [any(s in self.tokenizer.decode(row, skip_special_tokens=False) for s in self.stop) for row in tail]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """transformers ``generate`` over left-padded batches, with stop strings and sampled-token log-probs."""

    def __init__(self, model, tokenizer, max_batch_size: int | None = None):
        self.model, self.tokenizer, self.max_batch_size = model.eval(), tokenizer, max_batch_size
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("neither the model's generation_config nor the tokenizer defines an EOS token")
        self.eos_ids = sorted(set(eos))
        # Padding value is irrelevant (attention mask + explicit cuts); never used to derive masks.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, weights) -> None:
        if weights is self.model:
            return
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        self.model.load_state_dict(state)
        self.model.eval()

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str] = ()
    ) -> list[Generation]:
        if not prompts:
            return []
        step = self.max_batch_size or len(prompts)
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            seed = None if sampling.seed is None else sampling.seed + i
            out.extend(self._generate_batch(prompts[i : i + step], max_new_tokens, sampling, stop, seed))
        return out

    @torch.no_grad()
    def _generate_batch(self, prompts, max_new_tokens, sampling, stop, seed) -> list[Generation]:
        from transformers import GenerationConfig, StoppingCriteriaList

        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row's next token sits at the same column
            ids[r, width - len(p) :] = torch.tensor(p)
            attn[r, width - len(p) :] = 1
        greedy = sampling.greedy or sampling.temperature == 0
        gen_kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if not greedy:
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        criteria = StoppingCriteriaList([_StopOnStrings(self.tokenizer, stop, width)] if stop else [])
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            res = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                generation_config=GenerationConfig(**gen_kwargs),
                stopping_criteria=criteria,
            )
        new = res.sequences[:, width:]
        temp = 1.0 if greedy else sampling.temperature
        logits = torch.stack(res.logits, dim=1).float() / temp  # (B, T, V): raw logits of each step
        lp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = set(self.eos_ids)
        gens = []
        for r in range(len(prompts)):
            row = new[r].tolist()
            n, reason = cut_at_stop(row, self.tokenizer, stop, eos)
            gens.append(Generation(row[:n], lp[r, :n].tolist(), reason))
        return gens
