"""What the end-to-end tests share: a Python command run as a user runs it, from the repository root, and
Ray heads started with `ray start --head --block` and stopped by their process group (PIDs, never names)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.config import load_config

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
def ray_head(cpus: int, env: dict[str, str] | None = None):
    """A Ray head on loopback with the dashboard's job server, in its own process group, its files in a
    directory of its own (short: Ray's socket paths under it must fit in 107 bytes, which a pytest-xdist
    worker's temporary directory leaves too little room for); yields (GCS address, job-server address)
    once the job server answers."""
    temp_dir = tempfile.mkdtemp(prefix="rlhf-head-")
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
        shutil.rmtree(temp_dir, ignore_errors=True)


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


@pytest.fixture(scope="session")
def shared_ray():
    """One Ray head for a test process's end-to-end runs (under `make test`'s two pytest-xdist workers, one
    each); its address (RAY_ADDRESS). Each `rlhf run` and stage joins it, as on a cluster, instead of
    starting a local Ray (7-9 s each). Its 4 CPUs are logical, as a local Ray's are: 2 workers and the
    engine of a vLLM test fit beside each other. Token authentication off: a token left in ~/.ray would
    otherwise turn it on for this head."""
    with ray_head(cpus=4, env={"RAY_AUTH_MODE": "disabled"}) as (gcs, _):
        yield gcs


@pytest.fixture(scope="module")
def one_ray_cluster(shared_ray):
    """RAY_ADDRESS names the shared head for the module's runs."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_ADDRESS", shared_ray)
        yield


# Small but real: enough steps for SFT to learn the answer format, few enough for CI. At 100 pretraining steps
# of 8 sequences a worker and 100 SFT steps of 16 (ZeRO-3, 2 workers), 400 prompts ranked, SFT's held-out exact
# match was 0.13 against the base's 0.00 (asserted: +0.05) and the reward model's held-out accuracy 0.68 against
# the labels, 0.82 against the true order (asserted: 0.55 and 0.6). With 8 sequences in SFT's steps too, SFT's
# exact match was 0.01 (the answer format not yet learnt). A stage's start, not its steps, is most of its time
# here: with 16 sequences in pretraining's steps, 600 prompts and 40 a family the whole run took 267 s, 265 s
# with these (a local Ray, quiet cores).
QUICK = [
    "world.corpus_docs=4000",
    "world.demonstrations=2000",
    "world.eval_per_family=20",
    "pretrain.max_steps=100",
    "pretrain.batch_size=8",
    "sft.batch_size=16",
    "pretrain.checkpoint_every=50",
    "sft.max_steps=100",
    "sft.checkpoint_every=50",
    "sample.prompts=400",
    "rm.checkpoint_every=10",
    "ppo.iterations=4",
    "ppo.episodes_per_iteration=32",
    "ppo.prompt_pool=256",
    "ppo.validation_prompts=16",
    "ppo.eval_every=2",
    "ppo.checkpoint_every=2",
    "eval.compare_sft_methods=[]",  # their own test trains them
]
QUICK_CONFIG = load_config(None, QUICK)  # what the tests of the shared runs check them against


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory, shared_ray):
    """`rlhf run` (pretrain -> sft -> sample -> label -> rm -> ppo, ppo_no_ptx -> eval) with 2 Ray workers under
    ZeRO-3: (run directory, its output). Run once a session: under pytest-xdist the first worker to ask runs it
    while the other waits on a lock in the directory the workers share; their tests only read it (the resume test
    reruns nothing in it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    run_dir, output, failure = root / "zero3" / "run", root / "zero3" / "stdout.txt", root / "zero3" / "failed.txt"
    with FileLock(str(root / "zero3.lock")):
        if failure.exists():
            raise AssertionError(f"the shared ZeRO-3 run failed (in another worker):\n{failure.read_text()}")
        if not output.exists():
            run_dir.parent.mkdir(exist_ok=True)
            try:
                result = run_python(["-m", "pipeline", "run", "--run-dir", str(run_dir), "--set", "deepspeed.zero_stage=3",
                                     *sum((["--set", s] for s in QUICK), [])], env={"RAY_ADDRESS": shared_ray})
            except AssertionError as error:
                failure.write_text(str(error))
                raise
            output.write_text(result.stdout)
    return run_dir, output.read_text()
