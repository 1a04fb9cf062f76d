"""For tests and benchmarks only, never the product: `rlhf label serve` as a child process in its own
process group, for the ones that need the real server: started, waited for until it answers, and
stopped by its process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
