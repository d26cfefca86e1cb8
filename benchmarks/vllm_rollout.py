"""vLLM (its CPU build here, CUDA vLLM on a GPU) against our HF engine on the smol profile's GRPO rollout.

Both arms run the same multi-turn rollout loop (rollout/loop.py), retriever, prompts, per-sample seeds and
SmolLM2-135M-Instruct weights; only the engine differs. The workload is one GRPO step of the smol
profile: ``--prompts`` 4 training questions x ``--generations`` 4 samples, the Search-R1 template, 96-token
turns, T 1.0 / top_p 1.0 (profiles/smol.yaml), on the demo's data and retriever (run the data stages of
`make demo` first). The engines sample with different random streams, so the samples differ: the
figures are rates (generated tokens per second) and seconds per rollout step, medians over ``--repeats``
steps that draw other questions; arms alternate and the order rotates each repeat.

Arms: ``hf`` (HFEngine, the policy in float32 as the smol profile trains it), ``vllm`` (VLLMEngine,
float32) and ``vllm_bf16`` (VLLMEngine, bfloat16: what a bf16-trained policy would get).
Usage: python benchmarks/vllm_rollout.py [--model models/smol-bench] [--repeats 5]
       [--out reports/benchmarks/vllm_rollout.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from rollout import load_smol_policy, spread  # benchmarks/rollout.py (this folder is on sys.path)

from searchr1.config import load_settings, profile_overrides
from searchr1.data.qa import load_qa
from searchr1.io import write_json
from searchr1.retrieval import load_retriever
from searchr1.rollout.engine import HFEngine
from searchr1.rollout.loop import run_rollout
from searchr1.rollout.vllm_engine import VLLMEngine


def build_arms(folder: Path, settings, names: list[str]) -> tuple[dict, object]:
    model, tok = load_smol_policy(folder)
    arms = {"hf": lambda: HFEngine(model.float(), tok),
            "vllm": lambda: VLLMEngine.from_settings(settings, str(folder), dtype="float32"),
            "vllm_bf16": lambda: VLLMEngine.from_settings(settings, str(folder), dtype="bfloat16")}
    return {name: arms[name]() for name in names}, tok


def one_step(engine, tok, items, retriever, settings, seed: int) -> dict:
    start = time.perf_counter()
    result = run_rollout(engine, tok, items, retriever, settings.rollout, settings.reward,
                         topk=settings.retrieval.topk, seed=seed)
    seconds = time.perf_counter() - start
    generated = sum(sum(s.response_mask) for s in result.samples)
    return {"seconds": seconds, "generated": generated, "tokens_per_s": generated / seconds,
            "searches": sum(s.num_searches for s in result.samples) / len(result.samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smol-bench", help="folder for the converted SmolLM2 checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--arms", nargs="+", default=["hf", "vllm", "vllm_bf16"],
                        help="e.g. --arms hf: the HF engine in a process without vLLM (vLLM binds this "
                        "process's OpenMP threads to cores)")
    parser.add_argument("--out", default="reports/benchmarks/vllm_rollout.json")
    args = parser.parse_args()

    settings = load_settings("params.yaml", profile_overrides("smol"))
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    questions = load_qa(Path(settings.qa.out_dir) / "train.jsonl")
    arms, tok = build_arms(Path(args.model), settings, args.arms)
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    rng = random.Random(0)
    names = list(arms)
    for repeat in range(args.repeats + 1):  # repeat 0 warms every arm up and is not counted
        prompts = rng.sample(questions, args.prompts)
        items = [it for it in prompts for _ in range(args.generations)]
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            run = one_step(arms[name], tok, items, retriever, settings, seed=1000 + repeat)
            if repeat:
                runs[name].append(run)
            print(f"repeat {repeat} {name}: {run['seconds']:.1f} s, {run['tokens_per_s']:.1f} generated tokens/s", flush=True)

    result = {
        "workload": {"prompts": args.prompts, "generations": args.generations, "repeats": args.repeats,
                     "max_turn_tokens": settings.rollout.max_turn_tokens, "template": settings.rollout.template,
                     "torch_threads": torch.get_num_threads()},
        "arms": {name: {"seconds_per_step": spread([r["seconds"] for r in rs]),
                        "generated_tokens_per_s": spread([r["tokens_per_s"] for r in rs]),
                        "searches_per_sample": round(statistics.mean(r["searches"] for r in rs), 3)}
                 for name, rs in runs.items()},
    }
    if "hf" in result["arms"]:
        hf = result["arms"]["hf"]["generated_tokens_per_s"]["median"]
        for name in set(result["arms"]) - {"hf"}:
            result["arms"][name]["speedup_vs_hf"] = round(result["arms"][name]["generated_tokens_per_s"]["median"] / hf, 2)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))
    print("\n| arm | s / rollout step (median) | generated tokens/s (median) | vs hf |")
    print("|---|---|---|---|")
    for name, arm in result["arms"].items():
        print(f"| {name} | {arm['seconds_per_step']['median']} | {arm['generated_tokens_per_s']['median']} | "
              f"{arm.get('speedup_vs_hf', 1.0)}x |")


if __name__ == "__main__":
    main()
