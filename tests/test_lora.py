"""LoRA (train.lora, sft.lora): only the adapters train, the reference is the base with them off, the
rollout engines and checkpoints see the merged weights, and training resumes exactly.

The toy task and rollout are tests/test_rl_training.py's, on a tiny Llama saved as a checkpoint (so its
adapter records where its base is, as the pipeline's does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_rl_training import TARGET, TIMING_KEYS, VOCAB, toy_items, toy_rollout, toy_settings
from transformers import AutoModelForCausalLM

from searchr1.config import DeepSpeedConfig, LoraConfig
from searchr1.models import lora
from searchr1.models.tiny import build_tiny_policy
from searchr1.rl import deepspeed_engines as ds
from searchr1.rl.trainer import RLTrainer

LORA = LoraConfig(enabled=True, rank=4, alpha=8.0)
LORA_LR = 0.1  # adapters start at B = 0 and need a larger rate than full fine-tuning's 1e-2 to move in a few steps


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0",
                                   pad_token="t0", eos_token="t1")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("lora_base")
    build_tiny_policy(VOCAB, seed=0, hidden_size=32, layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load_base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def lora_trainer(tmp_path, base_dir, tok, zero_stage=2, algorithm="grpo", **train) -> RLTrainer:
    settings = toy_settings(tmp_path, algorithm, zero_stage, **({"lr": LORA_LR, "lora": LORA} | train))
    return RLTrainer(settings, load_base(base_dir), tok, toy_rollout, toy_items())


def target_prob(model) -> float:
    """Mean probability of the rewarded token right after each toy prompt."""
    ids = torch.tensor([it["prompt_ids"] for it in toy_items()])
    with torch.no_grad():
        return torch.softmax(model(input_ids=ids).logits[:, -1].float(), -1)[:, TARGET].mean().item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dir, tok):
    """Six GRPO steps with LoRA under ZeRO-2 and a KL loss, checkpoints after steps 3 and 6."""
    trainer = lora_trainer(tmp_path_factory.mktemp("lora_run"), base_dir, tok, steps=6, save_every=3, ppo_epochs=2)
    before = target_prob(trainer.actor.engine.module)
    history = trainer.train()
    return trainer, history, before


def optimizer_numel(engine) -> int:
    """Elements of the parameters the engine's optimizer updates (DeepSpeed's own groups under ZeRO 1-3)."""
    opt = engine.optimizer
    groups = getattr(opt, "bit16_groups", None) or getattr(opt, "fp16_groups", None) or [g["params"] for g in opt.param_groups]
    return sum(getattr(p, "ds_numel", p.numel()) for g in groups for p in g)


def plain_merged(module, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W + (alpha / rank) B @ A for each adapted weight, from the live module's parameters (gathered)."""
    out = dict(base)
    for name, m in module.named_modules():
        if hasattr(m, "lora_A"):
            delta = m.lora_B["default"].weight @ m.lora_A["default"].weight * (LORA.alpha / LORA.rank)
            out[f"{name}.weight"] = base[f"{name}.weight"] + delta
    return out


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_only_the_adapters_train_sit_in_the_optimizer_and_reach_the_rollout_engine_merged(tmp_path, base_dir, tok,
                                                                                           zero_stage):
    # ZeRO-3 also recomputes activations: the frozen embeddings' outputs need no gradient for the adapters to get one.
    ds_cfg = DeepSpeedConfig(zero_stage=zero_stage, gradient_checkpointing=zero_stage == 3)
    trainer = lora_trainer(tmp_path, base_dir, tok, zero_stage, steps=2, deepspeed=ds_cfg)
    trained_count, total = trainer.adapter.get_nb_trainable_parameters()
    engine = trainer.actor.engine
    assert optimizer_numel(engine) == trained_count < total / 4
    history = trainer.train()
    assert all(m["samples_trained"] > 0 for m in history)
    base = dict(load_base(base_dir).named_parameters())
    with ds.gathered(engine) as module:
        live = {n: p.detach().clone() for n, p in module.named_parameters()}
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        expected = plain_merged(module, {n: p.detach() for n, p in base.items()})
    assert trainable == {n for n in live if ".lora_" in n}
    for name in live.keys() - trainable:  # every base weight, adapted layers' included, is the initial one
        assert torch.equal(live[name], base[name.replace(".base_layer", "")]), name
    assert all(live[n].abs().sum() > 0 for n in live if ".lora_B." in n)  # B starts at 0: it moved
    # What a rollout engine gets (one small bucket at a time; under ZeRO-3 gathered per bucket): the plain
    # model's tensors, adapted ones merged.
    synced = {n: t.clone() for bucket in ds.parameter_buckets(engine, 4 << 10) for n, t in bucket}
    assert synced.keys() == base.keys()
    for name, t in synced.items():
        torch.testing.assert_close(t, expected[name], rtol=0, atol=1e-6)
    assert any(not torch.equal(synced[n], base[n]) for n in synced)


