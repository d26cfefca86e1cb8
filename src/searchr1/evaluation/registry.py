"""MLflow model registry: register a trained policy and promote it only when it beats the champion.

A version is the policy's Hugging Face checkpoint directory (weights, tokenizer, generation config)
logged as run artifacts, tagged with what made it. The new version gets alias ``challenger``; it
becomes ``champion`` only if it is shown better than the champion on the same questions: the lower
bound of the paired 95% bootstrap CI of (challenger EM - champion EM) must exceed ``margin``. A point
estimate is not enough (one question in a hundred is noise). The first version becomes champion; a
failed or partial evaluation never promotes. A policy trained with LoRA is registered as its merged
weights or, with ``registry.artifact=adapter``, as its adapter alone (loaders merge an adapter onto its
base: models/lora.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from searchr1.errors import SearchR1Error

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionError(SearchR1Error, RuntimeError):
    """The evaluation cannot support a promotion decision (failed, partial, or a different eval set)."""


@dataclass
class Decision:
    model_name: str
    version: str
    promoted: bool
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    reason: str
    diff: float | None = None  # challenger - champion, paired on the same questions
    ci_low: float | None = None
    ci_high: float | None = None


def champion_version(model_name: str):
    """The current champion ModelVersion, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def check_evaluation(evaluation: dict, metric: str) -> float:
    """The challenger's score; raises PromotionError when the evaluation is not complete."""
    if not evaluation.get("complete"):
        raise PromotionError("evaluation is partial or failed (complete=false): nothing promoted")
    try:
        return float(evaluation["average"][metric])
    except (KeyError, TypeError, ValueError):
        raise PromotionError(f"evaluation has no average {metric!r}: nothing promoted") from None


def decide(score: float, champion_score: float | None, margin: float, paired: dict | None = None) -> tuple[bool, str]:
    """The promotion rule, as a pure function: champion only when the paired 95% CI of challenger -
    champion (``paired``: diff, ci_low, ci_high from ``evaluation.metrics.paired_difference``) lies
    above ``margin``."""
    if champion_score is None:
        return True, "first version: becomes champion"
    if paired is None:
        raise PromotionError("the champion was evaluated but there is no paired comparison with it: nothing promoted")
    shown = (f"{score:.4f} vs champion {champion_score:.4f}: paired difference {paired['diff']:+.4f}, "
             f"95% CI [{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]")
    if paired["ci_low"] > margin:
        return True, f"{shown}; lower bound > margin {margin}: becomes champion"
    return False, f"{shown}; lower bound <= margin {margin}: not shown better, stays challenger"


def register_and_promote(
    model_dir: str | Path,
    model_name: str,
    score: float,
    champion_score: float | None,
    eval_set: str,
    margin: float,
    run_id: str,
    tags: dict[str, str],
    paired: dict | None = None,
    artifact: str = "merged",
) -> Decision:
    """Log ``model_dir`` to ``run_id``, register it, set ``challenger``, and maybe ``champion``.

    ``champion_score`` is the current champion's score measured on the same ``eval_set`` in the same
    evaluation (None when there is no champion); ``paired`` the paired difference with it (see ``decide``).
    ``artifact`` (registry.artifact): the version is the merged weights (``model_dir``) or, for a policy
    trained with LoRA, its adapter alone (``model_dir/adapter``); the run holds both either way.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # The adapter is the subfolder holding peft's adapter_config.json (models/lora.py writes it: adapter/).
    adapters = sorted(p.parent.name for p in Path(model_dir).glob("*/adapter_config.json"))
    if artifact == "adapter" and not adapters:
        raise PromotionError(f"registry.artifact=adapter but {model_dir} holds no LoRA adapter (was the policy trained "
                             "with train.lora.enabled=true?): nothing registered")
    client = MlflowClient()
    current = champion_version(model_name)
    if current is not None and champion_score is None:
        raise PromotionError(
            f"{model_name}@{CHAMPION} (v{current.version}) exists but was not evaluated on {eval_set}: nothing promoted"
        )
    client.log_artifacts(run_id, str(model_dir), "policy")
    try:
        client.create_registered_model(model_name)
    except MlflowException:
        pass  # already exists
    promoted, reason = decide(score, champion_score, margin, paired)  # before registering: a bad input registers nothing
    source = f"{client.get_run(run_id).info.artifact_uri}/policy" + (f"/{adapters[0]}" if artifact == "adapter" else "")
    version_tags = {**tags, "artifact": artifact, "eval.set": eval_set, "eval.score": str(score), "promotion.reason": reason}
    if paired is not None and current is not None:
        version_tags |= {
            "eval.champion_version": str(current.version),
            "eval.diff_vs_champion": f"{paired['diff']:.4f}",
            "eval.ci_low": f"{paired['ci_low']:.4f}",
            "eval.ci_high": f"{paired['ci_high']:.4f}",
        }
    version = client.create_model_version(model_name, source=source, run_id=run_id, tags=version_tags)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    decision = Decision(
        model_name=model_name,
        version=str(version.version),
        promoted=promoted,
        challenger_score=score,
        champion_score=champion_score,
        champion_version=None if current is None else str(current.version),
        reason=reason,
        **({k: paired[k] for k in ("diff", "ci_low", "ci_high")} if paired is not None and current is not None else {}),
    )
    log.info("registry: %s v%s: %s", model_name, version.version, reason)
    return decision


def decision_record(decision: Decision) -> dict:
    return asdict(decision)
