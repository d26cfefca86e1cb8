"""The pipeline stages: each is one plain function of the settings.

This is the single implementation that the three drivers share: the ``searchr1`` CLI (and so
``dvc repro``), the Prefect tasks in ``tasks/``, and tests. A stage calls the library, writes its
outputs and a metrics file under ``reports/``, and logs params/metrics/artifacts to MLflow.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np

from searchr1.config import Settings
from searchr1.io import atomic_open, write_json
from searchr1.tracking import stage_run

log = logging.getLogger(__name__)

REPORTS = Path("reports")


def finish_stage(run, stage: str, metrics: dict, started: float) -> dict:
    """Add the stage's wall time, write ``reports/<stage>.json``, log the metrics; returns them."""
    metrics = {**metrics, "seconds": round(time.time() - started, 3)}
    write_json(REPORTS / f"{stage}.json", metrics)
    run.log_metrics(metrics)
    log.info("%s: done in %.1fs: %s", stage, metrics["seconds"], _summary(metrics))
    return metrics


def _summary(metrics: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(items[:limit])


def make_world(settings: Settings) -> dict:
    """Generate the bundled fictional knowledge world (corpus + questions)."""
    from searchr1.data.world import generate_world

    started = time.time()
    with stage_run(settings.tracking, "world", params={"world": settings.world.model_dump()}) as run:
        stats = generate_world(settings.world)
        return finish_stage(run, "world", stats, started)


def prepare_corpus(settings: Settings) -> dict:
    """Validate and normalise the corpus (bundled world or a wiki-18-style jsonl)."""
    from searchr1.data.corpus import prepare_corpus as _prepare

    cfg = settings.corpus
    source = Path(cfg.path) if cfg.source == "jsonl" and cfg.path else Path(settings.world.out_dir) / "corpus.jsonl"
    started = time.time()
    with stage_run(settings.tracking, "corpus", params={"corpus": cfg.model_dump()}, inputs={"corpus": source}) as run:
        stats = _prepare(cfg, world_dir=settings.world.out_dir)
        return finish_stage(run, "corpus", stats, started)


def prepare_qa(settings: Settings) -> dict:
    """Prepare train/test question sets (FlashRAG jsonl + Search-R1 parquet)."""
    from searchr1.data.qa import prepare_qa as _prepare

    cfg = settings.qa
    inputs = {"world": settings.world.out_dir} if cfg.source == "world" else {}
    if cfg.source == "flashrag" and cfg.flashrag_dir:
        inputs = {"flashrag": cfg.flashrag_dir}
    started = time.time()
    with stage_run(settings.tracking, "qa", params={"qa": cfg.model_dump()}, inputs=inputs) as run:
        stats = _prepare(cfg, world_dir=settings.world.out_dir)
        return finish_stage(run, "qa", stats, started)


def build_index(settings: Settings) -> dict:
    """Build the BM25 and/or dense indexes over the prepared corpus (resumable, idempotent)."""
    from searchr1.retrieval.build import build_indexes

    cfg, corpus = settings.retrieval, settings.corpus.out_path
    started = time.time()
    with stage_run(settings.tracking, "index", params={"retrieval": cfg.model_dump()}, inputs={"corpus": corpus}) as run:
        stats = build_indexes(cfg, corpus)
        return finish_stage(run, "index", stats, started)


def prepare_policy(settings: Settings) -> dict:
    """Write the base policy (micro: tokenizer trained on the corpus + random init; smol; hf id/path)."""
    from searchr1.io import read_json
    from searchr1.models.loading import POLICY_FILE, prepare_base_policy

    cfg = settings.policy
    qa = [Path(settings.qa.out_dir) / "train.jsonl"]
    started = time.time()
    inputs = {"corpus": settings.corpus.out_path, "qa_train": qa[0]}
    with stage_run(settings.tracking, "policy", params={"policy": cfg.model_dump()}, inputs=inputs) as run:
        out = prepare_base_policy(cfg, settings.corpus.out_path, qa, seed=settings.seed)
        info = read_json(out / POLICY_FILE)
        return finish_stage(run, "policy", {"params": info["params"], "vocab_size": info["vocab_size"]}, started)


def cold_start(settings: Settings) -> dict:
    """SFT on search trajectories built from the training questions through the real retriever."""
    from searchr1.retrieval import load_retriever
    from searchr1.sft.train import run_sft

    cfg = settings.sft
    qa_train = Path(settings.qa.out_dir) / "train.jsonl"
    started = time.time()
    inputs = {"base": settings.policy.out_dir, "qa_train": qa_train}
    with stage_run(settings.tracking, "sft", params={"sft": cfg.model_dump()}, inputs=inputs) as run:
        retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
        metrics = run_sft(settings, settings.policy.out_dir, qa_train, retriever, cfg.out_dir, log_fn=run.log_metrics)
        metrics.pop("loss_curve", None)  # logged per step already
        return finish_stage(run, "sft", metrics, started)


def _init_policy(settings: Settings) -> str:
    """Where RL starts: the cold-start model, the base model, or any path / ``models:/`` URI."""
    init = settings.train.init_from
    if init == "sft":
        if not Path(settings.sft.out_dir).exists():
            raise FileNotFoundError(f"train.init_from=sft but {settings.sft.out_dir} does not exist: run `searchr1 sft`")
        return settings.sft.out_dir
    return settings.policy.out_dir if init == "base" else init


def validation_holdout(items: list[dict], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training items, ``size`` held-out items): a seeded random draw over all training rows, so the
    validation set spans every source (FlashRAG files come grouped by dataset)."""
    if size >= len(items):
        raise ValueError(f"train.eval_size={size} leaves no training question (there are {len(items)})")
    held = set(np.random.default_rng(seed).permutation(len(items))[:size].tolist())
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def train(settings: Settings, resume: bool = False) -> dict:
    """RL (PPO / GRPO / REINFORCE++) with multi-turn search rollouts on DeepSpeed; resumable.

    Under a launcher (deepspeed, torchrun) every rank runs this function on its share of each step's
    prompts; rank 0 logs, writes the reports and saves the model."""
    from searchr1 import distributed as dist
    from searchr1.data.qa import load_qa
    from searchr1.models.loading import load_policy
    from searchr1.retrieval.process import node_retriever
    from searchr1.rl.deepspeed_engines import init_distributed
    from searchr1.rl.rollout_worker import RolloutWorker
    from searchr1.rl.trainer import RLTrainer
    from searchr1.rollout.trajectories import save_trajectories

    cfg = settings.train
    init = _init_policy(settings)
    items, held_out = validation_holdout(load_qa(Path(settings.qa.out_dir) / "train.jsonl"), cfg.eval_size, cfg.seed)
    init_distributed()
    rank, world = dist.rank(), dist.world_size()
    main_rank = rank == 0
    tracking = settings.tracking if main_rank else settings.tracking.model_copy(update={"enabled": False})
    started = time.time()
    params = {"train": cfg.model_dump(), "rollout": settings.rollout.model_dump(), "reward": settings.reward.model_dump()}
    with (stage_run(tracking, "train", params=params, inputs={"init": init}) as run,
          node_retriever(settings.retrieval, settings.corpus.out_path) as retriever):  # one index per node
        model, tokenizer = load_policy(init, dtype="float32")  # fp32 master weights (models/precision.py)
        external = None
        if settings.rollout.engine == "vllm":  # one colocated engine per rank (see rl/rollout_worker.py)
            from searchr1.models.loading import default_device, resolve_model_path
            from searchr1.models.precision import resolve_dtype
            from searchr1.rollout.vllm_engine import VLLMEngine

            dtype = resolve_dtype(settings.policy, default_device())  # the dtype the actor computes in
            external = VLLMEngine.from_settings(settings, resolve_model_path(init), dtype=dtype, world_size=world,
                                                training=True)
        worker = RolloutWorker(settings, tokenizer, retriever, external)
        held_share = held_out[rank::world]
        trainer = RLTrainer(
            settings, model, tokenizer, worker, items, log_fn=run.log_metrics,
            eval_fn=lambda module: worker.evaluate(module, held_share),
            sync_fn=worker.sync if external is not None else None,
        )
        history = trainer.train(resume=resume)
        if not main_rank:
            return {}
        # Checkpoints can be many GB: referenced by path; the final model is logged when it is registered.
        run.set_tags({"checkpoint_dir": str(Path(cfg.out_dir).resolve()), "final_dir": str(Path(cfg.final_dir).resolve())})
        if trainer.last_samples:  # the final step's samples of every rank, each with its rank
            save_trajectories(REPORTS / "trajectories.jsonl", trainer.last_samples)
            run.log_artifact(REPORTS / "trajectories.jsonl")
        final = history[-1] if history else {}
        summary = {f"final_{k}": v for k, v in final.items()}
        summary.update(steps=len(history), held_out=len(held_out), init_from=init, world_size=world)
        # DVC plots need the same keys in every row: periodic validation (eval/*) goes to its own file.
        steps = [{"step": i + 1, **{k: v for k, v in m.items() if "/" not in k}} for i, m in enumerate(history)]
        evals = [
            {"step": i + 1, **{k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("eval/")}}
            for i, m in enumerate(history)
            if any(k.startswith("eval/") for k in m)
        ]
        write_json(REPORTS / "train_history.json", steps)
        write_json(REPORTS / "train_validation.json", evals)
        return finish_stage(run, "train", summary, started)


def policy_dirs(settings: Settings) -> dict[str, str]:
    """Where each pipeline stage leaves its policy: base model, cold start, RL-trained."""
    return {"base": settings.policy.out_dir, "sft": settings.sft.out_dir, "policy": settings.train.final_dir}


def _model_source(settings: Settings, label: str) -> str | None:
    """A local folder or ``models:/`` URI for a model label, or None when it does not exist (yet)."""
    if label == "champion":
        from searchr1.evaluation.registry import champion_version

        found = settings.tracking.enabled and champion_version(settings.registry.model_name) is not None
        return f"models:/{settings.registry.model_name}@champion" if found else None
    path = policy_dirs(settings).get(label, label)
    return path if Path(path).exists() else None


def evaluate(settings: Settings) -> dict:
    """Score each configured model under each method on the test split; write table, plot, metrics."""
    from searchr1.data.qa import load_qa, read_question_types
    from searchr1.evaluation.harness import evaluate_method
    from searchr1.evaluation.metrics import (
        aggregate,
        breakdown,
        compare,
        compare_by,
        fallen_groups,
        searches_group,
        type_group,
    )
    from searchr1.evaluation.report import (
        bar_plot,
        breakdown_table,
        comparison_table,
        fallen_list,
        markdown_table,
        transfer,
        transfer_table,
    )
    from searchr1.retrieval import load_retriever
    from searchr1.rollout.engine import load_engine
    from searchr1.tracking import path_hash

    cfg = settings.evaluation
    home = _home_results(cfg.home_eval) if cfg.home_eval else None  # read first: a bad path fails before scoring
    test_path = Path(settings.qa.out_dir) / "test.jsonl"
    items = load_qa(test_path)
    if cfg.question_types:  # a separate id -> type file, for data whose rows carry no type (analysis only)
        types = read_question_types(cfg.question_types)
        for it in items:
            kind = types.get(it["id"]) or types.get(it["id"].split("_", 1)[-1])
            if kind is not None:
                it["metadata"] = {**it["metadata"], "type": kind}
    if cfg.max_examples is not None and cfg.max_examples < len(items):
        # A seeded sample, not the head: test files are often ordered by question type or dataset.
        items = random.Random(settings.seed).sample(items, cfg.max_examples)
    started = time.time()
    inputs = {"test": test_path, **{k: v for k, v in policy_dirs(settings).items() if Path(v).exists()}}
    with stage_run(settings.tracking, "evaluate", params={"evaluation": cfg.model_dump()}, inputs=inputs) as run:
        retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
        results: dict[str, dict] = {}
        scored: dict[str, list[dict]] = {}
        missing = []
        for label in [*cfg.models, "champion"]:
            source = _model_source(settings, label)
            if source is None:
                if label != "champion":
                    missing.append(label)
                    log.warning("evaluate: no model for %r (not built yet): skipped", label)
                continue
            engine, tokenizer = load_engine(settings, source, max_batch_size=cfg.batch_size)
            # Predictions are keyed by the model's content, so a retrained model is never scored from stale rows.
            tag = path_hash(source)[:10] if Path(source).exists() else label
            for method in cfg.methods:
                preds = evaluate_method(
                    engine, tokenizer, retriever, items, method, settings,
                    Path(cfg.out_dir) / "predictions" / f"{label}-{tag}" / f"{method}.jsonl",
                    desc=f"{label}/{method}",
                )
                results[f"{label}/{method}"] = aggregate(preds, cfg.bootstrap_samples, settings.seed)
                scored[f"{label}/{method}"] = preds
            if hasattr(engine, "close"):  # a vLLM engine holds its memory until closed
                engine.close()
        pairs = _comparison_pairs(cfg)
        summary = {
            "complete": not missing,
            "num_questions": len(items),
            "results": results,
            "comparisons": compare(scored, pairs, cfg.bootstrap_samples, settings.seed),
            # Where the data gives a question type (analysis only), and always by searches made.
            "by_type": {label: breakdown(rows, type_group) for label, rows in scored.items()},
            "by_searches": {label: breakdown(rows, searches_group) for label, rows in scored.items()},
            "comparisons_by_type": compare_by(scored, pairs, type_group, cfg.bootstrap_samples, settings.seed),
            # Grouped by the searches the baseline of each pair (e.g. the cold start) made on the question.
            "comparisons_by_searches": compare_by(scored, pairs, searches_group, cfg.bootstrap_samples, settings.seed),
        }
        if not any(summary["by_type"].values()):
            del summary["by_type"], summary["comparisons_by_type"]
        summary["fallen"] = fallen_groups(summary["comparisons"], summary.get("comparisons_by_type", {}), "type")
        if home is not None:
            summary["transfer"] = transfer(home, results)
        write_json(REPORTS / "eval.json", summary)
        table = markdown_table(results) + transfer_table(summary.get("transfer", {}))
        table += comparison_table(summary["comparisons"])
        table += fallen_list(summary["fallen"])
        table += breakdown_table(summary.get("by_type", {}), "type")
        for group, comparisons in summary.get("comparisons_by_type", {}).items():
            table += f"\nPaired differences on {group} questions:\n" + comparison_table(comparisons)
        table += breakdown_table(summary["by_searches"], "searches")
        for group, comparisons in summary["comparisons_by_searches"].items():
            table += f"\nPaired differences on the questions the baseline answered with {group} searches:\n"
            table += comparison_table(comparisons)
        for note in summary["fallen"]:
            log.warning("evaluate: %s", note)
        with atomic_open(REPORTS / "eval.md", "w") as fh:
            fh.write(table)
        if results:
            bar_plot(results, REPORTS / "eval.png")
        for label, per in results.items():
            run.log_metrics({f"{label.replace('/', '.')}.{k}": v for k, v in per["average"].items()})
        run.log_metrics({"seconds": round(time.time() - started, 3)})
        for f in ("eval.json", "eval.md", "eval.png"):
            run.log_artifact(REPORTS / f)
        log.info("evaluate: done in %.1fs\n%s", time.time() - started, table)
        return summary


def _home_results(path: str) -> dict:
    """The ``results`` of evaluation.home_eval (an eval.json written by `searchr1 evaluate`)."""
    from searchr1.config import ConfigError
    from searchr1.io import DataError, read_json

    try:
        summary = read_json(path)
    except DataError as exc:
        raise ConfigError(f"evaluation.home_eval: {exc} (the eval.json of `searchr1 evaluate` on the models' home "
                          "world, e.g. `make demo`'s reports/eval.json)") from None
    results = summary.get("results") if isinstance(summary, dict) else None
    if not isinstance(results, dict):
        raise ConfigError(f"evaluation.home_eval={path}: not an eval.json of `searchr1 evaluate` (no 'results' mapping)")
    return results


def _comparison_pairs(cfg) -> list[tuple[str, str]]:
    """The paper's questions as paired EM differences on the same questions: does each later model
    (e.g. the RL policy) beat the first one listed (its cold start) under each method, and does
    search-r1 beat rag and direct, with the same model and with the starting model?"""
    first, *later = cfg.models
    pairs = [(f"{model}/{method}", f"{first}/{method}") for model in later for method in cfg.methods]
    # The promotion question: is the new policy better than the registry champion on the same questions?
    pairs += [(f"policy/{method}", f"champion/{method}") for method in cfg.methods if "policy" in cfg.models]
    if "search-r1" in cfg.methods:
        for base in ("rag", "direct"):
            if base in cfg.methods:
                pairs += [(f"{model}/search-r1", f"{model}/{base}") for model in cfg.models]
                pairs += [(f"{model}/search-r1", f"{first}/{base}") for model in later]
    return pairs


def promote(settings: Settings) -> dict:
    """Register the trained policy; make it champion only if it beats the champion on the same eval."""
    from searchr1.evaluation.registry import PromotionError, check_evaluation, decision_record, register_and_promote
    from searchr1.io import read_json
    from searchr1.tracking import git_commit, path_hash

    cfg = settings.registry
    evaluation = read_json(REPORTS / "eval.json")
    key = "search-r1" if "search-r1" in settings.evaluation.methods else settings.evaluation.methods[0]
    policy = evaluation["results"].get(f"policy/{key}")
    if policy is None:
        raise PromotionError(f"{REPORTS / 'eval.json'}: no evaluation of the trained policy ('policy/{key}')")
    score = check_evaluation({"complete": evaluation.get("complete"), "average": policy["average"]}, cfg.metric)
    champion = evaluation["results"].get(f"champion/{key}")
    champion_score = None if champion is None else float(champion["average"][cfg.metric])
    paired = evaluation.get("comparisons", {}).get(f"policy/{key} - champion/{key}")
    started = time.time()
    model_dir = settings.train.final_dir
    with stage_run(settings.tracking, "promote", params={"registry": cfg.model_dump()}) as run:
        if run.run_id is None:
            raise PromotionError("tracking is disabled (tracking.enabled=false): there is no registry to promote to")
        tags = {
            "git.commit": git_commit(),
            "data.corpus": path_hash(settings.corpus.out_path),
            "data.qa": path_hash(settings.qa.out_dir),
            "index": path_hash(Path(settings.retrieval.index_dir) / "docstore"),
            "eval.metric": cfg.metric,
        }
        decision = register_and_promote(
            model_dir, cfg.model_name, score, champion_score, eval_set=path_hash(Path(settings.qa.out_dir) / "test.jsonl"),
            margin=cfg.margin, run_id=run.run_id, tags=tags, paired=paired, artifact=cfg.artifact,
        )
        record = decision_record(decision)
        run.set_tags({"promoted": decision.promoted, "reason": decision.reason})
        return finish_stage(run, "promote", {**record, "promoted": int(decision.promoted)}, started)


STAGES = {
    "world": make_world,
    "corpus": prepare_corpus,
    "qa": prepare_qa,
    "index": build_index,
    "policy": prepare_policy,
    "sft": cold_start,
    "train": train,
    "evaluate": evaluate,
    "promote": promote,
}