def test_lora_policy_moves_towards_the_reward_and_the_reference_is_the_base_with_adapters_off(trained, base_dir):
    from searchr1.rl.batch import collate
    from searchr1.rl.logprobs import logprobs_of

    trainer, history, before = trained
    module = trainer.actor.engine.module
    assert target_prob(module) > 1.5 * before  # the rewarded token's probability rose
    assert all(m["kl"] >= 0 for m in history) and history[-1]["kl"] > 0
    # No copy of the model: the reference is the actor engine itself, scored under disable_adapter().
    assert trainer.reference.model is trainer.actor.engine
    batch = collate(toy_rollout(module, toy_items()[:4] * 2))
    ref = trainer.reference.logprobs(batch)
    base_logp, _ = logprobs_of(load_base(base_dir), batch, 8, with_entropy=False)
    torch.testing.assert_close(ref, base_logp, rtol=0, atol=1e-6)
    actor_logp, _ = trainer.actor.logprobs(batch)
    assert not torch.allclose(actor_logp, base_logp, atol=1e-3)  # adapters back on after the reference pass


def test_resume_with_lora_continues_exactly_and_checkpoints_hold_only_the_trained_tensors(tmp_path, trained, base_dir, tok):
    from safetensors.torch import load_file

    full_trainer, full, _ = trained
    kw = dict(save_every=3, ppo_epochs=2)
    lora_trainer(tmp_path, base_dir, tok, steps=3, **kw).train()  # "killed" after step 3
    saved = torch.load(tmp_path / "ckpt/step_000003/actor/ds/mp_rank_00_model_states.pt", weights_only=False)
    # The adapters, not the frozen base; but for the tied head, an alias of the frozen embedding that DeepSpeed's
    # exclude_frozen_parameters does not list among the parameters (it reloads the same values).
    assert {k for k in saved["module"] if ".lora_" not in k} == {"lm_head.weight"}
    trainer = lora_trainer(tmp_path, base_dir, tok, steps=6, **kw)
    resumed = trainer.train(resume=True)
    assert trainer.step == 6 and len(resumed) == 6
    for a, b in zip(full, resumed):
        assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {k: v for k, v in b.items() if k not in TIMING_KEYS}
    final_full = full_trainer.cfg.final_dir
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        wa, wb = load_file(f"{final_full}/{name}"), load_file(tmp_path / "final" / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_final_dir_is_the_merged_policy_and_its_adapter_loads_onto_the_base(trained, base_dir, tmp_path, monkeypatch):
    import peft

    from searchr1.models.loading import load_policy

    trainer, _, _ = trained
    final = trainer.cfg.final_dir
    ids = torch.tensor([[11, 12, 13, 7, 9]])
    module = trainer.actor.engine.module
    with torch.no_grad():
        live = module(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(final)(input_ids=ids).logits
        on_base = peft.PeftModel.from_pretrained(load_base(base_dir), f"{final}/adapter")(input_ids=ids).logits
        base = load_base(base_dir)(input_ids=ids).logits
    torch.testing.assert_close(merged, live, rtol=0, atol=1e-5)
    torch.testing.assert_close(on_base, live, rtol=0, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-3)
    adapter_config = json.loads((Path(final) / lora.ADAPTER_DIR / lora.ADAPTER_CONFIG).read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir)  # where its base is, as loaded
    # Any loader given the adapter folder reads the base with the adapter merged (written once to a cache).
    monkeypatch.chdir(tmp_path)
    model, _ = load_policy(f"{final}/adapter")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, live, rtol=0, atol=1e-5)
    assert len(list((tmp_path / lora.MERGED_CACHE).iterdir())) == 1


def test_hf_engine_rolls_out_with_the_adapters_as_they_are_now(trained, base_dir, tok):
    from searchr1.rollout.engine import HFEngine, SamplingSettings

    trainer, _, _ = trained
    prompts = [it["prompt_ids"] for it in toy_items()[:6]]

    def greedy(model):
        return [g.token_ids for g in HFEngine(model, tok).generate(prompts, 6, SamplingSettings(greedy=True))]

    merged = AutoModelForCausalLM.from_pretrained(trainer.cfg.final_dir)
    with trainer._rollout_module() as module:  # what the rollout worker's HF engine generates with
        now = greedy(module)
        with trainer.adapter.disable_adapter():
            off = greedy(module)
    assert now == greedy(merged) and off == greedy(load_base(base_dir))
    assert now != off


def test_ppo_critic_trains_its_adapters_and_value_head_only(tmp_path, base_dir, tok):
    trainer = lora_trainer(tmp_path, base_dir, tok, algorithm="ppo", steps=2, critic_lr=1e-2)
    critic = trainer.critic.engine.module
    trained = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or n.startswith("value_head.") for n in trained)
    assert {"value_head.weight", "value_head.bias"} <= trained
    assert optimizer_numel(trainer.critic.engine) == sum(p.numel() for n, p in critic.named_parameters() if n in trained)
    before = {n: p.detach().clone() for n, p in critic.named_parameters()}
    history = trainer.train()
    assert all(m["value_loss"] > 0 for m in history)
    after = dict(critic.named_parameters())
    assert all(torch.equal(after[n], before[n]) == (n not in trained) for n in before if ".lora_A." not in n)


