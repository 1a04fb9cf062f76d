"""The run-directory lock: a second writer is refused with the holder named; a holder killed with
SIGKILL leaves a stale lock that the next run takes over; a stage started by the holder inherits it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from common.errors import InputError
from common.lock import LOCK_ENV, RunLock

HOLD = "import sys, time; from common.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


@pytest.fixture
def holder(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, holder):
    with pytest.raises(InputError, match=rf"run directory {tmp_path} is in use by pid {holder.pid} on .* since .*wait for it"):
        RunLock(tmp_path).acquire()


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path) as lock:
        assert lock.holder()["pid"] == os.getpid()


def test_a_stage_started_by_the_holder_inherits_the_lock(tmp_path, holder, monkeypatch):
    monkeypatch.setenv(LOCK_ENV, str(holder.pid))
    RunLock(tmp_path).acquire()  # no error: the holder started this process
    monkeypatch.setenv(LOCK_ENV, str(holder.pid + 1))
    with pytest.raises(InputError, match="is in use by"):
        RunLock(tmp_path).acquire()


def test_rlhf_run_on_a_directory_in_use_is_refused(tmp_path, holder):
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--run-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"error: run directory {tmp_path} is in use by pid {holder.pid}" in result.stderr
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "config.yaml").exists()


CHILD = "import sys, time; from common.lock import die_with_parent; die_with_parent(); open(sys.argv[1], 'w').close(); time.sleep(60)"
PARENT = (
    "import os, subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], env={**os.environ, 'RLHF_PARENT_PID': str(os.getpid())}); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_stage_dies_with_the_rlhf_run_that_started_it(tmp_path):
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(ready)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.time() + 30
    while not ready.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    while alive(child):
        assert time.time() < deadline, "the stage outlived the run that started it"
        time.sleep(0.05)
