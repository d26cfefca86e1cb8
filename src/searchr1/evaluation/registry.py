"""MLflow model registry: register a trained policy and promote it only when it beats the champion.

A version is the policy's Hugging Face checkpoint directory (weights, tokenizer, generation config)
logged as run artifacts, tagged with what made it. The new version gets alias ``challenger``; it
becomes ``champion`` only if its score on the same evaluation set beats the champion's by
``margin`` (the first version becomes champion). A failed or partial evaluation never promotes.
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


def decide(score: float, champion_score: float | None, margin: float) -> tuple[bool, str]:
    """The promotion rule, as a pure function."""
    if champion_score is None:
        return True, "first version: becomes champion"
    if score > champion_score + margin:
        return True, f"{score:.4f} > champion {champion_score:.4f} + margin {margin}"
    return False, f"{score:.4f} <= champion {champion_score:.4f} + margin {margin}: stays challenger"


def register_and_promote(
    model_dir: str | Path,
    model_name: str,
    score: float,
    champion_score: float | None,
    eval_set: str,
    margin: float,
    run_id: str,
    tags: dict[str, str],
) -> Decision:
    """Log ``model_dir`` to ``run_id``, register it, set ``challenger``, and maybe ``champion``.

    ``champion_score`` is the current champion's score measured on the same ``eval_set`` in the same
    evaluation (None when there is no champion).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

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
    source = f"{client.get_run(run_id).info.artifact_uri}/policy"
    version = client.create_model_version(
        model_name, source=source, run_id=run_id, tags={**tags, "eval.set": eval_set, "eval.score": str(score)}
    )
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    promoted, reason = decide(score, champion_score, margin)
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
    )
    log.info("registry: %s v%s: %s", model_name, version.version, reason)
    return decision


def decision_record(decision: Decision) -> dict:
    return asdict(decision)
