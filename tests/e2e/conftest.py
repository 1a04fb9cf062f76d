"""What the end-to-end tests share: a Python command run as a user runs it, from the repository root."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(args, env=None, check=True) -> subprocess.CompletedProcess:
    """`python ARGS` (e.g. ["-m", "pipeline", "run", ...]); with `check`, a failure shows the output's end."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result
