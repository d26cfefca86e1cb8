"""Peak memory of scoring response tokens at a real vocabulary: chunked LM head vs one pass.

At Qwen's 151,936-token vocabulary the fp32 logits of a micro-batch dominate RL memory. This measures
``rl.logprobs.forward_logprobs`` (log-probs + entropy) on a tiny-hidden Llama with that vocabulary, on
CPU, in two modes: scoring (no gradients: the old-policy and reference passes) and training (forward
+ backward of a loss on log-probs and entropy: the actor update). Each measurement is a fresh
subprocess; its peak RSS above the RSS just before the pass is reported (ru_maxrss), with the time.

    python benchmarks/logprob_memory.py                       # B=2, R=1024, chunk 256 vs off, 3 repeats
    python benchmarks/logprob_memory.py --response 2048 --chunks 0 128 512

Prints JSON, then a table; writes reports/benchmarks/logprob_memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VOCAB = 151_936  # Qwen2.5's vocabulary


def measure(args: argparse.Namespace) -> None:
    """Child process: one pass, print {"peak_mib", "seconds"}."""
    import resource
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from searchr1.rl.batch import Batch
    from searchr1.rl.logprobs import forward_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=args.prompt + args.response)
    model = LlamaForCausalLM(config)
    B, P, R = args.batch, args.prompt, args.response
    ids = torch.randint(0, VOCAB, (B, P + R))
    ones = torch.ones(B, R)
    batch = Batch(
        input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(P + R).expand(B, -1),
        responses=ids[:, P:], generated_mask=ones, valid_mask=ones, loss_mask=ones, token_rewards=torch.zeros(B, R),
        rewards=torch.zeros(B), prompt_len=P,
    )

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    before = rss_mib()
    start = time.perf_counter()
    if args.mode == "score":
        with torch.no_grad():
            forward_logprobs(model, batch, with_entropy=True, chunk_size=args.chunk)
    else:
        logp, entropy = forward_logprobs(model, batch, with_entropy=True, entropy_grad=True, chunk_size=args.chunk)
        (logp.mean() - 0.01 * entropy.mean()).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak - before, "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--response", type=int, default=1024)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 256], help="0 = one pass (unchunked)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["score", "train"], default="score", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return measure(args)

    logits_mib = args.batch * args.response * VOCAB * 4 / 2**20
    rows = []
    for mode in ("score", "train"):
        for chunk in args.chunks:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--chunk", str(chunk), "--batch",
                       str(args.batch), "--prompt", str(args.prompt), "--response", str(args.response)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "2", **_env()})
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            peaks, times = [r["peak_mib"] for r in runs], [r["seconds"] for r in runs]
            rows.append({
                "mode": mode, "chunk": chunk, "peak_mib_median": statistics.median(peaks), "peak_mib_all": peaks,
                "seconds_median": statistics.median(times), "seconds_all": times,
            })
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["chunk"] == 0)
        row["memory_ratio_vs_unchunked"] = row["peak_mib_median"] / base["peak_mib_median"]
    result = {"vocab": VOCAB, "batch": args.batch, "prompt": args.prompt, "response": args.response,
              "fp32_logits_mib": logits_mib, "rows": rows}
    print(json.dumps(result, indent=2))
    out = Path("reports/benchmarks/logprob_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nvocab {VOCAB}, {args.batch} x {args.response} response tokens: one fp32 logits copy = {logits_mib:.0f} MiB")
    print(f"{'mode':6} {'chunk':>6} {'peak MiB (median)':>18} {'min-max':>17} {'vs one pass':>11} {'seconds':>8}")
    for r in rows:
        chunk = "off" if r["chunk"] == 0 else str(r["chunk"])
        span = f"{min(r['peak_mib_all']):.0f}-{max(r['peak_mib_all']):.0f}"
        print(f"{r['mode']:6} {chunk:>6} {r['peak_mib_median']:>18.0f} {span:>17} "
              f"{r['memory_ratio_vs_unchunked']:>10.2f}x {r['seconds_median']:>8.2f}")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


if __name__ == "__main__":
    main()
