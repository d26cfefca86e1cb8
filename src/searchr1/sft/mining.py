"""Search paths mined from a question, its gold answers and the corpus alone (no gold queries).

Hop 1 searches the question. While the passages shown lack the answer, follow-up queries are built
from what those passages say: their titles and the names they mention that the question does not
(optionally followed by the question's remaining words). They are searched breadth first, a bounded
beam per question, all questions' queries of a depth in one batched retriever call.

"Some passage contains the answer string" is weak evidence for common answers (years, occupations),
so a path is graded by where the answer appears in its last hop:

- 0, *about*: in a passage whose title the query names (the query looked the entity up);
- 1, *top*: in the query's top passage;
- 2, *shown*: in any passage shown.

The mined path is the strongest one, then the shortest. A query never contains a gold answer the
question does not (that would be searching for the answer), and never repeats an earlier query.

When the answer is one of the question's own names ("Who was born earlier, A or B?"), finding it in a
passage proves nothing: the question already holds it. Such a question is a *comparison*: its path
looks up each name it compares with a search of its own, and is complete only when each lookup shows a
passage about that name with the value that decides (a sentence with a number: a year, a count).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from searchr1.retrieval.base import Doc, Retriever

# Function and question words: never a name, never part of the question's "remaining words".
STOPWORDS = frozenset(
    """a an and are as at be been being but by did do does for from had has have he her hers him his how i if in into
    is it its itself me my no not of on or our she so such than that the their theirs them then there these they
    this those to was we were what when where which while who whom whose why will with you your""".split()
)
# Lower-case words allowed inside a multi-word name ("University of Chicago", "Kiss and Tell").
_CONNECTORS = ("of", "the", "and", "de", "von", "van", "da", "di", "du", "la", "le")
_WORD = r"[A-Z][\w'\u2019-]*"
_NAME_RE = re.compile(rf"{_WORD}(?:\s+(?:(?:{'|'.join(_CONNECTORS)})\s+)*{_WORD})*")

ABOUT, TOP, SHOWN = 0, 1, 2
EVIDENCE_NAMES = {ABOUT: "about", TOP: "top", SHOWN: "shown"}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def mentions(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` mentions any gold answer as whole words (case and punctuation insensitive)."""
    text = f" {_norm(text)} "
    return any(f" {_norm(a)} " in text for a in answers if _norm(a))


def names_in(text: str) -> list[str]:
    """Capitalised spans of ``text`` (first-seen order, unique), without leading or trailing
    function words ("The Hague" -> "Hague"): the names a passage mentions."""
    out: dict[str, None] = {}
    for span in _NAME_RE.findall(text):
        if name := _trim(span.rstrip(".")):
            out.setdefault(name, None)
    return list(out)


def _trim(span: str) -> str:
    """``span`` without leading or trailing function words."""
    words = span.split()
    while words and words[0].lower() in STOPWORDS:
        words = words[1:]
    while words and words[-1].lower() in STOPWORDS:
        words = words[:-1]
    return " ".join(words)


def remaining_words(question: str) -> str:
    """The question's content words outside its names: what is asked about the entity."""
    inside = {w.lower() for n in names_in(question) for w in n.split()}
    words = re.findall(r"[\w'-]+", question)
    return " ".join(w for w in words if w.lower() not in STOPWORDS and w.lower() not in inside and not w[0].isupper())


def compared_names(question: str, answers: Sequence[str]) -> list[str]:
    """The names a question compares: all its names, when it has two or more and a gold answer is
    one of them (or within one); else [] (the question is not a comparison)."""
    exact = {_norm(a) for a in answers}
    names = []
    for name in names_in(question):
        # "Of A Lanterns Union and B Foundry, which ...": one span to names_in ("Kiss and Tell"); two
        # names when one side is exactly an answer and the whole is not.
        parts = [_trim(part) for part in name.split(" and ")]
        split = len(parts) > 1 and _norm(name) not in exact and any(_norm(p) in exact for p in parts)
        names += parts if split else [name]
    names = [_with_common_nouns(question, n) for n in names]
    if len(names) < 2 or not any(names_answer(n, answers) for n in names):
        return []
    return names


