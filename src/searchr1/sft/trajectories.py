"""Cold-start data: Search-R1 trajectories written along search paths, with real retrieval.

The paths come from ``sft/mining.py`` (question, answers and corpus only) or, as an upper bound, from
the generator's gold queries. Each example is a list of segments ``(text, trainable)``: the prompt and
the information blocks are context (not trainable); the policy's turns (think + search/answer) are
what it learns to write.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence

from tqdm import tqdm

from searchr1.prompts import ANSWER_CLOSE, ANSWER_OPEN, TEMPLATES, format_passages, information_block, make_prompt
from searchr1.retrieval.base import Doc, Retriever
from searchr1.sft.mining import (
    compared_names,
    deciding_sentence,
    deciding_value,
    mentions,
    names_answer,
    names_in,
    passage_about,
)

Segment = tuple[str, bool]

# The first search when it is the question itself. The thought says whether the path needed one
# search or more: the policy then decides that from the question alone, at its first turn, and its
# later turns condition on its own stated plan (after one search the passages of a one-hop and of a
# two-hop question look alike to a small model).
SEARCH_QUESTION = {
    False: (
        "<think> I will search for the question. </think>\n<search> {q} </search>",
        "<think> One search should do. </think>\n<search> {q} </search>",
    ),
    True: (
        "<think> This needs more than one search. </think>\n<search> {q} </search>",
        "<think> I will need several searches. </think>\n<search> {q} </search>",
    ),
}
# With ``sft.plan_first`` false every question opens with the same thought: the decision to search again
# is taken after the passages, where a one-hop question's answer is already in them.
NO_PLAN = SEARCH_QUESTION[False][:1]  # "I will search for the question."
FIRST_SEARCH = (
    "<think> I need to find {q}. </think>\n<search> {q} </search>",
    "<think> To answer this, I should search for {q}. </think>\n<search> {q} </search>",
)
NEXT_SEARCH = (
    "<think> Now I need to find {q}. </think>\n<search> {q} </search>",
    "<think> Next, I should search for {q}. </think>\n<search> {q} </search>",
)
# A comparison (sft/mining.py ``compared_names``) looks up each name. The turn after a passage shows a
# name's deciding value notes it ("A: 1923."), copied from the block just read: restated later, next to
# another "name:", the copy head took the nearer value. The answer's thought then writes the relation
# of the two values ("1931 > 1923.") before naming the winner (``relation``). Its first thought states
# the same plan as any other multi-search path, then what it compares.
COMPARE_PLAN = " I will compare {names}, {q} first. </think>"
COMPARE_ANSWER = "<think> So the answer is {a}. </think>\n<answer> {a} </answer>"
# With ``sft.say_direction`` the plan says which value wins, read from the question, and the last thought
# says it again next to the relation: the name then follows from two words beside it.
WINS = "The {side} wins"
# With ``sft.mark_order`` the plan names the two sides with an ordinal each ("first A, second B") and the
# last thought picks one by its ordinal ("The smaller wins: second B"): choosing a word is a decision of
# the vocabulary, and the copy head's induction term then finds the name written after that word in the
# plan; without it the pointer itself must pick the first- or the later-noted name from the relation.
ORDINALS = ("first", "second")
MARKED_PLAN = " I will compare {first} {a}, {second} {b}. </think>"
RE_SEARCH = "<think> The information does not help. I will search again. </think>\n<search> {q} </search>"
ANSWER = "<think> The information shows that the answer is {a}. </think>\n<answer> {a} </answer>"


def contains_answer(docs: Sequence[Doc], answers: Sequence[str]) -> bool:
    """Whether any passage mentions any gold answer."""
    return mentions(" ".join(d.contents for d in docs), answers)


def new_facts(names: Sequence[str], noted: dict[str, str], docs: Sequence[Doc], block: str, question: str) -> str:
    """Note, in ``noted``, each compared name not yet noted whose deciding value the information ``block``
    (showing ``docs``) holds, and return the notes as the next thought's opening ("A: 1923. ")."""
    notes = []
    for name in names:
        doc = None if name in noted else passage_about(name, docs, question)
        sentence = doc and deciding_sentence(doc.text, question)
        if sentence and sentence in block:  # not cut from what the policy was shown
            noted[name] = deciding_value(sentence, question)
            notes.append(f"{name}: {noted[name]}. ")
    return "".join(notes)


