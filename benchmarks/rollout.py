"""Rollout benchmark: our loop and engine vs Search-R1's, one factor at a time, on equal work.

Four runs per policy, paired into arms that each change one thing:
- loop: Search-R1's loop vs ours (`run_rollout`), both on HFEngine with the same per-row seeds, so both
  sample the same trajectories and the ratio is the loop alone (stop strings and token-in/token-out vs
  fixed-length turns, a text-level cut and re-tokenising).
- sampler: Search-R1's loop on transformers `generate`, its `torch.multinomial` draw vs HFEngine's
  inverse-CDF draw swapped in (CPU cost of sampling over the vocabulary).
- engine: Search-R1's loop, inverse-CDF draw with the same per-row seeds, on `generate` (finished rows stay
  in the batch until the last one stops) vs HFEngine (a finished row leaves the batch); the row-steps
  column splits that from the rest of the per-step cost.
- end_to_end: Search-R1's loop on `generate` vs ours on HFEngine (the product of the three).
Policies: "tiny", a 2-layer Llama on SmolLM2's tokenizer SFT'd on search-then-answer trajectories that end
in `</answer>` + EOS, so rows stop at different times on both sides; "smol" (`--smol`), SmolLM2-135M-Instruct
loaded as `policy.kind=smol` does, which emits none of the tags and generates until EOS or the limit.
Each run is repeated (--repeats, --smol-repeats), rotating the run order; medians and min–max are reported.
Usage: python benchmarks/rollout.py [--no-smol] [--top-p 0.95] [--out reports/benchmarks/rollout.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import torch
import transformers
from transformers import GenerationConfig, TopPLogitsWarper

from searchr1.config import PolicyConfig, RewardConfig, RolloutConfig
from searchr1.io import write_json
from searchr1.models.loading import POLICY_FILE, load_policy, prepare_base_policy
from searchr1.models.smollm2 import load_smollm2_tokenizer
from searchr1.models.tiny import build_tiny_policy
from searchr1.prompts import ANSWER_CLOSE, INVALID_ACTION_MESSAGE, SEARCH_CLOSE, STOP_STRINGS, information_block
from searchr1.retrieval.base import Doc
from searchr1.rewards.qa import compute_reward
from searchr1.rollout.engine import Generation, HFEngine, SamplingSettings, cut_at_stop, row_seeds, sample_tokens
from searchr1.rollout.loop import build_prompt_ids, classify_turn, fit_passages, run_rollout, sample_seed

# A short instruction keeps prompts (and the tiny policy's SFT) cheap on CPU; every run uses it.
TEMPLATE = "Answer with <search> query </search> and <answer> answer </answer>. Question: {question}\n"
CITIES = ["Quilltown", "Ostara", "Brindle", "Varnholm", "Pellory", "Ashgrove", "Mireton", "Calderra"]
FOUNDERS = [
    "Mira Fenwick", "Tobin Harl", "Edda Voss", "Rupert Lane", "Ilse Moreau", "Corin Dale", "Yara Pell", "Osric Vane",
]

RUNS = {  # name: (loop, engine)
    "search_r1@generate": ("search_r1", "generate"),
    "search_r1@generate_icdf": ("search_r1", "generate_icdf"),
    "search_r1@hf_engine": ("search_r1", "hf_engine"),
    "ours@hf_engine": ("ours", "hf_engine"),
}
ARMS = {  # name: (baseline run, candidate run, what the ratio isolates)
    "loop": ("search_r1@hf_engine", "ours@hf_engine",
             "the loop: stop strings, ids kept vs fixed-length turns, text cut, re-tokenising (same engine, seeds)"),
    "sampler": ("search_r1@generate", "search_r1@generate_icdf",
                "the draw inside generate: torch.multinomial vs inverse-CDF (same loop and engine)"),
    "engine": ("search_r1@generate_icdf", "search_r1@hf_engine",
               "the engine: generate (finished rows stay) vs HFEngine (rows leave: row-steps); same loop, draw, seeds"),
    "end_to_end": ("search_r1@generate", "ours@hf_engine", "everything above together (the old headline)"),
}


@dataclass
class Workload:
    questions: int
    generations: int  # samples per question (GRPO group size)
    max_turns: int  # searches allowed; one more turn for the answer
    turn_tokens: int


@dataclass
class Trajectory:
    uid: str
    text: str  # policy text + observations, as the reward sees it
    kept_tokens: int  # policy tokens (mask 1) in the training sequence
    searches: int
    answered: bool
    reward: float
    retokenised_turns: int = 0  # turns whose re-tokenised ids differ from the sampled ids (Search-R1's loop)


def world(n: int) -> tuple[list[Doc], list[dict]]:
    docs, items = [], []
    for i in range(n):
        city, founder = CITIES[i % 8] + ("" if i < 8 else f" {i // 8}"), FOUNDERS[(i * 3) % 8]
        docs.append(Doc(f"d{i}", f'"{city}"\n{city} is a town founded by {founder} near the river.'))
        items.append({"id": f"q{i}", "question": f"Who founded {city}", "golden_answers": [founder]})
    return docs, items


class KeywordRetriever:
    def __init__(self, docs):
        self.docs = docs

    def search(self, queries, topk):
        words = lambda s: set(re.findall(r"\w+", s.lower()))  # noqa: E731
        return [sorted(self.docs, key=lambda d: -len(words(q) & words(d.contents)))[:topk] for q in queries]


# ---- policies -----------------------------------------------------------------------------------------


def train_tag_policy(tok, docs, items, steps: int, seed: int = 0):
    """A tiny Llama SFT'd on search-then-answer trajectories ending in </answer> + EOS (loss on policy tokens only)."""
    model = build_tiny_policy(len(tok), seed=seed, hidden_size=64)
    model.generation_config.eos_token_id = tok.eos_token_id
    seqs = []
    for d, it in zip(docs, items):
        prompt = build_prompt_ids(tok, it["question"], TEMPLATE)[0]
        city = it["question"].removeprefix("Who founded ")
        parts = [
            (f"<think>I need to find who founded {city}.</think>\n<search> founder of {city} </search>", 1),
            (information_block([d.contents]), 0),
            (f"<think>The passage says it.</think>\n<answer> {it['golden_answers'][0]} </answer>", 1),
        ]
        ids, mask = list(prompt), [0] * len(prompt)
        for text, m in parts:
            e = tok.encode(text, add_special_tokens=False)
            ids, mask = ids + e, mask + [m] * len(e)
        seqs.append((ids + [tok.eos_token_id], mask + [1]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = [seqs[i] for i in torch.randperm(len(seqs), generator=g)[:8].tolist()]
        width = max(len(s) for s, _ in batch)
        ids = torch.tensor([s + [0] * (width - len(s)) for s, _ in batch])
        target = torch.tensor([mk + [0] * (width - len(s)) for s, mk in batch])[:, 1:].bool()
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1][target]  # lm_head only where trained
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), ids[:, 1:][target])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


