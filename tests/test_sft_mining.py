"""Search paths mined from question, answers and corpus alone: names, follow-ups, evidence grades, beam."""

from __future__ import annotations

import random
import re

from searchr1.config import SFTConfig
from searchr1.retrieval.base import Doc
from searchr1.sft.mining import (
    ABOUT,
    SHOWN,
    TOP,
    compared_names,
    deciding_sentence,
    deciding_value,
    evidence,
    follow_up_queries,
    mine_paths,
    mining_report,
    names_in,
    remaining_words,
)
from searchr1.sft.train import comparison_copies
from searchr1.sft.trajectories import (
    build_sft_examples,
    corpus_numbers,
    corpus_words,
    number_drills,
    numbers_by_length,
    relation,
    swapped,
    winning_side,
    with_new_names,
    with_other_values,
)
from tests.test_sft import KeywordRetriever, make_world, turns_text


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


# Two people; the question compares their birth years. The answer's own passage names it, so the older
# rule stopped at one search that happened to show it.
PEOPLE = [
    Doc("a", '"Ada Pell"\nAda Pell was a smith born in 1801 in Kastrin. She made bells. Ada Pell died in 1870.'),
    Doc("i", '"Ilsa Marrow"\nIlsa Marrow was a baker born in 1795 in Dorn. She baked bread. Ilsa Marrow died in 1850.'),
    Doc("k", '"Kastrin"\nKastrin is a town of 4,000 people founded in 1702.'),
]
COMPARE = {"id": "q", "question": "Who was born earlier, Ada Pell or Ilsa Marrow?", "golden_answers": ["Ilsa Marrow"]}


def test_a_question_whose_answer_is_one_of_its_names_is_a_comparison():
    assert compared_names(COMPARE["question"], COMPARE["golden_answers"]) == ["Ada Pell", "Ilsa Marrow"]
    # A name's common nouns come with it: the corpus may hold a Tiderk compass as well as the Tiderk winch.
    assert compared_names("Which is older, the Tiderk winch or the Zorb press?", ["Tiderk winch"]) == [
        "Tiderk winch", "Zorb press"]
    # Two names joined by "and" are one span to names_in ("Kiss and Tell"): split when one side is the answer.
    assert compared_names("Of Ada Pell Bells and Ilsa Marrow Bakery, which was established first?",
                          ["Ilsa Marrow Bakery"]) == ["Ada Pell Bells", "Ilsa Marrow Bakery"]
    assert compared_names("Of the Ada Pell Fair and the Ilsa Marrow Parade, which took place first?",
                          ["Ilsa Marrow Parade"]) == ["Ada Pell Fair", "Ilsa Marrow Parade"]
    assert compared_names("Who was born earlier, Ada Pell or Ilsa Marrow?", ["1795"]) == []  # answer not a name in it
    assert compared_names("Where was Ada Pell born?", ["Ada Pell"]) == []  # one name: nothing to compare


def test_the_deciding_value_is_the_number_next_to_what_the_question_asks():
    text = PEOPLE[0].text
    assert deciding_sentence(text, COMPARE["question"]) == "Ada Pell was a smith born in 1801 in Kastrin."
    assert deciding_sentence("No numbers here.", COMPARE["question"]) is None
    style2 = "The smith Ada Pell came into the world in Kastrin in 1801 and passed away in 1870."
    assert deciding_value(style2, "Of Ada Pell and Ilsa Marrow, who came into the world first?") == "1801"
    city = "Oslo was founded in 1850 and has a population of 120,000."
    assert deciding_value(city, "Which city has a larger population, Oslo or Rome?") == "120,000"
    assert deciding_value(city, "Which is older, Oslo or Rome?") == "1850"  # no asked word: the first number


