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

from searchr1.config import ConfigError, Settings, dump_settings, load_settings
from searchr1.io import DataError

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
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _stage_command(name: str):
    def run(settings: Settings, args: argparse.Namespace) -> None:
        from searchr1.stages import STAGES

        STAGES[name](settings)

    return run


def _cmd_config(settings: Settings, args: argparse.Namespace) -> None:
    print(dump_settings(settings), end="")


def _cmd_pipeline(settings: Settings, args: argparse.Namespace) -> None:
    flow_file = Path("flows/pipeline.py")
    if not flow_file.exists():
        raise ConfigError("flows/pipeline.py not found: run `searchr1 pipeline` from the project root")
    sys.path.insert(0, str(Path.cwd()))
    from flows.pipeline import pipeline

    pipeline(params=args.params, overrides=args.overrides)


# name -> (help, handler, extra-arguments function or None)
COMMANDS = {
    "world": ("generate the bundled fictional knowledge world (DVC stage `world`)", _stage_command("world"), None),
    "corpus": ("validate and normalise the corpus into data/corpus (DVC stage `corpus`)", _stage_command("corpus"), None),
    "qa": ("prepare train/test QA sets: FlashRAG jsonl + Search-R1 parquet (DVC stage `qa`)", _stage_command("qa"), None),
    "pipeline": ("run the whole pipeline as a Prefect flow (flows/pipeline.py)", _cmd_pipeline, None),
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
    try:
        settings = load_settings(args.params, args.overrides)
        args.handler(settings, args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"searchr1 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"searchr1 {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
