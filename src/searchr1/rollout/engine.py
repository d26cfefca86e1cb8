"""Generation engines: token ids in, sampled token ids (+ their log-probs) out, stopping on stop strings.

The rollout talks only to the ``GenerationEngine`` protocol; ``HFEngine`` decodes with a transformers
model's forward pass and KV cache (CPU or GPU), ``VLLMEngine`` (vllm_engine.py) runs vLLM on GPU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from searchr1.models.copy_llama import CACHE_ARG  # the KV-cache keyword of this transformers version
from searchr1.models.kv_cache import growing_cache

FinishReason = Literal["stop", "eos", "length", "repeat"]


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
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One generation per prompt. ``seeds`` (one per prompt) make each row's draws depend on its own
        seed only, not on the other rows of the call (so how prompts are split over ranks or calls
        never changes a sample); without them row i uses ``sampling.seed + i``."""
        ...

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


def repeating_tail(tokens: Sequence[int], min_repeats: int = 3, max_period: int = 8, min_tokens: int = 8) -> bool:
    """Whether ``tokens`` end in a block of 1..``max_period`` tokens repeated ``min_repeats`` times in a row
    (and at least ``min_tokens`` tokens long): a degenerate turn ("herehereherehere") that would
    otherwise run to the token limit."""
    n = len(tokens)
    if n < min_tokens or tokens[-1] not in tokens[-1 - max_period : -1]:
        return False
    for period in range(1, max_period + 1):
        span = max(period * min_repeats, min_tokens)
        if span > n:
            break
        if all(tokens[i] == tokens[i - period] for i in range(n - span + period, n)):
            return True
    return False


class _StopWatch:
    """Per-row stop-string check that decodes only when it could matter.

    The token that completes a stop string must contain the string's last character, so a row's tail
    is decoded only on steps whose sampled token can (``candidates[token]``). Tokens that decode alone to
    the replacement character (pieces of a multi-byte character) are always candidates.
    """

    def __init__(self, tokenizer, stop: Sequence[str], vocab_size: int, device: torch.device):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.window = max(len(s) for s in stop) + 2  # a stop string spans at most len(s) tokens (+ merges)
        last = {s[-1] for s in stop} | {"\ufffd"}
        n = min(vocab_size, len(tokenizer))
        pieces = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        self.candidates = torch.zeros(vocab_size, dtype=torch.bool)
        self.candidates[:n] = torch.tensor([any(c in p for c in last) for p in pieces])
        self.candidates = self.candidates.to(device)

    def hit(self, generated: list[int]) -> bool:
        tail = self.tokenizer.decode(generated[-self.window :], skip_special_tokens=False)
        return any(s in tail for s in self.stop)


def sample_tokens(logp: torch.Tensor, sampling: SamplingSettings, uniform: torch.Tensor | None) -> torch.Tensor:
    """Next token per row from ``logp`` (B, V) = log_softmax(logits / temperature): greedy, or top-k ->
    top-p -> draw.

    The draw is inverse-CDF with one given uniform per row, so a row's tokens depend only on its own
    uniforms, not on which other rows are still in the batch. (It is also far cheaper than
    ``torch.multinomial`` on CPU, which takes ~50 ms for 64 rows x 49k tokens.)
    """
    if sampling.greedy or sampling.temperature == 0:
        return logp.argmax(-1)
    if sampling.top_k and sampling.top_k < logp.shape[-1]:
        kth = logp.topk(sampling.top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    probs = logp.exp()
    if sampling.top_p < 1.0:
        # Only tokens with p >= (1 - top_p) / V can be in the nucleus: those below hold less than 1 - top_p
        # between them, so the mass before each of them already covers top_p. Sorting just the candidates
        # (a few hundred of SmolLM2's 49k for a trained model) instead of the vocabulary keeps the same tokens.
        candidates = int((probs >= (1.0 - sampling.top_p) / probs.shape[-1]).sum(-1).max())
        if candidates * 8 < probs.shape[-1]:
            sorted_p, order = probs.topk(max(candidates, 1), dim=-1)
        else:  # a nearly flat distribution (an untrained policy): a full sort is cheaper than a big top-k
            sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > sampling.top_p  # mass before a token already covers top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    # float32 is enough: each token's interval cdf[i] - cdf[i-1] is off by at most ~1 ulp of 1 (6e-8),
    # whatever the vocabulary size, because accumulated rounding shifts both ends alike.
    cdf = probs.cumsum(-1)
    target = uniform[:, None] * cdf[:, -1:]  # scaled to the row's total: never past the last token
    return torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1)[:, 0]


