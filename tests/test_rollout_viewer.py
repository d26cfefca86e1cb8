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
