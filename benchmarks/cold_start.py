"""The cold start's forward + backward on SmolLM2-135M-Instruct: float32, bf16 (autocast over fp32 weights),
and bf16 with the shared instruction run once per batch (models/heads.py ``share_prefix``).

The work is the smol profile's own: the cold-start examples its pipeline saved
(``models/sft/sft_examples.sample.jsonl``, 100 mined trajectories: run `searchr1 pipeline --profile smol`,
or its sft stage, first), tokenised as the cold start tokenises them, in its length-grouped batches of
``sft.batch_size`` rows and ``sft.micro_batch_size`` rows per pass, from the base model's weights. Every arm
runs the same batches; a repeat runs each batch once per arm (alternating), and the figure per arm is
the median over repeats of its trained tokens per second (all tokens of the batch, as the stage logs).
Optimizer steps are left out (the same in every arm).
Usage: python benchmarks/cold_start.py [--examples models/sft/sft_examples.sample.jsonl] [--model models/base]
       [--batches 4] [--repeats 3] [--out reports/benchmarks/cold_start.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import searchr1.models.heads as heads
from searchr1.config import load_settings, profile_overrides
from searchr1.io import iter_jsonl, write_json
from searchr1.models.loading import load_policy
from searchr1.sft.train import _length_grouped_batches, batch_loss_backward, collate, tokenize_example

ARMS = {"fp32": ("float32", False), "bf16": ("bfloat16", False), "bf16_shared_prefix": ("bfloat16", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", default="models/sft/sft_examples.sample.jsonl")
    parser.add_argument("--model", default="models/base", help="the policy to train (the smol base)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/benchmarks/cold_start.json")
    args = parser.parse_args()

    cfg = load_settings("params.yaml", profile_overrides("smol")).sft
    model, tok = load_policy(args.model)
    model.train()
    model.config.use_cache = False
    examples = [tokenize_example(r["segments"], tok, cfg.max_length) for _, r in iter_jsonl(args.examples)]
    groups = _length_grouped_batches([len(ids) for ids, _ in examples], cfg.batch_size, torch.Generator().manual_seed(0))
    batches = [collate([examples[i] for i in g], tok.pad_token_id) for g in groups[: args.batches]]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    shared = [heads.shared_prefix_length(b["input_ids"][: cfg.micro_batch_size], None,
                                         torch.zeros_like(b["input_ids"][: cfg.micro_batch_size], dtype=torch.bool))
              for b in batches]
    min_shared = heads.MIN_SHARED_PREFIX
    rates: dict[str, list[float]] = {name: [] for name in ARMS}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up and is not counted
        names = list(ARMS)[repeat % len(ARMS):] + list(ARMS)[: repeat % len(ARMS)]
        for name in names:
            dtype, share = ARMS[name]
            heads.MIN_SHARED_PREFIX = min_shared if share else 1 << 30
            start = time.perf_counter()
            for batch in batches:
                batch_loss_backward(model, batch, cfg.micro_batch_size, dtype)
                model.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            if repeat:
                rates[name].append(tokens / seconds)
            print(f"repeat {repeat} {name}: {seconds:.1f} s, {tokens / seconds:.1f} tokens/s", flush=True)
    heads.MIN_SHARED_PREFIX = min_shared

    medians = {name: statistics.median(r) for name, r in rates.items()}
    result = {
        "workload": {"examples": args.examples, "batches": len(batches), "rows_per_batch": cfg.batch_size,
                     "micro_batch_size": cfg.micro_batch_size, "tokens": tokens, "repeats": args.repeats,
                     "shared_prefix_tokens_per_micro_batch": shared, "torch_threads": torch.get_num_threads()},
        "tokens_per_s": {name: {"median": round(m, 1), "all": [round(v, 1) for v in rates[name]]}
                         for name, m in medians.items()},
        "vs_fp32": {name: round(m / medians["fp32"], 2) for name, m in medians.items()},
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    print("\n| arm | trained tokens/s (median) | vs fp32 |")
    print("|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {m:.1f} | {result['vs_fp32'][name]}x |")


if __name__ == "__main__":
    main()