def test_a_target_the_model_lacks_or_a_tied_head_is_an_error_naming_the_setting():
    model = build_tiny_policy(VOCAB, seed=0, hidden_size=32, layers=1)
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules=\['qkv'\].*q_proj"):
        lora.add_lora(model, LoraConfig(enabled=True, target_modules=["qkv"]), "train.lora")
    model = build_tiny_policy(VOCAB, seed=0, hidden_size=32, layers=1)
    with pytest.raises(ValueError, match=r"sft\.lora\.target_modules.*ties"):
        lora.add_lora(model, LoraConfig(enabled=True, target_modules=["q_proj", "lm_head"]), "sft.lora")


def test_cold_start_with_lora_trains_only_the_adapter_of_the_micro_copy_head_policy(tmp_path):
    import peft
    from test_sft import KeywordRetriever, make_world

    from searchr1.config import PolicyConfig, Settings, SFTConfig
    from searchr1.models.loading import load_policy, prepare_base_policy
    from searchr1.sft.train import run_sft

    docs, train, _ = make_world(24)
    corpus, qa = tmp_path / "corpus.jsonl", tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "contents": d.contents}) + "\n" for d in docs))
    qa.write_text("".join(json.dumps(r) + "\n" for r in train))
    targets = ["q_proj", "v_proj", "copy_query", "copy_key"]  # the copy head's pointer adapted too
    settings = Settings(
        policy=PolicyConfig(kind="micro", micro_hidden_size=64, micro_layers=2, micro_vocab_size=400),
        sft=SFTConfig(epochs=2, lr=1e-2, batch_size=8, lora=LoraConfig(enabled=True, rank=4, target_modules=targets)),
    )
    settings.retrieval.topk = 2
    base = prepare_base_policy(settings.policy, corpus, [qa], tmp_path / "base")
    metrics = run_sft(settings, base, qa, KeywordRetriever(docs), tmp_path / "sft")
    curve = metrics["loss_curve"]
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, curve
    model, tok = load_policy(str(tmp_path / "sft"))  # a plain checkpoint: RL and evaluation load it as ever
    base_model, _ = load_policy(str(base))
    assert type(model).__name__ == "CopyLlamaForCausalLM" and not lora.lora_layers(model)
    new, old = model.state_dict(), base_model.state_dict()
    assert new.keys() == old.keys()
    changed = {k for k in new if not torch.equal(new[k], old[k])}
    assert changed and all(k.endswith(".weight") and k.split(".")[-2] in targets for k in changed), sorted(changed)
    adapted = peft.PeftModel.from_pretrained(base_model, tmp_path / "sft" / lora.ADAPTER_DIR)
    ids = torch.tensor([tok("Who founded the birthplace of Zorbak Quellin?").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_registry_registers_the_adapter_or_the_merged_weights(trained, tmp_path, monkeypatch):
    import mlflow

    from searchr1.config import TrackingConfig
    from searchr1.evaluation.registry import PromotionError, register_and_promote
    from searchr1.models.loading import load_policy
    from searchr1.tracking import stage_run

    trainer, _, _ = trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lora-registry")
    ids = torch.tensor([[11, 12, 13, 7, 9]])
    with torch.no_grad():
        live = trainer.actor.engine.module(input_ids=ids).logits
    mlflow.set_tracking_uri(cfg.tracking_uri)
    for version, artifact in enumerate(("adapter", "merged"), start=1):
        with stage_run(cfg, "promote") as run:
            paired = {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15} if version > 1 else None
            decision = register_and_promote(trainer.cfg.final_dir, "lora-policy", 0.2 + version / 10,
                                            0.2 if version > 1 else None, "evalset", 0.0, run.run_id, {}, paired,
                                            artifact=artifact)
        assert decision.promoted and decision.version == str(version)
        model, _ = load_policy("models:/lora-policy@champion")
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, live, rtol=0, atol=1e-5)
        assert mlflow.MlflowClient().get_model_version("lora-policy", str(version)).tags["artifact"] == artifact
    plain = tmp_path / "plain"
    build_tiny_policy(VOCAB, seed=0, hidden_size=32, layers=1).save_pretrained(plain)
    with stage_run(cfg, "promote") as run, pytest.raises(PromotionError, match="registry.artifact=adapter"):
        register_and_promote(plain, "lora-policy", 0.5, 0.4, "evalset", 0.0, run.run_id, {}, {}, artifact="adapter")
