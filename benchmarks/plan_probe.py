"""How a cold start plans its searches: P(multi-search plan | question), by question type.

The mined cold start opens each trajectory with a plan decided from the question alone
(``sft/trajectories.py``: "One search should do." vs "This needs more than one search."), and its
later turns follow that plan. A greedy policy takes the second search only where it puts more mass on a
multi-search plan than on a one-search plan. This scores every plan phrase after the rollout's prompt
(teacher-forced, no sampling) and reports, per question type, the mean P(multi) and the share of
questions where P(multi) > P(one). A diagnostic, not a speed benchmark.

With ``sft.plan_first`` false the first thought is the same for every question and the decision is the
next one, after the first passages. ``--after-passages`` scores that one: the rollout's prompt, the
first turn searching the question itself, its information block (real retrieval, fitted as the rollout
fits it), then P(a thought that searches again) against P(the thought that answers).

    python benchmarks/plan_probe.py --models models/sft other/models/sft --n 90
    python benchmarks/plan_probe.py --models models/sft models/policy --after-passages --params params.yaml --profile smol
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
from searchr1.sft.trajectories import ANSWER, NEXT_SEARCH, NO_PLAN, RE_SEARCH, SEARCH_QUESTION


def plan_phrases() -> dict[str, list[str]]:
    """The thought of each first-turn plan, without the search that follows it."""
    return {("multi" if multi else "one"): [t.split("\n")[0] for t in turns] for multi, turns in SEARCH_QUESTION.items()}


def decision_phrases() -> dict[str, list[str]]:
    """After the first passages: each thought that searches again ("multi": the next hop, or a re-search) or
    answers ("one"), cut after its first word that tells it from every thought of the other kind. Whole
    thoughts would favour the shorter ones (fewer tokens to pay for); after that word the rest is copied."""
    kinds = {"multi": [*NEXT_SEARCH, RE_SEARCH], "one": [ANSWER]}

    def cut(turn: str, others: list[str]) -> str:
        words = turn.split(" ")
        for k in range(1, len(words) + 1):
            head = " ".join(words[:k])
            if not any(o.startswith(head) for o in others):
                return head
        return turn

    return {kind: [cut(t, [o for other, ts in kinds.items() if other != kind for o in ts]) for t in turns]
            for kind, turns in kinds.items()}


@torch.no_grad()
def phrase_logprob(model, prompt_ids: list[int], phrase_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + phrase_ids])
    logprobs = model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
    return logprobs.gather(1, torch.tensor(phrase_ids)[:, None]).sum().item()


def probe(model_dir: str, items: list[dict], template: str, observe=None) -> dict:
    """``observe(question, tokenizer)``: the information block of the first search (after-passages mode), or None."""
    model, tokenizer = load_policy(model_dir, device="cpu")
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    phrases = {k: [encode(p) for p in v] for k, v in (decision_phrases() if observe else plan_phrases()).items()}
    by_type: dict[str, list[float]] = defaultdict(list)
    for item in tqdm(items, desc=f"plan probe {model_dir}", unit="q"):
        prompt_ids = encode_prompt(tokenizer, make_prompt(item["question"], template))  # the rollout's own prompt ids
        if observe:  # the first turn as the cold start writes it, then its passages, each encoded as the rollout does
            question = item["question"].strip()
            prompt_ids += encode(NO_PLAN[0].format(q=question)) + encode(observe(question, tokenizer))
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
    ap.add_argument("--after-passages", action="store_true",
                    help="score the decision after the first search's passages (sft.plan_first false)")
    ap.add_argument("--params", default="params.yaml", help="settings for the retriever (--after-passages)")
    ap.add_argument("--profile", default=None, help="a profile over --params (e.g. smol: its max_obs_tokens)")
    ap.add_argument("--out", default="reports/benchmarks/plan_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    observe = None
    if args.after_passages:
        from searchr1.config import load_settings, profile_overrides
        from searchr1.retrieval import load_retriever
        from searchr1.rollout.loop import fit_passages

        settings = load_settings(args.params, profile_overrides(args.profile, args.params) if args.profile else [])
        retriever = load_retriever(settings.retrieval, settings.corpus.out_path)

        def observe(question: str, tokenizer) -> str:
            docs = retriever.search([question], settings.retrieval.topk)[0]
            return fit_passages(tokenizer, docs, settings.rollout.max_obs_tokens)[0]

    items = load_qa(args.questions)
    if args.sample < len(items):
        items = random.Random(args.seed).sample(items, args.sample)  # as `searchr1 evaluate` samples
    items = items[: args.n]
    result = {"questions": args.questions, "n": len(items), "template": args.template,
              "decision": "after the first passages" if observe else "first thought",
              "plans": decision_phrases() if observe else plan_phrases(),
              "models": {m: probe(m, items, args.template, observe) for m in args.models}}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| model | type | n | mean P(multi-search plan) | share with P(multi) > P(one) |\n|---|---|---|---|---|")
    for m, kinds in result["models"].items():
        for kind, r in kinds.items():
            print(f"| {m} | {kind} | {r['n']} | {r['mean_p_multi']:.3f} | {r['share_multi_over_one']:.2f} |")


if __name__ == "__main__":
    main()
