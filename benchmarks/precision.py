"""bf16 against float32 on this machine: matrix products, then SmolLM2-135M-Instruct's prefill, training
step (forward + backward) and one-token decoding step.

Arms, each on the same inputs and the same weights:
- ``fp32``: float32 weights and compute (the smol profile before issue 29);
- ``autocast``: float32 weights under ``torch.autocast("cpu", bfloat16)``, what training uses on a CPU
  (models/precision.py): fp32 master weights, bf16 matrix products;
- ``bf16``: bfloat16 weights, what inference (evaluation, the HF and vLLM rollout engines) loads.

Each figure is the median of ``--repeats`` timed runs after one warm-up; arms alternate within a repeat.
The decoding step's "matmul limit" is the step's matrix-product FLOPs (2 x parameters x rows) at the
measured bf16 / fp32 GFLOP/s of a decoding-shaped product: how fast decoding would be if it were only
its matrix products.
Usage: python benchmarks/precision.py [--model models/smol-bench] [--repeats 5] [--out reports/benchmarks/precision.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rollout import load_smol_policy  # benchmarks/rollout.py (this folder is on sys.path)

from searchr1.io import write_json
from searchr1.models.precision import cpu_has_fast_bf16


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timed run
    seconds = timed(lambda: [a @ b for _ in range(inner)], repeats)
    return 2 * m * k * n * inner / seconds / 1e9


def arm_context(arm: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if arm == "autocast" else contextlib.nullcontext()


def model_figures(model32, repeats: int, prefill_shape=(8, 256), train_shape=(4, 512), decode_rows=16,
                  decode_context=384) -> dict:
    vocab = model32.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    models = {"fp32": model32, "autocast": model32, "bf16": None}
    out: dict[str, dict] = {arm: {} for arm in models}
    import copy

    models["bf16"] = copy.deepcopy(model32).to(torch.bfloat16)

    b, t = prefill_shape
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    for arm, model in models.items():
        model.eval()
        with torch.no_grad(), arm_context(arm):
            s = timed(lambda m=model: m(input_ids=ids, logits_to_keep=1), repeats)
        out[arm]["prefill_tokens_per_s"] = b * t / s

    b, t = train_shape
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    for arm, model in models.items():
        model.train()

        def step(m=model, a=arm):
            with arm_context(a):
                loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            m.zero_grad(set_to_none=True)

        out[arm]["train_tokens_per_s"] = b * t / timed(step, repeats)

    ctx = torch.randint(0, vocab, (decode_rows, decode_context), generator=gen)
    nxt = torch.randint(0, vocab, (decode_rows, 1), generator=gen)
    for arm, model in models.items():
        model.eval()
        with torch.no_grad(), arm_context(arm):
            cache = model(input_ids=ctx, use_cache=True, logits_to_keep=1).past_key_values

            def decode(m=model, c=cache):
                m(input_ids=nxt, past_key_values=c, use_cache=True)
                c.crop(decode_context)  # back to the same context length for the next run

            s = timed(decode, repeats * 4)
        out[arm]["decode_step_ms"] = 1000 * s
        out[arm]["decode_tokens_per_s"] = decode_rows / s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smol-bench", help="folder for the converted SmolLM2 checkpoint")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="reports/benchmarks/precision.json")
    args = parser.parse_args()

    shapes = {"train (2048x576 . 576x1536)": (2048, 576, 1536), "decode (16x576 . 576x1536)": (16, 576, 1536),
              "lm head (16x576 . 576x49152)": (16, 576, 49152)}
    matmul = {name: {"fp32": matmul_gflops(*s, torch.float32, args.repeats),
                     "bf16": matmul_gflops(*s, torch.bfloat16, args.repeats)} for name, s in shapes.items()}
    model, _ = load_smol_policy(Path(args.model))
    model = model.float()
    params = sum(p.numel() for p in model.parameters())
    figures = model_figures(model, args.repeats)
    decode_shape = matmul["decode (16x576 . 576x1536)"]
    for arm, rate in (("fp32", decode_shape["fp32"]), ("bf16", decode_shape["bf16"])):
        # one decoding step multiplies every weight once per row: 2 x params x rows FLOPs
        figures[arm]["decode_matmul_limit_tokens_per_s"] = rate * 1e9 / (2 * params)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__},
              "params": params, "matmul_gflops": matmul, "smollm2": figures}
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))
    print(f"\n{'matrix product':32} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} {'ratio':>6}")
    for name, r in matmul.items():
        print(f"{name:32} {r['fp32']:13.1f} {r['bf16']:13.1f} {r['bf16'] / r['fp32']:6.2f}")
    print(f"\n{'SmolLM2-135M':28} {'fp32':>9} {'autocast':>9} {'bf16':>9}")
    for key in ("prefill_tokens_per_s", "train_tokens_per_s", "decode_tokens_per_s", "decode_step_ms"):
        print(f"{key:28} " + " ".join(f"{figures[a][key]:9.1f}" for a in ("fp32", "autocast", "bf16")))
    print(f"{'decode_matmul_limit':28} {figures['fp32']['decode_matmul_limit_tokens_per_s']:9.1f} {'':>9} "
          f"{figures['bf16']['decode_matmul_limit_tokens_per_s']:9.1f}")


if __name__ == "__main__":
    main()
