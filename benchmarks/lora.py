"""LoRA against full fine-tuning: the smol profile's GRPO from the same cold start, measured on this CPU; and
the optimizer-state and gradient bytes of Qwen2.5-3B- and 7B-shaped policies, computed.

Measure (default). Three arms, each in its own process (peak RSS is per process), run one after another:
``init`` (the cold start itself, evaluated only), ``full`` (GRPO, every weight trains: the smol profile as it
is) and ``lora`` (GRPO with ``train.lora``: rank ``--rank``, alpha 2 x rank, the seven projections of every
decoder layer, learning rate ``--lora-lr``). Both trained arms start from the same checkpoint (``--init``,
the smol profile's cold start) with the same seeds, prompts and rollout engine (the profile's: vLLM), take
``--steps`` steps of ``--prompts`` x ``--generations`` samples, save their policy (LoRA: merged weights) and
are then scored, as ``searchr1 evaluate`` scores, by greedy search-r1 EM on ``--questions`` test questions
(the evaluation's seeded sample). Reported per arm: peak RSS of the training process (before evaluation),
median seconds per step and per phase, trainable parameters, EM; and the paired differences lora - full,
full - init and lora - init on the same questions with 95% bootstrap CIs (evaluation/metrics.py).

Bytes (``--bytes``). Per policy shape (config.json of Qwen2.5-3B and Qwen2.5-7B), full fine-tuning and LoRA
rank 16 / 64 on every linear layer of the decoder (q, k, v, o, gate, up, down; not the LM head), with
mixed-precision Adam as DeepSpeed's bf16 mode keeps it: per trainable parameter a bf16 gradient (2 bytes),
and an fp32 master copy, Adam's m and v (4 + 4 + 4 bytes) as optimizer state; every parameter's bf16 weight
(2 bytes); and the reference policy, a second bf16 copy under full fine-tuning, none under LoRA (the actor
with its adapters off). Totals for one process, before ZeRO divides gradients and optimizer state (stage 2)
and weights (stage 3) over the data-parallel ranks; activations, logits and the rollout engine not counted.

Usage:
  python benchmarks/lora.py --steps 60 --questions 200     # after `searchr1 pipeline --profile smol` (its sft stage)
  python benchmarks/lora.py --bytes                        # the table in docs/scaling.md
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# config.json of Qwen/Qwen2.5-3B and Qwen/Qwen2.5-7B (the -Instruct models have the same shapes).
QWEN_SHAPES = {
    "Qwen2.5-3B": dict(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, vocab=151936, tied=True),
    "Qwen2.5-7B": dict(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tied=False),
}
WEIGHT, GRAD, OPTIMIZER = 2, 2, 12  # bytes per parameter: bf16 weight, bf16 gradient, fp32 master + Adam m + v
GIB = 1 << 30
PHASES = ("step_time", "rollout_time", "scoring_time", "update_time", "sync_time")


def linear_shapes(shape: dict) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's linear layers: q, k, v, o, gate, up, down (grouped-query attention)."""
    h, i = shape["hidden"], shape["intermediate"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def parameter_count(shape: dict) -> int:
    """Parameters of a Qwen2-shaped model: embeddings, per layer the linear weights, q/k/v biases and two norms,
    the final norm, and an LM head unless tied."""
    h, layers = shape["hidden"], shape["layers"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    per_layer = sum(a * b for a, b in linear_shapes(shape)) + (h + 2 * kv) + 2 * h
    embed = shape["vocab"] * h
    return embed * (1 if shape["tied"] else 2) + layers * per_layer + h


def training_bytes(shape: dict, lora_rank: int | None) -> dict:
    """Parameters, trainable parameters and bytes (weights, reference copy, gradients, optimizer state) of
    one training process (see the module doc for the accounting); ``lora_rank`` None: full fine-tuning."""
    params = parameter_count(shape)
    if lora_rank is None:
        trainable = params
    else:  # A (rank x in) and B (out x rank) per linear layer
        trainable = shape["layers"] * sum(lora_rank * (a + b) for a, b in linear_shapes(shape))
    total_params = params + (0 if lora_rank is None else trainable)
    out = {
        "params": total_params, "trainable": trainable,
        "weights": total_params * WEIGHT,
        "reference": params * WEIGHT if lora_rank is None else 0,
        "gradients": trainable * GRAD,
        "optimizer": trainable * OPTIMIZER,
    }
    out["total"] = out["weights"] + out["reference"] + out["gradients"] + out["optimizer"]
    return out


def bytes_table() -> dict:
    rows = {}
    for name, shape in QWEN_SHAPES.items():
        for label, rank in (("full", None), ("LoRA r16", 16), ("LoRA r64", 64)):
            rows[f"{name} {label}"] = training_bytes(shape, rank)
    print(json.dumps(rows, indent=1))
    print("\n| policy | trained | trainable params | gradients (bf16) | optimizer state (fp32 master + m + v) | "
          "weights (bf16) | reference copy (bf16) | total |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        name, label = key.split(" ", 1)
        print(f"| {name} | {label} | {r['trainable'] / 1e6:,.1f} M of {r['params'] / 1e9:.2f} B | "
              f"{r['gradients'] / GIB:.2f} GiB | {r['optimizer'] / GIB:.2f} GiB | {r['weights'] / GIB:.2f} GiB | "
              f"{r['reference'] / GIB:.2f} GiB | {r['total'] / GIB:.2f} GiB |")
    return rows


# ---- the measured arms ----------------------------------------------------------------------------------


def arm_settings(args, arm: str, out: Path):
    from searchr1.config import load_settings, profile_overrides

    n = args.prompts * args.generations
    overrides = profile_overrides(args.profile) + [
        f"train.steps={args.steps}", f"train.prompts_per_step={args.prompts}", f"train.num_generations={args.generations}",
        f"train.minibatch_size={n}", f"train.save_every={args.steps + 1}", f"train.eval_every={args.steps + 1}",
        f"train.out_dir={out / 'checkpoints'}", f"train.final_dir={out / 'policy'}", "tracking.enabled=false",
        f"evaluation.max_examples={args.questions}", f"rollout.engine={args.engine}", *args.set,
    ]
    if arm == "lora":
        overrides += ["train.lora.enabled=true", f"train.lora.rank={args.rank}", f"train.lora.alpha={2 * args.rank}",
                      f"train.lr={args.lora_lr}"]
    return load_settings(args.params, overrides)


def exact_match(settings, model_dir: str, retriever, out: Path) -> list[dict]:
    """Greedy search-r1 EM per question on the evaluation's seeded sample of the test split."""
    from searchr1.data.qa import load_qa
    from searchr1.evaluation.harness import evaluate_method
    from searchr1.rollout.engine import load_engine

    items = load_qa(Path(settings.qa.out_dir) / "test.jsonl")
    n = settings.evaluation.max_examples
    if n is not None and n < len(items):
        items = random.Random(settings.seed).sample(items, n)  # as `searchr1 evaluate` samples
    engine, tokenizer = load_engine(settings, model_dir, max_batch_size=settings.evaluation.batch_size)
    preds = evaluate_method(engine, tokenizer, retriever, items, "search-r1", settings, out / "predictions.jsonl",
                            desc=f"{out.name} search-r1")
    if hasattr(engine, "close"):
        engine.close()
    return [{"id": p["id"], "em": float(p["em"])} for p in preds]


def run_arm(args, arm: str, out: Path) -> dict:
    """One arm in this process: GRPO from ``args.init`` (not for ``init``), then the EM of what it saved."""
    import torch

    from searchr1.data.qa import load_qa
    from searchr1.models.loading import load_policy, resolve_model_path
    from searchr1.models.precision import resolve_dtype
    from searchr1.retrieval import load_retriever
    from searchr1.rl.rollout_worker import RolloutWorker
    from searchr1.rl.trainer import RLTrainer
    from searchr1.stages import validation_holdout

    settings = arm_settings(args, arm, out)
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    result: dict = {"arm": arm}
    model_dir = args.init
    if arm != "init":
        cfg = settings.train
        items, _ = validation_holdout(load_qa(Path(settings.qa.out_dir) / "train.jsonl"), cfg.eval_size, cfg.seed)
        model, tokenizer = load_policy(args.init, dtype="float32")
        external = None
        if settings.rollout.engine == "vllm":
            from searchr1.rollout.vllm_engine import VLLMEngine

            external = VLLMEngine.from_settings(settings, resolve_model_path(args.init), training=True,
                                                dtype=resolve_dtype(settings.policy))
        worker = RolloutWorker(settings, tokenizer, retriever, external)
        trainer = RLTrainer(settings, model, tokenizer, worker, items, sync_fn=worker.sync if external else None)
        started = time.perf_counter()
        history = trainer.train()
        result["train_seconds"] = time.perf_counter() - started
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # KiB on Linux
        result["trainable_params"] = sum(p.numel() for p in trainer.actor.engine.module.parameters() if p.requires_grad)
        result["reference_is_a_copy"] = trainer.reference is not None and trainer.reference.model is not trainer.actor.engine
        result["median"] = {k: statistics.median(m[k] for m in history) for k in PHASES}
        result["history"] = [{k: m[k] for k in ("reward_mean", "kl", "entropy", *PHASES)} for m in history]
        if external is not None:
            external.close()  # one vLLM engine per process: evaluation builds its own
        del trainer, model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        model_dir = settings.train.final_dir
    result["predictions"] = exact_match(settings, model_dir, retriever, out)
    result["em"] = statistics.mean(p["em"] for p in result["predictions"])
    return result


def measure(args) -> dict:
    from searchr1.evaluation.metrics import paired_difference
    from searchr1.io import write_json

    out = Path(args.workdir)
    results = {}
    for arm in args.arms:
        path = out / arm / "result.json"
        cmd = [sys.executable, __file__, "--arm", arm, "--result", str(path), *sys.argv[1:]]
        print(f"--- {arm}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        results[arm] = json.loads(path.read_text())
    em = {arm: [p["em"] for p in r["predictions"]] for arm, r in results.items()}
    pairs = [("lora", "full"), ("full", "init"), ("lora", "init")]
    summary = {
        "workload": {k: getattr(args, k) for k in ("init", "steps", "prompts", "generations", "questions", "rank",
                                                   "lora_lr", "engine", "profile", "set")},
        "arms": {arm: {k: v for k, v in r.items() if k not in ("predictions", "history")} for arm, r in results.items()},
        "paired_em": {f"{a} - {b}": paired_difference(em[a], em[b], 1000, 0) for a, b in pairs if a in em and b in em},
        "history": {arm: r.get("history") for arm, r in results.items() if "history" in r},
    }
    write_json(Path(args.out), summary)
    print(json.dumps(summary["arms"] | {"paired_em": summary["paired_em"]}, indent=1))
    print("\n| arm | peak RSS (training) | s / step (median) | rollout | scoring | update | sync | trainable params | EM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, r in summary["arms"].items():
        med = r.get("median", {})
        cells = [f"{r['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in r else "-"]
        cells += [f"{med[k]:.1f}" if k in med else "-" for k in PHASES]
        cells += [f"{r['trainable_params'] / 1e6:.2f} M" if "trainable_params" in r else "-", f"{r['em']:.3f}"]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    for key, d in summary["paired_em"].items():
        print(f"{key}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={int(d['n'])})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", action="store_true", help="print the Qwen-shaped byte table and exit")
    parser.add_argument("--init", default="models/sft", help="the cold start both arms train from")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="smol")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (the smol profile's 4)")
    parser.add_argument("--generations", type=int, default=4, help="samples per prompt (the smol profile's 4)")
    parser.add_argument("--questions", type=int, default=200, help="test questions scored per arm")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=1e-4,
                        help="LoRA's learning rate: 10x the profile's full fine-tuning rate, as LoRA usually needs")
    parser.add_argument("--engine", default="vllm", choices=["hf", "vllm"], help="rollout and evaluation engine")
    parser.add_argument("--arms", nargs="+", default=["init", "full", "lora"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a settings override for every arm, e.g. train.filter_groups=false (a smoke run from a "
                        "policy that earns no reward still updates)")
    parser.add_argument("--workdir", default="runs/bench_lora", help="checkpoints, policies, predictions per arm")
    parser.add_argument("--out", default="reports/benchmarks/lora.json")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run this one arm here
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bytes:
        bytes_table()
    elif args.arm:
        from searchr1.io import write_json

        write_json(Path(args.result), run_arm(args, args.arm, Path(args.result).parent))
    else:
        measure(args)


if __name__ == "__main__":
    main()
