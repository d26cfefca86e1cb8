"""Rollout benchmark: our token-in/token-out loop and engine vs a loop built the way Search-R1's is.

Same model, prompts, retriever and sampling seed. The baseline generates ``max_turn_tokens`` every turn
(no stop strings) with transformers ``generate``, cuts at the tag by text, and decodes + re-tokenises each
turn with a mask derived from pad ids. Ours: stop strings, rows leave the batch as they finish
(``HFEngine``), sampled ids kept verbatim. Two cross runs (each loop on the other's engine) show where
the speed comes from. The policy is SmolLM2's tokenizer on a tiny Llama briefly trained on
tag-formatted trajectories, so it really emits <search>/<answer> at varying positions (the real SmolLM2
runs ~3 tok/s here and never emits the tags).
Usage: python benchmarks/rollout.py [--questions 16 --generations 4 --turn-tokens 64 --out PATH]
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from searchr1.config import RewardConfig, RolloutConfig
from searchr1.io import write_json
from searchr1.models.smollm2 import load_smollm2_tokenizer
from searchr1.models.tiny import build_tiny_policy
from searchr1.prompts import ANSWER_CLOSE, INVALID_ACTION_MESSAGE, SEARCH_CLOSE, STOP_STRINGS, information_block
from searchr1.retrieval.base import Doc
from searchr1.rewards.qa import compute_reward
from searchr1.rollout.engine import Generation, HFEngine, SamplingSettings, cut_at_stop
from searchr1.rollout.loop import build_prompt_ids, classify_turn, fit_passages, run_rollout

# A short instruction keeps the CPU-only SFT of the tiny policy cheap; both loops use it.
TEMPLATE = "Answer with <search> query </search> and <answer> answer </answer>. Question: {question}\n"
CITIES = ["Quilltown", "Ostara", "Brindle", "Varnholm", "Pellory", "Ashgrove", "Mireton", "Calderra"]
FOUNDERS = ["Mira Fenwick", "Tobin Harl", "Edda Voss", "Rupert Lane", "Ilse Moreau", "Corin Dale", "Yara Pell", "Osric Vane"]


def world(n: int) -> tuple[list[Doc], list[dict]]:
    docs, items = [], []
    for i in range(n):
        city, founder = CITIES[i % 8] + ("" if i < 8 else f" {i // 8}"), FOUNDERS[(i * 3) % 8]
        docs.append(Doc(f"d{i}", f'"{city}"\n{city} is a town founded by {founder} near the river.'))
        items.append({"id": f"q{i}", "question": f"Who founded {city}", "golden_answers": [founder]})
    return docs, items


class KeywordRetriever:
    def __init__(self, docs):
        self.docs, self.calls = docs, 0

    def search(self, queries, topk):
        self.calls += 1
        words = lambda s: set(re.findall(r"\w+", s.lower()))  # noqa: E731
        return [sorted(self.docs, key=lambda d: -len(words(q) & words(d.contents)))[:topk] for q in queries]


class RecordingEngine:
    """Wraps an engine; remembers every raw output by its input context (the ground truth of what was sampled).
    A GRPO group sends the same context several times, so each context keeps a list of outputs."""

    def __init__(self, inner):
        self.inner, self.outputs, self.generated = inner, {}, 0

    def generate(self, prompts, max_new_tokens, sampling, stop, seeds=None):
        gens = self.inner.generate(prompts, max_new_tokens, sampling, stop, seeds)
        for p, g in zip(prompts, gens):
            self.outputs.setdefault(tuple(p), []).append(g.token_ids)
            self.generated += len(g.token_ids)
        return gens

    def update_weights(self, weights):
        self.inner.update_weights(weights)


class GenerateEngine:
    """transformers ``model.generate`` on a left-padded batch: what a Search-R1-style loop runs on HF.

    ``stop`` is passed as ``stop_strings`` (the ablation "our loop on generate"); the batch still runs
    until its last row stops. No log-probs: the baseline recomputes them in the trainer.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, sampling, stop, seeds=None):
        from transformers import GenerationConfig

        width, pad = max(len(p) for p in prompts), self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=sampling.temperature,
                               top_p=sampling.top_p, top_k=sampling.top_k, pad_token_id=pad,
                               eos_token_id=self.tok.eos_token_id, stop_strings=list(stop) or None)
        torch.manual_seed(sampling.seed)
        out = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg, tokenizer=self.tok)
        gens = []
        for row in out[:, width:].tolist():
            n, reason = cut_at_stop(row, self.tok, stop, {self.tok.eos_token_id})  # drops the padding tail
            gens.append(Generation(row[:n], None, reason))
        return gens

    def update_weights(self, weights):
        raise NotImplementedError


