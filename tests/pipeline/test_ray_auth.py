"""Ray's token authentication as a new user meets it: `rlhf run` (`make demo`) leaves a token in
~/.ray/auth_token, and a head that `infra/local-ray.sh start` starts from that home wants it. The script
and the rlhf job clients follow the head's auth mode; the probe tells "needs a token" from "down"; a
client without the token says what to set. Each home here is a fresh directory (HOME), with or without
a token; the heads are real, started and stopped by the script itself (one per auth mode, shared by
the module's tests)."""

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.jobs import on_this_machine, token_source

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local-ray.sh"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
QUICK = ["--set", "world.corpus_docs=50", "--set", "pretrain.max_steps=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(path: Path, token: str | None) -> Path:
    if token is not None:
        (path / ".ray").mkdir(parents=True)
        (path / ".ray" / "auth_token").write_text(token)
    return path


def env_of(home: Path, **extra: str) -> dict[str, str]:
    """This environment without Ray's auth and address variables, HOME at `home`."""
    env = {name: value for name, value in os.environ.items() if name not in AUTH_VARS}
    return {**env, "HOME": str(home), "PYTHON": sys.executable, **extra}


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def rlhf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline", *args], env)


def script(env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return run([str(SCRIPT), command], env, timeout=200)


@dataclass
class Head:
    address: str
    env: dict[str, str]  # the environment it was started from, the same a user's next commands have
    token: str | None  # the token in that HOME, if any
    state: Path
    started: subprocess.CompletedProcess

    def env_for(self, home: Path, **extra: str) -> dict[str, str]:
        """The same ports and state, from another home."""
        keep = ("RLHF_RAY_STATE", "RLHF_RAY_PORT", "RLHF_RAY_DASHBOARD_PORT")
        return env_of(home, **{name: self.env[name] for name in keep}, **extra)


@pytest.fixture(scope="module", params=["no token", "token in HOME"])
def head(request, tmp_path_factory):
    """`infra/local-ray.sh start` from a fresh HOME, with no token (the head as before) or with one."""
    token = secrets.token_hex(32) if request.param == "token in HOME" else None
    home = make_home(tmp_path_factory.mktemp("home"), token)
    state = tmp_path_factory.mktemp("state")
    dashboard = free_port()
    # every port free: Ray's default agent port may be another local Ray's (a job needs that agent)
    env = env_of(home, RLHF_RAY_STATE=str(state), RLHF_RAY_PORT=str(free_port()), RLHF_RAY_DASHBOARD_PORT=str(dashboard),
                 RLHF_RAY_AGENT_PORT=str(free_port()), RLHF_RAY_CPUS="1")
    try:
        started = script(env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield Head(f"http://127.0.0.1:{dashboard}", env, token, state, started)
    finally:
        script(env, "stop")  # the head's own process group, by the pid the script recorded


@pytest.fixture(scope="module")
def job(head, tmp_path_factory):
    """`rlhf submit` from the home that started the head, no RAY_AUTH_* set by hand; the job is
    stopped at once (it is the submission that matters). Returns the run directory and the job id."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    submitted = rlhf(head.env, "submit", "pretrain", "--run-dir", str(run_dir), "--address", head.address, *QUICK)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    stop = f"from pipeline.jobs import stop_job; stop_job({head.address!r}, {job_id!r}, timeout=60)"
    stopped = run([sys.executable, "-c", stop], head.env)
    assert stopped.returncode == 0, stopped.stderr
    return run_dir, job_id


def other_home(tmp_path: Path, kind: str) -> Path:
    return make_home(tmp_path / "home", None if kind == "clean home" else secrets.token_hex(32))


def assert_one_clear_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()  # the error alone, no traceback
    assert line.startswith("error: --address ")
    for word in words:
        assert word in line, line


# no cluster needed


def test_token_source_follows_rays_order(tmp_path, monkeypatch):
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".ray" / "auth_token"
    assert token_source() == (str(default), False)
    make_home(tmp_path, "t0")
    assert token_source() == (str(default), True)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))  # Ray takes no other file then
    assert token_source() == (f"RAY_AUTH_TOKEN_PATH={tmp_path / 'missing'}", False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t1")
    assert token_source() == ("RAY_AUTH_TOKEN", True)


def test_only_loopback_addresses_are_this_machine():
    assert on_this_machine("http://127.0.0.1:8265") and on_this_machine("http://localhost:8265")
    assert on_this_machine("http://[::1]:8265")
    assert not on_this_machine("http://10.0.0.5:8265") and not on_this_machine("http://head.example:8265")


def test_probe_of_a_port_with_nothing_listening_says_down(tmp_path):
    probed = script(env_of(tmp_path, RLHF_RAY_DASHBOARD_PORT=str(free_port())), "probe")
    assert probed.returncode == 2, probed.stdout + probed.stderr
    assert "down" in probed.stdout and "token" not in probed.stdout


def test_rlhf_says_no_job_server_answers_at_a_port_with_nothing_listening(tmp_path):
    result = rlhf(env_of(tmp_path), "submit", "pretrain", "--run-dir", str(tmp_path / "run"),
                  "--address", f"http://127.0.0.1:{free_port()}", *QUICK)
    assert_one_clear_line(result, "no Ray job server answers there")


# one head per auth mode


@pytest.mark.slow
def test_start_follows_the_token_in_home(head):
    with urllib.request.urlopen(f"{head.address}/api/authentication_mode", timeout=10) as answer:
        mode = json.load(answer)["authentication_mode"]  # public: Ray's own word on the head's mode
    assert mode == ("token" if head.token else "disabled")
    assert f"auth={mode}" in (head.state / "address").read_text().splitlines()
    assert ("export RAY_AUTH_MODE=token" in head.started.stdout) == bool(head.token)
    status = script(head.env, "status")  # `ray status` too, which asks the GCS: with the token in token mode
    assert status.returncode == 0 and "answers" in status.stdout, status.stdout + status.stderr
    answered = "Autoscaler status" in status.stdout or "No cluster status" in status.stdout  # the GCS answered, soon after start or not
    assert answered and "AuthenticationError" not in status.stderr, status.stdout + status.stderr
    again = script(head.env, "start")  # a head already running: the same hint
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert ("export RAY_AUTH_MODE=token" in again.stdout) == bool(head.token)


@pytest.mark.slow
@pytest.mark.parametrize("client", ["the starting home", "clean home", "another token"])
def test_probe_tells_answers_from_needs_a_token_from_a_token_refused(head, client, tmp_path):
    env = head.env if client == "the starting home" else head.env_for(other_home(tmp_path, client))
    probed = script(env, "probe")
    if not head.token or client == "the starting home":
        assert probed.returncode == 0 and "answers" in probed.stdout, probed.stdout + probed.stderr
    elif client == "clean home":
        assert probed.returncode == 3, probed.stdout + probed.stderr
        for words in ["needs a token (HTTP 401)", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "auth_token"]:
            assert words in probed.stdout
    else:
        assert probed.returncode == 4, probed.stdout + probed.stderr
        assert "refuses the token" in probed.stdout and "RAY_AUTH_TOKEN" in probed.stdout


@pytest.mark.slow
def test_submit_status_and_logs_from_the_starting_home_need_no_env_set(head, job):
    run_dir, job_id = job
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["pretrain"]
    assert record["job_id"] == job_id and record["job_address"] == head.address
    status = rlhf(head.env, "status", str(run_dir))
    assert status.returncode == 0 and job_id in status.stdout, status.stderr
    for follow in ([], ["--follow"]):  # --follow reads the log's stream, as `rlhf run --address` does
        logs = rlhf(head.env, "logs", str(run_dir), "pretrain", *follow)
        assert logs.returncode == 0, logs.stderr


@pytest.mark.slow
@pytest.mark.parametrize("client", ["clean home", "another token"])
def test_clients_from_another_home_work_or_say_what_to_set(head, job, client, tmp_path):
    run_dir, _ = job
    env = head.env_for(other_home(tmp_path, client))
    logs = rlhf(env, "logs", str(run_dir), "pretrain")
    if not head.token:
        assert logs.returncode == 0, logs.stderr  # no token needed, and one in HOME changes nothing
    elif client == "clean home":
        assert_one_clear_line(logs, "needs a token", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "auth_token")
        submitted = rlhf(env, "submit", "pretrain", "--run-dir", str(tmp_path / "run"), "--address", head.address, *QUICK)
        assert_one_clear_line(submitted, "needs a token", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN")
    else:
        assert_one_clear_line(logs, "Invalid authentication token", "is not this cluster's", "RAY_AUTH_TOKEN")


@pytest.mark.slow
def test_an_auth_mode_set_by_hand_is_kept(head, job):
    """RAY_AUTH_MODE set by the user wins over the head's word, as for Ray's own clients."""
    run_dir, _ = job
    if head.token:
        logs = rlhf({**head.env, "RAY_AUTH_MODE": "disabled"}, "logs", str(run_dir), "pretrain")
        assert_one_clear_line(logs, "RAY_AUTH_MODE is disabled here", "set RAY_AUTH_MODE=token")
    else:
        logs = rlhf({**head.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t0"}, "logs", str(run_dir), "pretrain")
        assert logs.returncode == 0, logs.stderr  # a head without auth ignores a token
        logs = rlhf({**head.env, "RAY_AUTH_MODE": "token"}, "logs", str(run_dir), "pretrain")
        assert_one_clear_line(logs, "RAY_AUTH_MODE=token here but no token in", "RAY_AUTH_TOKEN")