def test_a_comparison_is_mined_as_one_lookup_per_name():
    questions, answers = [COMPARE["question"]], [COMPARE["golden_answers"]]
    (path,) = mine_paths(questions, answers, KeywordRetriever(PEOPLE), 1, show=lambda d: d)
    assert path.queries == ["Ada Pell", "Ilsa Marrow"]
    assert path.evidence == ABOUT and path.evidence_id == "i"
    # The older rule: one search of the question shows the answer's own passage (top 2), and stops there.
    (old,) = mine_paths(questions, answers, KeywordRetriever(PEOPLE), 2, show=lambda d: d, comparisons=False)
    assert old.queries == [COMPARE["question"]]
    # A lookup that shows no deciding value does not count: titles only, nothing is ever complete.
    cut = lambda ds: [Doc(d.id, f'"{d.title}"\n', d.score) for d in ds]  # noqa: E731
    assert mine_paths(questions, answers, KeywordRetriever(PEOPLE), 1, show=cut) == [None]
    single = {"id": "s", "question": "Where was Ada Pell born?", "golden_answers": ["Kastrin"]}
    report = mining_report([COMPARE, single], [path, None])
    assert report["mined_paths_by_shape"] == {"comparison": {"2_hop": 1, "none": 0}, "other": {"none": 1}}


def test_a_comparisons_trajectory_looks_up_both_names_and_writes_out_their_values():
    (path,) = mine_paths([COMPARE["question"]], [COMPARE["golden_answers"]], KeywordRetriever(PEOPLE), 1,
                         show=lambda d: d)
    # skip_hop never cuts a comparison short
    cfg = SFTConfig(query_noise=0.0, skip_hop=1.0, rag_fraction=0.0, mine_comparisons=True)
    (ex,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1, cfg)
    turns = turns_text(ex)
    assert ex["num_searches"] == 2 and not ex["skipped_hop"]
    # The plan of any multi-search path, then what is compared.
    assert "searches. I will compare Ada Pell and Ilsa Marrow, Ada Pell first. </think>" in turns
    # Each value is noted in the thought right after the block that showed it; the answer's thought writes
    # both values (the later-noted first), then their relation, and names the winner.
    assert "<think> Ada Pell: 1801. Next, I should search for Ilsa Marrow. </think>" in turns or (
        "<think> Ada Pell: 1801. Now I need to find Ilsa Marrow. </think>" in turns)
    assert "<search> Ilsa Marrow </search>" in turns
    assert turns.endswith("<think> Ilsa Marrow: 1795. 1795 < 1801. So the answer is Ilsa Marrow. </think>\n"
                          "<answer> Ilsa Marrow </answer>")
    assert ex["comparison"]
    assert relation("120,000", "95,500") == "95,500 < 120,000. " and relation("1.2.3", "7") == ""
    assert relation("120,000", "95,500", after=True) == "95,500 vs 120,000:<. "
    # sft.relation_after: the relation token after both values
    (after,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1,
                                  cfg.model_copy(update={"relation_after": True}))
    assert turns_text(after).endswith("<think> Ilsa Marrow: 1795. 1795 vs 1801:<. So the answer is Ilsa Marrow. "
                                      "</think>\n<answer> Ilsa Marrow </answer>")
    # A path that never showed the other side's value gives no example.
    assert build_sft_examples([COMPARE], [["Ada Pell"]], KeywordRetriever(PEOPLE), 1, cfg) == []


def test_number_drills_compare_pairs_of_the_corpus_numbers_of_one_length_and_train_only_the_relation():
    numbers = corpus_numbers(["Ada Pell was born in 1801 in Kastrin.", "Kastrin has 120000 people; in 1795, 95500.",
                              "Version 1.2.3 of 7 tools", "It opened in 1840."])
    assert numbers == ["1801", "120000", "1795", "95500", "7", "1840"]  # "1.2.3" is not a number
    drills = number_drills(numbers, 200, seed=0)
    assert len(drills) == 200 and drills == number_drills(numbers, 200, seed=0)
    seen = set()
    for d in drills:
        (head, context), (op, trained), (tail, after) = d["segments"]
        first, second = head.strip(" :").split(" vs ")
        assert len(first) == len(second) and first in numbers and second in numbers  # one length: 4 digits here
        assert op == {-1: "<", 0: "=", 1: ">"}[(int(first) > int(second)) - (int(first) < int(second))]
        # the relation token alone is trained; text after it, so no end of turn follows (tokenize_example)
        assert (context, trained, after) == (False, True, False)
        assert f"{head}{op}{tail}" == " " + relation(second, first, after=True)[:-1] + " So"  # the trajectories' own
        seen.add(op)
    assert seen == {"<", ">", "="}
    assert number_drills(["7", "1801"], 5) == []  # no length with two different numbers: nothing to compare