def load_smol_policy(folder: Path):
    """SmolLM2-135M-Instruct as `policy.kind=smol` builds it (GGUF dequantised to fp32), cached in ``folder``."""
    if not (folder / POLICY_FILE).exists():
        prepare_base_policy(PolicyConfig(kind="smol", out_dir=str(folder)), corpus_path="", qa_paths=[], out_dir=folder)
    return load_policy(str(folder))


# ---- engines ------------------------------------------------------------------------------------------


class GenerateEngine:
    """transformers ``model.generate`` on a left-padded batch: finished rows stay in the batch (as padding)
    until the last row stops or ``max_new_tokens``. No stop strings: it serves Search-R1's loop only.

    sampler="multinomial": generate's own ``torch.multinomial`` on the global RNG, seeded per call.
    sampler="icdf": ``torch.multinomial`` swapped for HFEngine's inverse-CDF draw with one uniform per row
    from the row's own seed, so each row samples what it would sample on HFEngine.
    """

    keeps_finished_rows = True

    def __init__(self, model, tokenizer, eos_ids: list[int], sampler: str):
        self.model, self.tok, self.eos_ids, self.sampler = model, tokenizer, eos_ids, sampler

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, sampling, stop, seeds=None):
        if stop:
            raise ValueError("GenerateEngine runs Search-R1's loop, which uses no stop strings")
        width, pad = max(len(p) for p in prompts), self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=sampling.temperature,
                               top_p=sampling.top_p, top_k=sampling.top_k, pad_token_id=pad, eos_token_id=self.eos_ids)
        torch.manual_seed(sampling.seed)
        rngs = [random.Random(s) for s in row_seeds(len(prompts), sampling.seed, seeds)]
        draws = 0

        def icdf(probs, num_samples=1, **_):  # probs: generate's softmax after its temperature/top-p warpers
            nonlocal draws
            draws += 1
            uniform = torch.tensor([r.random() for r in rngs])
            return sample_tokens(probs.log(), SamplingSettings(), uniform)[:, None]

        if self.sampler == "icdf":
            with mock.patch.object(torch, "multinomial", icdf):
                out = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
            if not draws:
                raise RuntimeError("generate never called torch.multinomial: the inverse-CDF swap did not apply")
        else:
            out = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
        gens = []
        for row in out[:, width:].tolist():
            n, reason = cut_at_stop(row, self.tok, (), set(self.eos_ids))  # drops the padding tail
            gens.append(Generation(row[:n], None, reason))
        return gens

    def update_weights(self, weights):
        raise NotImplementedError


