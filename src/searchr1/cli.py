"""The ``searchr1`` command line: one subcommand per pipeline stage, plus tools (ask, view, serve).

Every subcommand reads ``params.yaml`` (``--params``) and accepts ``--set KEY=VALUE`` overrides, the
same keys ``dvc exp run -S`` edits. Run ``searchr1 <command> --help`` for details.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from searchr1.config import ConfigError, Settings, dump_settings, load_settings, profile_overrides
from searchr1.errors import SearchR1Error

log = logging.getLogger("searchr1")

EPILOG = """examples:
  searchr1 pipeline                      # whole pipeline on the embedded default (Prefect flow)
  dvc repro                              # the same stages, DVC-cached
  searchr1 world --set world.seed=1      # one stage, one override
  searchr1 config --set train.lr=1e-5    # print the resolved settings
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="settings file (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.lr=1e-5 (repeatable; VALUE is YAML)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="NAME|FILE",
        help="a settings profile applied over --params before --set: profiles/NAME.yaml (here, else beside "
        "the --params file) or a YAML file holding only the keys it changes (e.g. --profile long)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _stage_command(name: str):
    def run(settings: Settings, args: argparse.Namespace) -> None:
        from searchr1.stages import STAGES

        STAGES[name](settings)

    return run


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from searchr1.retrieval.server import serve

    cfg = settings.retrieval
    if args.port is not None:
        cfg.server.port = args.port
    serve(cfg, settings.corpus.out_path)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="port (default: retrieval.server.port)")


def _cmd_train(settings: Settings, args: argparse.Namespace) -> None:
    from searchr1.stages import train

    train(settings, resume=args.resume)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint in train.out_dir")


def _cmd_ask(settings: Settings, args: argparse.Namespace) -> None:
    from searchr1.retrieval import load_retriever
    from searchr1.rollout.ask import ask, print_sample
    from searchr1.rollout.engine import load_engine
    from searchr1.stages import policy_dirs

    source = args.model or next(
        (p for p in (settings.train.final_dir, settings.sft.out_dir, settings.policy.out_dir) if Path(p).exists()), None
    )
    if source is None:
        raise ConfigError("no trained policy found: run `searchr1 pipeline` first, or pass --model PATH|models:/NAME@ALIAS")
    source = policy_dirs(settings).get(source, source)
    engine, tokenizer = load_engine(settings, source)
    retriever = load_retriever(settings.retrieval, settings.corpus.out_path)
    log.info("policy: %s (%s engine), retriever: %s", source, settings.rollout.engine,
             settings.retrieval.server.url or settings.retrieval.method)
    sample, docs = ask(args.question, engine, tokenizer, retriever, settings.rollout, topk=settings.retrieval.topk)
    print_sample(sample, docs)


def _ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="the question to answer")
    p.add_argument(
        "--model",
        default=None,
        help="policy folder, HF id, models:/NAME@champion, or base|sft|policy (default: newest of policy, sft, base)",
    )


def _cmd_view(settings: Settings, args: argparse.Namespace) -> None:
    from searchr1.rollout.viewer import write_viewer

    out = args.out or str(Path(args.trajectories).with_suffix(".html"))
    n = write_viewer(args.trajectories, out, limit=args.limit)
    print(f"wrote {n} trajectories to {out}")


def _view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trajectories", help="a trajectories.jsonl file (e.g. reports/trajectories.jsonl)")
    p.add_argument("--out", default=None, help="HTML file to write (default: beside the jsonl)")
    p.add_argument("--limit", type=int, default=None, help="show at most this many trajectories")


def _cmd_results(settings: Settings, args: argparse.Namespace) -> None:
    from searchr1.evaluation.results import write_results

    out = write_results(settings.tracking, args.out, Path(args.out).parent / "results")
    print(f"wrote {out}")


def _results_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="reports/results.md", help="markdown file to write (default: %(default)s)")


def _cmd_config(settings: Settings, args: argparse.Namespace) -> None:
    print(dump_settings(settings), end="")


def _enter_workdir(args: argparse.Namespace) -> None:
    """Run a flow with its outputs (data, indexes, models, reports, MLflow store) under ``--workdir``;
    the flows and the settings file are still read from where the command was started."""
    if args.workdir is None:
        return
    args.params = str(Path(args.params).resolve())
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)
    log.info("working in %s", Path.cwd())


def _workdir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None, help="folder for all outputs (default: the current folder), e.g. runs/check-world")


def _cmd_pipeline(settings: Settings, args: argparse.Namespace) -> None:
    flow_file = Path("flows/pipeline.py")
    if not flow_file.exists():
        raise ConfigError("flows/pipeline.py not found: run `searchr1 pipeline` from the project root")
    sys.path.insert(0, str(Path.cwd()))
    from flows.pipeline import pipeline

    _enter_workdir(args)
    pipeline(params=args.params, overrides=args.overrides)
    for name in ("prefect", "httpx"):  # the temporary server's shutdown chatter would follow the summary
        logging.getLogger(name).setLevel(logging.WARNING)
    print(next_steps(Path("reports/eval.json")))


