"""Stages as Ray jobs through the Ray Job Submission SDK: `rlhf submit STAGE` submits one,
`rlhf run --address` chains them (each waited for), `rlhf logs` shows a job's output.

A job runs `python -m stages.<stage> --config DIR/jobs/<stage>.yaml --run-dir DIR` with the project
uploaded as its working_dir. The run directory must be on storage that the cluster and this machine
share; the manifest records each stage's job id and address.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
import uuid
from pathlib import Path

from common.config import Config, dump_config
from common.errors import InputError
from common.files import atomic_write_text
from common.lock import LOCK_ENV
from common.ray_env import WORKER_ENV
from common.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
# what the job does not need: environments, run outputs, caches
UPLOAD_EXCLUDES = [".venv", "runs", ".git", "*.egg-info", "__pycache__", ".pytest_cache", ".ray-local", "bench"]
SUCCEEDED, TERMINAL = "SUCCEEDED", ("SUCCEEDED", "FAILED", "STOPPED")


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"--address {address}: no Ray job server answers there ({str(exc).splitlines()[0]})") from None


def submit_stage(stage: str, config: Config, run: RunDir, address: str, lock_holder: int | None = None) -> str:
    """Submit one stage; returns the job id, also recorded in the manifest."""
    config_path = run.root / "jobs" / f"{stage}.yaml"
    atomic_write_text(config_path, dump_config(config))
    entrypoint = f"python -m stages.{stage} --config {shlex.quote(str(config_path))} --run-dir {shlex.quote(str(run.root))}"
    env_vars = dict(WORKER_ENV)
    if lock_holder is not None:  # `rlhf run --address` holds the run directory's lock for its stages
        env_vars[LOCK_ENV] = str(lock_holder)
    job_id = client(address).submit_job(
        entrypoint=entrypoint,
        submission_id=f"rlhf-{stage}-{uuid.uuid4().hex[:8]}",
        runtime_env={"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars},
    )
    run.update_stage(stage, job_id=job_id, job_address=address)
    return job_id


def job_status(address: str, job_id: str) -> str:
    """The job's status, or UNKNOWN when the cluster does not know it (e.g. a new cluster)."""
    jobs = client(address)
    try:
        return str(jobs.get_job_status(job_id).value)
    except RuntimeError:
        return "UNKNOWN"


def stop_job(address: str, job_id: str, timeout: float = 120.0) -> bool:
    """Stop the job if it is still pending or running and wait until it has ended; True if it was."""
    if job_status(address, job_id) not in ("PENDING", "RUNNING"):
        return False
    jobs = client(address)
    jobs.stop_job(job_id)
    deadline = time.time() + timeout
    while job_status(address, job_id) not in TERMINAL + ("UNKNOWN",) and time.time() < deadline:
        time.sleep(1)
    return True


def follow_job(address: str, job_id: str) -> str:
    """Print the job's output as it comes until the job ends; returns its final status."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return job_status(address, job_id)


def print_logs(run_dir: str, stage: str, follow: bool) -> None:
    """A stage's output: its Ray job's logs when it ran as a job, else DIR/logs/<stage>.log."""
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise InputError(f"{run.manifest_path} does not exist; is {run_dir} a run directory?")
    record = run.stage_record(stage)
    if record.get("job_id"):
        if follow:
            follow_job(record["job_address"], record["job_id"])
        else:
            sys.stdout.write(client(record["job_address"]).get_job_logs(record["job_id"]))
        return
    log = run.log_path(stage)
    if not log.exists():
        raise InputError(f"stage {stage} has no job and no log in {run.root} (stages run so far: {', '.join(run.read_manifest()['stages']) or 'none'})")
    sys.stdout.write(log.read_text())