def relation(first: str, second: str, after: bool = False) -> str:
    """The two noted values compared, the later-noted first: "1825 > 1758. " (the relation between them), or
    with ``after`` (``sft.relation_after``) "1825 vs 1758:>. ": the relation token after both numbers, where
    the policy reads them side by side and, with ``policy.micro_number_relation``, the second one's embedding
    holds its order against the first."""
    try:
        a, b = (float(v.replace(",", "")) for v in (first, second))
    except ValueError:  # "1.2.3": not a number to compare
        return ""
    op = "<" if b < a else ">" if b > a else "="
    return f"{second} vs {first}:{op}. " if after else f"{second} {op} {first}. "


def judgement(judged: dict, cfg) -> str:
    """A comparison's last turn from ``judged`` (its names, noted values, the notes the last block gave, the
    answer and the winner's index): the notes, the relation of the two values, which value wins (with
    ``sft.say_direction``: "The smaller wins"), the winner by its ordinal (with ``sft.mark_order``:
    "second B"), the answer. With ``sft.relation_in_note`` the last note runs on into the relation."""
    names, values, winner = judged["names"], judged["values"], judged["winner"]
    side = winning_side(values, winner) if cfg.say_direction else None
    marked = f"{ORDINALS[winner]} {names[winner]}" if cfg.mark_order and winner is not None else None
    said = ": ".join(filter(None, [side and WINS.format(side=side), marked]))
    notes, rel = judged["notes"], relation(*values, after=cfg.relation_after)
    if cfg.relation_in_note and rel and notes.endswith(f": {values[1]}. "):
        # "B: 1795 vs 1801:<. ": the value just noted is not written a second time, a copy fewer to get wrong
        notes, rel = notes[:-len(". ")], rel[len(values[1]):]
    turn = notes + rel + (said and said + ". ")
    return with_notes(COMPARE_ANSWER.format(a=judged["answer"]), turn)


def winning_side(values: Sequence[str], winner: int | None) -> str | None:
    """Whether the ``winner``'s value is the "smaller" or the "larger" of two whole numbers; None when
    that cannot be told (no single winner, equal values, not whole numbers)."""
    if winner is None or len(values) != 2 or not all(NUMBER.fullmatch(v) for v in values):
        return None
    mine, other = int(values[winner]), int(values[1 - winner])
    return None if mine == other else "smaller" if mine < other else "larger"


def winner_for(values: Sequence[str], side: str) -> int:
    """The index of the value that wins when the ``side`` ("smaller" or "larger") wins, of whole numbers."""
    return values.index((min if side == "smaller" else max)(values, key=int))


def with_other_values(example: dict, by_length: dict[int, list[str]], rng: random.Random, cfg) -> dict | None:
    """A comparison trajectory with its two compared values replaced, everywhere the policy reads or writes
    them, by other numbers of the corpus of the same lengths (``by_length``, from ``numbers_by_length``),
    and its relation and answer written anew: the side that wins follows the question's direction (the
    winner had the smaller value: the smaller wins again). Copies of one trajectory teach its one name;
    these teach the name to follow the relation and the question (``sft.vary_values``). None when the
    trajectory has no single winner or no two values to compare."""
    judged = example.get("judged") or {}
    names, values, winner = judged.get("names"), judged.get("values"), judged.get("winner")
    side = winning_side(values or [], winner)
    if side is None:
        return None
    first = _another(by_length.get(len(values[0]), []), values, rng)
    second = first and _another(by_length.get(len(values[1]), []), [*values, first], rng)
    if not second:
        return None
    new = [first, second]
    replace = dict(zip(values, new))
    pattern = re.compile(r"(?<![\w.,])(" + "|".join(map(re.escape, values)) + r")(?![\w.,]\d)")

    def sub(text: str) -> str:
        return pattern.sub(lambda m: replace[m.group(0)], text)

    new_winner = winner_for(new, side)
    answer = judged["answer"] if new_winner == winner else names[new_winner]
    judged = {**judged, "notes": sub(judged["notes"]), "values": new, "answer": answer, "winner": new_winner}
    segments = [example["segments"][0]] + [(sub(text), trainable) for text, trainable in example["segments"][1:-1]]
    segments.append((judgement(judged, cfg), True))
    return {**example, "id": f"{example['id']}#values-{new[0]}-{new[1]}", "golden_answers": [answer],
            "segments": segments, "judged": judged}