def names_answer(name: str, answers: Sequence[str]) -> bool:
    """Whether ``name`` holds a gold answer or a gold answer holds it ("Tiderk" and "Tiderk winch")."""
    return mentions(name, answers) or any(mentions(a, [name]) for a in answers)


def _with_common_nouns(question: str, name: str) -> str:
    """A name with the lower-case words that follow it in the question, up to a function word: "the
    Budath loom or ..." -> "Budath loom" (names_in stops at "Budath"; the corpus has a Budath compass too)."""
    m = re.search(re.escape(name) + r"((?:\s+[a-z][\w'-]*)*)", question)
    tail = []
    for word in (m.group(1).split() if m else []):
        if word in STOPWORDS:
            break
        tail.append(word)
    return " ".join([name, *tail])


def is_about(name: str, doc: Doc) -> bool:
    """Whether ``doc`` is a passage about ``name``: its title holds the name, or the name its title."""
    title, name = _norm(doc.title), _norm(name)
    return bool(title) and bool(name) and (f" {name} " in f" {title} " or f" {title} " in f" {name} ")


def _stems(text: str) -> set[str]:
    return {w[:4] for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


def deciding_sentence(text: str, question: str) -> str | None:
    """The sentence of a passage holding the value a comparison turns on: of the sentences with a
    number, the one sharing the most words (by their first four letters) with what the question asks."""
    asked = _stems(remaining_words(question))
    best: tuple[int, str] | None = None
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if re.search(r"\d", sentence):
            score = len(asked & _stems(sentence))
            if best is None or score > best[0]:
                best = (score, sentence.strip())
    return best[1] if best else None


def deciding_value(sentence: str, question: str) -> str:
    """The number in a deciding sentence nearest to a word of what the question asks ("born in 1923 ...
    died in 1990", asked "born earlier": 1923); the first number when no such word is there."""
    asked = _stems(remaining_words(question))
    words = re.findall(r"[\w,.]+", sentence)
    numbers = [(k, w.rstrip(".,")) for k, w in enumerate(words) if re.fullmatch(r"\d[\d,.]*", w.rstrip(".,"))]
    anchors = [k for k, w in enumerate(words) if _stems(w) & asked]
    if not anchors:
        return numbers[0][1]
    return min(numbers, key=lambda kn: min(abs(kn[0] - a) for a in anchors))[1]


def looked_up(names: Sequence[str], hop: Hop, question: str) -> dict[str, Doc]:
    """The compared names ``hop`` looked up: its query names exactly one of them, and it shows a
    passage about that name with a deciding sentence."""
    query = f" {_norm(hop.query)} "
    named = [n for n in names if f" {_norm(n)} " in query]
    if len(named) != 1:
        return {}
    doc = passage_about(named[0], hop.docs, question)
    return {named[0]: doc} if doc else {}


def passage_about(name: str, docs: Sequence[Doc], question: str) -> Doc | None:
    """The first of ``docs`` about ``name`` with a deciding sentence; a passage titled exactly the
    name before others ("Budath loom" before "Budath loom factory")."""
    exact_first = sorted(docs, key=lambda d: _norm(d.title) != _norm(name))
    return next((d for d in exact_first if is_about(name, d) and deciding_sentence(d.text, question)), None)


@dataclass(frozen=True)
class Hop:
    query: str
    docs: tuple[Doc, ...]  # as shown to the policy (fitted to the observation budget)


@dataclass(frozen=True)
class MinedPath:
    hops: tuple[Hop, ...]
    evidence: int  # ABOUT, TOP or SHOWN
    evidence_id: str  # the passage of the last hop that holds the answer

    @property
    def queries(self) -> list[str]:
        return [h.query for h in self.hops]


def evidence(query: str, docs: Sequence[Doc], answers: Sequence[str]) -> tuple[int, str] | None:
    """The grade and passage id of the best place the answer appears in ``docs``, or None."""
    named = f" {_norm(query)} "
    found = None
    for rank, d in enumerate(docs):
        if not mentions(d.contents, answers):
            continue
        title = _norm(d.title)
        grade = ABOUT if title and f" {title} " in named else TOP if rank == 0 else SHOWN
        if found is None or grade < found[0]:
            found = (grade, d.id)
    return found


def follow_up_queries(question: str, asked: Sequence[str], docs: Sequence[Doc], answers: Sequence[str],
                      limit: int, with_question_words: bool) -> list[str]:
    """Queries built from the passages just shown: titles, then the names each passage mentions, in
    rank order; then the same names followed by the question's remaining words. Names the question
    already holds, earlier queries and (unless the question holds it) a gold answer are left out."""
    q = f" {_norm(question)} "
    seen = {_norm(a) for a in asked}
    answer_in_question = mentions(question, answers)
    names: list[str] = []
    for d in docs:
        for name in [d.title, *names_in(d.text)]:
            key = _norm(name)
            if not key or key in seen or f" {key} " in q or (not answer_in_question and mentions(name, answers)):
                continue
            seen.add(key)
            names.append(name)
    rest = remaining_words(question) if with_question_words else ""
    queries = names + [f"{n} {rest}" for n in names if rest]
    return queries[:limit]


def comparison_evidence(names: Sequence[str], path: Sequence[Hop], question: str, answers: Sequence[str]) -> tuple[int, str] | None:
    """``(ABOUT, the answer's own passage)`` when ``path`` has looked up every compared name, else None."""
    found: dict[str, Doc] = {}
    for hop in path:
        found = {**looked_up(names, hop, question), **found}
    if len(found) < len(names):
        return None
    answer_doc = next((d for n, d in found.items() if names_answer(n, answers)), None)
    return None if answer_doc is None else (ABOUT, answer_doc.id)


def side_queries(names: Sequence[str], path: Sequence[Hop], question: str, limit: int, with_question_words: bool) -> list[str]:
    """Lookups of the compared names ``path`` has not looked up yet: each name, then the name with the
    question's remaining words."""
    done = {n for hop in path for n in looked_up(names, hop, question)}
    asked = {_norm(h.query) for h in path}
    rest = remaining_words(question) if with_question_words else ""
    todo = [n for n in names if n not in done]
    queries = todo + [f"{n} {rest}" for n in todo if rest]
    return [q for q in queries if _norm(q) not in asked][:limit]


def _better(a: MinedPath | None, b: MinedPath) -> MinedPath:
    if a is None:
        return b
    return b if (b.evidence, len(b.hops)) < (a.evidence, len(a.hops)) else a


def mine_paths(
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    retriever: Retriever,
    topk: int,
    show: Callable[[Sequence[Doc]], Sequence[Doc]],
    max_hops: int = 3,
    beam: int = 4,
    candidates: int = 8,
    with_question_words: bool = True,
    batch_size: int = 512,
    comparisons: bool = True,
) -> list[MinedPath | None]:
    """The best search path per question (None when no path within ``max_hops`` shows an answer).

    ``show(docs)`` returns the passages as the policy will see them (the rollout's truncation), so
    the answer and the names a path relies on are ones the policy can read. Each depth searches up to
    ``candidates`` follow-ups for each of the ``beam`` most promising open paths of a question.
    A question stops at the first depth that gives an ``about`` path; otherwise the best path over
    all depths wins (strongest evidence, then fewest hops).

    A comparison (``compared_names``; unless ``comparisons`` is False, the older rule) starts from
    lookups of the names it compares instead of the question, and its only complete paths are those
    that looked up every one (``comparison_evidence``).
    """
    best: list[MinedPath | None] = [None] * len(questions)
    sides = [compared_names(q, a) if comparisons else [] for q, a in zip(questions, answers)]
    # Open paths: (question index, hops so far, next query).
    pending = [
        (i, (), query)
        for i, q in enumerate(questions)
        for query in (side_queries(sides[i], (), q, candidates, with_question_words) if sides[i] else [q.strip()])
    ]
    for depth in range(1, max_hops + 1):
        if not pending:
            break
        results = _search(retriever, [query for _, _, query in pending], topk, batch_size, depth)
        opened: dict[int, list[tuple[Hop, ...]]] = {}
        for (i, hops, query), docs in zip(pending, results):
            hop = Hop(query, tuple(show(docs)))
            path = hops + (hop,)
            if sides[i]:
                found = comparison_evidence(sides[i], path, questions[i], answers[i])
            else:
                found = evidence(query, hop.docs, answers[i])
            if found is not None:
                best[i] = _better(best[i], MinedPath(path, *found))
            if (found is None or found[0] != ABOUT) and len(opened.setdefault(i, [])) < beam:
                opened[i].append(path)
        pending = []
        if depth == max_hops:
            break
        for i, paths in opened.items():
            if best[i] is not None and best[i].evidence == ABOUT:
                continue
            for path in paths:
                if sides[i]:
                    queries = side_queries(sides[i], path, questions[i], candidates, with_question_words)
                else:
                    asked = [h.query for h in path]
                    queries = follow_up_queries(questions[i], asked, path[-1].docs, answers[i], candidates, with_question_words)
                pending += [(i, path, query) for query in queries]
    return best


def _search(retriever: Retriever, queries: list[str], topk: int, batch_size: int, depth: int) -> list[list[Doc]]:
    """Every distinct query once, in batches (duplicates across questions are common)."""
    unique = list(dict.fromkeys(queries))
    found: dict[str, list[Doc]] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc=f"mining hop {depth}", unit="batch", leave=False):
        chunk = unique[start : start + batch_size]
        found.update(zip(chunk, retriever.search(chunk, topk)))
    return [found[q] for q in queries]


