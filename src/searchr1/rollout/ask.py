"""Ask the policy one question with live search, and print what it did (the `searchr1 ask` command)."""

from __future__ import annotations

from searchr1.config import RewardConfig, RolloutConfig
from searchr1.retrieval.base import Doc, Retriever
from searchr1.rollout.engine import GenerationEngine
from searchr1.rollout.loop import run_rollout
from searchr1.rollout.types import Sample


class _RecordingRetriever:
    """Remembers the documents it returned so the printer can show their titles."""

    def __init__(self, inner: Retriever):
        self.inner, self.docs = inner, {}

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        out = self.inner.search(queries, topk)
        self.docs.update((d.id, d) for docs in out for d in docs)
        return out


def ask(
    question: str,
    engine: GenerationEngine,
    tokenizer,
    retriever: Retriever | None,
    cfg: RolloutConfig | None = None,
    golden_answers: list[str] | None = None,
    topk: int = 3,
    greedy: bool = True,
) -> tuple[Sample, dict[str, Doc]]:
    """One search rollout for ``question`` (greedy by default); returns the sample and the docs it saw by id."""
    rec = _RecordingRetriever(retriever) if retriever is not None else None
    item = {"id": "ask", "question": question, "golden_answers": golden_answers or []}
    result = run_rollout(engine, tokenizer, [item], rec, cfg or RolloutConfig(), RewardConfig(), topk=topk, greedy=greedy)
    return result.samples[0], (rec.docs if rec else {})


def format_sample(sample: Sample, docs: dict[str, Doc] | None = None) -> str:
    """Human-readable account: each turn's reasoning, the searches, retrieved titles, and the answer."""
    docs = docs or {}
    lines = [f"Question: {sample.question}"]
    for i, t in enumerate(sample.turns, start=1):
        lines.append(f"\n[turn {i}: {t.action}]")
        lines.append(t.text.strip())
        if t.action == "search" and t.query is not None:
            lines.append(f"  search: {t.query!r}")
            for j, doc_id in enumerate(t.doc_ids, start=1):
                title = docs[doc_id].title if doc_id in docs else doc_id
                lines.append(f"    {j}. {title}")
            if not t.doc_ids:
                lines.append("    (no passages found)" if t.observation else "    (not run: the turn limit was reached)")
        elif t.observation:
            lines.append("  (invalid action: corrective message appended)")
    lines.append(f"\nAnswer: {sample.answer if sample.answer is not None else '(none)'}")
    if sample.golden_answers:
        lines.append(f"Gold: {' | '.join(sample.golden_answers)}  EM={sample.metrics.get('em', 0.0):.0f}")
    return "\n".join(lines)


def print_sample(sample: Sample, docs: dict[str, Doc] | None = None) -> None:
    print(format_sample(sample, docs))
