"""Evaluation harness (resumable, paper-style table) and the registry's champion/challenger rule."""

from pathlib import Path

import numpy as np
import pytest

from searchr1.config import (
    CorpusConfig,
    PolicyConfig,
    QAConfig,
    RetrievalConfig,
    Settings,
    TrackingConfig,
    WorldConfig,
)
from searchr1.evaluation.metrics import aggregate, bootstrap_ci
from searchr1.evaluation.registry import PromotionError, check_evaluation, decide, register_and_promote
from searchr1.evaluation.report import markdown_table

TINY_WORLD = dict(num_people=40, num_places=20, num_organizations=20, num_inventions=20, num_events=20,
                  num_train_questions=40, num_test_questions=12)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A real tiny world, its BM25 index and a tiny random policy, built with the library functions."""
    from searchr1.data.corpus import prepare_corpus
    from searchr1.data.qa import prepare_qa
    from searchr1.data.world import generate_world
    from searchr1.models.loading import prepare_base_policy
    from searchr1.retrieval.build import build_indexes

    root = tmp_path_factory.mktemp("evalproj")
    world = WorldConfig(out_dir=str(root / "world"), **TINY_WORLD)
    generate_world(world)
    corpus = CorpusConfig(out_path=str(root / "corpus.jsonl"), stats_path=str(root / "corpus_stats.json"))
    prepare_corpus(corpus, world_dir=world.out_dir)
    qa = QAConfig(out_dir=str(root / "qa"))
    prepare_qa(qa, world_dir=world.out_dir)
    retrieval = RetrievalConfig(index_dir=str(root / "indexes"), build=["bm25"])
    build_indexes(retrieval, corpus.out_path)
    policy = PolicyConfig(kind="tiny", micro_vocab_size=512, out_dir=str(root / "policy"))
    prepare_base_policy(policy, corpus.out_path, [Path(qa.out_dir) / "train.jsonl"])
    settings = Settings.model_validate(
        {
            "corpus": corpus.model_dump(),
            "qa": qa.model_dump(),
            "retrieval": retrieval.model_dump(),
            "rollout": {"max_turns": 1, "max_turn_tokens": 8},
            "evaluation": {"batch_size": 1},
        }
    )
    return root, settings


def _evaluate(root: Path, settings: Settings, predictions: Path) -> list[dict]:
    from searchr1.data.qa import load_qa
    from searchr1.evaluation.harness import evaluate_method
    from searchr1.models.loading import load_policy
    from searchr1.retrieval import load_retriever
    from searchr1.rollout.engine import HFEngine

    model, tok = load_policy(str(root / "policy"))
    items = load_qa(Path(settings.qa.out_dir) / "test.jsonl")[:5]
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    return evaluate_method(HFEngine(model, tok), tok, retriever, items, "search-r1", settings, predictions)


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]


def test_resumed_evaluation_equals_a_fresh_one(project, tmp_path):
    root, settings = project
    fresh = _evaluate(root, settings, tmp_path / "fresh.jsonl")
    assert len(fresh) == 5 and {"em", "f1", "substring_em", "num_searches"} <= set(fresh[0])

    # Simulate a kill after two questions, mid-way through writing the third line.
    lines = (tmp_path / "fresh.jsonl").read_text().splitlines()
    (tmp_path / "resumed.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])
    resumed = _evaluate(root, settings, tmp_path / "resumed.jsonl")
    assert _stable(resumed) == _stable(fresh)
    assert len((tmp_path / "resumed.jsonl").read_text().splitlines()) == 5  # torn line replaced, none doubled


def test_aggregate_reports_per_dataset_and_unweighted_average():
    rows = [
        {"data_source": "nq", "em": 1.0, "substring_em": 1.0, "f1": 1.0, "num_searches": 1, "valid_action_ratio": 1.0, "response_tokens": 10, "latency_s": 0.1},
        {"data_source": "nq", "em": 0.0, "substring_em": 1.0, "f1": 0.5, "num_searches": 2, "valid_action_ratio": 0.5, "response_tokens": 20, "latency_s": 0.1},
        {"data_source": "hotpotqa", "em": 1.0, "substring_em": 1.0, "f1": 1.0, "num_searches": 0, "valid_action_ratio": 1.0, "response_tokens": 5, "latency_s": 0.1},
    ]
    out = aggregate(rows, bootstrap_samples=200)
    assert out["nq"]["em"] == 0.5 and out["hotpotqa"]["em"] == 1.0
    assert out["average"]["em"] == 0.75  # mean over datasets, as the paper averages, not over questions
    assert out["average"]["n"] == 3
    assert 0.0 <= out["nq"]["em_ci_low"] <= 0.5 <= out["nq"]["em_ci_high"] <= 1.0
    table = markdown_table({"policy/search-r1": out})
    assert table.splitlines()[0] == "| method | hotpotqa | nq | average |"
    assert "| policy/search-r1 | 1.000 [1.000, 1.000] | 0.500 [" in table


def test_bootstrap_interval_is_degenerate_for_constant_scores_and_wide_for_mixed():
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, samples=500)
    assert lo < 0.5 < hi and hi - lo > 0.1


def test_promotion_needs_the_paired_ci_above_the_margin_not_a_higher_point_estimate():
    assert decide(0.3, None, 0.0)[0] is True
    # the case: 0.31 vs 0.30 on 100 questions, CI straddling 0
    promoted, reason = decide(0.31, 0.30, 0.0, {"diff": 0.01, "ci_low": -0.04, "ci_high": 0.06})
    assert not promoted and "not shown better" in reason and "[-0.0400, +0.0600]" in reason
    assert decide(0.40, 0.30, 0.0, {"diff": 0.10, "ci_low": 0.05, "ci_high": 0.15})[0] is True
    assert decide(0.40, 0.30, 0.06, {"diff": 0.10, "ci_low": 0.05, "ci_high": 0.15})[0] is False
    with pytest.raises(PromotionError, match="no paired comparison"):
        decide(0.40, 0.30, 0.0)
    with pytest.raises(PromotionError, match="partial"):
        check_evaluation({"complete": False, "average": {"em": 0.9}}, "em")
    with pytest.raises(PromotionError, match="no average"):
        check_evaluation({"complete": True, "average": {}}, "em")


def test_registry_champion_and_challenger_and_loading_the_champion(project, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from searchr1.models.loading import load_policy
    from searchr1.tracking import stage_run

    root, _ = project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="registry-test")
    name = "test-policy"

    def promote(score, champion_score):
        paired = None
        if champion_score is not None:  # a clear difference either way, as eval.json's comparisons give it
            d = score - champion_score
            paired = {"diff": d, "ci_low": d - 0.02, "ci_high": d + 0.02}
        with stage_run(cfg, "promote") as run:
            return register_and_promote(root / "policy", name, score, champion_score, "evalset", 0.0, run.run_id,
                                        {"git.commit": "abc"}, paired)

    first = promote(0.20, None)
    assert first.promoted and first.version == "1"
    worse = promote(0.10, 0.20)
    assert not worse.promoted
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    with pytest.raises(PromotionError, match="was not evaluated"):
        promote(0.5, None)  # a champion exists: its score on this eval set is required
    better = promote(0.30, 0.20)
    assert better.promoted and str(client.get_model_version_by_alias(name, "champion").version) == better.version
    version = client.get_model_version(name, better.version)
    assert version.tags["git.commit"] == "abc" and version.tags["eval.score"] == "0.3"
    assert version.tags["eval.ci_low"] == "0.0800" and version.tags["eval.champion_version"] == "1"
    assert "becomes champion" in version.tags["promotion.reason"]

    mlflow.set_tracking_uri(cfg.tracking_uri)
    model, tok = load_policy(f"models:/{name}@champion")
    assert model.config.vocab_size == len(tok)


def test_paired_difference_sees_a_gain_that_unpaired_cis_hide():
    from searchr1.evaluation.metrics import bootstrap_ci, paired_difference

    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.4).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:16]] = 1.0  # +0.08 on the same questions, nothing lost
    diff = paired_difference(better, base)
    assert diff["diff"] == pytest.approx(0.08) and diff["ci_low"] > 0
    lo_better, _ = bootstrap_ci(better)
    _, hi_base = bootstrap_ci(base)
    assert lo_better < hi_base  # the two separate CIs overlap: only the paired test shows the gain
    worse = paired_difference(base, better)
    assert worse["ci_high"] < 0


def test_compare_refuses_different_questions():
    from searchr1.evaluation.metrics import compare

    rows = lambda ids, em: [{"id": i, "em": em} for i in ids]  # noqa: E731
    out = compare({"a": rows("xyz", 1.0), "b": rows("xyz", 0.0), "c": rows("xzy", 0.0)}, [("a", "b"), ("a", "missing")])
    assert list(out) == ["a - b"] and out["a - b"]["diff"] == 1.0
    with pytest.raises(ValueError, match="different questions"):
        compare({"a": rows("xyz", 1.0), "c": rows("xzy", 0.0)}, [("a", "c")])


def test_breakdown_by_type_and_by_searches_and_paired_differences_per_type():
    from searchr1.evaluation.metrics import breakdown, compare_by, searches_group, type_group
    from searchr1.evaluation.report import breakdown_table

    def row(i, em, searches, kind):
        return {"id": str(i), "em": em, "f1": em, "num_searches": searches, "valid_action_ratio": 1.0, "type": kind}

    cold = [row(0, 0.0, 1, "bridge"), row(1, 0.0, 1, "bridge"), row(2, 1.0, 1, "single"), row(3, 1.0, 5, None)]
    rl = [row(0, 1.0, 2, "bridge"), row(1, 1.0, 2, "bridge"), row(2, 1.0, 1, "single"), row(3, 0.0, 3, None)]
    by_type = breakdown(rl, type_group)
    assert set(by_type) == {"bridge", "single"}  # rows without a type are left out
    assert by_type["bridge"] == {"n": 2.0, "em": 1.0, "f1": 1.0, "num_searches": 2.0, "valid_action_ratio": 1.0}
    assert set(breakdown(cold, searches_group)) == {"1", "3+"} and breakdown(rl, searches_group)["2"]["n"] == 2
    diffs = compare_by({"rl": rl, "cold": cold}, [("rl", "cold")], type_group, samples=200)
    assert diffs["bridge"]["rl - cold"]["diff"] == 1.0 and diffs["single"]["rl - cold"]["diff"] == 0.0
    # By searches, a question's group is the baseline's (cold's) count, so both sides cover the same questions.
    by_searches = compare_by({"rl": rl, "cold": cold}, [("rl", "cold")], searches_group, samples=200)
    assert set(by_searches) == {"1", "3+"}
    assert by_searches["1"]["rl - cold"]["n"] == 3 and by_searches["1"]["rl - cold"]["diff"] == pytest.approx(2 / 3)
    assert by_searches["3+"]["rl - cold"]["diff"] == -1.0
    table = breakdown_table({"rl": by_type}, "type")
    assert "type bridge" in table and "1.000 / 2.00 (2)" in table
    assert breakdown_table({"rl": {}}, "type") == ""


def test_a_type_that_falls_while_the_total_rises_is_called_out():
    from searchr1.evaluation.metrics import compare, compare_by, fallen_groups, type_group
    from searchr1.evaluation.report import fallen_list

    # 40 bridge questions RL gets right (cold start wrong), 20 single-hop questions it loses.
    cold = [{"id": f"b{i}", "em": 0.0, "type": "bridge"} for i in range(40)]
    cold += [{"id": f"s{i}", "em": 1.0, "type": "single"} for i in range(20)]
    rl = [{**r, "em": 1.0 - r["em"]} for r in cold]
    total = compare({"rl": rl, "cold": cold}, [("rl", "cold")], samples=200)
    by_type = compare_by({"rl": rl, "cold": cold}, [("rl", "cold")], type_group, samples=200)
    assert total["rl - cold"]["ci_low"] > 0
    notes = fallen_groups(total, by_type, "type")
    assert notes == ["rl - cold: type single fell by -1.000 [-1.000, -1.000] on 20 questions, while the total rose by +0.333"]
    assert fallen_groups(total, {"bridge": by_type["bridge"]}, "type") == []  # a type that rose is not called out
    assert "**A question type fell**" in fallen_list(notes) and f"- {notes[0]}" in fallen_list(notes)
    assert fallen_list([]) == ""


def test_question_types_file_is_validated_with_file_and_line(tmp_path):
    from searchr1.data.qa import read_question_types
    from searchr1.io import DataError

    path = tmp_path / "types.jsonl"
    path.write_text('{"id": "q1", "type": "bridge"}\n{"id": "q2"}\n')
    with pytest.raises(DataError, match=r"types.jsonl:2"):
        read_question_types(path)
    path.write_text('{"id": "q1", "type": "bridge"}\n{"id": 7, "type": "single"}\n')
    assert read_question_types(path) == {"q1": "bridge", "7": "single"}


def test_a_transfer_evaluation_sets_its_numbers_beside_the_home_worlds(project, tmp_path, monkeypatch):
    """evaluation.home_eval (`make check-transfer`): the evaluate stage scores the models here and writes
    their EM, valid actions, repeated turns and searches beside those of the home world's eval.json."""
    import json

    from searchr1.config import ConfigError
    from searchr1.stages import evaluate

    root, settings = project
    home = {"results": {"sft/search-r1": {"average": {"em": 0.75, "valid_action_ratio": 0.99, "repeated_turns": 0.0,
                                                      "num_searches": 1.5}}}}
    (tmp_path / "home_eval.json").write_text(json.dumps(home))
    monkeypatch.chdir(tmp_path)  # the stage writes reports/ here
    cfg = settings.model_copy(deep=True)
    cfg.sft.out_dir = str(root / "policy")
    cfg.tracking.enabled = False
    cfg.evaluation.models, cfg.evaluation.methods = ["sft"], ["search-r1"]
    cfg.evaluation.max_examples, cfg.evaluation.bootstrap_samples = 4, 50

    cfg.evaluation.home_eval = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="evaluation.home_eval: .*missing.json: file not found"):
        evaluate(cfg)
    assert not (tmp_path / "reports" / "eval.json").exists()  # refused before anything was scored

    (tmp_path / "not_eval.json").write_text("[1, 2]")
    cfg.evaluation.home_eval = str(tmp_path / "not_eval.json")
    with pytest.raises(ConfigError, match="not_eval.json: not an eval.json"):
        evaluate(cfg)

    cfg.evaluation.home_eval = str(tmp_path / "home_eval.json")
    summary = evaluate(cfg)
    here = summary["results"]["sft/search-r1"]["average"]
    assert summary["transfer"]["sft/search-r1"] == {
        "home": home["results"]["sft/search-r1"]["average"],
        "here": {k: here[k] for k in ("em", "valid_action_ratio", "repeated_turns", "num_searches")},
    }
    table = (tmp_path / "reports" / "eval.md").read_text()
    assert "Transfer: the same models" in table
    assert f"| sft/search-r1 | 0.750 → {here['em']:.3f} | 0.990 → {here['valid_action_ratio']:.3f} |" in table
    assert json.loads((tmp_path / "reports" / "eval.json").read_text())["transfer"] == summary["transfer"]