NUMBER = re.compile(r"(?<![\w.,])\d{1,7}(?![\w.,]\d)")


def corpus_numbers(texts: Iterable[str]) -> list[str]:
    """The whole numbers the passages state (years, counts), as written: what comparisons compare."""
    return [m.group(0) for text in texts for m in NUMBER.finditer(text)]


def _another(numbers: Sequence[str], avoid: Sequence[str], rng: random.Random, tries: int = 20) -> str | None:
    """One of ``numbers`` (drawn as often as it is stated) that is none of ``avoid``."""
    for _ in range(tries if numbers else 0):
        n = rng.choice(numbers)
        if n not in avoid:
            return n
    return None


def numbers_by_length(numbers: Iterable[str]) -> dict[int, list[str]]:
    """The numbers of each length (digits), as often as the corpus states them."""
    by_length: dict[int, list[str]] = {}
    for n in numbers:
        by_length.setdefault(len(n), []).append(n)
    return by_length


def number_drills(numbers: Sequence[str], count: int, seed: int = 0, pick: bool = False) -> list[dict]:
    """``count`` short examples of the relation a comparison writes, on pairs of the corpus's numbers of
    the same length ("1755 vs 1740:" -> ">"): in a trajectory the relation is one token of a hundred trained,
    too little signal for a small policy to learn to compare (issue 30, docs/results.md); here it is the
    only one. With ``pick`` (``sft.say_direction`` and ``sft.mark_order``) each drill of two different
    numbers goes on as the last thought does, with a direction drawn at random, and trains the winner's
    ordinal too ("1755 vs 1740:>. The smaller wins:" -> "second"): the ordinal depends on the relation and
    the direction together, which one seed's cold start never learnt from its few hundred comparisons.
    Only those tokens are trained; the text after them is context, so no end of turn follows."""
    by_length = numbers_by_length(numbers)
    lengths = [k for k, group in by_length.items() if len(set(group)) > 1]
    if not lengths:
        return []
    rng = random.Random(seed)
    drills = []
    for i in range(count):
        group = by_length[rng.choice(lengths)]
        first, second = rng.choice(group), rng.choice(group)
        text = relation(first, second, after=True)  # "1755 vs 1740:>. "
        head, op = text.split(":", 1)
        segments = [(f" {head}:", False), (op[0], True)]
        if pick and first != second:  # the direction drawn only here: drills without it stay as they were
            side = rng.choice(("smaller", "larger"))
            winner = winner_for([first, second], side)
            segments += [(f". {WINS.format(side=side)}:", False), (f" {ORDINALS[winner]}", True)]
        drills.append({"id": f"drill-{i}", "number_drill": True, "segments": segments + [(". So", False)]})
    return drills


# Made-up names (``with_new_names``): two or three syllables, each an onset, a vowel and often a coda.
ONSETS = (*"bcdfghjklmnprstvwz", "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "kl", "kr", "pl", "pr",
          "qu", "sh", "sk", "sl", "sn", "sp", "st", "th", "tr", "tw", "wh", "zh")
VOWELS = (*"aeiouy", "ai", "au", "ea", "ee", "ei", "ia", "ie", "io", "oa", "oo", "ou", "ui")
CODAS = ("", "", "", *"lmnrstxk", "ch", "ck", "ld", "lm", "nd", "ng", "nt", "rk", "rn", "rt", "sk", "st", "th")
WORD = re.compile(r"[A-Za-z]+")
# Words of the protocol's own text: never taken for a name, so a copy never rewrites the instruction or a thought.
TEMPLATE_WORDS = frozenset(
    w for text in (*TEMPLATES.values(), *SEARCH_QUESTION[False], *SEARCH_QUESTION[True], *FIRST_SEARCH, *NEXT_SEARCH,
                   COMPARE_PLAN, MARKED_PLAN, RE_SEARCH, ANSWER, COMPARE_ANSWER, WINS, *ORDINALS)
    for w in WORD.findall(text)
)


