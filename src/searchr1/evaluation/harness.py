"""Score a policy the way the paper does: greedy rollouts, exact match, per dataset.

Methods share the rollout engine and retriever: ``direct`` (no retrieval), ``rag`` (retrieve top-k
for the question, then answer) and ``search-r1`` (multi-turn search). Predictions are appended per
batch to a jsonl file, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from searchr1.config import Settings
from searchr1.retrieval.base import Retriever
from searchr1.rollout.engine import GenerationEngine
from searchr1.rollout.loop import run_rollout

log = logging.getLogger(__name__)

MODES = {"direct": "direct", "rag": "rag", "search-r1": "search"}


def read_predictions(path: str | Path) -> dict[str, dict]:
    """Predictions already written, by id. A torn last line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return {}
    done: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: corrupt prediction line") from None
        done[row["id"]] = row
    return done


def evaluate_method(
    engine: GenerationEngine,
    tokenizer,
    retriever: Retriever | None,
    items: Sequence[dict],
    method: str,
    settings: Settings,
    predictions_path: str | Path,
    desc: str = "",
) -> list[dict]:
    """Greedy rollouts of ``method`` over ``items``; returns one prediction row per item, in order."""
    if method not in MODES:
        raise ValueError(f"unknown evaluation method {method!r}; expected one of {sorted(MODES)}")
    predictions_path = Path(predictions_path)
    done = read_predictions(predictions_path)
    todo = [it for it in items if it["id"] not in done]
    if done:
        log.info("%s: resuming, %d of %d already scored", desc or method, len(items) - len(todo), len(items))
    batch_size = settings.evaluation.batch_size
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    # Rewrite the file without a torn line before appending to it.
    with open(predictions_path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in done.values())
    with open(predictions_path, "a", encoding="utf-8") as fh, tqdm(total=len(items), initial=len(items) - len(todo), desc=desc or method, unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            t0 = time.perf_counter()
            result = run_rollout(
                engine,
                tokenizer,
                batch,
                retriever if method != "direct" else None,
                settings.rollout,
                settings.reward,
                topk=settings.retrieval.topk,
                greedy=True,
                mode=MODES[method],
            )
            latency = (time.perf_counter() - t0) / len(batch)
            for item, s in zip(batch, result.samples):
                turns = [t for t in s.turns if t.action != "retrieve"]
                row = {
                    "id": item["id"],
                    "data_source": item.get("data_source", "default"),
                    "type": (item.get("metadata") or {}).get("type"),
                    "question": item["question"],
                    "golden_answers": item["golden_answers"],
                    "prediction": s.answer,
                    "em": s.metrics.get("em", 0.0),
                    "substring_em": s.metrics.get("substring_em", 0.0),
                    "f1": s.metrics.get("f1", 0.0),
                    "num_searches": s.num_searches,
                    "valid_action_ratio": sum(t.action in ("search", "answer") for t in turns) / max(len(turns), 1),
                    "response_tokens": sum(s.response_mask),
                    "repeated_turns": s.truncated.get("repeat", 0),
                    "latency_s": latency,
                    "finished": s.finished,
                }
                done[row["id"]] = row
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            bar.update(len(batch))
    return [done[it["id"]] for it in items]
