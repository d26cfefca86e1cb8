"""Data-parallel RL on 2 CPU processes (gloo, real DeepSpeed engines), against the same run on 1 process.

One ``torchrun --nproc_per_node 2`` launch runs every scenario of tests/distributed_scenarios.py;
the single-rank references run in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import distributed_scenarios as sc
import pytest
import torch

from searchr1.models.tiny import build_tiny_policy
from searchr1.rl.prompts import PromptSampler, shard
from searchr1.rl.trainer import ADVANTAGE_KEYS, CRITIC_SCORES, RLTrainer

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SEARCHR1_SELF_RANK")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT / "tests"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "distributed_scenarios.py"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def load(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}.rank{rank}.pt", weights_only=False)


def assert_same_weights(a: dict, b: dict, atol: float = 2e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_ranks_roll_out_disjoint_prompts_whose_union_is_the_steps_and_rank_0_keeps_all_samples(two_ranks):
    r0, r1 = load(two_ranks, "zero2", 0), load(two_ranks, "zero2", 1)
    step_prompts = [it["id"] for it in PromptSampler(sc.items(), 8, seed=0).next_prompts()]
    assert set(r0["prompts"][0]).isdisjoint(r1["prompts"][0])
    assert set(r0["prompts"][0]) | set(r1["prompts"][0]) == set(step_prompts)
    assert r0["prompts"][0] == sorted(shard(step_prompts, 0, 2))
    # the final step's samples of both ranks, each tagged with its rank, are on rank 0 only
    assert sorted({rank for _, rank in r0["last_samples"]}) == [0, 1] and len(r0["last_samples"]) == 32
    assert r1["last_samples"] == []
    # metrics are global: both ranks log the mean reward of all 32 samples of the step
    requests = [it for it in PromptSampler(sc.items(), 8, seed=0).next_prompts() for _ in range(4)]
    expected = sum(s.reward for s in sc.scripted_rollout(None, requests, 0)) / 32
    assert r0["history"][0]["reward_mean"] == pytest.approx(expected)
    assert r1["history"][0]["reward_mean"] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["zero2", "zero3", "filtered", "small", "two_epochs", "ppo"])
def test_two_ranks_make_the_same_update_as_one_rank_on_the_whole_batch(two_ranks, tmp_path, name):
    train = dict(sc.SCENARIOS[name])
    train["logprob_chunk"] = 0  # the reference scores in one pass: chunked scoring must agree too
    one = sc.run(name, tmp_path, **train)
    single = load(tmp_path, name, 0)
    for rank in (0, 1):
        two = load(two_ranks, name, rank)
        assert_same_weights(two["weights"], single["weights"])
        for m2, m1 in zip(two["history"], single["history"]):  # the gradient itself, not only Adam's step
            assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
            assert m2["policy_loss"] == pytest.approx(m1["policy_loss"], rel=1e-4, abs=1e-7)
            assert m2["samples_trained"] == m1["samples_trained"]
    assert one.step == sc.SCENARIOS[name].get("steps", 1)
    if name == "ppo":  # the critic's scores and the advantage sums are over every rank's rows, as on one rank
        # (not value_clip_frac: at the first pass values == old values, and float rounding breaks the ties)
        keys = ("value_loss",) + CRITIC_SCORES + ADVANTAGE_KEYS
        for rank in (0, 1):
            for m2, m1 in zip(load(two_ranks, name, rank)["history"], single["history"]):
                assert {k: m2[k] for k in keys} == pytest.approx({k: m1[k] for k in keys}, rel=1e-4, abs=1e-6)
        assert any(m["explained_variance_turn1"] != 0 for m in single["history"])  # every sample has turn-1 tokens
    if name == "filtered":  # some groups were dropped, so the ranks held different row counts
        assert 0 < single["history"][0]["samples_trained"] < 32
    if name == "small":  # a step where one rank had no informative row, and the run still trained
        shares = [_informative_rows(load(two_ranks, name, rank)["prompts"], 4) for rank in (0, 1)]
        assert any(0 in (a, b) and a + b > 0 for a, b in zip(*shares)), shares
        assert sum(m["samples_trained"] for m in single["history"]) > 0


def _informative_rows(prompts_per_step: list[list[str]], generations: int) -> list[int]:
    """Rows in groups with unequal scripted rewards, per step, for one rank's prompts."""
    rows = []
    for step, ids in enumerate(prompts_per_step):
        samples = sc.scripted_rollout(None, [{"id": i, "prompt_ids": [1]} for i in ids for _ in range(generations)], step)
        rewards = {}
        for s in samples:
            rewards.setdefault(s.group_id, set()).add(s.reward)
        rows.append(sum(generations for r in rewards.values() if len(r) > 1))
    return rows


def test_every_ranks_rollout_engine_receives_the_new_weights_after_every_update(two_ranks):
    for rank in (0, 1):
        r = load(two_ranks, "two_epochs", rank)
        assert len(r["synced"]) == 2  # one sync per step
        synced = r["synced"][-1]  # the parameters (a tied head is the embedding, sent once)
        assert synced.keys() <= r["weights"].keys() and "model.embed_tokens.weight" in synced
        assert_same_weights(synced, {k: r["weights"][k] for k in synced}, atol=0)
        assert any(not torch.equal(r["synced"][0][k], r["synced"][1][k]) for k in synced)


def test_resume_with_two_ranks_continues_exactly(two_ranks):
    for rank in (0, 1):
        whole, split = load(two_ranks, "whole", rank), load(two_ranks, "split", rank)
        assert_same_weights(split["weights"], whole["weights"], atol=0)
        assert [m["reward_mean"] for m in split["history"]] == [m["reward_mean"] for m in whole["history"]]
        assert split["prompts"] == whole["prompts"][2:]  # the resumed run rolled out steps 3 and 4 only


def test_resuming_with_another_number_of_ranks_is_a_clear_error(two_ranks):
    settings = sc.settings(two_ranks / "split", steps=6)
    trainer = RLTrainer(settings, build_tiny_policy(sc.VOCAB, seed=0, hidden_size=32, layers=1), None,
                        sc.scripted_rollout, sc.items())
    with pytest.raises(ValueError, match="saved by 2 ranks, resumed with 1"):
        trainer.train(resume=True)


def test_gradient_accumulation_over_samples_of_different_lengths_equals_one_big_micro_batch(tmp_path):
    from searchr1.config import DeepSpeedConfig

    sc.run("one", tmp_path, deepspeed=DeepSpeedConfig(zero_stage=2, gradient_accumulation_steps=1, max_grad_norm=1e6))
    sc.run("four", tmp_path, deepspeed=DeepSpeedConfig(zero_stage=2, gradient_accumulation_steps=4, max_grad_norm=1e6))
    one, four = load(tmp_path, "one", 0), load(tmp_path, "four", 0)
    assert_same_weights(four["weights"], one["weights"])
    assert four["history"][0]["grad_norm"] == pytest.approx(one["history"][0]["grad_norm"], rel=1e-4)
