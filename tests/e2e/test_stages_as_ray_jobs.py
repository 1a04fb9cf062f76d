"""Stages as Ray jobs against a real local Ray head with its job server, started here and stopped by
the process group of the `ray start --block` that this test launched."""

import json
import secrets
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO, run_python
from .conftest import ray_head as start_ray_head

pytestmark = pytest.mark.slow

QUICK_SFT = ["world.demonstrations=600", "sft.max_steps=20", "sft.checkpoint_every=10", "sft.pretrain_mix=0"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with the dashboard's job server on loopback, token authentication on (this test's
    own token; the rlhf commands below find it as users' do, through the environment); yields the
    job-server address."""
    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = pytest.MonkeyPatch()
    auth.setenv("RAY_AUTH_MODE", "token")
    auth.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    auth.delenv("RAY_ADDRESS", raising=False)
    reload_ray_auth()  # this process may have read "no token" already, from another module's head
    try:
        with start_ray_head(cpus=2) as (_, job_server):
            yield job_server
    finally:
        auth.undo()
        reload_ray_auth()  # later tests in this process that start a local Ray would look for this token


def reload_ray_auth() -> None:
    """Ray reads its auth mode and token once per process and keeps them: have it read them again, from the
    environment as it is now."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def rlhf(*args, check=True):
    return run_python(["-m", "pipeline", *args], check=check)


@pytest.fixture(scope="module")
def pretrain_job(ray_head, tmp_path_factory):
    """`rlhf run --address` with pretrain as a Ray job, its driver SIGKILLed as soon as the job's stage has
    started (under the driver's lock, which dies with it), then the same command again: returns the run
    directory, the killed driver's job id and the second run's output. Its model is the base the SFT job
    starts from. (Killed before the stage starts, the orphaned job meets the new driver's lock and ends
    by itself: one writer either way.)"""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    args = ["-m", "pipeline", "run", "--run-dir", str(run_dir), "--address", ray_head, "--stages", "pretrain", "--resume",
            "--set", "world.corpus_docs=300", "--set", "pretrain.max_steps=40"]
    driver = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = run_dir / "manifest.json"
    deadline = time.time() + 120
    def started(record: dict) -> bool:
        return bool(record.get("job_id")) and record.get("status") == "running"

    while not (manifest.exists() and started(json.loads(manifest.read_text())["stages"].get("pretrain", {}))):
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    job_id = json.loads(manifest.read_text())["stages"]["pretrain"]["job_id"]
    resumed = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, job_id, resumed.stdout


def test_submit_sft_as_a_ray_job_records_it_and_writes_the_model(ray_head, pretrain_job, tmp_path):
    run_dir = tmp_path / "run"
    base_model = pretrain_job[0] / "pretrain" / "model"
    overrides = sum((["--set", s] for s in [f"model.name_or_path={base_model}", *QUICK_SFT]), [])
    submitted = rlhf("submit", "sft", "--run-dir", str(run_dir), "--address", ray_head, *overrides)
    job_id = submitted.stdout.strip().splitlines()[-1]
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["sft"]
    assert record["job_id"] == job_id and record["job_address"] == ray_head

    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_head)
    deadline = time.time() + 600
    while jobs.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline
        time.sleep(2)
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, jobs.get_job_logs(job_id)[-3000:]
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["sft"]
    assert record["status"] == "done" and (run_dir / "sft" / "model" / "model.safetensors").exists()
    assert "train_runtime" in rlhf("logs", str(run_dir), "sft").stdout  # the job's own output
    status = rlhf("status", str(run_dir)).stdout
    assert job_id in status and "done" in status


def test_submit_refuses_a_stage_whose_inputs_are_not_done(ray_head, tmp_path):
    refused = rlhf("submit", "rm", "--run-dir", str(tmp_path / "empty"), "--address", ray_head, check=False)
    assert refused.returncode == 2
    assert "stage rm needs stage sft done with this config" in refused.stderr


def test_run_with_an_address_chains_the_stages_as_jobs(pretrain_job):
    run_dir, _, stdout = pretrain_job
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["pretrain"]
    assert record["status"] == "done" and record["job_id"].startswith("rlhf-pretrain-")
    assert f"pretrain: Ray job {record['job_id']}" in stdout
    assert "train_runtime" in stdout  # the job's output, followed to the terminal
    assert (run_dir / "pretrain" / "model" / "config.json").exists()


def test_a_resumed_run_replaces_the_job_its_killed_driver_left_running(ray_head, pretrain_job):
    run_dir, job_id, stdout = pretrain_job
    assert f"stopped Ray job {job_id}, left running by a driver that is gone" in stdout
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["pretrain"]
    assert record["status"] == "done" and record["job_id"] != job_id
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(ray_head).get_job_status(job_id) == JobStatus.STOPPED  # one job at a time
