"""For tests and benchmarks only, never the product: `rlhf label serve` as a child process in its own
process group, for the ones that need the real server: started, waited for until it answers, and
stopped by its process group; and a PostgreSQL server of their own, stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, run_dir: str | Path, port: int | None = None):
        self.run_dir, self.port = Path(run_dir), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.run_dir / "serve.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> ServerProcess:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "label", "serve", "--run-dir", str(self.run_dir), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ranking app exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"the ranking app did not answer within {timeout:.0f} s; see {self.log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)


def postgres_bindir() -> Path | None:
    """Where Debian's PostgreSQL server programs are (not on PATH there), else where PATH has initdb."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A PostgreSQL server of its own: a fresh data directory, a free loopback port, trust auth for
    local connections, stopped by the PID it started. PostgreSQL refuses to run as root, so under
    root its programs run as the `postgres` account that Debian's package creates."""

    def __init__(self, port: int | None = None, durable: bool = True):
        self.durable = durable
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (make test installs it: apt-get install postgresql)")
        self.port = port or free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data = Path(tempfile.mkdtemp(prefix="rlhf-postgres-"))
        self.process: subprocess.Popen | None = None

    def _run_as(self) -> dict:
        return {"user": self.user, "group": self.user} if self.user else {}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if self.user:
            shutil.chown(self.data, self.user, self.user)
        subprocess.run([self.bindir / "initdb", "-D", self.data / "db", "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8", "--locale=C"], check=True, capture_output=True, **self._run_as())
        self.log = open(self.data / "server.log", "ab")
        # durable=False (tests): fsync off, since they check what the store commits, not the disk, and fsync costs seconds
        self.process = subprocess.Popen(
            [self.bindir / "postgres", "-D", self.data / "db", "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.data}", "-c", f"fsync={'on' if self.durable else 'off'}", "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}): {(self.data / 'server.log').read_text()[-2000:]}")
            if subprocess.run([self.bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not answer within {timeout:.0f} s; see {self.data / 'server.log'}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), SIGKILL if it hangs; the data directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self.process is not None:
            self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)
