"""The `rlhf` command (also `python -m pipeline`). Heavy imports happen inside the commands, so
`rlhf --help` is instant."""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import EXIT_BAD_INPUT, InputError


def _run(args: argparse.Namespace) -> None:
    from pipeline.runner import run_pipeline

    run_pipeline(args.config, args.run_dir, args.resume, args.stages, args.set)


def _status(args: argparse.Namespace) -> None:
    from pipeline.status import print_status

    print_status(args.run_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline (default: the embedded tiny world)")
    run.add_argument("config", nargs="?", help="YAML config (default: configs/tiny.yaml)")
    run.add_argument("--run-dir", default="runs/tiny", help="run directory (default: runs/tiny)")
    run.add_argument("--resume", action="store_true", help="continue a run: skip finished stages, resume interrupted ones")
    run.add_argument("--stages", help="comma-separated subset of stages to run")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.set_defaults(func=_run)

    status = commands.add_parser("status", help="show every stage's state in a run directory")
    status.add_argument("run_dir")
    status.set_defaults(func=_status)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
