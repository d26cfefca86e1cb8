"""One prefill per GRPO group against one per sample, on our HF engine (rollout/engine.py ``share_prefill``).

The workload is GRPO rollout steps of the smol profile: ``--prompts`` training questions x ``--generations``
samples, the Search-R1 template, 96-token turns, T 1.0, on the demo's data and retriever (run the data
stages of `make demo` or `searchr1 pipeline --profile smol` first), with SmolLM2-135M-Instruct (``--model``:
a saved policy folder, e.g. the smol profile's cold start ``models/sft``). Both arms draw with the same
per-sample seeds, and sharing a prefill changes no number, so the two arms generate the very same tokens:
the work is equal by construction (checked on every repeat). Figures are medians over ``--repeats`` steps
that draw other questions; the arms alternate and the order rotates each repeat.
Usage: python benchmarks/shared_prefill.py [--model models/sft] [--dtype float32] [--repeats 5]
       [--out reports/benchmarks/shared_prefill.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from rollout import spread  # benchmarks/rollout.py (this folder is on sys.path)

from searchr1.config import load_settings, profile_overrides
from searchr1.data.qa import load_qa
from searchr1.io import write_json
from searchr1.models.loading import load_policy
from searchr1.retrieval import load_retriever
from searchr1.rollout.engine import HFEngine
from searchr1.rollout.loop import run_rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/sft", help="a saved policy folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--out", default="reports/benchmarks/shared_prefill.json")
    args = parser.parse_args()

    settings = load_settings("params.yaml", profile_overrides("smol"))
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    questions = load_qa(Path(settings.qa.out_dir) / "train.jsonl")
    model, tok = load_policy(args.model, dtype=args.dtype)
    arms = {"shared": HFEngine(model, tok), "per_sample": HFEngine(model, tok, share_prefill=False)}
    prefill_s = {name: 0.0 for name in arms}
    real_forward = model.forward

    def timed_forward(*a, **kw):  # attributes prefill time (multi-token inputs) to the running arm
        start = time.perf_counter()
        out = real_forward(*a, **kw)
        if kw["input_ids"].shape[1] > 1:
            prefill_s[current[0]] += time.perf_counter() - start
        return out

    model.forward, current = timed_forward, [""]
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    rng, names = random.Random(0), list(arms)
    for repeat in range(args.repeats + 1):  # repeat 0 warms up and is not counted
        items = [it for it in rng.sample(questions, args.prompts) for _ in range(args.generations)]
        tokens = {}
        for name in names[repeat % 2:] + names[: repeat % 2]:
            current[0], prefill_s[name] = name, 0.0
            start = time.perf_counter()
            result = run_rollout(arms[name], tok, items, retriever, settings.rollout, settings.reward,
                                 topk=settings.retrieval.topk, seed=1000 + repeat)
            seconds = time.perf_counter() - start
            tokens[name] = [s.response_ids for s in result.samples]
            generated = sum(sum(s.response_mask) for s in result.samples)
            if repeat:
                runs[name].append({"seconds": seconds, "prefill_s": prefill_s[name], "tokens_per_s": generated / seconds})
            print(f"repeat {repeat} {name}: {seconds:.1f} s (prefill {prefill_s[name]:.1f} s), "
                  f"{generated / seconds:.1f} generated tokens/s", flush=True)
        if tokens["shared"] != tokens["per_sample"]:
            raise SystemExit("the arms generated different tokens: the comparison is not equal work")

    result = {
        "workload": {"model": args.model, "dtype": args.dtype, "prompts": args.prompts, "generations": args.generations,
                     "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "identical_samples": True},
        "arms": {name: {"seconds_per_step": spread([r["seconds"] for r in rs]),
                        "prefill_seconds_per_step": spread([r["prefill_s"] for r in rs]),
                        "generated_tokens_per_s": spread([r["tokens_per_s"] for r in rs])}
                 for name, rs in runs.items()},
    }
    shared, alone = (result["arms"][n]["seconds_per_step"]["median"] for n in ("shared", "per_sample"))
    result["speedup"] = round(alone / shared, 3)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    print("\n| arm | s / rollout step (median) | of which prefill | generated tokens/s |")
    print("|---|---|---|---|")
    for name, arm in result["arms"].items():
        print(f"| {name} | {arm['seconds_per_step']['median']} | {arm['prefill_seconds_per_step']['median']} | "
              f"{arm['generated_tokens_per_s']['median']} |")


if __name__ == "__main__":
    main()