def made_up_name(rng: random.Random) -> str:
    """A capitalised word no corpus is likely to hold ("Sploumeck")."""
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(2, 3))).capitalize()


def corpus_words(texts: Iterable[str]) -> list[str]:
    """The distinct lower-case words the passages write, sorted: a corpus's own vocabulary."""
    return sorted({w for text in texts for w in WORD.findall(text) if w.islower()})


def with_new_names(example: dict, words: Sequence[str], rng: random.Random, reword: float = 0.0) -> dict | None:
    """A copy of a trajectory whose names are made up: every word of its question's names and of its answers
    that the corpus never writes in lower case (``words``, from ``corpus_words``: "Gebuth", not "Guild") is
    replaced by a made-up word (``made_up_name``) in everything the policy reads and writes: prompt, passages,
    queries, thoughts, answer. The policy then learns to copy whatever names a question and its passages
    hold, not to recall this corpus's (``sft.new_names``, issue 33). With ``reword``, each other word of the
    question is replaced with that chance by a word of the corpus, so a question worded as none before
    still gets its search and answer (a trajectory whose first query was cut from the question is renamed
    only). None when the question names nothing to replace."""
    question = example["question"].strip()
    known = set(words)
    answers = [str(a) for a in example["golden_answers"]]
    spans = names_in(question) + [n for a in answers for n in names_in(a)]
    renamed = {w: "" for span in spans for w in WORD.findall(span) if w.lower() not in known and w not in TEMPLATE_WORDS}
    if not renamed:
        return None
    taken = set(renamed)
    for w in renamed:
        while not renamed[w] or renamed[w] in taken:
            renamed[w] = made_up_name(rng)
        taken.add(renamed[w])
    if reword and not example.get("noisy_query"):
        parts = re.split(r"([A-Za-z]+)", question)
        for i in range(1, len(parts), 2):  # the words; names are not reworded
            if parts[i] not in renamed and rng.random() < reword:
                parts[i] = rng.choice(words).capitalize() if i == 1 else rng.choice(words)
        new_question = "".join(parts)
    else:
        new_question = question
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renamed)) + r")\b")

    def rewrite(text: str) -> str:
        return pattern.sub(lambda m: renamed[m.group(0)], text.replace(question, new_question))

    segments = [(rewrite(text), trainable) for text, trainable in example["segments"]]
    copy = {k: v for k, v in example.items() if k != "judged"}  # the copy is final: nothing rewrites its values
    return {**copy, "id": f"{example['id']}#new-names", "question": rewrite(question),
            "golden_answers": [rewrite(a) for a in answers], "segments": segments, "new_names": True}


def swapped(row: dict, names: Sequence[str]) -> dict:
    """``row`` with its two compared names trading places in the question ("A or B?" -> "B or A?"): the
    same answer from values in the other order, so the judgement cannot lean on which name came first."""
    first, second = names
    question = re.sub(f"{re.escape(first)}|{re.escape(second)}", lambda m: second if m.group(0) == first else first,
                      row["question"])
    return {**row, "id": f"{row['id']}#swapped", "question": question}


def with_notes(turn: str, notes: str) -> str:
    """``turn`` with ``notes`` opening its thought."""
    return turn.replace("<think> ", f"<think> {notes}", 1)


def _full_information(docs: Sequence[Doc]) -> str:
    return information_block([d.contents for d in docs])


def _full_context(docs: Sequence[Doc]) -> str:
    return format_passages([d.contents for d in docs])


