"""docs/results.md is written from logged MLflow runs: every RL variant gets its EM row (with the
bootstrap CI) and its curves, baselines appear once."""

from pathlib import Path

from searchr1.config import TrackingConfig
from searchr1.evaluation.results import write_results
from searchr1.io import write_json
from searchr1.tracking import stage_run


def _eval(em_policy: float) -> dict:
    def per(em):
        return {"world": {"n": 10.0, "em": em, "f1": em, "num_searches": 1.5, "em_ci_low": em - 0.1, "em_ci_high": em + 0.1},
                "average": {"n": 10.0, "em": em, "f1": em, "num_searches": 1.5}}
    return {"complete": True, "results": {"sft/search-r1": per(0.2), "policy/search-r1": per(em_policy)}}


def test_results_markdown_has_a_row_per_rl_variant_and_curves(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="results-test")
    for algorithm, mask, em in (("grpo", True, 0.4), ("ppo", False, 0.3)):
        with stage_run(cfg, "train", params={"train": {"algorithm": algorithm, "mask_retrieved": mask, "init_from": "sft"}}) as run:
            for step in range(1, 4):
                run.log_metrics({"reward_mean": 0.1 * step, "kl": 0.01 * step, "eval/em": em}, step=step)
            run.log_metrics({"seconds": 12.0})
        with stage_run(cfg, "evaluate") as run:
            write_json(tmp_path / "eval.json", _eval(em))
            run.log_artifact(tmp_path / "eval.json")
    out = write_results(cfg, tmp_path / "docs" / "results.md", tmp_path / "docs" / "results", notes="micro profile")
    text = out.read_text()
    assert "| policy (RL: grpo) | search-r1 | 0.400 | [0.300, 0.500] |" in text
    assert "| policy (RL: ppo, no retrieved-token mask) | search-r1 | 0.300 |" in text
    assert text.count("| sft | search-r1 |") == 1  # the cold start is the same model in both pipelines
    assert "| train | 12 |" in text and "micro profile" in text
    assert (tmp_path / "docs" / "results" / "training_curves.png").stat().st_size > 1000


def test_variant_label_names_what_differs_from_the_demo_run():
    from searchr1.evaluation.results import variant_label

    assert variant_label({"train.algorithm": "grpo", "rollout.seed": "0"}) == "grpo"
    assert variant_label({"train.algorithm": "ppo", "train.mask_retrieved": "False", "rollout.seed": "2"}) == (
        "ppo, no retrieved-token mask, rollout seed 2")
