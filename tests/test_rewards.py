"""QA rewards: SQuAD normalisation, EM/substring/F1, answer extraction from the response only, format reward."""

import pytest

from searchr1.config import RewardConfig
from searchr1.prompts import INVALID_ACTION_MESSAGE, information_block, make_prompt
from searchr1.rewards.qa import (
    compute_reward,
    exact_match,
    extract_answer,
    f1_score,
    is_valid_format,
    normalize_answer,
    substring_match,
)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   Apple,  a day ", "apple day"),
        ("U.S.A.", "usa"),
        ("Theory of the Mind", "theory of mind"),  # "the" removed only as a word
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_substring_and_f1_on_hand_cases():
    assert exact_match("the Beatles", ["Beatles", "x"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert substring_match("the Beatles band", ["beatles"]) == 1.0
    assert substring_match("anything", [""]) == 0.0  # an empty gold never matches everything
    assert f1_score("Mira Fenwick", ["Mira Fenwick"]) == 1.0
    # pred {new, york, city} vs gold {new, york}: P=2/3, R=1 -> F1=0.8
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)
    assert f1_score("Paris", ["London", "Paris France"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("", ["x"]) == 0.0


def test_extract_answer_takes_last_answer_of_response():
    assert extract_answer("<answer> a </answer> then <answer> Quilltown </answer>") == "Quilltown"
    assert extract_answer("<think>no answer</think>") is None


def test_prompt_example_answer_is_never_scored():
    prompt = make_prompt("What is the capital of China?")
    assert "<answer> Beijing </answer>" in prompt
    cfg = RewardConfig()
    response = "<think>not sure</think>"
    assert compute_reward(response, ["Beijing"], cfg) == 0.0
    # Search-R1 scores prompt+response, so it would have picked up the example answer:
    assert extract_answer(prompt + response) == "Beijing"


def test_corrective_message_and_retrieved_text_are_not_answers():
    # The invalid-action message literally contains "<answer> and </answer>".
    response = "rambling" + INVALID_ACTION_MESSAGE + "<search> q </search>" + information_block(['"T"\n<answer> x </answer>'])
    assert extract_answer(response) is None
    assert compute_reward(response, ["and"], RewardConfig()) == 0.0


GOOD = (
    "<think>need facts</think>\n<search> capital of Zorbland </search>"
    + information_block(['"Zorbland"\nIts capital is Quilltown.'])
    + "<think>got it</think>\n<answer> Quilltown </answer>"
)


def test_is_valid_format_accepts_search_r1_structure_and_rejects_stray_text():
    assert is_valid_format(GOOD)
    assert is_valid_format("<think>a</think><answer>b</answer>")
    assert not is_valid_format("<answer>b</answer>")  # no think first
    assert not is_valid_format("chatter <think>a</think><answer>b</answer>")
    assert not is_valid_format("<think>a</think><search>q</search>")  # no information, no answer
    assert not is_valid_format("<think>a</think><answer>b</answer><answer>c</answer>")


def test_format_reward_matches_search_r1_v03_table():
    cfg = RewardConfig(format_reward=True, structure_format_score=0.2, final_format_score=0.1, retrieval_score=0.1)
    assert compute_reward(GOOD, ["Quilltown"], cfg) == 1.0  # correct, well formed
    assert compute_reward("<answer> Quilltown </answer>", ["Quilltown"], cfg) == pytest.approx(0.8)  # correct, malformed
    assert compute_reward(GOOD, ["Ostara"], cfg) == pytest.approx(0.2)  # wrong, well formed
    assert compute_reward(GOOD.replace("<answer> Quilltown", "<answer> Zorb"), ["Quilltown"], cfg) == pytest.approx(0.3)
    assert compute_reward("<answer> Ostara </answer>", ["Quilltown"], cfg) == pytest.approx(0.1)  # wrong, malformed
    assert compute_reward("nothing", ["Quilltown"], cfg) == 0.0
    assert compute_reward(GOOD, ["Ostara"], RewardConfig()) == 0.0  # plain EM without shaping


def test_metric_choice_changes_outcome_score():
    r = "<answer> the city of Quilltown </answer>"
    assert compute_reward(r, ["Quilltown"], RewardConfig(metric="em")) == 0.0
    assert compute_reward(r, ["Quilltown"], RewardConfig(metric="substring_em")) == 1.0
    assert 0 < compute_reward(r, ["Quilltown"], RewardConfig(metric="f1")) < 1
