"""Stages as Ray jobs through the Ray Job Submission SDK: `rlhf submit STAGE` submits one,
`rlhf run --address` chains them (each waited for), `rlhf logs` shows a job's output.

A job runs `python -m stages.<stage> --config DIR/jobs/<stage>.yaml --run-dir DIR` with the project
uploaded as its working_dir. The run directory must be on storage that the cluster and this machine
share; the manifest records each stage's job id and address.

Token authentication (Ray's RAY_AUTH_MODE=token) follows the cluster: Ray's job client sends a token
only when RAY_AUTH_MODE=token is set, and a head started with a token in reach (`rlhf run` writes one to
~/.ray/auth_token; `ray start --head` then turns token mode on by itself) answers a client without one
with HTTP 401. When RAY_AUTH_MODE is unset, the client asks the job server's public
/api/authentication_mode first and, if it says "token", sends the token from where Ray keeps it: to a
job server on this machine (loopback) always, elsewhere only when the token was given explicitly
(RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), never ~/.ray/auth_token unasked. Otherwise, and when the
server refuses, the error says what to set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shlex
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from common.config import Config, dump_config
from common.errors import InputError
from common.files import atomic_write_text
from common.lock import LOCK_ENV
from common.ray_env import forwarded_env
from common.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
# what the job does not need: environments, run outputs, caches
UPLOAD_EXCLUDES = [".venv", "runs", ".git", "*.egg-info", "__pycache__", ".pytest_cache", ".ray-local", "bench"]
SUCCEEDED, TERMINAL = "SUCCEEDED", ("SUCCEEDED", "FAILED", "STOPPED")


AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# what to set, in the words of every error about a token
TOKEN_HINT = f"set {AUTH_MODE}=token, with the cluster's token in {AUTH_TOKEN}, in the file {AUTH_TOKEN_PATH} names, or in ~/.ray/auth_token"


def token_source() -> tuple[str, bool]:
    """Where Ray's clients take the token from, in Ray's order (RAY_AUTH_TOKEN, else the file
    RAY_AUTH_TOKEN_PATH names and no other, else ~/.ray/auth_token), and whether a token is there."""
    if os.environ.get(AUTH_TOKEN, "").strip():
        return AUTH_TOKEN, True
    named = os.environ.get(AUTH_TOKEN_PATH)
    path = Path(named) if named else Path.home() / ".ray" / "auth_token"
    try:
        present = bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError):
        present = False
    return (f"{AUTH_TOKEN_PATH}={path}" if named else str(path)), present


def on_this_machine(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_auth_mode(address: str) -> str | None:
    """The job server's authentication mode ("token" or "disabled") from its public endpoint, which
    takes no token; None when it does not say (nothing answers, or a Ray without the endpoint)."""
    if not address.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/authentication_mode", timeout=10) as answer:
            return json.load(answer).get("authentication_mode")
    except (OSError, ValueError, AttributeError):  # refused, timed out, HTTP error, not JSON
        return None


def follow_cluster_auth(address: str) -> None:
    """Turn token mode on for this process's Ray clients when the cluster at `address` asks for a token
    and RAY_AUTH_MODE is unset (as `ray start` does for a head); refuse with what to set when this
    process has no token for it, or would send ~/.ray/auth_token to another machine unasked."""
    if os.environ.get(AUTH_MODE) or cluster_auth_mode(address) != "token":
        return  # the user's choice stands, as it does for Ray's own clients
    source, present = token_source()
    if not present:  # so source is a file
        raise InputError(f"--address {address}: the Ray job server needs a token (token authentication) and there is none in {source}; {TOKEN_HINT}")
    given = source == AUTH_TOKEN or bool(os.environ.get(AUTH_TOKEN_PATH))  # named for this, not Ray's default file
    if not on_this_machine(address) and not given:
        raise InputError(
            f"--address {address}: the Ray job server needs a token; {source} is sent to a cluster on another machine only when asked: "
            f"set {AUTH_MODE}=token to send it, or give that cluster's token in {AUTH_TOKEN} or {AUTH_TOKEN_PATH}"
        )
    os.environ[AUTH_MODE] = "token"
    from ray._raylet import Config as RayConfig

    RayConfig.initialize("")  # Ray reads its mode once: as `ray start` does when it turns token mode on


def auth_refused(address: str, exc: Exception) -> InputError:
    """The clear error for a client that the job server refused (HTTP 401 or 403), or that found no
    token to send in token mode."""
    first = str(getattr(exc, "message", exc)).strip().splitlines()[0]
    mode = os.environ.get(AUTH_MODE, "")
    source, present = token_source()
    if mode.lower() != "token":
        hint = f"{AUTH_MODE} is {mode or 'unset'} here, so no token was sent: {TOKEN_HINT}"
    elif not present:
        hint = f"{AUTH_MODE}=token here but no token in {source}: give the cluster's token in {AUTH_TOKEN}, {AUTH_TOKEN_PATH} or ~/.ray/auth_token"
    else:
        hint = f"the token from {source} is not this cluster's: give the cluster's token in {AUTH_TOKEN}, {AUTH_TOKEN_PATH} or ~/.ray/auth_token"
    return InputError(f"--address {address}: token authentication failed ({first}); {hint}")


def client(address: str):
    follow_cluster_auth(address)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)  # asks the server's version: a token refused shows here
    except AuthenticationError as exc:
        raise auth_refused(address, exc) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"--address {address}: no Ray job server answers there ({str(exc).splitlines()[0]})") from None


def submit_stage(stage: str, config: Config, run: RunDir, address: str, lock_holder: int | None = None) -> str:
    """Submit one stage; returns the job id, also recorded in the manifest."""
    config_path = run.root / "jobs" / f"{stage}.yaml"
    atomic_write_text(config_path, dump_config(config))
    entrypoint = f"python -m stages.{stage} --config {shlex.quote(str(config_path))} --run-dir {shlex.quote(str(run.root))}"
    env_vars = forwarded_env()
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
