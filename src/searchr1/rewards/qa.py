"""Outcome rewards for QA: SQuAD-normalised exact match / substring / F1, and Search-R1's format reward.

Every function takes the RESPONSE text only (what the policy and the environment appended after the
prompt), so the instruction's own example ``<answer> Beijing </answer>`` can never be scored.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from searchr1.config import RewardConfig
from searchr1.prompts import ANSWER_CLOSE, ANSWER_OPEN, INFO_CLOSE, INFO_OPEN, INVALID_ACTION_MESSAGE

_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
_INFO_RE = re.compile(re.escape(INFO_OPEN) + r"(.*?)" + re.escape(INFO_CLOSE), re.DOTALL)
_TAG_RE = re.compile(r"(</?(?:think|search|information|answer)>)")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def substring_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1 if some normalised gold answer occurs inside the normalised prediction (Search-R1's subem)."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) in pred for g in golden_answers if normalize_answer(g)))


def f1_score(prediction: str, golden_answers: Sequence[str]) -> float:
    """Best token-level F1 against any gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        gold_tokens = normalize_answer(gold).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def policy_text(response: str) -> str:
    """The response without what the environment appended (information blocks, corrective message):
    the corrective message itself says "<answer> and </answer>", which must never count as an answer."""
    return _INFO_RE.sub("", response.replace(INVALID_ACTION_MESSAGE, ""))


def extract_answer(response: str) -> str | None:
    """The last ``<answer>…</answer>`` the policy wrote in the response (stripped), or None."""
    matches = _ANSWER_RE.findall(policy_text(response))
    return matches[-1].strip() if matches else None


def is_valid_format(response: str) -> bool:
    """Search-R1's structure check: (<think>…</think> <search>…</search> <information>…</information>)*
    then <think>…</think> <answer>…</answer>, with only whitespace between tags."""
    state = "start"
    transitions = {
        ("start", "<think>"): "in_think",
        ("information", "<think>"): "in_think",
        ("in_think", "</think>"): "after_think",
        ("after_think", "<search>"): "in_search",
        ("in_search", "</search>"): "after_search",
        ("after_search", "<information>"): "in_information",
        ("in_information", "</information>"): "information",
        ("after_think", "<answer>"): "in_answer",
        ("in_answer", "</answer>"): "end",
    }
    for part in _TAG_RE.split(response):
        if not part.strip():
            continue
        if _TAG_RE.fullmatch(part):
            state = transitions.get((state, part))
            if state is None:
                return False
        elif not state.startswith("in_"):  # free text outside any tag
            return False
    return state == "end"


def retrieval_hit(response: str, golden_answers: Sequence[str]) -> bool:
    """Some gold answer (normalised) appears in a retrieved <information> block of the response."""
    blocks = [normalize_answer(b) for b in _INFO_RE.findall(response)]
    golds = [normalize_answer(g) for g in golden_answers if normalize_answer(g)]
    return any(g in b for b in blocks for g in golds)


_METRICS = {"em": exact_match, "substring_em": substring_match, "f1": f1_score}


def answer_score(answer: str | None, golden_answers: Sequence[str], metric: str = "em") -> float:
    """Outcome score of an extracted answer (0 when there is none)."""
    return 0.0 if answer is None else _METRICS[metric](answer, golden_answers)


def compute_reward(response: str, golden_answers: Sequence[str], cfg: RewardConfig) -> float:
    """Outcome reward; with ``cfg.format_reward`` the Search-R1 v0.3 shaping (qa_em_format.py):

    correct & well-formed 1; correct & malformed 1 - structure; wrong & well-formed structure
    (+ retrieval when a gold answer was retrieved); wrong & malformed with an answer final_format; else 0.
    """
    answer = extract_answer(response)
    score = answer_score(answer, golden_answers, cfg.metric)
    if not cfg.format_reward:
        return score
    valid = is_valid_format(response)
    if answer is not None and score > 0:
        return score if valid else score - cfg.structure_format_score
    if valid:
        bonus = cfg.retrieval_score if retrieval_hit(response, golden_answers) else 0.0
        return cfg.structure_format_score + bonus
    return cfg.final_format_score if answer is not None else 0.0
