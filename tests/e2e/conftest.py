"""What the end-to-end tests share: a Python command run as a user runs it, from the repository root, and
Ray heads started with `ray start --head --block` and stopped by their process group (PIDs, never names)."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(args, env=None, check=True) -> subprocess.CompletedProcess:
    """`python ARGS` (e.g. ["-m", "pipeline", "run", ...]); with `check`, a failure shows the output's end."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(temp_dir: Path, cpus: int, env: dict[str, str] | None = None):
    """A Ray head on loopback with the dashboard's job server, its files under `temp_dir`, in its own
    process group; yields (GCS address, job-server address) once the job server answers."""
    bin_dir = Path(sys.executable).parent  # first on PATH too (tests/conftest.py): a job's `python` is this one
    dashboard, gcs, agent = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--num-cpus={cpus}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
         # the job agent's own port, 52365 by default: a second head's agent could not take it, and its job
         # server would refuse every job ("No available agent")
         f"--dashboard-agent-listen-port={agent}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    job_server = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            try:
                JobSubmissionClient(job_server).list_jobs()
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        yield f"127.0.0.1:{gcs}", job_server
    finally:
        stop_process_group(head)


def stop_process_group(leader: subprocess.Popen) -> None:
    """SIGTERM to the group `leader` leads (a `ray start --block` and the head's processes), SIGKILL after
    5 s: a head seldom stops on SIGTERM alone, and a test's own cluster can be killed."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, signum)
        except ProcessLookupError:  # the group is gone already
            break
        try:
            leader.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    leader.wait()


@pytest.fixture(scope="module")
def shared_ray(tmp_path_factory):
    """One Ray head for a module's end-to-end runs; its address (RAY_ADDRESS).
    Each `rlhf run` and stage joins it, as on a cluster, instead of starting a local Ray (7-9 s each). Its
    4 CPUs are logical, as a local Ray's are: 2 workers and the engine of a vLLM test fit beside each other.
    Token authentication off: a token left in ~/.ray would otherwise turn it on for this head."""
    with ray_head(tmp_path_factory.mktemp("ray"), cpus=4, env={"RAY_AUTH_MODE": "disabled"}) as (gcs, _):
        yield gcs
