"""RL trainer scenarios run under ``torchrun --nproc_per_node N`` by tests/test_distributed.py (and in
one process by the same tests, for the single-rank reference). Each rank writes what it saw to
``OUT/<scenario>.rank<r>.pt``.

The rollout is scripted: a sample's tokens, retrieved span, length and reward are a function of its
prompt id, its index in the group and the step only, never of the rank, like the real rollout's seeds.
Lengths and masks vary, so token-mean aggregation over uneven micro-batches is exercised.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections import Counter
from pathlib import Path

import torch

from searchr1.config import DeepSpeedConfig, RolloutConfig, Settings, TrainConfig
from searchr1.models.tiny import build_tiny_policy
from searchr1.rl.deepspeed_engines import full_state_dict
from searchr1.rl.trainer import RLTrainer
from searchr1.rollout.types import Sample

VOCAB = 64


def items(n: int = 16) -> list[dict]:
    return [{"id": f"q{i}", "prompt_ids": [10 + i % 7, 20 + i % 5, 30 + i]} for i in range(n)]


def scripted_rollout(model, requests: list[dict], step: int) -> list[Sample]:
    seen: Counter = Counter()
    samples = []
    for req in requests:
        k = seen[req["id"]]
        seen[req["id"]] += 1
        h = zlib.crc32(f"{req['id']}:{k}:{step}".encode())
        gen1, obs, gen2 = 1 + h % 4, 2 + (h >> 4) % 3, 1 + (h >> 8) % 3
        mask = [1] * gen1 + [0] * obs + [1] * gen2
        g = torch.Generator().manual_seed(h)
        ids = torch.randint(5, VOCAB, (len(mask),), generator=g).tolist()
        samples.append(Sample(
            uid=f"{req['id']}#{k}", group_id=req["id"], question=req["id"], golden_answers=[],
            prompt_ids=list(req["prompt_ids"]), response_ids=ids, response_mask=mask,
            # every third prompt's group is all 0 (no signal: filtered under train.filter_groups)
            reward=0.0 if int(req["id"][1:]) % 3 == 0 else float((h >> 12) % 2), finished=True,
        ))
    return samples


def settings(out: Path, zero_stage: int = 2, **train) -> Settings:
    base = dict(
        algorithm="grpo", steps=1, prompts_per_step=8, num_generations=4, minibatch_size=32, lr=1e-3,
        kl_coef=0.01, entropy_coef=0.01, save_every=1000, out_dir=str(out / "ckpt"), final_dir=str(out / "final"),
        deepspeed=DeepSpeedConfig(zero_stage=zero_stage, gradient_accumulation_steps=2, max_grad_norm=1e6),
    )
    base.update(train)
    return Settings(train=TrainConfig(**base), rollout=RolloutConfig(temperature=1.0))


def run(name: str, out: Path, resume: bool = False, **train) -> RLTrainer:
    """Train a fresh tiny policy; record each step's prompts, metrics, synced weights and final weights."""
    rank = int(os.environ.get("RANK", "0"))
    prompts_seen, synced = [], []

    def rollout(model, requests, step):
        prompts_seen.append(sorted({r["id"] for r in requests}))
        return scripted_rollout(model, requests, step)

    def sync(buckets):  # a fake rollout engine on this rank: what it received, and when
        synced.append({k: v.clone() for bucket in buckets for k, v in bucket})

    trainer = RLTrainer(settings(out / name, **train), build_tiny_policy(VOCAB, seed=0, hidden_size=32, layers=1),
                        None, rollout, items(), sync_fn=sync)
    history = trainer.train(resume=resume)
    torch.save({
        "prompts": prompts_seen,
        "history": history,
        "weights": full_state_dict(trainer.actor.engine),
        "synced": synced,
        "last_samples": [(s.uid, s.rank) for s in trainer.last_samples],
    }, out / f"{name}.rank{rank}.pt")
    return trainer


SCENARIOS = {
    # one step, ZeRO-2 and ZeRO-3 (chunked log-probs under ZeRO-3), one update over the whole step
    "zero2": dict(zero_stage=2),
    "zero3": dict(zero_stage=3, logprob_chunk=4),
    # groups with equal rewards are dropped: ranks hold different row counts and pad
    "filtered": dict(zero_stage=2, filter_groups=True),
    # small batches: 2 prompts x 4 samples, 2 accumulation steps; on steps 2 and 3 rank 0's only group has
    # equal rewards, so its share is padding only (issue 28's crash)
    "small": dict(zero_stage=2, filter_groups=True, prompts_per_step=2, num_generations=4, minibatch_size=8, steps=3),
    # two epochs over the step: old log-probs from a separate pass, then a second update
    "two_epochs": dict(zero_stage=2, ppo_epochs=2, steps=2),
    # PPO: the critic's values, its update and the per-turn scores over both ranks' rows
    "ppo": dict(zero_stage=2, algorithm="ppo", critic_lr=1e-3, critic_epochs=2, steps=2),
    # resume: 4 steps at once vs 2 steps, then a new trainer resuming to 4
    "whole": dict(zero_stage=2, steps=4, save_every=2),
}


def main(out: Path) -> None:
    for name, train in SCENARIOS.items():
        run(name, out, **train)
    run("split", out, zero_stage=2, steps=2, save_every=2)
    run("split", out, resume=True, zero_stage=2, steps=4, save_every=2)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
