"""The check world: the whole pipeline on a world it was not tuned on, read as a user's data would come."""

import json

import pytest

from tests.test_pipeline_flow import TINY_WORLD, assert_rl_updated, inside_tiny_project

# As `make check-world` sets them: only the data paths (and the analysis-only question types).
USER_DATA = [
    "corpus.source=jsonl", "corpus.path=source/corpus.jsonl",
    "qa.source=flashrag", "qa.flashrag_dir=source/flashrag", "qa.train_datasets=[world]", "qa.test_datasets=[world]",
    "evaluation.question_types=source/question_types.jsonl",
]


@pytest.mark.slow
def test_pipeline_runs_on_a_style_2_world_given_as_flashrag_files_without_metadata(harness, tmp_path):
    from flows.pipeline import pipeline
    from searchr1.config import WorldConfig
    from searchr1.data.world import generate_world

    with inside_tiny_project(tmp_path) as path:
        generate_world(WorldConfig(style=2, seed=1, out_dir="source", **TINY_WORLD))
        results = pipeline(params="params.yaml", overrides=USER_DATA + ["tracking.enabled=false"])
        train_rows = [json.loads(line) for line in (path / "data/qa/train.jsonl").read_text().splitlines()]
        assert_rl_updated(path)
    assert "world" not in results  # real data needs no generated world
    assert train_rows and all(r["metadata"] == {} for r in train_rows)  # nothing but question and answers
    sft = results["sft"]
    assert sft["mined_paths"]["none"] < sft["questions"] and "mined_vs_gold" not in sft
    evaluation = results["evaluate"]
    assert evaluation["complete"] and set(evaluation["by_type"]["policy/search-r1"]) <= {"single", "bridge", "comparison"}
    assert evaluation["by_searches"]["policy/search-r1"]


def test_workdir_puts_every_output_in_its_folder_and_keeps_the_settings_file(tmp_path, monkeypatch):
    import argparse

    from searchr1.cli import _enter_workdir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    args = argparse.Namespace(workdir="runs/check", params="params.yaml")
    _enter_workdir(args)
    assert (tmp_path / "runs/check").samefile(".") and args.params == str(tmp_path / "params.yaml")