def test_number_drills_with_pick_also_train_the_winners_ordinal_for_a_direction():
    """With sft.say_direction and sft.mark_order a drill goes on as the last thought does: a direction, then
    the ordinal of the side whose value wins ("1795 vs 1801:<. The smaller wins:" -> " second"), trained."""
    numbers = ["1801", "1795", "1840", "1801"]
    drills = number_drills(numbers, 300, seed=1, pick=True)
    seen = set()
    for d in drills:
        head, op = d["segments"][0][0], d["segments"][1][0]
        later, earlier = head.strip(" :").split(" vs ")  # the later-noted value is written first
        assert f"{head}{op}. " == " " + relation(earlier, later, after=True)
        if later == earlier:
            assert len(d["segments"]) == 3  # no winner: the relation alone
            continue
        (_, (wins, context), (ordinal, trained), (tail, after)) = d["segments"][1:]
        side = wins.split()[2]  # ". The smaller wins:"
        winner = min if side == "smaller" else max
        assert ordinal == (" second" if winner(int(later), int(earlier)) == int(later) else " first")
        assert (context, trained, after) == (False, True, False) and tail == ". So"
        seen.add((side, ordinal, op))
    assert {(s, o) for s, o, _ in seen} == {("smaller", " first"), ("smaller", " second"), ("larger", " first"), ("larger", " second")}


def test_half_the_comparison_copies_ask_with_the_names_swapped():
    (path,) = mine_paths([COMPARE["question"]], [COMPARE["golden_answers"]], KeywordRetriever(PEOPLE), 1,
                         show=lambda d: d)
    cfg = SFTConfig(query_noise=0.0, skip_hop=0.0, rag_fraction=0.0, mine_comparisons=True, comparison_copies=4)

    def build(rows, paths):
        return build_sft_examples(rows, paths, KeywordRetriever(PEOPLE), 1, cfg)

    records = build([COMPARE], [path.queries])
    extra = comparison_copies(records, [COMPARE], [path.queries], cfg, build)
    assert [r["id"] for r in records + extra] == ["q", "q", "q#swapped", "q#swapped"]
    swap = extra[-1]
    assert swap["question"] == "Who was born earlier, Ilsa Marrow or Ada Pell?" and swap["comparison"]
    # The same answer, judged from the values noted in the other order.
    turns = turns_text(swap)
    assert "I will compare Ilsa Marrow and Ada Pell, Ilsa Marrow first. </think>" in turns
    assert turns.endswith("<think> Ada Pell: 1801. 1801 > 1795. So the answer is Ilsa Marrow. </think>\n"
                          "<answer> Ilsa Marrow </answer>")
    assert swapped({"id": "x", "question": "Is the Tiderk winch older than the Zorb press?"},
                   ["Tiderk winch", "Zorb press"])["question"] == "Is the Zorb press older than the Tiderk winch?"
    # Without swaps: the same trajectory, repeated.
    same = comparison_copies(records, [COMPARE], [path.queries], cfg.model_copy(update={"comparison_swaps": False}),
                             build)
    assert same == records * 3
    # Off (the default): the older trajectory, no values written out.
    (old,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1,
                                cfg.model_copy(update={"mine_comparisons": False}))
    assert "I will compare" not in turns_text(old) and "Ada Pell: 1801" not in turns_text(old)


