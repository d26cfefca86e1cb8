"""Search paths mined from question, answers and corpus alone: names, follow-ups, evidence grades, beam."""

from __future__ import annotations

from searchr1.retrieval.base import Doc
from searchr1.sft.mining import (
    ABOUT,
    SHOWN,
    TOP,
    evidence,
    follow_up_queries,
    mine_paths,
    mining_report,
    names_in,
    remaining_words,
)
from tests.test_sft import KeywordRetriever, make_world


def test_names_are_capitalised_spans_without_function_words():
    text = "The founder of Krovosk Railways was Vavagath Tabrerurk. He lived in The Hague. It sells goods in Kiss and Tell."
    assert names_in(text) == ["Krovosk Railways", "Vavagath Tabrerurk", "Hague", "Kiss and Tell"]
    assert names_in("no names here.") == []


def test_remaining_words_drop_names_and_function_words():
    assert remaining_words("In which year was the founder of Krovosk Railways born?") == "year founder born"


def test_follow_ups_skip_question_names_asked_queries_and_the_answer():
    docs = [Doc("o", '"Krovosk Railways"\nThe founder of Krovosk Railways was Vavagath Tabrerurk. It is in Dibrebuth.'),
            Doc("a", '"Krovosk Archive"\nThe archive is in Namork.')]
    question = "In which year was the founder of Krovosk Railways born?"
    got = follow_up_queries(question, [question, "Namork"], docs, ["Dibrebuth"], limit=10, with_question_words=True)
    # Titles and names in rank order; the question's own name, an earlier query and the answer are left out.
    assert got == ["Vavagath Tabrerurk", "Krovosk Archive",
                   "Vavagath Tabrerurk year founder born", "Krovosk Archive year founder born"]
    assert follow_up_queries(question, [question], docs, ["x"], limit=1, with_question_words=False) == ["Vavagath Tabrerurk"]


def test_an_answer_named_in_the_question_may_be_searched():
    docs = [Doc("p", '"Ada Pell"\nAda Pell was born before Ilsa Marrow.')]
    got = follow_up_queries("Who was born earlier, Ada Pell or Ilsa Marrow?", [], docs, ["Ilsa Marrow"], 5, False)
    assert got == []  # both names are in the question already
    got = follow_up_queries("Who came first?", [], docs, ["Ilsa Marrow"], 5, False)
    assert "Ilsa Marrow" not in got  # would be searching for the answer


def test_evidence_grades_where_the_answer_appears():
    about = Doc("b", '"Ada Pell"\nAda Pell was born in 1801.')
    other = Doc("c", '"Pell Prize"\nThe Pell Prize was first given in 1801.')
    assert evidence("Ada Pell", [other, about], ["1801"]) == (ABOUT, "b")  # the looked-up entity's passage wins
    assert evidence("born 1800s", [other, about], ["1801"]) == (TOP, "c")
    assert evidence("born 1800s", [Doc("x", '"X"\nnothing'), other], ["1801"]) == (SHOWN, "c")
    assert evidence("Ada Pell", [about], ["1802"]) is None
    assert evidence("Ada Pell", [about], ["180"]) is None  # whole words only


def test_two_hop_paths_are_mined_without_gold_queries():
    docs, train, _ = make_world()
    rows = [{k: v for k, v in r.items() if k != "metadata"} for r in train]  # what real data gives
    paths = mine_paths([r["question"] for r in rows], [r["golden_answers"] for r in rows], KeywordRetriever(docs), 2,
                       show=lambda d: d)
    assert all(p is not None for p in paths)
    for row, path in zip(train, paths):
        birthplace = row["metadata"]["gold_queries"][1].removesuffix(" founded")
        assert path.queries == [row["question"], birthplace]  # hop 2 looks up the city named in hop 1
        assert path.evidence == ABOUT and path.evidence_id.startswith("c")
    report = mining_report(train, paths)
    assert report["mined_paths"] == {"2_hop": len(train), "none": 0}
    assert report["mined_paths_by_type"] == {"two_hop": {"2_hop": len(train), "none": 0}}


def test_mining_stops_at_the_first_about_path_and_reports_misses():
    docs = [Doc("p", '"Ada Pell"\nAda Pell was born in Kastrin.'), Doc("k", '"Kastrin"\nKastrin lies by the sea.')]
    rows = [{"id": "1", "question": "Where was Ada Pell born?", "golden_answers": ["Kastrin"],
             "metadata": {"supporting_ids": ["p"]}},
            {"id": "2", "question": "Who founded Kastrin?", "golden_answers": ["Nobody Known"]}]
    paths = mine_paths([r["question"] for r in rows], [r["golden_answers"] for r in rows], KeywordRetriever(docs), 2,
                       show=lambda d: d, max_hops=3)
    assert paths[0].queries == ["Where was Ada Pell born?"] and paths[0].evidence == ABOUT
    assert paths[1] is None
    report = mining_report(rows, paths)
    assert report["mined_paths"] == {"1_hop": 1, "none": 1}
    assert report["mined_vs_gold"] == {"checked": 1, "right": 1, "precision": 1.0}


def test_mined_paths_only_use_what_the_policy_is_shown():
    docs, train, _ = make_world(8)
    cut = lambda ds: [Doc(d.id, f'"{d.title}"\n', d.score) for d in ds]  # noqa: E731  titles only
    paths = mine_paths([r["question"] for r in train], [r["golden_answers"] for r in train], KeywordRetriever(docs), 2,
                       show=cut)
    assert paths == [None] * len(train)  # the city is only named in the (hidden) passage text
