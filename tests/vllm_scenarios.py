"""RL with one vLLM engine per rank, run under ``torchrun --nproc_per_node 2`` by tests/test_vllm_engine.py.

Each rank trains a tiny Llama (GRPO, real DeepSpeed) whose rollouts its own VLLMEngine generates, and
records after every weight sync whether the engine's greedy continuation of fixed probe prompts equals
the HF engine's on the actor's weights; then a resumed trainer records what the engine holds before its
first rollout. Also the tiny-checkpoint helpers the single-process tests use. Writes ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch

GREEDY_TOKENS = 8


def tiny_llama(tokenizer, seed: int):
    """A 2-layer Llama over ``tokenizer``'s vocabulary with large random weights (clear-cut greedy choices),
    tied embeddings, and a head size vLLM's CPU attention supports (64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(path: Path, tokenizer, seed: int) -> None:
    tiny_llama(tokenizer, seed).save_pretrained(path)
    tokenizer.save_pretrained(path)


def probe_prompts(tokenizer) -> list[list[int]]:
    from test_rollout_engine import prompts  # the HF engine tests' rows of different lengths

    return prompts(tokenizer)


def probe(engine, tokenizer) -> list[list[int]]:
    from searchr1.rollout.engine import SamplingSettings

    return [g.token_ids for g in engine.generate(probe_prompts(tokenizer), GREEDY_TOKENS, SamplingSettings(greedy=True))]


def run(checkpoint: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    from searchr1 import distributed as dist
    from searchr1.config import DeepSpeedConfig, Settings, TrainConfig
    from searchr1.rl.deepspeed_engines import init_distributed
    from searchr1.rl.trainer import RLTrainer
    from searchr1.rollout.engine import HFEngine, SamplingSettings
    from searchr1.rollout.types import Sample
    from searchr1.rollout.vllm_engine import VLLMEngine

    init_distributed()  # before the engine: vLLM's external launcher joins this process group
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    engine = VLLMEngine(str(checkpoint), dtype="float32", max_model_len=256, seed=0, world_size=dist.world_size())
    items = [{"id": f"q{i}", "prompt_ids": tokenizer.encode(f"Question {i}: where is place {i}?")} for i in range(8)]
    record: dict = {}

    def rollout(module, requests, step):
        record["prompts"].append(sorted({r["id"] for r in requests}))
        if "first_rollout" in record and not record["first_rollout"]:
            record["first_rollout"].extend([probe(engine, tokenizer), probe(HFEngine(module, tokenizer), tokenizer)])
        seeds = [zlib.crc32(f"{r['id']}:{k}:{step}".encode()) for k, r in enumerate(requests)]
        gens = engine.generate([r["prompt_ids"] for r in requests], 4, SamplingSettings(temperature=1.0), seeds=seeds)
        return [
            Sample(uid=f"{r['id']}#{k}", group_id=r["id"], question="", golden_answers=[], prompt_ids=r["prompt_ids"],
                   response_ids=g.token_ids, response_mask=[1] * len(g.token_ids), reward=float(g.token_ids[0] % 2),
                   finished=True)
            for k, (r, g) in enumerate(zip(requests, gens))
        ]

    def sync(buckets):
        engine.update_weights(buckets)
        actor = trainer.actor.engine.module
        record["synced"].append((probe(engine, tokenizer), probe(HFEngine(actor, tokenizer), tokenizer)))
        record["after_step"].append(record["synced"][-1][1])

    def train(steps: int, resume: bool) -> RLTrainer:
        cfg = TrainConfig(
            algorithm="grpo", steps=steps, prompts_per_step=4, num_generations=2, minibatch_size=8, lr=3e-2,
            kl_coef=0.0, entropy_coef=0.0, save_every=2, out_dir=str(out / "ckpt"), final_dir=str(out / "final"),
            deepspeed=DeepSpeedConfig(zero_stage=2, max_grad_norm=1e6),
        )
        return RLTrainer(Settings(train=cfg), tiny_llama(tokenizer, seed=0), tokenizer, rollout, items, sync_fn=sync)

    results = {}
    record.update(prompts=[], synced=[], after_step=[])
    trainer = train(3, resume=False)
    trainer.train()
    results["whole"] = dict(record)

    engine.update_weights(tiny_llama(tokenizer, seed=0))  # a fresh engine: the initial weights again
    record.update(prompts=[], synced=[], after_step=[], first_rollout=[])
    trainer = train(3, resume=True)
    history = trainer.train(resume=True)  # from the step-2 checkpoint
    results["resumed"] = dict(record, steps=len(history) - 2)
    torch.save(results, out / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