def train_tag_policy(tok, docs, items, steps: int, seed: int = 0):
    """A tiny Llama SFT'd on search-then-answer trajectories (loss on policy tokens only)."""
    model = build_tiny_policy(len(tok), seed=seed, hidden_size=64)
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
        seqs.append((ids, mask))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    g = torch.Generator().manual_seed(seed)
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


def diff_count(a: list[int], b: list[int]) -> int:
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def audit_ours(samples, engine: RecordingEngine, eos: int) -> dict:
    """Walk each trajectory; spans the engine produced must be verbatim and mask 1, everything else mask 0."""
    mask_err = drift = eos_dropped = 0
    for s in samples:
        pos, resp = 0, s.response_ids
        while pos < len(resp):
            outs = engine.outputs.get(tuple(s.prompt_ids + resp[:pos]))
            if outs is None:  # observation token
                mask_err += s.response_mask[pos] != 0
                pos += 1
                continue
            out = min(outs, key=lambda o: diff_count(resp[pos : pos + len(o)], o))  # this sample's own draw
            kept = resp[pos : pos + len(out)]
            drift += diff_count(kept, out[: len(kept)])
            mask_err += sum(m != 1 for m in s.response_mask[pos : pos + len(kept)])
            eos_dropped += out[: len(kept)].count(eos) - kept.count(eos)
            pos += len(kept)
    return {"mask_errors": mask_err, "token_drift": drift, "eos_dropped": eos_dropped}


def search_r1_style_rollout(engine, tok, items, retriever, cfg: RolloutConfig, topk: int) -> tuple[list[dict], dict]:
    """The Search-R1 loop: fixed-length turns, text-level cut, decode + re-tokenise, mask from pad ids."""
    pad, eos = tok.pad_token_id, tok.eos_token_id
    rows = [
        {"item": it, "prompt": build_prompt_ids(tok, it["question"], TEMPLATE, max_tokens=cfg.max_prompt_tokens)[0],
         "resp": [], "mask": [], "truth": [], "text": "", "done": False}
        for it in items
    ]
    audit = {"token_drift": 0, "eos_dropped": 0, "wasted_tokens": 0}
    for turn in range(cfg.max_turns + 1):
        active = [r for r in rows if not r["done"]]
        if not active:
            break
        sampling = SamplingSettings(cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed + 1000 * turn)
        gens = engine.generate([r["prompt"] + r["resp"] for r in active], cfg.max_turn_tokens, sampling, stop=[])
        searching = []
        for r, g in zip(active, gens):
            text = tok.decode(g.token_ids, skip_special_tokens=True)
            for tag in (SEARCH_CLOSE, ANSWER_CLOSE):  # Search-R1's _postprocess_responses
                if tag in text:
                    text = text.split(tag)[0] + tag
                    break
            ids = tok.encode(text, add_special_tokens=False)  # re-tokenised
            k, _ = cut_at_stop(g.token_ids, tok, STOP_STRINGS, {eos})
            audit["wasted_tokens"] += len(g.token_ids) - k
            audit["token_drift"] += diff_count(ids, g.token_ids[:k])
            audit["eos_dropped"] += g.token_ids[:k].count(eos) - ids.count(eos)
            r["resp"] += ids
            r["mask"] += [int(t != pad) for t in ids]
            r["truth"] += [1] * len(ids)
            r["text"] += text
            action, query = classify_turn(text)
            if action == "answer" or turn == cfg.max_turns:
                r["done"] = True
            elif action == "search":
                searching.append((r, query))
            else:
                obs = tok.encode(INVALID_ACTION_MESSAGE, add_special_tokens=False)
                r["resp"], r["mask"], r["truth"] = r["resp"] + obs, r["mask"] + [0] * len(obs), r["truth"] + [0] * len(obs)
                r["text"] += INVALID_ACTION_MESSAGE
        if searching:
            results = retriever.search([q for _, q in searching], topk)
            for (r, _), docs in zip(searching, results):
                text, _ = fit_passages(tok, docs, cfg.max_obs_tokens)
                obs = tok.encode(text, add_special_tokens=False)
                r["resp"], r["mask"], r["truth"] = r["resp"] + obs, r["mask"] + [0] * len(obs), r["truth"] + [0] * len(obs)
                r["text"] += text
    audit["mask_errors"] = sum(m != t for r in rows for m, t in zip(r["mask"], r["truth"]))
    # pad == eos: the chat template's <|im_end|> tokens in the prompt get attention 0 in Search-R1.
    audit["prompt_tokens_masked_as_pad"] = sum(r["prompt"].count(pad) for r in rows)
    return rows, audit


