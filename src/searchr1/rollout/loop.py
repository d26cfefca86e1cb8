"""Multi-turn search rollout, token-in/token-out: generate until </search> or </answer>, retrieve for all
searching rows in one call, append the observation's tokens (mask 0), repeat; then score.

The loss mask is built from explicit spans as tokens are appended, never inferred from pad ids, and
the engine's sampled ids are kept verbatim (no decode/re-encode between turns).
"""

from __future__ import annotations

import re
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tqdm.auto import tqdm

from searchr1.config import RewardConfig, RolloutConfig
from searchr1.prompts import (
    ANSWER_CLOSE,
    INVALID_ACTION_MESSAGE,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    STOP_STRINGS,
    encode_prompt,
    format_passages,
    information_block,
    make_prompt,
)
from searchr1.retrieval.base import Doc, RetrievalError, Retriever
from searchr1.rewards.qa import compute_reward, exact_match, extract_answer, f1_score, substring_match
from searchr1.rollout.engine import GenerationEngine, SamplingSettings
from searchr1.rollout.types import RolloutResult, Sample, Turn

Mode = Literal["search", "direct", "rag"]
_QUERY_RE = re.compile(re.escape(SEARCH_OPEN) + r"(.*?)" + re.escape(SEARCH_CLOSE), re.DOTALL)
_TEMPLATE_OF_MODE = {"search": "search_r1", "direct": "direct", "rag": "rag"}
# What a sample counts as cut: prompt head, a turn at max_turn_tokens, passages, the total budget, and
# turns the engine ended because they degenerated into repetition.
TRUNCATIONS = ("prompt", "turn", "obs", "total", "repeat")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def build_prompt_ids(
    tokenizer, question: str, template: str = "search_r1", context: str = "", max_tokens: int | None = None
) -> tuple[list[int], bool]:
    """Prompt token ids, and whether the instruction head was cut to fit ``max_tokens``.

    Only the text before the question is ever cut; a question that alone does not fit is an error.
    """
    content = make_prompt(question, template, context)
    ids = encode_prompt(tokenizer, content)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    q = question.strip() if question.strip().endswith("?") else question.strip() + "?"
    split = max(content.rfind(q), 0)
    head_ids, tail = _encode(tokenizer, content[:split]), content[split:]
    cut = len(ids) - max_tokens
    while cut <= len(head_ids):
        ids = encode_prompt(tokenizer, tokenizer.decode(head_ids[cut:]) + tail)
        if len(ids) <= max_tokens:
            return ids, True
        cut += len(ids) - max_tokens
    raise ValueError(
        f"question does not fit in rollout.max_prompt_tokens={max_tokens} even without the instruction: {q[:80]!r}"
    )