class CountingEngine:
    """Counts what the engine did: tokens it returned, and row-steps it decoded (batch x steps for
    ``generate``, whose finished rows keep decoding as padding; one per returned token for HFEngine)."""

    def __init__(self, inner):
        self.inner, self.tokens, self.row_steps = inner, 0, 0

    def generate(self, prompts, max_new_tokens, sampling, stop, seeds=None):
        gens = self.inner.generate(prompts, max_new_tokens, sampling, stop, seeds=seeds)
        lengths = [len(g.token_ids) for g in gens]
        self.tokens += sum(lengths)
        keeps_rows = getattr(self.inner, "keeps_finished_rows", False)
        self.row_steps += len(gens) * max(lengths) if keeps_rows else sum(lengths)
        return gens

    def update_weights(self, weights):
        self.inner.update_weights(weights)


def build_engines(model, tok, top_p: float) -> dict:
    hf = HFEngine(model, tok, cut_repeats=False)  # no repetition cut: neither generate nor Search-R1 has one
    engines = {
        "hf_engine": hf,
        "generate": GenerateEngine(model, tok, hf.eos_ids, "multinomial"),
        "generate_icdf": GenerateEngine(model, tok, hf.eos_ids, "icdf"),
    }
    warm = [build_prompt_ids(tok, "warm up", TEMPLATE)[0]]
    hf.generate(warm, 4, SamplingSettings(seed=0), STOP_STRINGS)  # builds the stop-string watch (decodes the vocab)
    for e in engines.values():
        e.generate(warm, 4, SamplingSettings(top_p=top_p, seed=0), [])
    return engines


# ---- the two loops ------------------------------------------------------------------------------------