def row_seeds(n: int, seed: int | None, seeds: Sequence[int] | None) -> list[int]:
    """One seed per row: the given ones, else ``seed + i``, else fresh random ones."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        return [int(s) for s in seeds]
    if seed is None:
        return [random.getrandbits(62) for _ in range(n)]
    return [seed + i for i in range(n)]


class HFEngine:
    """Batched decoding on a transformers causal LM (CPU or GPU), with stop strings and sampled-token log-probs.

    Its own loop over the model's forward with a KV cache, rather than ``model.generate``: a row that hits a
    stop string or EOS, or degenerates into repetition, leaves the batch at once (its cache rows are
    dropped), so a turn costs the sum of the rows' lengths, not batch size x the longest row. The cache
    grows in place (models/kv_cache.py) instead of being copied on every token. Rows with the same prompt
    (a GRPO group's samples on their first turn) share one prefill: the prompt is run once and its cache
    rows copied to each sample (``share_prefill``; vLLM's prefix cache does the same).
    """

    def __init__(self, model, tokenizer, max_batch_size: int | None = None, cut_repeats: bool = True,
                 in_place_cache: bool = True, share_prefill: bool = True):
        self.model, self.tokenizer, self.max_batch_size = model.eval(), tokenizer, max_batch_size
        self.cut_repeats = cut_repeats  # end a row whose tail repeats (finish_reason "repeat")
        self.in_place_cache = in_place_cache  # False: transformers' own cache (same numbers; for comparison)
        self.share_prefill = share_prefill  # False: every row pays its own prefill (same numbers; for comparison)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("neither the model's generation_config nor the tokenizer defines an EOS token")
        self.eos_ids = sorted(set(eos))
        # Padding value is irrelevant (attention mask + explicit cuts); never used to derive masks.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self._watches: dict[tuple, _StopWatch] = {}

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
        self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSettings, stop: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        if not prompts:
            return []
        seeds = row_seeds(len(prompts), sampling.seed, seeds)
        step = self.max_batch_size or len(prompts)
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            out.extend(self._generate_batch(prompts[i : i + step], max_new_tokens, sampling, stop, seeds[i : i + step]))
        return out

    def _watch(self, stop: Sequence[str], vocab_size: int, device: torch.device) -> _StopWatch:
        key = (tuple(stop), vocab_size, str(device))
        if key not in self._watches:
            self._watches[key] = _StopWatch(self.tokenizer, stop, vocab_size, device)
        return self._watches[key]

    @torch.no_grad()
    def _generate_batch(self, prompts, max_new_tokens, sampling, stop, seeds) -> list[Generation]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        device, n = self.device, len(prompts)
        # Prefill each distinct prompt once; row r continues from distinct prompt row_of[r].
        first: dict[tuple[int, ...], int] = {}
        row_of = [first.setdefault(tuple(p), len(first)) if self.share_prefill else r for r, p in enumerate(prompts)]
        distinct = [list(p) for p in first] if self.share_prefill else prompts
        width = max(len(p) for p in prompts)
        ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(distinct), width), dtype=torch.long)
        for r, p in enumerate(distinct):  # left padding: every row's next token sits at the same column
            ids[r, width - len(p) :] = torch.tensor(p)
            attn[r, width - len(p) :] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp_min(0)  # left padding shifts no row's positions
        greedy = sampling.greedy or sampling.temperature == 0
        temperature = 1.0 if greedy else sampling.temperature
        rngs = [random.Random(seed) for seed in seeds]  # one stream per row: see row_seeds
        eos = torch.tensor(self.eos_ids, device=device)

        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        reasons: list[FinishReason] = ["length"] * n
        rows = torch.arange(n, device=device)  # original index of each row still in the batch
        cache = growing_cache(self.model) if self.in_place_cache else None  # None: the model's own cache type
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True, logits_to_keep=1,
            **({CACHE_ARG: cache} if cache is not None else {}),
        )
        cache = getattr(out, CACHE_ARG)
        logits = out.logits[:, -1]
        if len(distinct) < n:  # copy each distinct prompt's cache and next-token logits to its rows
            expand = torch.tensor(row_of, device=device)
            cache.batch_select_indices(expand)
            logits, attn, positions = logits[expand], attn[expand], positions[expand]
        watch = self._watch(stop, logits.shape[-1], device) if stop else None
        for t in range(max_new_tokens):
            logits = logits.float()
            logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, -1)
            rows_l = rows.tolist()
            uniform = None if greedy else torch.tensor([rngs[r].random() for r in rows_l], device=device)
            nxt = sample_tokens(logp, sampling, uniform)
            lp = logp.gather(-1, nxt[:, None])[:, 0]
            done = torch.isin(nxt, eos)
            maybe_stop = watch.candidates[nxt] & ~done if watch is not None else None
            nxt_l, lp_l, done_l = nxt.tolist(), lp.tolist(), done.tolist()
            maybe_l = maybe_stop.tolist() if maybe_stop is not None else [False] * len(rows_l)
            for j, r in enumerate(rows_l):
                tokens[r].append(nxt_l[j])
                logprobs[r].append(lp_l[j])
                if done_l[j]:
                    reasons[r] = "eos"
                elif maybe_l[j] and watch.hit(tokens[r]):
                    reasons[r], done_l[j] = "stop", True
                elif self.cut_repeats and repeating_tail(tokens[r]):
                    reasons[r], done_l[j] = "repeat", True
            if t == max_new_tokens - 1:
                break
            keep = [j for j, d in enumerate(done_l) if not d]
            if not keep:
                break
            if len(keep) < len(rows_l):  # finished rows leave the batch, cache included
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                rows, nxt, attn, positions = rows[idx], nxt[idx], attn[idx], positions[idx]
            attn = torch.cat([attn, attn.new_ones(len(keep), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None], attention_mask=attn, position_ids=positions, use_cache=True,
                **{CACHE_ARG: cache},
            )
            logits = out.logits[:, -1]
        return [Generation(tokens[r], logprobs[r], reasons[r]) for r in range(n)]


def load_engine(settings, source: str, max_batch_size: int | None = None) -> tuple[GenerationEngine, object]:
    """(engine, tokenizer) for a saved policy (folder, HF id or ``models:/`` URI): the engine
    ``rollout.engine`` names, on this process's device, in ``policy.dtype`` (``auto`` resolved)."""
    from searchr1.models.loading import default_device, load_policy, load_tokenizer, resolve_model_path
    from searchr1.models.precision import resolve_dtype

    dtype = resolve_dtype(settings.policy, default_device())
    if settings.rollout.engine == "vllm":
        from searchr1.rollout.vllm_engine import VLLMEngine

        path = resolve_model_path(str(source))
        return VLLMEngine.from_settings(settings, path, dtype=dtype), load_tokenizer(path)
    model, tokenizer = load_policy(source, dtype=dtype, device=default_device())
    return HFEngine(model, tokenizer, max_batch_size=max_batch_size), tokenizer
