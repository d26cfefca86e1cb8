"""Render evaluation results like the paper's tables: rows = (model, method), columns = datasets + average."""

from __future__ import annotations

from pathlib import Path

from searchr1.io import atomic_path


def markdown_table(results: dict[str, dict[str, dict[str, float]]], metric: str = "em") -> str:
    """``results[row_label][dataset][metric]`` → a markdown table with ``average`` as the last column.

    EM cells show the 95% bootstrap interval when it is known.
    """
    datasets = sorted({d for per in results.values() for d in per if d != "average"})
    header = ["method", *datasets, "average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per in results.items():
        cells = [label]
        for d in [*datasets, "average"]:
            m = per.get(d)
            if m is None:
                cells.append("–")
                continue
            cell = f"{m[metric]:.3f}"
            if metric == "em" and "em_ci_low" in m:
                cell += f" [{m['em_ci_low']:.3f}, {m['em_ci_high']:.3f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(comparisons: dict[str, dict[str, float]]) -> str:
    """Paired EM differences (see metrics.compare); a CI that excludes 0 is a difference the data shows."""
    if not comparisons:
        return ""
    lines = ["", "| comparison (paired, same questions) | EM difference | 95% CI | shown |", "|---|---|---|---|"]
    for name, c in comparisons.items():
        shown = "better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "not distinguishable"
        lines.append(f"| {name} | {c['diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {shown} |")
    return "\n".join(lines) + "\n"


TRANSFER_STATS = (("em", "EM"), ("valid_action_ratio", "valid actions"), ("repeated_turns", "repeated turns"),
                  ("num_searches", "searches"))


def transfer(home: dict[str, dict], here: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{label: {"home": averages, "here": averages}}`` for every label (model/method) scored on both worlds:
    the same models on the world they were trained on (``home``, its eval.json ``results``) and on this one."""
    keys = [k for k, _ in TRANSFER_STATS]
    return {
        label: {"home": {k: home[label]["average"].get(k, float("nan")) for k in keys},
                "here": {k: here[label]["average"].get(k, float("nan")) for k in keys}}
        for label in here if label in home and "average" in here[label] and "average" in home[label]
    }


def transfer_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """transfer()'s rows as markdown: each statistic on the home world, then on this one."""
    if not rows:
        return ""
    header = ["model/method", *[f"{name}: home → here" for _, name in TRANSFER_STATS]]
    lines = ["", "Transfer: the same models on the world they were trained on (home) and on this one (here):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, r in rows.items():
        cells = [f"{r['home'][k]:.3f} → {r['here'][k]:.3f}" for k, _ in TRANSFER_STATS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fallen_list(notes: list[str]) -> str:
    """The question types that fell (metrics.fallen_groups) as a markdown call-out; "" when none did."""
    if not notes:
        return ""
    return "\n**A question type fell** (paired CI below 0):\n\n" + "".join(f"- {n}\n" for n in notes)


def bar_plot(results: dict[str, dict[str, dict[str, float]]], path: str | Path, metric: str = "em") -> None:
    """Bar chart of the average ``metric`` per row (model, method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    values = [results[k]["average"][metric] for k in labels]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.5))
    ax.bar(range(len(labels)), values, color="#4C72B0")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (average over datasets)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def breakdown_table(breakdowns: dict[str, dict[str, dict[str, float]]], title: str) -> str:
    """``breakdowns[row_label][group]`` (see metrics.breakdown) → one row per label; a cell is
    "EM / searches per question (n)" of that group."""
    groups = sorted({g for per in breakdowns.values() for g in per})
    if not groups:
        return ""
    header = ["method", *[f"{title} {g}" for g in groups]]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per in breakdowns.items():
        cells = [label]
        for g in groups:
            m = per.get(g)
            cells.append("–" if m is None else f"{m['em']:.3f} / {m['num_searches']:.2f} ({int(m['n'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
