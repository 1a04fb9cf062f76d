"""The entrypoint every stage shares: `python -m stages.<name> --config FILE --run-dir DIR`.

It validates the config and the stage's inputs before any model loads or Ray starts, records the
stage in the run manifest (running, then done with its outputs and headline metrics, or failed),
and turns bad input into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

from pipeline.config import Config, dump_config, load_config
from pipeline.errors import EXIT_AWAITING_LABELS, EXIT_BAD_INPUT, AwaitingLabels, InputError
from pipeline.files import atomic_write_text
from pipeline.graph import fingerprints, require_inputs
from pipeline.lock import RunLock, die_with_parent
from pipeline.run_dir import AWAITING_LABELS, DONE, FAILED, RUNNING, RunDir


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the run dir
    metrics: dict[str, float] = field(default_factory=dict)  # headline figures for `rlhf status`


StageFn = Callable[[Config, RunDir, bool], StageResult]


def parse_args(stage: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--config", help="YAML config (default: the embedded configs/tiny.yaml)")
    parser.add_argument("--run-dir", required=True, help="run directory (DESIGN.md layout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser.parse_args(argv)


def prepare(stage: str, config: Config, run_dir: RunDir) -> tuple[str, bool]:
    """Check the stage's inputs; returns its fingerprint and whether to resume an interrupted run
    of the same configuration (a retried job, or a worker group restarted by Ray)."""
    require_inputs(stage, config, run_dir)
    prints = fingerprints(config)
    record = run_dir.stage_record(stage)
    resume = record.get("fingerprint") == prints[stage] and record.get("status") in (RUNNING, FAILED, AWAITING_LABELS)
    return prints[stage], resume


def run_stage(stage: str, body: StageFn, argv: list[str] | None = None) -> None:
    die_with_parent()
    args = parse_args(stage, argv)
    run_dir = RunDir(args.run_dir)
    lock = RunLock(run_dir.root)
    started = False
    try:
        config = load_config(args.config, args.set)
        lock.acquire()  # one writer per run directory; inherited when `rlhf run` started this stage
        fingerprint, resume = prepare(stage, config, run_dir)
        import torch

        torch.set_num_threads(config.run.torch_threads)
        if not resume:
            shutil.rmtree(run_dir.stage_dir(stage), ignore_errors=True)
        atomic_write_text(run_dir.stage_dir(stage) / "config.yaml", dump_config(config))
        run_dir.update_stage(stage, status=RUNNING, fingerprint=fingerprint, error=None, outputs={}, metrics={})
        started = True
        result = body(config, run_dir, resume)
        run_dir.update_stage(stage, status=DONE, outputs=result.outputs, metrics=result.metrics)
    except AwaitingLabels as exc:
        run_dir.update_stage(stage, status=AWAITING_LABELS, error=None, metrics=exc.metrics, progress=str(exc))
        print(f"[{stage}] awaiting labels: {exc}", flush=True)
        sys.exit(EXIT_AWAITING_LABELS)
    except InputError as exc:
        if started:
            run_dir.update_stage(stage, status=FAILED, error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except BaseException as exc:
        if started:
            run_dir.update_stage(stage, status=FAILED, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        lock.release()