def perturb_query(query: str, rng: random.Random) -> str | None:
    """An imperfect query: drop a random word, drop the first word (e.g. a first name), or keep the first half."""
    words = query.split()
    if len(words) < 2:
        return None
    kind = rng.randrange(3)
    if kind == 0:
        del words[rng.randrange(len(words))]
    elif kind == 1:
        words = words[1:]
    else:
        words = words[: len(words) // 2]
    noisy = " ".join(words)
    return noisy if noisy and noisy != query else None


def gold_queries(row: dict) -> list[str]:
    """The generator's gold search queries of a row (``metadata.gold_queries``), or the question."""
    gold = [q.strip() for q in (row.get("metadata") or {}).get("gold_queries") or [] if q and q.strip()]
    return gold or [row["question"].strip()]


def _search_all(retriever: Retriever, queries: list[str], topk: int, batch_size: int = 256) -> dict[str, list[Doc]]:
    """Retrieve every distinct query once, in batches (the encoder is the cost)."""
    unique = list(dict.fromkeys(queries))
    results: dict[str, list[Doc]] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="sft retrieval", unit="batch", leave=False):
        chunk = unique[start : start + batch_size]
        results.update(zip(chunk, retriever.search(chunk, topk)))
    return results


def build_sft_examples(
    qa_rows: Sequence[dict],
    paths: Sequence[Sequence[str] | None],
    retriever: Retriever,
    topk: int,
    cfg,
    seed: int = 0,
    template: str = "search_r1",
    observe: Callable[[Sequence[Doc]], str] = _full_information,
    rag_context: Callable[[Sequence[Doc]], str] = _full_context,
) -> list[dict]:
    """Search-R1 trajectories for training questions (``cfg`` is SFTConfig).

    Hops follow ``paths[i]``, the search queries for ``qa_rows[i]`` (mined, or the generator's gold
    queries); a row whose path is None gets no search trajectory. When the first query is the question
    itself, the first thought says whether one search or more will be needed (``SEARCH_QUESTION``; with
    ``cfg.plan_first`` false it is the same for every question, ``NO_PLAN``).
    With probability ``cfg.query_noise`` the first query is imperfect; if its passages miss the
    needed fact (the path query's top passage, or the answer on the last hop) the trajectory
    re-searches with the path's query. With probability ``cfg.skip_hop`` a multi-hop trajectory
    answers right after a search whose passages already contain the answer. Questions whose final
    passages lack the answer are dropped: the cold start must never teach answering without evidence.
    With ``cfg.mine_comparisons``, a comparison whose path looks up its names searches each, notes each
    name's deciding value after the block that showed it, and writes their relation before answering
    (``COMPARE_ANSWER``); it is never cut short, and its example is marked ``comparison``.

    With probability ``cfg.rag_fraction`` a question also gets a retrieve-then-answer example: the rag
    template with the top-k passages for the question, then the answer (kept only when those passages
    hold it). A policy trained from scratch has never seen that template otherwise, and the RAG
    baseline must be scored with the same model.

    ``template`` is the instruction and ``observe(docs)`` renders an information block: pass the
    rollout's own (``rollout.template``, passages fitted to ``rollout.max_obs_tokens``) so that the
    cold start trains on exactly the text the policy will see when it acts; ``rag_context(docs)``
    likewise renders the rag template's passages.
    """
    rng = random.Random(seed)
    plans = []
    for row, queries in zip(qa_rows, paths):
        if not queries:
            continue
        noisy = perturb_query(queries[0], rng) if rng.random() < cfg.query_noise else None
        plans.append((row, queries, noisy, rng.random() < cfg.skip_hop))
    rag_rows = [row for row in qa_rows if rng.random() < cfg.rag_fraction]
    all_queries = [q for _, qs, noisy, _ in plans for q in ([noisy] if noisy else []) + qs]
    results = _search_all(retriever, all_queries + [row["question"].strip() for row in rag_rows], topk)

    examples = []
    for row, queries, noisy, skip in plans:
        answers = [str(a) for a in row["golden_answers"]]
        segments: list[Segment] = [(make_prompt(row["question"], template), False)]
        searches, re_searched, skipped = 0, False, False
        docs: list[Doc] = []
        # A comparison whose path looks up its names (not the question): never answered before every lookup.
        compare = cfg.mine_comparisons and queries[0] != row["question"].strip()
        names = compared_names(row["question"], answers) if compare else []
        noted: dict[str, str] = {}
        notes = ""  # the values the last information block showed, opening the next thought
        for hop, query in enumerate(queries):
            last = hop == len(queries) - 1
            if hop:
                turn = rng.choice(NEXT_SEARCH)
            elif names:
                if cfg.mark_order:
                    plan = MARKED_PLAN.format(first=ORDINALS[0], a=names[0], second=ORDINALS[1], b=names[1])
                else:
                    plan = COMPARE_PLAN.replace("{names}", " and ".join(names))
                turn = rng.choice(SEARCH_QUESTION[True]).replace(" </think>", plan, 1)
                planned_at = len(segments)  # the plan's turn: with say_direction it gains which value wins
            elif query == row["question"].strip():
                turn = rng.choice(SEARCH_QUESTION[len(queries) > 1] if cfg.plan_first else NO_PLAN)
            else:
                turn = rng.choice(FIRST_SEARCH)
            if hop == 0 and noisy:
                docs = results[noisy]
                segments += [(with_notes(turn.format(q=noisy), notes), True), (observe(docs), False)]
                notes = new_facts(names, noted, docs, segments[-1][0], row["question"])
                searches += 1
                gold_top = {d.id for d in results[query][:1]}
                if (contains_answer(docs, answers) if last else bool(gold_top & {d.id for d in docs})):
                    continue  # the imperfect query happened to work: go on from its passages
                turn, re_searched = RE_SEARCH, True
            docs = results[query]
            segments += [(with_notes(turn.format(q=query), notes), True), (observe(docs), False)]
            notes = new_facts(names, noted, docs, segments[-1][0], row["question"])
            searches += 1
            if not last and skip and not names and mentions(segments[-1][0], answers):
                skipped = True
                break
        if names:
            seen = " ".join(text for text, trainable in segments[1:] if not trainable)
            if len(noted) < len(names) or not mentions(seen, answers):
                continue  # a value not shown (or cut): nothing to judge from
            answer = next(a for a in answers if mentions(seen, [a]))
            values = [noted[n] for n in names]
            winners = [i for i, n in enumerate(names) if names_answer(n, [answer])]
            winner = winners[0] if len(winners) == 1 else None
            side = winning_side(values, winner) if cfg.say_direction else None
            if side:
                plan, trainable = segments[planned_at]
                segments[planned_at] = (plan.replace(" </think>", f" {WINS.format(side=side)}. </think>", 1), trainable)
            # what the last turn is written from, kept so that with_other_values can write it from other values
            judged = {"names": names, "values": values, "notes": notes, "answer": answer, "winner": winner}
            segments.append((judgement(judged, cfg), True))
        else:
            if not mentions(segments[-1][0], answers):  # as shown: a truncated passage may have lost it
                continue
            # The alias the passages show: the policy copies its answer from them.
            answer = next((a for a in answers if mentions(segments[-1][0], [a])), answers[0])
            segments.append((ANSWER.format(a=answer), True))
        examples.append(
            {
                "id": row["id"],
                "question": row["question"],
                "golden_answers": answers,
                "segments": segments,
                "num_searches": searches,
                "noisy_query": noisy is not None,
                "re_searched": re_searched,
                "skipped_hop": skipped,
                "comparison": bool(names),
                **({"judged": judged} if names else {}),
            }
        )
    for row in rag_rows:
        answers = [str(a) for a in row["golden_answers"]]
        context = rag_context(results[row["question"].strip()])
        if not mentions(context, answers):
            continue
        answer = next(a for a in answers if mentions(context, [a]))
        prompt = make_prompt(row["question"], "rag", context=context)
        examples.append(
            {
                "id": f"{row['id']}#rag",
                "question": row["question"],
                "golden_answers": answers,
                "segments": [(prompt, False), (f"{ANSWER_OPEN} {answer} {ANSWER_CLOSE}", True)],
                "num_searches": 0,
                "rag": True,
            }
        )
    return examples