RUNS = {  # name: (loop, engine)
    "search_r1_style": ("search_r1_style", "generate"),
    "ours": ("ours", "hf_engine"),
    "search_r1_loop_on_our_engine": ("search_r1_style", "hf_engine"),
    "our_loop_on_generate": ("ours", "generate"),
}


def run_once(loop, engine, tok, items, docs, cfg, generations) -> dict:
    engine, retriever = RecordingEngine(engine), KeywordRetriever(docs)
    start = time.perf_counter()
    if loop == "ours":
        res = run_rollout(engine, tok, items, retriever, cfg, RewardConfig(), num_generations=generations, topk=1,
                          template=TEMPLATE)
        audit = audit_ours(res.samples, engine, tok.eos_token_id)
        audit["prompt_tokens_masked_as_pad"] = 0  # attention comes from explicit lengths, never pad ids
        kept = sum(sum(s.response_mask) for s in res.samples)
        rewards = [s.reward for s in res.samples]
    else:
        rows, audit = search_r1_style_rollout(engine, tok, [it for it in items for _ in range(generations)],
                                              retriever, cfg, topk=1)
        kept = sum(sum(r["truth"]) for r in rows)
        rewards = [compute_reward(r["text"], r["item"]["golden_answers"], RewardConfig()) for r in rows]
    wall = time.perf_counter() - start
    audit["wasted_tokens"] = engine.generated - kept
    return {
        "wall_s": round(wall, 3),
        "engine_generated_tokens": engine.generated,
        "kept_policy_tokens": kept,
        "kept_tokens_per_s": round(kept / wall, 1),
        "retriever_calls": retriever.calls,
        "reward_mean": round(sum(rewards) / len(rewards), 3),
        **audit,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4, help="samples per question (GRPO group size)")
    ap.add_argument("--turn-tokens", type=int, default=64)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per run, alternating runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/benchmarks/rollout.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    tok = load_smollm2_tokenizer()
    docs, items = world(args.questions)
    t0 = time.perf_counter()
    model, loss = train_tag_policy(tok, docs, items, args.train_steps, args.seed)
    train_s = time.perf_counter() - t0
    cfg = RolloutConfig(max_turns=args.max_turns, max_turn_tokens=args.turn_tokens, temperature=args.temperature,
                        seed=args.seed, max_obs_tokens=128)
    engines = {"hf_engine": HFEngine(model, tok), "generate": GenerateEngine(model, tok)}
    for e in engines.values():  # warm-up
        e.generate([build_prompt_ids(tok, "warm up")[0]], 4, SamplingSettings(seed=0), [])

    runs: dict[str, list[dict]] = {name: [] for name in RUNS}
    for _ in range(args.repeats):  # alternate, so machine load hits every run alike
        for name, (loop, engine) in RUNS.items():
            runs[name].append(run_once(loop, engines[engine], tok, items, docs, cfg, args.generations))
    results = {}
    for name, reps in runs.items():
        best = min(reps, key=lambda r: r["wall_s"])  # same seed: every repeat generates the same tokens
        results[name] = {**best, "wall_s_all": [r["wall_s"] for r in reps]}
    base = results["search_r1_style"]
    for name in RUNS:
        results[name]["speedup_kept_tokens_per_s"] = round(results[name]["kept_tokens_per_s"] / base["kept_tokens_per_s"], 2)
        results[name]["speedup_wall"] = round(base["wall_s"] / results[name]["wall_s"], 2)
    results["setup"] = {
        "tokenizer": "SmolLM2-135M-Instruct (GGUF)", "model": "tiny Llama (hidden 64, 2 layers), SFT on tag trajectories",
        "sft_steps": args.train_steps, "sft_final_loss": round(loss, 3), "sft_s": round(train_s, 1),
        "questions": args.questions, "generations": args.generations, "max_turns": args.max_turns,
        "max_turn_tokens": args.turn_tokens, "temperature": args.temperature, "seed": args.seed,
        "repeats": args.repeats, "device": "cpu", "threads": torch.get_num_threads(),
    }
    write_json(args.out, results)
    keys = ["wall_s", "engine_generated_tokens", "kept_policy_tokens", "kept_tokens_per_s", "speedup_kept_tokens_per_s",
            "speedup_wall", "retriever_calls", "reward_mean", "mask_errors", "token_drift", "eos_dropped",
            "wasted_tokens", "prompt_tokens_masked_as_pad"]
    names = list(RUNS)
    print(f"{'metric':28s}" + "".join(f"{n:>30s}" for n in names))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{results[n].get(k, '-')!s:>30s}" for n in names))
    print("wall s per repeat: " + "; ".join(f"{n} {results[n]['wall_s_all']}" for n in names))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