def mining_report(rows: Sequence[dict], mined: Sequence[MinedPath | None]) -> dict:
    """How many questions got a 1-, 2-, 3-hop path or none, and with what evidence; also per shape
    (comparison or other, see ``compared_names``).

    Where rows carry the generator's metadata (analysis only: mining never reads it), also per
    question type, and how often the passage holding the answer is one of ``supporting_ids``.
    """
    def counts(paths: Sequence[MinedPath | None]) -> dict[str, int]:
        hops = Counter(len(p.hops) if p else 0 for p in paths)
        out = {f"{n}_hop": hops[n] for n in sorted(k for k in hops if k)}
        return {**out, "none": hops[0]}

    shapes: dict[str, list[MinedPath | None]] = {}
    for row, path in zip(rows, mined):
        shape = "comparison" if compared_names(row["question"], [str(a) for a in row["golden_answers"]]) else "other"
        shapes.setdefault(shape, []).append(path)
    report = {
        "mined_paths": counts(mined),
        "mined_evidence": dict(Counter(EVIDENCE_NAMES[p.evidence] for p in mined if p)),
        # The shape mining sees (question and answers only): comparisons need a lookup per name.
        "mined_paths_by_shape": {shape: counts(ps) for shape, ps in sorted(shapes.items())},
    }
    by_type: dict[str, list[MinedPath | None]] = {}
    checked = right = 0
    for row, path in zip(rows, mined):
        meta = row.get("metadata") or {}
        if meta.get("type"):
            by_type.setdefault(str(meta["type"]), []).append(path)
        if path is not None and meta.get("supporting_ids"):
            checked += 1
            right += path.evidence_id in meta["supporting_ids"]
    if by_type:
        report["mined_paths_by_type"] = {t: counts(ps) for t, ps in sorted(by_type.items())}
    if checked:
        report["mined_vs_gold"] = {"checked": checked, "right": right, "precision": round(right / checked, 4)}
    return report
