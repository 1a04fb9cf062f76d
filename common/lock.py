"""One writer per run directory: `rlhf run` and a stage started by hand take DIR/.lock, an exclusive
flock that the kernel releases when the holder dies, so a lock left by a killed process is stale by
construction and the next run takes it over. The file names the holder for the error message.

A stage that `rlhf run` starts inherits its lock through RLHF_RUN_LOCK (the holder's pid).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from common.errors import InputError

LOCK_ENV = "RLHF_RUN_LOCK"
PARENT_ENV = "RLHF_PARENT_PID"


def die_with_parent() -> None:
    """In a stage that `rlhf run` started (RLHF_PARENT_PID): take SIGKILL when that process dies, even
    by SIGKILL, so that no orphaned stage goes on writing into the run directory that
    `rlhf run --resume` then takes over (Linux; elsewhere a no-op)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before the request above took effect
        os._exit(1)


class RunLock:
    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self._file = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> RunLock:
        inherited = os.environ.get(LOCK_ENV)
        if inherited and str(self.holder().get("pid")) == inherited:
            return self  # started by the run that holds the lock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            holder = self.holder()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise InputError(
                f"run directory {self.path.parent} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"since {since} ({holder.get('command', '?')}); wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)}))
        handle.flush()
        self._file = handle
        os.environ[LOCK_ENV] = str(os.getpid())  # for the stages this process starts
        return self

    def release(self) -> None:
        if self._file is not None:
            os.environ.pop(LOCK_ENV, None)
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