def search_r1_rollout(engine, tok, items, generations, retriever, cfg: RolloutConfig) -> list[Trajectory]:
    """Search-R1's loop (llm_agent/generation.py): each turn samples up to ``max_turn_tokens`` with no stop
    strings (a row ends at EOS), decodes, cuts the text after the first </search> (else </answer>),
    re-tokenises it, and appends retrieved passages. Seeds per row and turn as in ``run_rollout``, so on a
    seeded engine both loops draw the same tokens from the same context."""
    rows = []
    for it in items:
        prompt = build_prompt_ids(tok, it["question"], TEMPLATE, max_tokens=cfg.max_prompt_tokens)[0]
        for k in range(generations):  # uids as run_rollout names a GRPO group's samples
            uid = f"{it['id']}#{k}"
            rows.append({"uid": uid, "item": it, "ids": list(prompt), "traj": Trajectory(uid, "", 0, 0, False, 0.0),
                         "done": False})
    eos = {tok.eos_token_id}
    for turn in range(cfg.max_turns + 1):
        active = [r for r in rows if not r["done"]]
        if not active:
            break
        sampling = SamplingSettings(cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed + 1000 * turn)
        gens = engine.generate([r["ids"] for r in active], cfg.max_turn_tokens, sampling, stop=[],
                               seeds=[sample_seed(cfg.seed, turn, r["uid"]) for r in active])
        searching = []
        for r, g in zip(active, gens):
            traj = r["traj"]
            text = tok.decode(g.token_ids, skip_special_tokens=True)
            for tag in (SEARCH_CLOSE, ANSWER_CLOSE):  # Search-R1's _postprocess_responses
                if tag in text:
                    text = text.split(tag)[0] + tag
                    break
            ids = tok.encode(text, add_special_tokens=False)
            k, _ = cut_at_stop(g.token_ids, tok, STOP_STRINGS, eos)
            traj.retokenised_turns += ids != [t for t in g.token_ids[:k] if t not in eos]
            r["ids"] += ids
            traj.kept_tokens += len(ids)
            traj.text += text
            action, query = classify_turn(text)
            if action == "answer" or turn == cfg.max_turns:
                r["done"], traj.answered = True, action == "answer"
            elif action == "search":
                searching.append((r, query))
            else:
                r["ids"] += tok.encode(INVALID_ACTION_MESSAGE, add_special_tokens=False)
                traj.text += INVALID_ACTION_MESSAGE
        if searching:
            for (r, _), docs in zip(searching, retriever.search([q for _, q in searching], 1)):
                text, _ = fit_passages(tok, docs, cfg.max_obs_tokens)
                r["ids"] += tok.encode(text, add_special_tokens=False)
                r["traj"].text += text
                r["traj"].searches += 1
    for r in rows:
        r["traj"].reward = compute_reward(r["traj"].text, r["item"]["golden_answers"], RewardConfig())
    return [r["traj"] for r in rows]


def our_rollout(engine, tok, items, generations, retriever, cfg: RolloutConfig) -> list[Trajectory]:
    """Our loop, as training runs it."""
    res = run_rollout(engine, tok, items, retriever, cfg, RewardConfig(), num_generations=generations, topk=1,
                      template=TEMPLATE)
    return [Trajectory(s.uid, "".join(t.text + t.observation for t in s.turns), sum(s.response_mask), s.num_searches,
                       s.finished, s.reward) for s in res.samples]


LOOPS = {"search_r1": search_r1_rollout, "ours": our_rollout}
EQUAL_WORK_COUNTS = ("kept_policy_tokens", "searches", "answers")


# ---- measuring ----------------------------------------------------------------------------------------


def run_once(loop: str, engine, tok, items, docs, cfg: RolloutConfig, generations: int):
    """One timed rollout; its metrics and trajectories."""
    engine = CountingEngine(engine)
    start = time.perf_counter()
    trajs = LOOPS[loop](engine, tok, items, generations, KeywordRetriever(docs), cfg)
    wall = time.perf_counter() - start
    kept = sum(t.kept_tokens for t in trajs)
    return {
        "wall_s": wall,
        "engine_tokens": engine.tokens,
        "row_steps": engine.row_steps,
        "kept_policy_tokens": kept,
        "wasted_tokens": engine.tokens - kept,
        "searches": sum(t.searches for t in trajs),
        "answers": sum(t.answered for t in trajs),
        "retokenised_turns": sum(t.retokenised_turns for t in trajs),
        "reward_mean": round(sum(t.reward for t in trajs) / len(trajs), 3),
    }, trajs


def spread(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "all": [round(v, digits) for v in values]}


