"""Aggregate per-question scores into per-dataset metrics with bootstrap confidence intervals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SCORES = ("em", "substring_em", "f1")
STATS = ("num_searches", "valid_action_ratio", "response_tokens", "latency_s")


def bootstrap_ci(values: Sequence[float], samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over questions (resampling questions with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0 or samples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


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
            m[key] = float(np.mean([r[key] for r in rows]))
        lo, hi = bootstrap_ci([r["em"] for r in rows], bootstrap_samples, seed)
        m["em_ci_low"], m["em_ci_high"] = lo, hi
        out[source] = m
    if out:
        avg = {key: float(np.mean([m[key] for m in out.values()])) for key in SCORES + STATS}
        avg["n"] = float(sum(m["n"] for m in out.values()))
        out["average"] = avg
    return out
