"""Benchmarks that print figures (not tests: timings on shared machines make flaky assertions).

Each is a module run as `python -m bench.<name>`; `python -m bench` runs them all on fixed workloads
and prints one table. A benchmark hands its headline figures to that table through `record`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import stages  # noqa: F401  (first, as in every stage process: transformers then skips scikit-learn)

SUMMARY_ENV = "RLHF_BENCH_SUMMARY"  # set by `python -m bench`: the file that collects the headline figures


def record(benchmark: str, figure: str, value: float, unit: str = "", goal: str = "") -> None:
    """Add one headline figure to the summary of `python -m bench` (a no-op when run on its own)."""
    path = os.environ.get(SUMMARY_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"benchmark": benchmark, "figure": figure, "value": value, "unit": unit, "goal": goal}) + "\n")


def best_of(repeats: int, fn) -> float:
    """The fastest of `repeats` timed calls, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def in_fresh_processes(module: str, flag: str, names, *forwarded: str) -> None:
    """`python -m <module> <flag> <name> <forwarded...>` for each name, each in a fresh process, so that its peak
    memory and its warm-up are its own."""
    for name in names:
        subprocess.run([sys.executable, "-m", module, flag, name, *forwarded], check=True)
