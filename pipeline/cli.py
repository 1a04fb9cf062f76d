"""rlhf: run, submit and inspect the RLHF pipeline's stages, and serve the ranking app.

The `rlhf` command (also `python -m pipeline`). Heavy imports happen inside the commands, so
`rlhf --help` is instant."""

from __future__ import annotations

import argparse
import sys

from common.errors import EXIT_BAD_INPUT, InputError
from labeling_ui.cli import add_commands as add_label_commands


def _run(args: argparse.Namespace) -> None:
    from pipeline.runner import run_pipeline

    run_pipeline(args.config, args.run_dir, args.resume, args.stages, args.set, args.address)


def _submit(args: argparse.Namespace) -> None:
    from common.config import load_config
    from common.run_dir import RunDir
    from pipeline.jobs import submit_stage
    from stages.registry import GRAPH

    if args.stage not in GRAPH.names:
        raise InputError(f"unknown stage {args.stage!r}; stages are {', '.join(GRAPH.names)}")
    config = load_config(args.config, args.set)
    run = RunDir(args.run_dir)
    GRAPH[args.stage].check_inputs(config)
    GRAPH.require_inputs(args.stage, config, run)
    print(submit_stage(args.stage, config, run, args.address))


def _report(args: argparse.Namespace) -> None:
    from stages.eval.report import build_report

    print(build_report(args.run_dir))


def _logs(args: argparse.Namespace) -> None:
    from pipeline.jobs import print_logs

    print_logs(args.run_dir, args.stage, args.follow)


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
    run.add_argument("--address", help="Ray job server (http://HOST:8265): each stage as a Ray job there; or a cluster "
                     "(HOST:6379): the stages join it. Default: RAY_ADDRESS, then ray.address, else a local Ray")
    run.set_defaults(func=_run)

    submit = commands.add_parser("submit", help="submit one stage as a Ray job (Ray Job Submission SDK); prints its job id")
    submit.add_argument("stage")
    submit.add_argument("--config", help="YAML config (default: configs/tiny.yaml)")
    submit.add_argument("--run-dir", required=True, help="run directory, on storage the cluster shares")
    submit.add_argument("--address", default="http://127.0.0.1:8265", help="Ray job server (default: %(default)s)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    submit.set_defaults(func=_submit)

    report = commands.add_parser("report", help="rebuild DIR/eval/report.md and summary.json from a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)

    logs = commands.add_parser("logs", help="show a stage's output (its Ray job's logs, or the local log)")
    logs.add_argument("run_dir")
    logs.add_argument("stage")
    logs.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=_logs)

    status = commands.add_parser("status", help="show every stage's state in a run directory")
    status.add_argument("run_dir")
    status.set_defaults(func=_status)

    add_label_commands(commands)
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