def test_varied_copies_read_other_values_and_name_the_side_they_make_win():
    """sft.vary_values: each extra copy replaces the two compared values everywhere (the blocks the policy
    reads, its notes) with other corpus numbers of the same length, and the relation and the answer follow
    the new values in the question's direction (born earlier: the smaller wins)."""
    (path,) = mine_paths([COMPARE["question"]], [COMPARE["golden_answers"]], KeywordRetriever(PEOPLE), 1,
                         show=lambda d: d)
    cfg = SFTConfig(query_noise=0.0, skip_hop=0.0, rag_fraction=0.0, mine_comparisons=True, comparison_copies=9,
                    comparison_swaps=False, relation_after=True, vary_values=True)

    def build(rows, paths):
        return build_sft_examples(rows, paths, KeywordRetriever(PEOPLE), 1, cfg)

    records = build([COMPARE], [path.queries])
    assert records[0]["judged"] == {"names": ["Ada Pell", "Ilsa Marrow"], "values": ["1801", "1795"],
                                    "notes": "Ilsa Marrow: 1795. ", "answer": "Ilsa Marrow", "winner": 1}
    numbers = numbers_by_length(corpus_numbers(["In 1750, 1760 and 1901; 4,000 and 22 people."]))
    copies = comparison_copies(records, [COMPARE], [path.queries], cfg, build, numbers, seed=0)
    assert len(copies) == 8 and copies == comparison_copies(records, [COMPARE], [path.queries], cfg, build, numbers)
    winners = set()
    for copy in copies:
        first, second = copy["judged"]["values"]
        assert {first, second} <= {"1750", "1760", "1901"} and first != second  # four digits, as 1801 and 1795
        text, read = turns_text(copy), "".join(t for t, trained in copy["segments"][1:] if not trained)
        assert not {"1801", "1795"} & set(re.findall(r"\d+", text + read))  # nowhere the policy reads or writes
        assert f"Ada Pell was a smith born in {first} in Kastrin" in read and "Ada Pell died in 1870" in read
        assert f"<think> Ada Pell: {first}. " in text
        answer = "Ada Pell" if int(first) < int(second) else "Ilsa Marrow"
        op = "<" if int(second) < int(first) else ">"
        assert text.endswith(f"<think> Ilsa Marrow: {second}. {second} vs {first}:{op}. So the answer is {answer}. "
                             f"</think>\n<answer> {answer} </answer>")
        assert copy["segments"][0] == records[0]["segments"][0]  # the question itself is untouched
        winners.add(answer)
    assert winners == {"Ada Pell", "Ilsa Marrow"}  # either side wins, as the values say
    # Off: the copies repeat the values found.
    same = comparison_copies(records, [COMPARE], [path.queries], cfg.model_copy(update={"vary_values": False}),
                             build, numbers)
    assert same == records * 8
    # No number of that length in the corpus: the copy stays as it was.
    assert with_other_values(records[0], numbers_by_length(["22"]), random.Random(0), cfg) is None


def test_say_direction_plans_which_value_wins_and_says_it_again_before_the_name():
    """sft.say_direction: the plan reads from the question which value wins ("born earlier": the smaller), and
    the last thought says it after the relation; varied copies keep the direction and follow their values."""
    (path,) = mine_paths([COMPARE["question"]], [COMPARE["golden_answers"]], KeywordRetriever(PEOPLE), 1,
                         show=lambda d: d)
    cfg = SFTConfig(query_noise=0.0, skip_hop=0.0, rag_fraction=0.0, mine_comparisons=True, comparison_copies=4,
                    comparison_swaps=False, relation_after=True, say_direction=True, vary_values=True)
    (ex,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1, cfg)
    turns = turns_text(ex)
    assert "I will compare Ada Pell and Ilsa Marrow, Ada Pell first. The smaller wins. </think>" in turns
    assert turns.endswith("<think> Ilsa Marrow: 1795. 1795 vs 1801:<. The smaller wins. So the answer is Ilsa Marrow. "
                          "</think>\n<answer> Ilsa Marrow </answer>")
    (larger,) = build_sft_examples([{**COMPARE, "golden_answers": ["Ada Pell"]}], [path.queries],
                                   KeywordRetriever(PEOPLE), 1, cfg)  # as if it asked "born later"
    assert "Ada Pell first. The larger wins. </think>" in turns_text(larger)
    assert turns_text(larger).endswith("1795 vs 1801:<. The larger wins. So the answer is Ada Pell. </think>\n"
                                       "<answer> Ada Pell </answer>")
    copy = with_other_values(larger, numbers_by_length(["1901", "1750"]), random.Random(0), cfg)
    first, second = copy["judged"]["values"]
    answer = "Ada Pell" if int(first) > int(second) else "Ilsa Marrow"
    assert turns_text(copy).endswith(f"The larger wins. So the answer is {answer}. </think>\n<answer> {answer} </answer>")
    # sft.mark_order: the plan gives each side an ordinal, the last thought picks the winner by it.
    marked_cfg = cfg.model_copy(update={"mark_order": True})
    (marked,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1, marked_cfg)
    assert "I will compare first Ada Pell, second Ilsa Marrow. The smaller wins. </think>" in turns_text(marked)
    assert turns_text(marked).endswith("1795 vs 1801:<. The smaller wins: second Ilsa Marrow. So the answer is "
                                       "Ilsa Marrow. </think>\n<answer> Ilsa Marrow </answer>")
    copy = with_other_values(marked, numbers_by_length(["1901", "1750"]), random.Random(0), marked_cfg)
    first, second = copy["judged"]["values"]
    pick = "first Ada Pell" if int(first) < int(second) else "second Ilsa Marrow"
    assert f"The smaller wins: {pick}. So the answer is {pick.split(' ', 1)[1]}. </think>" in turns_text(copy)
    # sft.relation_in_note: the value noted last runs on into the relation, written once; its copies too.
    folded_cfg = marked_cfg.model_copy(update={"relation_in_note": True})
    (folded,) = build_sft_examples([COMPARE], [path.queries], KeywordRetriever(PEOPLE), 1, folded_cfg)
    assert turns_text(folded).endswith("<think> Ilsa Marrow: 1795 vs 1801:<. The smaller wins: second Ilsa Marrow. "
                                       "So the answer is Ilsa Marrow. </think>\n<answer> Ilsa Marrow </answer>")
    assert "Ada Pell: 1801. Next" in turns_text(folded) or "Ada Pell: 1801. Now" in turns_text(folded)
    copy = with_other_values(folded, numbers_by_length(["1901", "1750"]), random.Random(0), folded_cfg)
    first, second = copy["judged"]["values"]
    assert f"<think> Ilsa Marrow: {second} vs {first}:" in turns_text(copy) and f"{second}. {second}" not in turns_text(copy)
    assert winning_side(["1801", "1801"], 0) is None and winning_side(["1,801", "1795"], 1) is None