def fit_docs(tokenizer, docs: Sequence[Doc], max_tokens: int, render=information_block) -> tuple[list[Doc], bool]:
    """The passages as the policy sees them: each passage's text cut evenly (titles kept) until
    ``render`` of them fits ``max_tokens``; and whether anything was cut."""
    n = len(_encode(tokenizer, render([d.contents for d in docs])))
    if n <= max_tokens or not docs:
        return list(docs), False
    bodies = [_encode(tokenizer, d.text) for d in docs]
    budget = max(len(b) for b in bodies)
    while budget > 0:
        budget = max(0, budget - max(1, (n - max_tokens) // len(docs)))
        shown = [Doc(d.id, f'"{d.title}"\n{tokenizer.decode(b[:budget])}', d.score) for d, b in zip(docs, bodies)]
        n = len(_encode(tokenizer, render([d.contents for d in shown])))
        if n <= max_tokens:
            return shown, True
    # Titles alone overflow: keep as many whole (title-only) passages as fit.
    for k in range(len(docs) - 1, 0, -1):
        shown = [Doc(d.id, f'"{d.title}"\n', d.score) for d in docs[:k]]
        if len(_encode(tokenizer, render([d.contents for d in shown]))) <= max_tokens:
            return shown, True
    raise ValueError(f"rollout.max_obs_tokens={max_tokens} cannot hold even one passage title")


def fit_passages(tokenizer, docs: Sequence[Doc], max_tokens: int, render=information_block) -> tuple[str, bool]:
    """``render`` the passages as fitted by ``fit_docs``; and whether anything was cut."""
    shown, cut = fit_docs(tokenizer, docs, max_tokens, render)
    return render([d.contents for d in shown]), cut


def search_checked(retriever: Retriever, queries: list[str], topk: int) -> list[list[Doc]]:
    """One batched retriever call; a complete answer or RetrievalError. Not retried here: the HTTP
    client is the one place that retries, and only transient failures (retrieval/client.py)."""
    try:
        result = retriever.search(queries, topk)
    except RetrievalError:
        raise
    except Exception as exc:  # an index or a custom retriever failing: say where, keep the cause
        raise RetrievalError(f"retrieval failed ({len(queries)} queries): {exc!r}") from exc
    if len(result) != len(queries):
        raise RetrievalError(f"retriever returned {len(result)} result lists for {len(queries)} queries")
    return result


@dataclass
class _Episode:
    sample: Sample
    budget_total: int  # max_total_tokens - prompt length: room left for the response
    logprobs_ok: bool = True
    done: bool = False
    counts: Counter = field(default_factory=Counter)

    def append(self, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
        s = self.sample
        s.response_ids.extend(ids)
        s.response_mask.extend([mask] * len(ids))
        if logprobs is None:
            self.logprobs_ok &= mask == 0
            logprobs = [0.0] * len(ids)
        s.logprobs.extend(logprobs)

    @property
    def room(self) -> int:
        return self.budget_total - len(self.sample.response_ids)


def classify_turn(text: str) -> tuple[str, str | None]:
    """("answer"|"search"|"invalid", query) from a turn's text, by which tag closed it last."""
    a, s = text.rfind(ANSWER_CLOSE), text.rfind(SEARCH_CLOSE)
    if a >= 0 and a > s and extract_answer(text) is not None:
        return "answer", None
    if s >= 0:
        queries = _QUERY_RE.findall(text)
        if queries and queries[-1].strip():
            return "search", queries[-1].strip()
    return "invalid", None


def sample_seed(seed: int, turn: int, uid: str) -> int:
    """A sample's sampling seed for one turn, from the call's seed and the sample's own uid: the same
    whichever rank, batch or position the sample is generated in (data-parallel runs split prompts
    over ranks, and the samples must not change with the split)."""
    return zlib.crc32(f"{seed}:{turn}:{uid}".encode())


def run_rollout(
    engine: GenerationEngine,
    tokenizer,
    items: Sequence[dict],
    retriever: Retriever | None = None,
    rollout_cfg: RolloutConfig | None = None,
    reward_cfg: RewardConfig | None = None,
    num_generations: int = 1,
    topk: int = 3,
    greedy: bool = False,
    mode: Mode | None = None,
    template: str | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> RolloutResult:
    """Roll out ``num_generations`` trajectories per item ({id, question, golden_answers}).

    ``mode``: "search" (multi-turn, needs a retriever; the default when one is given), "direct" (one
    turn, no retrieval; the default without one) or "rag" (retrieve for the question once, one turn).
    """
    cfg, reward_cfg = rollout_cfg or RolloutConfig(), reward_cfg or RewardConfig()
    mode = mode or ("search" if retriever is not None else "direct")
    if mode not in _TEMPLATE_OF_MODE:
        raise ValueError(f"unknown rollout mode {mode!r}; expected search, direct or rag")
    if mode != "direct" and retriever is None:
        raise ValueError(f"mode={mode!r} needs a retriever")
    # The search instruction is configurable (rollout.template) and the cold start writes the same one.
    template = template or (cfg.template if mode == "search" else _TEMPLATE_OF_MODE[mode])
    start = time.perf_counter()
    stats = Counter()
    for i, it in enumerate(items):
        for key in ("id", "question", "golden_answers"):
            if key not in it:
                raise ValueError(f"rollout item {i}: missing field {key!r}")

    contexts: list[tuple[str, list[Doc], bool]] = [("", [], False)] * len(items)  # (text, docs, truncated)
    if mode == "rag":
        docs = search_checked(retriever, [it["question"] for it in items], topk)
        stats["retriever_calls"] += 1
        contexts = []
        for d in docs:
            text, cut = fit_passages(tokenizer, d, cfg.max_obs_tokens, render=format_passages)
            contexts.append((text, d, cut))

    episodes: list[_Episode] = []
    seen: Counter = Counter()  # uids stay unique when callers repeat items (GRPO groups)
    for it, (context, docs, obs_cut) in zip(items, contexts):
        prompt_ids, cut = build_prompt_ids(tokenizer, it["question"], template, context, cfg.max_prompt_tokens)
        for _ in range(num_generations):
            s = Sample(
                uid=f"{it['id']}#{seen[it['id']]}",
                group_id=str(it["id"]),
                question=it["question"],
                golden_answers=list(it["golden_answers"]),
                prompt_ids=list(prompt_ids),
                response_ids=[],
                response_mask=[],
                logprobs=[],
            )
            seen[it["id"]] += 1
            ep = _Episode(s, cfg.max_total_tokens - len(prompt_ids))
            ep.counts["prompt"] += cut
            ep.counts["obs"] += obs_cut
            if docs:
                s.turns.append(Turn(text="", action="retrieve", query=it["question"], doc_ids=[d.id for d in docs]))
            if ep.room <= 0:
                raise ValueError(f"item {it['id']}: prompt leaves no room under rollout.max_total_tokens")
            episodes.append(ep)

    n_turns = cfg.max_turns + 1 if mode == "search" else 1
    stop = list(STOP_STRINGS) if mode == "search" else [ANSWER_CLOSE]
    base_seed = cfg.seed if seed is None else seed
    for turn in tqdm(range(n_turns), desc="rollout turns", disable=not progress):
        active = [ep for ep in episodes if not ep.done]
        if not active:
            break
        last = turn == n_turns - 1
        sampling = SamplingSettings(cfg.temperature, cfg.top_p, cfg.top_k, base_seed + 1000 * turn, greedy)
        budgets = [min(cfg.max_turn_tokens, ep.room) for ep in active]
        gens = engine.generate(
            [ep.sample.prompt_ids + ep.sample.response_ids for ep in active], max(budgets), sampling, stop,
            seeds=[sample_seed(base_seed, turn, ep.sample.uid) for ep in active],
        )
        searching: list[tuple[_Episode, Turn]] = []
        for ep, gen, budget in zip(active, gens, budgets):
            ids, lps = gen.token_ids[:budget], None if gen.logprobs is None else gen.logprobs[:budget]
            ep.append(ids, 1, lps)
            stats["generated_tokens"] += len(ids)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            action, query = classify_turn(text) if gen.finish_reason == "stop" else ("invalid", None)
            t = Turn(text=text, action=action, query=query)
            ep.sample.turns.append(t)
            if gen.finish_reason == "length" and budget == cfg.max_turn_tokens and ep.room > 0:
                ep.counts["turn"] += 1
            ep.counts["repeat"] += gen.finish_reason == "repeat"  # cut by the engine: degenerate repetition
            if action == "answer":
                ep.done, ep.sample.finished = True, True
            elif ep.room <= 0:  # hit max_total_tokens
                t.action, ep.done = "truncated", True
                ep.counts["total"] += 1
            elif action == "search" and not last:
                searching.append((ep, t))
            else:
                ep.sample.num_invalid += action == "invalid"
                if last or mode != "search":
                    ep.done = True  # the final turn may not search; no answer means unfinished
                else:
                    _observe(ep, t, INVALID_ACTION_MESSAGE, tokenizer)
        if searching:
            results = search_checked(retriever, [t.query for _, t in searching], topk)
            stats["retriever_calls"] += 1
            for (ep, t), docs in zip(searching, results):
                text, cut = fit_passages(tokenizer, docs, cfg.max_obs_tokens)
                ep.counts["obs"] += cut
                t.doc_ids = [d.id for d in docs]
                ep.sample.num_searches += 1
                _observe(ep, t, text, tokenizer)

    for ep in episodes:
        _finalise(ep, reward_cfg)
    samples = [ep.sample for ep in episodes]
    stats["wall_s"] = time.perf_counter() - start
    return RolloutResult(samples, episode_stats(samples, stats))


def _observe(ep: _Episode, turn: Turn, text: str, tokenizer) -> None:
    """Append environment text (mask 0), or end the episode if it would not fit under max_total_tokens."""
    ids = _encode(tokenizer, text)
    if len(ids) >= ep.room:  # leave at least one token for the next turn
        ep.done = True
        ep.counts["total"] += 1
        return
    turn.observation = text
    ep.append(ids, 0)


def _finalise(ep: _Episode, reward_cfg: RewardConfig) -> None:
    s = ep.sample
    if not ep.logprobs_ok:
        s.logprobs = None
    response = "".join(t.text + t.observation for t in s.turns)
    s.answer = extract_answer(response)
    s.reward = compute_reward(response, s.golden_answers, reward_cfg)
    gold = s.golden_answers
    s.metrics = {
        name: (0.0 if s.answer is None else fn(s.answer, gold))
        for name, fn in (("em", exact_match), ("substring_em", substring_match), ("f1", f1_score))
    }
    s.truncated = {k: int(ep.counts[k]) for k in TRUNCATIONS}


def episode_stats(samples: Sequence[Sample], extra: Counter | dict | None = None) -> dict[str, float]:
    """Batch statistics logged every step: searches, valid actions, finish ratio, lengths, truncation, reward."""
    n = max(len(samples), 1)
    turns = [t for s in samples for t in s.turns if t.action != "retrieve"]
    gen_tokens = sum(sum(s.response_mask) for s in samples)
    obs_tokens = sum(len(s.response_mask) - sum(s.response_mask) for s in samples)
    out = {
        "num_samples": float(len(samples)),
        "searches_per_sample": sum(s.num_searches for s in samples) / n,
        "valid_action_ratio": sum(t.action in ("search", "answer") for t in turns) / max(len(turns), 1),
        "finish_ratio": sum(s.finished for s in samples) / n,
        "mean_response_tokens": gen_tokens / n,
        "mean_observation_tokens": obs_tokens / n,
        "reward_mean": sum(s.reward for s in samples) / n,
        "em": sum(s.metrics.get("em", 0.0) for s in samples) / n,
    }
    for k in TRUNCATIONS:
        out[f"truncated_{k}"] = float(sum(s.truncated.get(k, 0) for s in samples))
    out.update({k: float(v) for k, v in (extra or {}).items()})
    if out.get("wall_s"):
        out["generated_tokens_per_s"] = out.get("generated_tokens", 0.0) / out["wall_s"]
    return out