def bench_policy(model, tok, work: Workload, repeats: int, args) -> dict:
    """All runs on one policy, ``repeats`` times, rotating the run order each repeat."""
    docs, items = world(work.questions)
    cfg = RolloutConfig(max_turns=work.max_turns, max_turn_tokens=work.turn_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed, max_obs_tokens=128)
    engines = build_engines(model, tok, args.top_p)
    reps: dict[str, list[dict]] = {name: [] for name in RUNS}
    trajs: dict[str, list[Trajectory]] = {}
    names = list(RUNS)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            loop, engine = RUNS[name]
            metrics, trajs[name] = run_once(loop, engines[engine], tok, items, docs, cfg, work.generations)
            metrics["kept_tokens_per_s"] = metrics["kept_policy_tokens"] / metrics["wall_s"]
            reps[name].append(metrics)
            print(f"  repeat {rep + 1}/{repeats} {name:24s} {metrics['wall_s']:7.2f} s", flush=True)

    runs = {}
    for name, rs in reps.items():
        counts = {k: v for k, v in rs[0].items() if k not in ("wall_s", "kept_tokens_per_s")}
        runs[name] = {
            "loop": RUNS[name][0], "engine": RUNS[name][1], **counts,
            "same_counts_every_repeat": all({k: r[k] for k in counts} == counts for r in rs),
            "wall_s": spread([r["wall_s"] for r in rs]),
            "kept_tokens_per_s": spread([r["kept_tokens_per_s"] for r in rs], 1),
        }
    arms = {}
    for arm, (base, cand, isolates) in ARMS.items():
        b, c = {t.uid: t for t in trajs[base]}, {t.uid: t for t in trajs[cand]}
        arms[arm] = {
            "baseline": base, "candidate": cand, "isolates": isolates,
            "wall_speedup": spread([x["wall_s"] / y["wall_s"] for x, y in zip(reps[base], reps[cand])], 2),
            "kept_tokens_per_s_ratio": spread(
                [y["kept_tokens_per_s"] / x["kept_tokens_per_s"] for x, y in zip(reps[base], reps[cand])], 2),
            "same_trajectories": sum(b[u].text == c[u].text for u in b),
            "rows": len(b),
            "equal_work": all(b[u].text == c[u].text for u in b),  # else compare kept tokens/s, not wall time
            **{f"{k}_baseline_candidate": [runs[base][k], runs[cand][k]] for k in EQUAL_WORK_COUNTS},
        }
    return {"workload": asdict(work), "repeats": repeats, "runs": runs, "arms": arms,
            "sampler_step_ms": sampler_step_ms(model, tok, items[0], work.questions * work.generations, args)}


def sampler_step_ms(model, tok, item: dict, rows: int, args, calls: int = 20) -> dict:
    """Milliseconds per decoding step spent choosing the next token of ``rows`` rows (median of ``calls``): the
    part of each engine's step that the sampler arm swaps, and the top-p filter. The logits are the policy's
    own next-token logits for a prompt (a trained policy's are peaked, random ones are not: HFEngine sorts only
    the top-p candidates, so its cost depends on that), repeated for every row."""
    with torch.no_grad():
        ids = torch.tensor([tok(TEMPLATE.format(question=item["question"]))["input_ids"]])
        row = model(input_ids=ids).logits[0, -1].float() / args.temperature
    logits = row.expand(rows, -1).contiguous()
    logp, uniform, warper = torch.log_softmax(logits, -1), torch.rand(rows), TopPLogitsWarper(args.top_p)
    cases = {
        "generate_multinomial": lambda: torch.multinomial(logp.exp(), 1),
        "hf_engine_inverse_cdf": lambda: sample_tokens(logp, SamplingSettings(), uniform),
        "generate_top_p_warper": lambda: warper(None, logits),
        "hf_engine_top_p_and_draw": lambda: sample_tokens(logp, SamplingSettings(top_p=args.top_p), uniform),
    }
    candidates = int((logp[0].exp() >= (1.0 - args.top_p) / logp.shape[-1]).sum())
    out = {"rows": rows, "vocab": logp.shape[-1], "top_p": args.top_p, "top_p_candidates": candidates}
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        out[name] = round(statistics.median(times), 2)
    return out


# ---- report -------------------------------------------------------------------------------------------


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:,.{digits}f} [{s['min']:,.{digits}f}–{s['max']:,.{digits}f}]"


def pair(arm: dict, key: str) -> str:
    return " / ".join(f"{v:,}" for v in arm[f"{key}_baseline_candidate"])


