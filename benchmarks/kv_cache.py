"""KV-cache benchmark: HFEngine's in-place cache vs transformers' DynamicCache, on one GRPO step's rollout.

Both arms are the same HFEngine, loop, prompts, seeds and policy; only the cache differs:
- dynamic: transformers' ``DynamicCache``, which appends each token with ``torch.cat`` (every decoding
  step copies every layer's whole cache);
- in_place: ``models/kv_cache.GrowingLayer`` (writes into a buffer with spare room; ``HFEngine``'s default).
Equal work is checked, not assumed: every repeat compares the two arms' sampled token ids and log-probs.

Workload (defaults): the demo's GRPO rollout, ``--prompts`` 16 training questions x ``--generations`` 8,
settings from params.yaml (T, top_p, turns, token limits), the retriever of ``retrieval.method``, on a
trained policy (``--model``, default the demo's cold start ``models/sft``; run ``make demo`` first). Each
repeat draws other questions and seeds; arms alternate and the order rotates.
Usage: python benchmarks/kv_cache.py [--model models/sft] [--repeats 5] [--set rollout.template=search_r1 ...]
       [--out reports/benchmarks/kv_cache.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from rollout import spread  # benchmarks/rollout.py (this folder is on sys.path when a script here runs)

from searchr1.config import load_settings
from searchr1.io import write_json
from searchr1.models.loading import load_policy
from searchr1.retrieval import load_retriever
from searchr1.rollout.engine import HFEngine
from searchr1.rollout.loop import run_rollout

ARMS = {"dynamic": False, "in_place": True}  # name: HFEngine(in_place_cache=...)


class CountingEngine:
    """Counts decoding forward passes (one token per row) and prefill passes of the wrapped engine's model."""

    def __init__(self, engine: HFEngine):
        self.engine, self.decode_steps, self.prefills = engine, 0, 0
        model, forward = engine.model, engine.model.forward

        def counted(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids.shape[1] == 1:
                self.decode_steps += 1
            else:
                self.prefills += 1
            return forward(*args, **kwargs)

        model.forward = counted
        self._restore = lambda: setattr(model, "forward", forward)

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)

    def update_weights(self, weights):
        self.engine.update_weights(weights)

    def close(self):
        self._restore()


def one_rollout(arm: str, model, tok, items, retriever, settings, generations: int, seed: int) -> dict:
    engine = CountingEngine(HFEngine(model, tok, in_place_cache=ARMS[arm]))
    try:
        start = time.perf_counter()
        result = run_rollout(engine, tok, items, retriever, settings.rollout, settings.reward,
                             num_generations=generations, topk=settings.retrieval.topk, seed=seed)
        wall = time.perf_counter() - start
    finally:
        engine.close()
    samples = result.samples
    return {
        "wall_s": wall,
        "decode_steps": engine.decode_steps,
        "prefills": engine.prefills,
        "generated_tokens": int(sum(sum(s.response_mask) for s in samples)),
        "searches": int(sum(s.num_searches for s in samples)),
        "sampled": [(s.response_ids, s.logprobs) for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="models/sft", help="a trained policy folder (default: the demo's cold start)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, e.g. rollout.template=search_r1 for a SmolLM2 policy (repeatable)")
    parser.add_argument("--out", default="reports/benchmarks/kv_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings(args.params, args.overrides)
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model}: no such policy; run `make demo` (or `searchr1 sft`) first, or pass --model")
    model, tok = load_policy(args.model, dtype=settings.policy.dtype)
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    train_path = Path(settings.qa.out_dir) / "train.jsonl"
    questions = [json.loads(line) for line in train_path.open()]

    one_rollout("in_place", model, tok, questions[:2], retriever, settings, 2, seed=0)  # warm-up: stop-string tables
    reps: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    names = list(ARMS)
    identical = []
    for rep in range(args.repeats):
        items = random.Random(rep).sample(questions, args.prompts)
        runs = {}
        for arm in names[rep % 2:] + names[: rep % 2]:
            runs[arm] = one_rollout(arm, model, tok, items, retriever, settings, args.generations, seed=rep)
            print(f"  repeat {rep + 1}/{args.repeats} {arm:9s} {runs[arm]['wall_s']:6.2f} s "
                  f"({runs[arm]['decode_steps']} decoding steps)", flush=True)
        identical.append(runs["dynamic"].pop("sampled") == runs["in_place"].pop("sampled"))
        for arm, run in runs.items():
            reps[arm].append(run)

    report = {
        "model": args.model, "overrides": args.overrides, "prompts": args.prompts,
        "generations": args.generations, "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
        "identical_samples_every_repeat": all(identical),
        "arms": {arm: {
            "wall_s": spread([r["wall_s"] for r in rs]),
            "generated_tokens_per_s": spread([r["generated_tokens"] / r["wall_s"] for r in rs], 1),
            "decode_steps": [r["decode_steps"] for r in rs],
            "prefills": [r["prefills"] for r in rs],
            "generated_tokens": [r["generated_tokens"] for r in rs],
            "searches": [r["searches"] for r in rs],
        } for arm, rs in reps.items()},
        "speedup": spread([d["wall_s"] / p["wall_s"] for d, p in zip(reps["dynamic"], reps["in_place"])], 2),
    }
    write_json(args.out, report)
    print(json.dumps(report, indent=1))
    print("\n| arm | rollout s, median [min-max] | generated tokens/s | decoding steps |\n|---|---|---|---|")
    for arm, r in report["arms"].items():
        w, t = r["wall_s"], r["generated_tokens_per_s"]
        print(f"| {arm} | {w['median']} [{w['min']}-{w['max']}] | {t['median']} | {statistics.median(r['decode_steps'])} |")
    s = report["speedup"]
    print(f"\nspeedup (dynamic / in_place, per repeat): {s['median']} [{s['min']}-{s['max']}]; "
          f"identical samples every repeat: {report['identical_samples_every_repeat']}")


if __name__ == "__main__":
    main()