def test_new_name_copies_replace_every_name_the_corpus_never_writes_lower_case():
    """sft.new_names: a copy of a trajectory whose question's names and answers are made-up words, everywhere
    the policy reads or writes them; a word the corpus also writes in lower case ("town") and the protocol's
    own words stay. sft.reword: the question's other words may change, in the prompt and the first query too."""
    row = {"id": "t", "question": "In which town was Ada Pell born?", "golden_answers": ["Kastrin"]}
    docs = PEOPLE
    cfg = SFTConfig(query_noise=0.0, skip_hop=0.0, rag_fraction=0.0)
    (ex,) = build_sft_examples([row], [[row["question"]]], KeywordRetriever(docs), 2, cfg)
    words = corpus_words(d.contents for d in docs)
    assert "town" in words and "ada" not in words
    copy = with_new_names(ex, words, random.Random(0))
    text = "".join(t for t, _ in copy["segments"])
    for name in ("Ada", "Pell", "Kastrin"):
        assert name not in text and name not in copy["question"] and name not in copy["golden_answers"][0]
    assert [t for _, t in copy["segments"]] == [t for _, t in ex["segments"]]  # what is trained is unchanged
    new_answer = copy["golden_answers"][0]
    assert new_answer != "Kastrin" and f"<answer> {new_answer} </answer>" in text
    assert f"born in 1801 in {new_answer}." in text  # the passage says the same of the new name
    assert copy["question"].startswith("In which town was ") and f"<search> {copy['question']} </search>" in text
    assert "Answer the given question" in text  # the instruction is not rewritten
    assert "Kastrin" in "".join(t for t, _ in ex["segments"])  # the original stays as it was

    reworded = with_new_names(ex, words, random.Random(0), reword=1.0)
    question = reworded["question"]
    assert question != copy["question"] and question.endswith("?")
    kept = [w for w in re.findall(r"[A-Za-z]+", question) if w.lower() in words or w in copy["question"]]
    assert len(kept) == len(re.findall(r"[A-Za-z]+", question))  # corpus words, and the made-up names
    assert f"Question: {question}" in reworded["segments"][0][0]
    assert f"<search> {question} </search>" in reworded["segments"][1][0]
    # Nothing to rename: no copy.
    assert with_new_names({**ex, "question": "In which town was it?", "golden_answers": ["town"]}, words,
                          random.Random(0)) is None