def next_steps(eval_json: Path) -> str:
    """The closing lines of a pipeline run: the headline numbers and what to open next."""
    lines = ["", "searchr1 pipeline: done."]
    if eval_json.exists():
        import json

        summary = json.loads(eval_json.read_text())
        for label in ("sft/search-r1", "policy/search-r1"):
            if label in summary.get("results", {}):
                lines.append(f"  {label:18} EM {summary['results'][label]['average']['em']:.3f}")
        gain = summary.get("comparisons", {}).get("policy/search-r1 - sft/search-r1")
        if gain:
            lines.append(f"  RL - cold start     {gain['diff']:+.3f}, 95% CI [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]")
    lines += [
        "Next:",
        "  cat reports/eval.md                                   # EM by method, model, question type",
        "  cat reports/results.md                                # every run in the MLflow store, with curves",
        "  mlflow ui --backend-store-uri sqlite:///mlflow.db     # runs, params, curves, model registry",
        '  searchr1 ask "Who invented the Tiderk winch?"         # the trained policy, live search',
        "  searchr1 view reports/trajectories.jsonl              # the last RL step's trajectories as HTML",
    ]
    return "\n".join(lines)


def _retrain_flow():
    if not Path("flows/retrain.py").exists():
        raise ConfigError("flows/retrain.py not found: run this command from the project root")
    sys.path.insert(0, str(Path.cwd()))
    import flows.retrain

    return flows.retrain


def _cmd_retrain(settings: Settings, args: argparse.Namespace) -> None:
    flow = _retrain_flow()
    args.drop = str(Path(args.drop).resolve())
    _enter_workdir(args)
    flow.retrain(drop=args.drop, params=args.params, overrides=args.overrides, extend_qa=not args.no_qa)


def _retrain_args(p: argparse.ArgumentParser) -> None:
    _workdir_args(p)
    p.add_argument("--drop", required=True, help="refresh folder: upserts.jsonl, deletes.txt, qa_train/qa_test.jsonl, or a world v2 folder")
    p.add_argument("--no-qa", action="store_true", help="do not add the drop's questions to the QA sets")


def _cmd_schedule(settings: Settings, args: argparse.Namespace) -> None:
    _retrain_flow().schedule(args.cron, args.drop, params=args.params, overrides=args.overrides)


def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * 0" (Sundays 03:00)')
    p.add_argument("--drop", required=True, help="refresh folder each run picks up (see `searchr1 retrain`)")


# name -> (help, handler, extra-arguments function or None)
COMMANDS = {
    "world": ("generate the bundled fictional knowledge world (DVC stage `world`)", _stage_command("world"), None),
    "corpus": ("validate and normalise the corpus into data/corpus (DVC stage `corpus`)", _stage_command("corpus"), None),
    "qa": ("prepare train/test QA sets: FlashRAG jsonl + Search-R1 parquet (DVC stage `qa`)", _stage_command("qa"), None),
    "index": ("build BM25 / dense FAISS indexes over the corpus, resumable (DVC stage `index`)", _stage_command("index"), None),
    "serve-retriever": (
        "serve the index over HTTP (Search-R1 compatible POST /retrieve, GET /health)",
        _cmd_serve,
        _serve_args,
    ),
    "policy": ("write the base policy: micro (trained tokenizer + random init), smol, or an HF model (DVC stage `policy`)", _stage_command("policy"), None),
    "sft": ("cold start: SFT on search trajectories from the training questions (DVC stage `sft`)", _stage_command("sft"), None),
    "train": ("RL training (PPO/GRPO/REINFORCE++) with search rollouts on DeepSpeed (DVC stage `train`)", _cmd_train, _train_args),
    "evaluate": ("score models x methods (direct, rag, search-r1) on the test split (DVC stage `evaluate`)", _stage_command("evaluate"), None),
    "promote": ("register the trained policy in MLflow; champion only if it beats the champion (DVC stage `promote`)", _stage_command("promote"), None),
    "ask": ("answer one question with a policy and the retriever, showing reasoning, searches and answer", _cmd_ask, _ask_args),
    "view": ("render a trajectories.jsonl as HTML, retrieved (masked) text marked", _cmd_view, _view_args),
    "results": ("write a results report (EM tables with bootstrap CIs, RL curves) from the MLflow runs", _cmd_results, _results_args),
    "pipeline": ("run the whole pipeline as a Prefect flow (flows/pipeline.py)", _cmd_pipeline, _workdir_args),
    "retrain": ("one retrain cycle now: refresh corpus, update indexes, train from champion, evaluate, promote", _cmd_retrain, _retrain_args),
    "schedule": ("serve the retrain flow on a cron schedule (needs `prefect server start` + PREFECT_API_URL)", _cmd_schedule, _schedule_args),
    "config": ("print the resolved settings (params.yaml + overrides) and exit", _cmd_config, None),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchr1",
        description="Train LLMs with RL to reason and search (Search-R1): data, retrieval, rollout, "
        "training, evaluation and promotion, driven from params.yaml.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, handler, extra) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        if extra is not None:
            extra(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Offline machines: Prefect's temporary server would log an ERROR for every failed telemetry send.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        if args.profile:  # a profile is a list of overrides, so every driver (flows, tasks, DVC) sees the same
            args.overrides = profile_overrides(args.profile, args.params) + args.overrides
        settings = load_settings(args.params, args.overrides)
        args.handler(settings, args)
    except (SearchR1Error, FileNotFoundError) as exc:
        print(f"searchr1 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"searchr1 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
