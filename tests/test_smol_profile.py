"""`--profile smol`: SmolLM2-135M-Instruct (the real pretrained policy) through every stage, shrunk to one step."""

import importlib.util
import json

import pytest

from searchr1.config import profile_overrides
from tests.test_pipeline_flow import inside_tiny_project

# The profile as shipped, then only sizes cut down (the tiny project shows 96-token passages): 8 training questions (8 drills), 1 GRPO step of 2 x 2 samples, 2 test questions.
SHRINK = [
    "sft.num_examples=8", "sft.epochs=1", "sft.number_drills=8", "rollout.max_turns=1", "rollout.max_obs_tokens=200",
    "train.steps=1", "train.prompts_per_step=2", "train.num_generations=2", "train.minibatch_size=4",
    "train.deepspeed.gradient_accumulation_steps=2", "train.eval_every=1", "train.eval_size=2",
    "evaluation.max_examples=2", "evaluation.methods=[search-r1]", "evaluation.models=[sft, policy]",
    "tracking.enabled=false",
    # the profile rolls out with vLLM; where it is not installed (`make install` without install-vllm), with ours
    *([] if importlib.util.find_spec("vllm") else ["rollout.engine=hf"]),
]


@pytest.mark.slow
def test_smol_profile_runs_every_stage_on_smollm2(harness, tmp_path):
    from flows.pipeline import pipeline

    smol = profile_overrides("smol")  # read from the repo's profiles/ (the tiny project has none)
    with inside_tiny_project(tmp_path) as path:
        # the tiny project's params.yaml set policy.kind=tiny: the profile must win, as on the CLI
        results = pipeline(params="params.yaml", overrides=smol + SHRINK)
        base = json.loads((path / "models/base/policy.json").read_text())
        cold_start = json.loads((path / "models/sft/policy.json").read_text())
    assert base["kind"] == cold_start["kind"] == "smol" and base["params"] > 100_000_000
    assert results["sft"]["examples"] >= 1 and results["sft"]["questions"] == 8
    assert results["train"]["steps"] == 1
    assert results["evaluate"]["complete"]
