"""docs/results.md from the MLflow store: test EM per (model, method, RL variant) with 95% bootstrap
CIs, stage timings, and training curves (reward, EM, length, searches, valid searches, KL, entropy)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from searchr1.config import TrackingConfig
from searchr1.evaluation.report import breakdown_table, comparison_table, fallen_list
from searchr1.io import atomic_open, atomic_path, read_json

# (MLflow metric key of a train step, axis label)
CURVES = (
    ("reward_mean", "reward"),
    ("eval/em", "held-out EM (greedy)"),
    ("response_length", "response tokens"),
    ("searches_per_sample", "searches / question"),
    ("valid_search_ratio", "valid-search ratio"),
    ("kl", "KL to reference"),
    ("entropy", "entropy"),
)
STAGES = ("world", "corpus", "qa", "index", "policy", "sft", "train", "evaluate", "promote")


@dataclass
class Variant:
    """One RL run and the evaluation that followed it."""

    label: str
    train_run: object
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    evaluation: dict | None = None  # eval.json of the first evaluate run after this train run


def variant_label(params: dict[str, str]) -> str:
    """A short name for an RL run from its logged params, e.g. ``grpo`` or ``ppo, no retrieved-token mask``."""
    label = params.get("train.algorithm", "rl")
    if params.get("train.mask_retrieved") == "False":
        label += ", no retrieved-token mask"
    if params.get("train.init_from", "sft") != "sft":
        label += f", from {params['train.init_from']}"
    if params.get("rollout.seed", "0") != "0":
        label += f", rollout seed {params['rollout.seed']}"
    return label


def _runs(client, experiment_id: str, stage: str) -> list:
    """Finished runs of one stage, oldest first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`searchr1.stage` = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return list(runs)


def collect(tracking: TrackingConfig) -> tuple[list[Variant], dict[str, float]]:
    """RL variants (each paired with the first evaluate run started after it ended) and the latest
    run time of each stage, from the MLflow store of ``tracking``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from searchr1.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking))
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        raise FileNotFoundError(f"no MLflow experiment {tracking.experiment!r} at {resolve_tracking_uri(tracking)}")
    evals = _runs(client, exp.experiment_id, "evaluate")
    variants = []
    for run in _runs(client, exp.experiment_id, "train"):
        v = Variant(variant_label(run.data.params), run)
        for key, _ in CURVES:
            v.curves[key] = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        after = [e for e in evals if e.info.start_time >= (run.info.end_time or 0)]
        if after:
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(after[0].info.run_id, "eval.json", tmp)
                v.evaluation = read_json(path)
        variants.append(v)
    timings = {}
    for stage in STAGES:
        runs = _runs(client, exp.experiment_id, stage)
        if runs and "seconds" in runs[-1].data.metrics:
            timings[stage] = runs[-1].data.metrics["seconds"]
    return variants, timings


def _em_cell(per: dict) -> tuple[str, str]:
    """EM with its 95% bootstrap CI (from the per-dataset aggregate, see evaluation.metrics.aggregate)."""
    sources = [k for k in per if k != "average"]
    avg = per["average"]
    ci = ""
    if len(sources) == 1 and "em_ci_low" in per[sources[0]]:
        ci = f"[{per[sources[0]]['em_ci_low']:.3f}, {per[sources[0]]['em_ci_high']:.3f}]"
    return f"{avg['em']:.3f}", ci


def em_table(variants: list[Variant]) -> str:
    """One row per (model, method); the RL policy gets one row per variant, baselines appear once."""
    lines = [
        "| model | method | EM | 95% CI | F1 | searches / q | n |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for v in variants:
        results = (v.evaluation or {}).get("results", {})
        for key, per in results.items():
            model, method = key.split("/", 1)
            if model == "policy":
                model = f"policy (RL: {v.label})"
            elif model == "champion":  # the registry's champion at that time, whichever run produced it
                model = "champion (registry)"
            if model != f"policy (RL: {v.label})" and key in seen:
                continue
            seen.add(key)
            em, ci = _em_cell(per)
            avg = per["average"]
            lines.append(
                f"| {model} | {method} | {em} | {ci} | {avg['f1']:.3f} | {avg['num_searches']:.2f} | {int(avg['n'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_curves(variants: list[Variant], path: str | Path) -> None:
    """One panel per CURVES metric, one line per RL variant, x = trainer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(CURVES) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, CURVES):
        for v in variants:
            points = v.curves.get(key) or []
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=v.label)
        ax.set_title(title)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(CURVES) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(
    tracking: TrackingConfig, out: str | Path = "docs/results.md", figures: str | Path = "docs/results", notes: str = ""
) -> Path:
    """Write ``out`` (markdown tables) and ``figures/training_curves.png`` from the MLflow store.

    Every number comes from logged runs: nothing is typed in by hand. ``notes`` (markdown) is put
    under the title, e.g. the configuration and the machine it ran on.
    """
    variants, timings = collect(tracking)
    out, figures = Path(out), Path(figures)
    curves = figures / "training_curves.png"
    if variants:
        plot_curves(variants, curves)
    parts = ["# Results\n", notes.strip() + "\n" if notes.strip() else ""]
    parts += ["## Test exact match\n", em_table(variants) if variants else "No finished RL run yet.\n"]
    if variants:
        finals = ["| RL variant | steps | final reward | final held-out EM |", "|---|---|---|---|"]
        for v in variants:
            reward, em = v.curves.get("reward_mean") or [], v.curves.get("eval/em") or []
            finals.append(
                f"| {v.label} | {len(reward)} | {reward[-1][1] if reward else float('nan'):.3f} "
                f"| {em[-1][1] if em else float('nan'):.3f} |"
            )
        parts += ["\n## RL runs\n", "\n".join(finals) + "\n"]
        for v in variants:
            evaluation = v.evaluation or {}
            if evaluation.get("comparisons"):
                parts += [f"\n## Paired differences after RL: {v.label}\n", comparison_table(evaluation["comparisons"])]
            parts += [fallen_list(evaluation.get("fallen", []))]
            if evaluation.get("by_type"):
                parts += [f"\n## By question type after RL: {v.label}\n", breakdown_table(evaluation["by_type"], "type")]
                for group, comparisons in evaluation.get("comparisons_by_type", {}).items():
                    parts += [f"\nPaired differences on {group} questions:\n", comparison_table(comparisons)]
            if evaluation.get("by_searches"):
                parts += [f"\n## By searches made after RL: {v.label}\n", breakdown_table(evaluation["by_searches"], "searches")]
        parts += ["\n## Training curves\n", f"![training curves]({curves.relative_to(out.parent).as_posix()})\n"]
    if timings:
        rows = ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()]
        parts += ["\n## Stage times (latest run of each stage)\n", "\n".join(rows) + "\n"]
    with atomic_open(out, "w") as fh:
        fh.write("\n".join(p for p in parts if p))
    return out