def markdown(results: dict) -> str:
    out = []
    for policy, res in results["policies"].items():
        w = res["workload"]
        out += [
            f"\n### {policy}: {res['description']}",
            f"{w['questions']} questions x {w['generations']} samples, max_turns {w['max_turns']} (searches; one more "
            f"turn answers), {w['turn_tokens']} tokens per turn; {res['repeats']} repeats, median [min–max]\n",
            "| run | wall s | kept tokens/s | engine tokens | row-steps decoded | kept policy tokens | wasted tokens "
            "| searches | answers | re-tokenised turns |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in res["runs"].items():
            out.append(
                f"| {name} | {fmt(r['wall_s'])} | {fmt(r['kept_tokens_per_s'], 0)} | {r['engine_tokens']:,} "
                f"| {r['row_steps']:,} | {r['kept_policy_tokens']:,} | {r['wasted_tokens']:,} | {r['searches']} "
                f"| {r['answers']} | {r['retokenised_turns']} |"
            )
        out += [
            "",
            "| arm | baseline → candidate | isolates | x wall | x kept tokens/s | same trajectories "
            "| kept tokens | searches | answers |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, a in res["arms"].items():
            out.append(
                f"| {arm} | {a['baseline']} → {a['candidate']} | {a['isolates']} | {fmt(a['wall_speedup'])} "
                f"| {fmt(a['kept_tokens_per_s_ratio'])} | {a['same_trajectories']}/{a['rows']} "
                f"| {pair(a, 'kept_policy_tokens')} | {pair(a, 'searches')} | {pair(a, 'answers')} |"
            )
        ms = res["sampler_step_ms"]
        out.append(
            f"\nChoosing the next token for {ms['rows']} rows x {ms['vocab']:,} tokens, ms per step: generate's "
            f"torch.multinomial {ms['generate_multinomial']}, HFEngine's inverse-CDF draw "
            f"{ms['hf_engine_inverse_cdf']}; "
            f"top-p {ms['top_p']} filter on the policy's own logits: generate's warper (sorts the vocabulary) "
            f"{ms['generate_top_p_warper']}, HFEngine with its draw (sorts the {ms['top_p_candidates']:,} tokens "
            f"with p >= (1 - top_p) / V) {ms['hf_engine_top_p_and_draw']}."
        )
    out.append("\nx = baseline / candidate wall time and candidate / baseline kept tokens/s, per repeat (paired). "
               "Where not every trajectory is the same, the sides did different work: read x kept tokens/s.")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4, help="samples per question (GRPO group size)")
    ap.add_argument("--max-turns", type=int, default=2, help="searches allowed (one more turn answers)")
    ap.add_argument("--turn-tokens", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=200, help="SFT steps of the tiny policy")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of every run, rotating the order")
    ap.add_argument("--smol", action=argparse.BooleanOptionalAction, default=True, help="also benchmark SmolLM2-135M")
    ap.add_argument("--smol-questions", type=int, default=8)
    ap.add_argument("--smol-generations", type=int, default=2)
    ap.add_argument("--smol-max-turns", type=int, default=1)
    ap.add_argument("--smol-turn-tokens", type=int, default=48)
    ap.add_argument("--smol-repeats", type=int, default=3)
    ap.add_argument("--smol-dir", default=".cache/bench_rollout_smollm2", help="SmolLM2 fp32 checkpoint (made once)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.95, help="Search-R1's rollout top_p")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/benchmarks/rollout.json")
    args = ap.parse_args()
    started = time.perf_counter()
    results = {"setup": {
        "args": vars(args), "device": "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }, "policies": {}}

    tok = load_smollm2_tokenizer()
    work = Workload(args.questions, args.generations, args.max_turns, args.turn_tokens)
    t0 = time.perf_counter()
    model, loss = train_tag_policy(tok, *world(args.questions), args.train_steps, args.seed)
    print(f"tiny policy: {args.train_steps} SFT steps, loss {loss:.3f}, {time.perf_counter() - t0:.1f} s", flush=True)
    results["policies"]["tiny"] = {
        "description": f"tiny Llama (hidden 64, 2 layers) on SmolLM2's 49,152-token tokenizer, {args.train_steps} SFT "
                       f"steps (final loss {loss:.3f}) on trajectories ending </answer> + EOS",
        **bench_policy(model, tok, work, args.repeats, args)}

    if args.smol:
        model, smol_tok = load_smol_policy(Path(args.smol_dir))
        work = Workload(args.smol_questions, args.smol_generations, args.smol_max_turns, args.smol_turn_tokens)
        print("smol policy: SmolLM2-135M-Instruct", flush=True)
        results["policies"]["smol"] = {
            "description": "SmolLM2-135M-Instruct (policy.kind=smol, fp32); emits none of the tags, so every turn "
                           "runs to EOS or the token limit and no loop can end it earlier",
            **bench_policy(model, smol_tok, work, args.smol_repeats, args)}

    results["setup"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["setup"]["total_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
