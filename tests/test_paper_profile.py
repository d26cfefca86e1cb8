"""`--profile paper` / `--profile paper_grpo`: the paper's setting (Search-R1 v0.2 scripts) as valid settings."""

from pathlib import Path

import pytest
import yaml

from searchr1.config import flatten, load_settings, profile_overrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # PROFILES_DIR is relative: the project root holds profiles/


def _profile(name: str, params: str | None = None):
    return load_settings(params, profile_overrides(name))


@pytest.mark.parametrize("name", ["paper", "paper_grpo"])
@pytest.mark.parametrize("params", [None, "params.yaml"])
def test_profile_loads_into_valid_settings(name, params):
    """Over the defaults and over params.yaml (what `--profile` does): every key exists and validates."""
    s = _profile(name, params)
    assert s.policy.kind == "hf" and s.policy.name_or_path == "Qwen/Qwen2.5-3B"
    # Every value the profile sets wins over params.yaml's demo values.
    written = flatten(yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text()))
    resolved = flatten(s.model_dump(mode="json"))
    for key, value in written.items():
        assert resolved[key] == value, key


def test_paper_profile_is_the_ppo_setting():
    s = _profile("paper", "params.yaml")
    t, r, ret = s.train, s.rollout, s.retrieval
    assert t.algorithm == "ppo" and t.init_from == "base" and not s.sft.enabled
    assert r.engine == "vllm" and r.template == "search_r1" == s.qa.template
    assert (r.max_turns, r.max_prompt_tokens, r.max_turn_tokens, r.max_obs_tokens, r.max_total_tokens) == (
        4, 2048, 500, 500, 4096)
    assert (r.temperature, r.top_p, r.vllm_tensor_parallel_size, r.vllm_gpu_memory_utilization) == (1.0, 1.0, 1, 0.6)
    assert ret.method == "dense" and ret.faiss.type == "flat" and ret.topk == 3 and ret.build == ["dense"]
    enc = ret.encoder
    assert enc.name_or_path == "intfloat/e5-base-v2" and enc.pooling == "mean" and enc.normalize
    assert (enc.query_prefix, enc.passage_prefix, enc.max_length) == ("query: ", "passage: ", 256)
    assert s.corpus.source == "jsonl" and s.corpus.path.endswith("wiki-18.jsonl")
    assert s.qa.source == "flashrag" and s.qa.train_datasets == ["nq", "hotpotqa"] and len(s.qa.test_datasets) == 7
    assert t.lr == 1e-6 < t.critic_lr == 1e-5
    assert t.warmup_steps == int(0.285 * t.steps) == 286  # verl: int(lr_warmup_steps_ratio x total steps)
    assert t.kl_in_reward and t.kl_estimator == "k1" and t.kl_coef == 0.001  # Search-R1's PPO: KL in the reward
    assert (t.gamma, t.lam, t.clip_range, t.entropy_coef) == (1.0, 1.0, 0.2, 0.001)
    assert t.num_generations == 1 and t.prompts_per_step == 512 and t.minibatch_size == 256
    assert t.mask_retrieved and t.mask_critic is False and not t.filter_groups
    ds = t.deepspeed
    assert ds.zero_stage == 3 and ds.gradient_checkpointing and ds.bf16 is True and s.policy.dtype == "bfloat16"
    assert t.launcher == "deepspeed" and t.num_gpus == 8 and t.num_nodes == 1
    assert s.evaluation.models == ["base", "policy"] and s.evaluation.methods == ["direct", "rag", "search-r1"]


def test_paper_grpo_profile_is_the_grpo_setting():
    s = _profile("paper_grpo", "params.yaml")
    t = s.train
    assert t.algorithm == "grpo" and t.num_generations > 1 and t.num_generations == 5
    assert not t.kl_in_reward and t.kl_estimator == "low_var_kl" and t.kl_coef == 0.001  # use_kl_loss=true
    assert t.init_from == "base" and not s.sft.enabled and not t.filter_groups
    assert t.deepspeed.zero_stage == 3 and s.rollout.engine == "vllm"
    # Apart from train, the GRPO run differs from the PPO run only where its script does (top_p left at 0.95).
    ppo = _profile("paper", "params.yaml").model_dump()
    grpo = s.model_dump()
    ppo["rollout"].pop("top_p"), grpo["rollout"].pop("top_p")
    assert {k: v for k, v in ppo.items() if k != "train"} == {k: v for k, v in grpo.items() if k != "train"}


@pytest.mark.parametrize("name", ["paper", "paper_grpo"])
def test_batch_sizes_split_over_the_eight_ranks_as_verl_does(name):
    """The launch-time checks (prompts and minibatch over gas x ranks) pass, with verl's 8 rows per GPU."""
    t = _profile(name).train
    world, gas = t.num_gpus * t.num_nodes, t.deepspeed.gradient_accumulation_steps
    assert t.prompts_per_step % world == 0 and t.minibatch_size % (gas * world) == 0
    assert t.minibatch_size // (gas * world) == 64 // 8  # ppo_micro_batch_size=64 over 8 GPUs
    assert (t.prompts_per_step * t.num_generations) % t.minibatch_size == 0


def test_named_profiles_resolve_on_the_cli(capsys):
    from searchr1.cli import main

    for name in ("paper", "paper_grpo"):
        assert main(["config", "--profile", name]) == 0
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved["policy"]["name_or_path"] == "Qwen/Qwen2.5-3B"
