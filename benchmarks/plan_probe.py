"""How a cold start plans its searches: P(multi-search plan | question), by question type.

The mined cold start opens each trajectory with a plan decided from the question alone
(``sft/trajectories.py``: "One search should do." vs "This needs more than one search."), and its
later turns follow that plan. A greedy policy takes the second search only where it puts more mass on a
multi-search plan than on a one-search plan. This scores every plan phrase after the rollout's prompt
(teacher-forced, no sampling) and reports, per question type, the mean P(multi) and the share of
questions where P(multi) > P(one). A diagnostic, not a speed benchmark.

    python benchmarks/plan_probe.py --models models/sft other/models/sft --n 90
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from searchr1.data.qa import load_qa
from searchr1.models.loading import load_policy
from searchr1.prompts import encode_prompt, make_prompt
from searchr1.sft.trajectories import SEARCH_QUESTION


def plan_phrases() -> dict[str, list[str]]:
    """The thought of each first-turn plan, without the search that follows it."""
    return {("multi" if multi else "one"): [t.split("\n")[0] for t in turns] for multi, turns in SEARCH_QUESTION.items()}


@torch.no_grad()
def phrase_logprob(model, prompt_ids: list[int], phrase_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + phrase_ids])
    logprobs = model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
    return logprobs.gather(1, torch.tensor(phrase_ids)[:, None]).sum().item()


def probe(model_dir: str, items: list[dict], template: str) -> dict:
    model, tokenizer = load_policy(model_dir, device="cpu")
    phrases = {k: [tokenizer(p, add_special_tokens=False).input_ids for p in v] for k, v in plan_phrases().items()}
    by_type: dict[str, list[float]] = defaultdict(list)
    for item in tqdm(items, desc=f"plan probe {model_dir}", unit="q"):
        prompt_ids = encode_prompt(tokenizer, make_prompt(item["question"], template))  # the rollout's own prompt ids
        mass = {k: sum(math.exp(phrase_logprob(model, prompt_ids, p)) for p in ps) for k, ps in phrases.items()}
        p_multi = mass["multi"] / (mass["multi"] + mass["one"])
        by_type["all"].append(p_multi)
        kind = (item.get("metadata") or {}).get("type")
        if kind:
            by_type[kind].append(p_multi)
    return {
        kind: {"n": len(v), "mean_p_multi": statistics.mean(v), "share_multi_over_one": sum(x > 0.5 for x in v) / len(v)}
        for kind, v in sorted(by_type.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="policy folders (e.g. two cold starts)")
    ap.add_argument("--questions", default="data/qa/test.jsonl", help="prepared test split")
    ap.add_argument("--sample", type=int, default=200, help="the evaluation's seeded sample size (evaluation.max_examples)")
    ap.add_argument("--n", type=int, default=90, help="questions probed: the first n of that sample")
    ap.add_argument("--seed", type=int, default=0, help="the settings' seed (the evaluation's sample)")
    ap.add_argument("--template", default="search_r1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/benchmarks/plan_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = load_qa(args.questions)
    if args.sample < len(items):
        items = random.Random(args.seed).sample(items, args.sample)  # as `searchr1 evaluate` samples
    items = items[: args.n]
    result = {"questions": args.questions, "n": len(items), "template": args.template, "plans": plan_phrases(),
              "models": {m: probe(m, items, args.template) for m in args.models}}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| model | type | n | mean P(multi-search plan) | share with P(multi) > P(one) |\n|---|---|---|---|---|")
    for m, kinds in result["models"].items():
        for kind, r in kinds.items():
            print(f"| {m} | {kind} | {r['n']} | {r['mean_p_multi']:.3f} | {r['share_multi_over_one']:.2f} |")


if __name__ == "__main__":
    main()
