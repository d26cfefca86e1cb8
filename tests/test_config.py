from pathlib import Path

import pytest

from searchr1.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_repo_params_yaml_is_valid_and_complete():
    settings = load_settings(ROOT / "params.yaml")
    assert isinstance(settings, Settings)
    assert settings.retrieval.topk == 3 and settings.rollout.max_turns == 4


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: train.learning_rate: unknown key"):
        load_settings(p)


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("retrieval:\n  topk: many\n")
    with pytest.raises(ConfigError, match=r"retrieval.topk"):
        load_settings(p)


def test_out_of_range_value_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train.clip_range"):
        load_settings(None, ["train.clip_range=-1"])


def test_overrides_land_in_typed_objects():
    s = load_settings(None, ["train.lr=1e-5", "retrieval.method=dense", "qa.train_datasets=[nq]"])
    assert s.train.lr == pytest.approx(1e-5) and isinstance(s.train.lr, float)
    assert s.retrieval.method == "dense"
    assert s.qa.train_datasets == ["nq"]


def test_the_searched_index_is_always_built():
    assert load_settings(None, []).retrieval.build == ["bm25"]  # the demo searches BM25: no corpus encoding
    assert load_settings(None, ["retrieval.method=dense"]).retrieval.build == ["bm25", "dense"]
    assert load_settings(None, ["retrieval.method=hybrid", "retrieval.build=[dense]"]).retrieval.build == ["dense", "bm25"]


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_settings(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="p.yaml: not valid YAML"):
        load_settings(p)


@pytest.mark.parametrize(
    "overrides,keys",
    [
        (["train.kl_in_reward=true"], ["train.kl_in_reward", "train.algorithm=grpo"]),
        (["train.algorithm=ppo", "train.kl_in_reward=true", "train.kl_coef=0", "train.filter_groups=false"],
         ["train.kl_in_reward", "train.kl_coef"]),
        (["train.algorithm=reinforce_pp", "train.filter_groups=false"], ["train.algorithm=reinforce_pp", "train.kl_in_reward"]),
        (["train.mask_retrieved=false", "train.mask_critic=true"], ["train.mask_critic", "train.mask_retrieved"]),
        (["train.algorithm=ppo"], ["train.filter_groups", "train.algorithm=ppo"]),
        (["train.minibatch_size=30"], ["train.minibatch_size", "gradient_accumulation_steps"]),
        (["train.minibatch_size=48", "train.deepspeed.gradient_accumulation_steps=1"],
         ["train.prompts_per_step x train.num_generations", "train.minibatch_size"]),
        (["sft.mine_comparisons=false"], ["sft.number_drills", "sft.mine_comparisons"]),
        (["sft.relation_after=false"], ["sft.number_drills", "sft.relation_after"]),
        (["sft.new_names=0", "sft.reword=0.2"], ["sft.reword", "sft.new_names"]),
    ],
)
def test_contradictory_or_ignored_settings_are_errors_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_settings(ROOT / "params.yaml", overrides)
    for key in keys:
        assert key in str(err.value)


def test_mask_critic_follows_mask_retrieved_unless_set():
    assert load_settings(ROOT / "params.yaml", ["train.mask_retrieved=false"]).train.mask_critic is False
    assert load_settings(ROOT / "params.yaml").train.mask_critic is True
    ppo = load_settings(ROOT / "params.yaml", ["train.algorithm=ppo", "train.filter_groups=false", "train.mask_critic=false"])
    assert ppo.train.mask_critic is False and ppo.train.mask_retrieved is True
