"""Aggregate per-question scores into per-dataset metrics with bootstrap confidence intervals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SCORES = ("em", "substring_em", "f1")
STATS = ("num_searches", "valid_action_ratio", "repeated_turns", "response_tokens", "latency_s")


def bootstrap_ci(values: Sequence[float], samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over questions (resampling questions with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0 or samples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_difference(
    a: Sequence[float], b: Sequence[float], samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of ``a - b`` over the same questions and its paired percentile-bootstrap CI.

    Resampling questions (not each score list separately) is what makes a small gain on the same
    questions visible: per-question correlation cancels out.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores must cover the same questions ({len(a)} != {len(b)})")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_ci(diff, samples, seed, level)
    return {"diff": float(diff.mean()) if len(diff) else float("nan"), "ci_low": lo, "ci_high": hi, "n": float(len(diff))}


def compare(
    predictions: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], samples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """EM differences ``"A - B"`` for each (A, B) in ``pairs`` present in ``predictions`` (label -> rows in
    the same question order), with paired bootstrap CIs."""
    out = {}
    for a, b in pairs:
        if a in predictions and b in predictions:
            rows_a, rows_b = predictions[a], predictions[b]
            if [r["id"] for r in rows_a] != [r["id"] for r in rows_b]:
                raise ValueError(f"{a} and {b} were scored on different questions")
            out[f"{a} - {b}"] = paired_difference([r["em"] for r in rows_a], [r["em"] for r in rows_b], samples, seed)
    return out


def aggregate(predictions: list[dict], bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{dataset: {metric: value}}`` plus ``"average"`` (the paper's unweighted mean over datasets).

    Each prediction has ``data_source`` and the keys in SCORES and STATS.
    """
    by_source: dict[str, list[dict]] = defaultdict(list)
    for p in predictions:
        by_source[p["data_source"]].append(p)
    out: dict[str, dict[str, float]] = {}
    for source in sorted(by_source):
        rows = by_source[source]
        m: dict[str, float] = {"n": float(len(rows))}
        for key in SCORES + STATS:
            m[key] = float(np.mean([r.get(key, 0.0) for r in rows]))  # rows scored before a stat existed lack it
        lo, hi = bootstrap_ci([r["em"] for r in rows], bootstrap_samples, seed)
        m["em_ci_low"], m["em_ci_high"] = lo, hi
        out[source] = m
    if out:
        avg = {key: float(np.mean([m[key] for m in out.values()])) for key in SCORES + STATS}
        avg["n"] = float(sum(m["n"] for m in out.values()))
        out["average"] = avg
    return out


def searches_group(row: dict, cap: int = 3) -> str:
    """The number of searches a prediction made, as a group name: "0", "1", "2", "3+"."""
    n = int(row.get("num_searches", 0))
    return str(n) if n < cap else f"{cap}+"


def type_group(row: dict) -> str | None:
    """A prediction's question type (from the data's metadata, e.g. the world's single/bridge/comparison)."""
    return row.get("type") or None


def breakdown(predictions: list[dict], group_of) -> dict[str, dict[str, float]]:
    """``{group: {n, em, f1, num_searches, valid_action_ratio}}`` over the predictions ``group_of(row)``
    puts in a group (rows it maps to None are left out); empty when no row has a group."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in predictions:
        g = group_of(p)
        if g is not None:
            groups[g].append(p)
    return {
        g: {"n": float(len(rows)), **{k: float(np.mean([r[k] for r in rows])) for k in ("em", "f1", "num_searches", "valid_action_ratio")}}
        for g, rows in sorted(groups.items())
    }


def compare_by(
    predictions: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], group_of, samples: int = 1000, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """``compare`` within each group of questions: ``{group: {"A - B": paired difference}}``.

    A question's group is ``group_of`` of the baseline B's row, so both sides of a pair cover the same
    questions even when the group is behaviour (``searches_group``: the questions B answered with n
    searches) rather than data (``type_group``: the same for every model).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in pairs:
        if a not in predictions or b not in predictions:
            continue
        rows_a, rows_b = predictions[a], predictions[b]
        if [r["id"] for r in rows_a] != [r["id"] for r in rows_b]:
            raise ValueError(f"{a} and {b} were scored on different questions")
        groups: dict[str, list[int]] = defaultdict(list)
        for k, row in enumerate(rows_b):
            if (g := group_of(row)) is not None:
                groups[g].append(k)
        for g, ks in groups.items():
            out.setdefault(g, {})[f"{a} - {b}"] = paired_difference(
                [rows_a[k]["em"] for k in ks], [rows_b[k]["em"] for k in ks], samples, seed
            )
    return dict(sorted(out.items()))


def fallen_groups(
    comparisons: dict[str, dict[str, float]], by_group: dict[str, dict[str, dict[str, float]]], what: str
) -> list[str]:
    """One sentence per (comparison, group) whose paired CI lies wholly below 0, saying whether the
    comparison's total rose meanwhile: a gain on the whole test set can hide a lost question type."""
    notes = []
    for group, per in by_group.items():
        for name, c in per.items():
            if c["ci_high"] >= 0:
                continue
            total = comparisons.get(name)
            if total is None:
                context = ""
            elif total["diff"] > 0:
                context = f", while the total rose by {total['diff']:+.3f}"
            else:
                context = f"; the total: {total['diff']:+.3f}"
            notes.append(
                f"{name}: {what} {group} fell by {c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] "
                f"on {int(c['n'])} questions{context}"
            )
    return notes
