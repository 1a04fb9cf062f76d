"""The stage lifecycle every stage shares: `python -m stages.<name> --config FILE --run-dir DIR`.

It validates the config and the stage's inputs before any model loads or Ray starts, records the
stage in the run manifest (running, then done with its outputs and headline metrics, or failed),
and turns bad input into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

from common.config import Config, dump_config, load_config
from common.errors import (
    EXIT_AWAITING_LABELS,
    EXIT_BAD_INPUT,
    AwaitingLabels,
    InputError,
)
from common.files import atomic_write_text
from common.graph import StageDeclaration, StageGraph
from common.lock import RunLock, die_with_parent
from common.run_dir import AWAITING_LABELS, DONE, FAILED, RUNNING, RunDir
from stages.runtime.ray_workers import stage_cluster


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the run dir
    metrics: dict[str, float] = field(default_factory=dict)  # headline figures for `rlhf status`


# body(config, run_dir, resume, stage): the stage's work; `stage` names its directory in the run
StageFn = Callable[[Config, RunDir, bool, str], StageResult]


def parse_args(stage: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--config", help="YAML config (default: the embedded configs/tiny.yaml)")
    parser.add_argument("--run-dir", required=True, help="run directory (DESIGN.md layout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser.parse_args(argv)


def prepare(graph: StageGraph, stage: str, config: Config, run_dir: RunDir) -> tuple[str, bool]:
    """Check the stage's inputs; returns its fingerprint and whether to resume an interrupted run
    of the same configuration (a retried job, or a worker group restarted by Ray)."""
    graph.require_inputs(stage, config, run_dir)
    prints = graph.fingerprints(config)
    record = run_dir.stage_record(stage)
    resume = record.get("fingerprint") == prints[stage] and record.get("status") in (RUNNING, FAILED, AWAITING_LABELS)
    return prints[stage], resume


def run_stage(graph: StageGraph, declared: StageDeclaration, body: StageFn, argv: list[str] | None = None) -> None:
    """What `python -m stages.<name>` does, and only that: it owns the process (it dies with its parent, and
    a stage that succeeded ends the process with status 0 at exit), so nothing else should call it in-process."""
    stage = declared.name
    die_with_parent()
    succeeded = False
    # registered first, so that it runs last: after Ray's shutdown and the other exit handlers
    atexit.register(lambda: succeeded and _exit_before_final_collection())
    args = parse_args(stage, argv)
    run_dir = RunDir(args.run_dir)
    lock = RunLock(run_dir.root)
    started = False
    try:
        config = load_config(args.config, args.set)
        declared.check_inputs(config)
        stage_cluster(config.ray)  # a bad address is refused before the stage's directory is cleared
        lock.acquire()  # one writer per run directory; inherited when `rlhf run` started this stage
        fingerprint, resume = prepare(graph, stage, config, run_dir)
        import torch

        torch.set_num_threads(config.run.torch_threads)
        if not resume:
            shutil.rmtree(run_dir.stage_dir(stage), ignore_errors=True)
        atomic_write_text(run_dir.stage_dir(stage) / "config.yaml", dump_config(config))
        run_dir.update_stage(stage, status=RUNNING, fingerprint=fingerprint, error=None, outputs={}, metrics={})
        started = True
        result = body(declared.config_view(config), run_dir, resume, stage)
        missing = [name for name in declared.outputs if name not in result.outputs]
        if missing:  # the declaration is what the orchestration reads: keep it true
            raise RuntimeError(f"stage {stage} declares outputs {missing} that it did not write")
        run_dir.update_stage(stage, status=DONE, outputs=result.outputs, metrics=result.metrics)
        succeeded = True
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


def _exit_before_final_collection() -> None:
    """End a stage that succeeded without Python's last garbage collection, which walks every object torch,
    transformers and Ray have made (2-3 s on 2 cores, and every stage's caller waits for it); the operating
    system frees the memory all the same. A failed stage exits as usual."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
