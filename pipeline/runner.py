"""`rlhf run`: the stage graph on a Ray cluster: the one --address, RAY_ADDRESS or ray.address names (in
that order), or a local Ray started for the run. A job server's address (http://HOST:8265) runs each
stage as a Ray job there (pipeline/jobs.py).

Each stage runs as its own process, `python -m stages.<name> --config DIR/config.yaml --run-dir DIR`,
exactly what a Ray job runs, attached to the run's Ray cluster through RAY_ADDRESS. Its whole output
(every Ray worker's included) goes to DIR/logs/<stage>.log; the terminal shows one line per stage,
redrawn with the stage's progress when the terminal is interactive, and the log's last lines when the
stage fails.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common.config import Config, dump_config, load_config
from common.errors import EXIT_AWAITING_LABELS, EXIT_BAD_INPUT, InputError
from common.files import atomic_write_text
from common.lock import PARENT_ENV, RunLock
from common.ray_env import cluster_address, is_job_server, set_worker_env
from common.run_dir import AWAITING_LABELS, DONE, RunDir
from stages.registry import GRAPH


def select_stages(config: Config, requested: str | None) -> list[str]:
    enabled = [s.name for s in GRAPH.enabled(config)]
    if not requested:
        return enabled
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for name in names:
        if name not in GRAPH.names:
            raise InputError(f"--stages: unknown stage {name!r}; stages are {', '.join(GRAPH.names)}")
        if name not in enabled:
            raise InputError(f"--stages: stage {name} is disabled by this config")
    return [n for n in enabled if n in names]


def prepare_run_dir(run_dir: RunDir, config: Config, resume: bool) -> Path:
    """Write the resolved config; refuse to overwrite another run's directory without --resume."""
    resolved = dump_config(config)
    if run_dir.manifest_path.exists() and not resume:
        raise InputError(
            f"run directory {run_dir.root} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    atomic_write_text(run_dir.config_path, resolved)
    return run_dir.config_path


def start_local_ray(config: Config) -> str:
    """Start the run's local Ray cluster; returns its address for the stage processes."""
    import ray

    set_worker_env()
    cpus = max(os.cpu_count() or 1, int(config.ray.num_workers * config.ray.resources_per_worker.get("CPU", 1.0) + 0.999))
    # its start-up notices belong to no stage: the terminal keeps one line per stage
    context = ray.init(address="local", num_cpus=cpus, log_to_driver=False, logging_level=logging.ERROR)
    return context.address_info["gcs_address"]


# a tqdm bar's "45%|####      | 45/100": the stage's own progress (its rank-0 bar)
PROGRESS_BAR = re.compile(r"(\d+)%\|.*?\|\s*(\d+)/(\d+)")
FAILURE_TAIL_LINES = 20


class StageLine:
    """The terminal's one line for a running stage: its progress bar's latest count and the time."""

    def __init__(self, title: str, interactive: bool):
        self.title, self.interactive = title, interactive
        self.started = self.drawn = time.time()
        self.progress = ""

    def saw(self, piece: str) -> None:
        match = PROGRESS_BAR.search(piece)
        if match:
            self.progress = f"{match.group(1)}% ({match.group(2)}/{match.group(3)})"
        if self.interactive and time.time() - self.drawn > 0.5:
            self.draw()

    def draw(self) -> None:
        self.drawn = time.time()
        sys.stdout.write(f"\r\033[K{self.title} {self.progress} {time.time() - self.started:.0f} s")
        sys.stdout.flush()

    def close(self) -> None:
        if self.interactive:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()


def run_stage_process(stage: str, title: str, config_path: Path, run_dir: RunDir, ray_address: str) -> int:
    """Run one stage as a child process; its output goes to DIR/logs/<stage>.log, the terminal gets `title`
    and the stage's progress (StageLine), and on failure the log's last lines on stderr."""
    log_path = run_dir.log_path(stage)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", f"stages.{stage}", "--config", str(config_path), "--run-dir", str(run_dir.root)]
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    line = StageLine(title, sys.stdout.isatty())
    print(title, flush=True)
    decoder, pending, tail = codecs.getincrementaldecoder("utf-8")("replace"), "", []
    with open(log_path, "a") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as process:
        # bytes as they come: a progress bar redraws itself with "\r" and ends no line until it is done
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            text = decoder.decode(chunk)
            log.write(text)
            *pieces, pending = re.split(r"[\r\n]", pending + text)
            for piece in pieces:
                line.saw(piece)
                if piece.strip():
                    tail = (tail + [piece])[-FAILURE_TAIL_LINES:]
        code = process.wait()
    line.close()
    if code not in (0, EXIT_AWAITING_LABELS):
        errors = [piece for piece in tail if piece.startswith("error: ")]
        sys.stderr.write("".join(f"  {piece}\n" for piece in (errors if code == EXIT_BAD_INPUT and errors else tail)))
    return code


def run_stage_job(stage: str, config: Config, run_dir: RunDir, address: str) -> int:
    """Run one stage as a Ray job on the cluster at `address`, printing its output; 0 if it succeeded.
    A job of this stage still running there, left by a driver that died, is stopped first: it carries
    that driver's lock, and the new job resumes from the stage's latest complete checkpoint."""
    from pipeline.jobs import SUCCEEDED, follow_job, stop_job, submit_stage

    record = run_dir.stage_record(stage)
    if record.get("job_id") and record.get("job_address") == address and stop_job(address, record["job_id"]):
        print(f"[rlhf] {stage}: stopped Ray job {record['job_id']}, left running by a driver that is gone", flush=True)
    job_id = submit_stage(stage, config, run_dir, address, lock_holder=os.getpid())
    print(f"[rlhf] {stage}: Ray job {job_id} at {address}", flush=True)
    status = follow_job(address, job_id)
    return 0 if status == SUCCEEDED else 1


def run_pipeline(config_path: str | None, run_dir: str, resume: bool, stages: str | None, overrides: list[str],
                 address: str | None = None) -> None:
    config = load_config(config_path, overrides)
    address = address or cluster_address(config.ray.address)[1]
    jobs = bool(address) and is_job_server(address)  # else the stage processes join the cluster at `address`
    run = RunDir(run_dir)
    selected = select_stages(config, stages)
    prints = GRAPH.fingerprints(config)
    for name in selected:
        for needed in GRAPH.inputs_of(name, config):
            if needed not in selected and not run.is_done(needed, prints[needed]):
                raise InputError(f"--stages {stages}: stage {name} needs {needed}, which is not done with this config")
    to_run = [n for n in selected if not (resume and run.is_done(n, prints[n]))]
    for name in to_run:  # what the config points at, before Ray or any model starts
        GRAPH[name].check_inputs(config)
    with RunLock(run.root):  # the stage processes inherit it
        resolved_path = prepare_run_dir(run, config, resume)
        for name in selected:
            if name not in to_run:
                print(f"[rlhf] {name}: done with this config, skipped")
        # a cluster already up spares the run the 7-9 s a local Ray takes to start
        ray_address = (address or start_local_ray(config)) if to_run and not jobs else ""
        for index, name in enumerate(to_run, start=1):
            title = f"[rlhf] stage {index}/{len(to_run)}: {name}"
            started = time.time()
            if jobs:
                print(title, flush=True)
                code = run_stage_job(name, config, run, address)
            else:
                code = run_stage_process(name, title, resolved_path, run, ray_address)
            if run.stage_record(name).get("status") == AWAITING_LABELS:
                print(f"[rlhf] {name}: awaiting labels, {run.stage_record(name).get('progress', '')}. Annotators work in "
                      f"`rlhf label serve --run-dir {run.root}`; then `rlhf run --run-dir {run.root} --resume` goes on.", flush=True)
                sys.exit(EXIT_AWAITING_LABELS)
            if code != 0:
                print(f"[rlhf] stage {name} failed (exit {code}); see {run.log_path(name)}", file=sys.stderr)
                sys.exit(code if code == EXIT_BAD_INPUT else 1)
            print(f"[rlhf] {name}: done in {time.time() - started:.0f} s", flush=True)
    print_summary(run, selected)


def print_summary(run: RunDir, stages: list[str]) -> None:
    manifest = run.read_manifest()["stages"]
    print(f"\n[rlhf] run directory: {run.root}")
    for name in stages:
        record = manifest.get(name, {})
        if record.get("status") != DONE:
            continue
        for output, path in record.get("outputs", {}).items():
            print(f"  {name:<10} {output:<10} {run.root / path}")
    for name in stages:
        record = manifest.get(name, {})
        if record.get("status") == DONE:
            for line in GRAPH[name].summary(record.get("metrics", {})):
                print(f"  {line}")
    report = manifest.get("eval", {}).get("outputs", {}).get("report")
    if report:
        print(f"  report: {run.root / report} (rebuild with: rlhf report {run.root})")
