"""Trajectory files, the HTML viewer (retrieved text marked as masked, everything escaped) and `ask`."""

import json

from searchr1.config import RolloutConfig
from searchr1.rollout.ask import ask, format_sample
from searchr1.rollout.loop import run_rollout
from searchr1.rollout.trajectories import load_trajectories, save_trajectories
from searchr1.rollout.viewer import render_html, write_viewer
from tests.test_rollout import Q1, KeywordRetriever, ScriptedEngine, enc, items

CFG = RolloutConfig(max_turns=2, max_turn_tokens=64)


def script(tok):
    return {
        Q1: [
            enc(tok, "<think>x</think><search> capital of Zorbland </search>"),
            enc(tok, "<think>y</think><answer> Mira <b>Fenwick</b> </answer>"),
        ]
    }


def test_trajectories_roundtrip_and_viewer_marks_retrieved_text(smol, tmp_path):
    res = run_rollout(ScriptedEngine(smol, script(smol)), smol, items(Q1), KeywordRetriever(), CFG)
    path = tmp_path / "traj.jsonl"
    assert save_trajectories(path, res.samples, extra={"step": 3}) == 1
    rec = load_trajectories(path)[0]
    assert rec["step"] == 3 and rec["response_ids"] == res.samples[0].response_ids
    assert json.loads(path.read_text().splitlines()[0])["uid"] == "q0#0"

    assert write_viewer(path, tmp_path / "view.html") == 1
    page = (tmp_path / "view.html").read_text()
    assert "retrieved (d1" in page and "masked from loss" in page and 'class="obs"' in page
    assert "<b>Fenwick</b>" not in page and "&lt;b&gt;Fenwick&lt;/b&gt;" in page  # model text is escaped
    assert "&lt;information&gt;" in page and "Mira Fenwick" in render_html([rec])


def test_ask_reports_searches_titles_and_answer(smol):
    sample, docs = ask(Q1, ScriptedEngine(smol, script(smol)), smol, KeywordRetriever(), CFG)
    text = format_sample(sample, docs)
    assert "search: 'capital of Zorbland'" in text and "1. Zorbland" in text
    assert "Answer: Mira <b>Fenwick</b>" in text


def test_ask_shows_an_empty_search_as_no_passages_found_not_as_an_invalid_action():
    from searchr1.rollout.ask import format_sample
    from searchr1.rollout.types import Sample, Turn

    s = Sample(uid="a#0", group_id="a", question="Q?", golden_answers=[], prompt_ids=[1], response_ids=[2],
               response_mask=[1])
    s.turns = [
        Turn(text="<search> nothing </search>", action="search", query="nothing", doc_ids=[],
             observation="<information></information>"),
        Turn(text="gibberish", action="invalid", observation="My previous action is invalid..."),
    ]
    text = format_sample(s)
    assert "search: 'nothing'\n    (no passages found)" in text
    assert text.count("invalid action") == 1


def test_pipeline_ends_with_its_numbers_and_what_to_open_next(tmp_path):
    import json

    from searchr1.cli import next_steps

    (tmp_path / "eval.json").write_text(json.dumps({
        "results": {"sft/search-r1": {"average": {"em": 0.5}}, "policy/search-r1": {"average": {"em": 0.6}}},
        "comparisons": {"policy/search-r1 - sft/search-r1": {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15}},
    }))
    text = next_steps(tmp_path / "eval.json")
    assert "policy/search-r1   EM 0.600" in text and "[+0.050, +0.150]" in text
    assert "reports/eval.md" in text and "mlflow ui" in text and "searchr1 ask" in text
