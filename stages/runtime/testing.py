"""Fault injection for the recovery tests, kept apart from the training code it interrupts.

With RLHF_FAULT_AT_STEP=N in the environment, rank 0 of a training stage dies at step N (the HF
Trainer's optimizer step, or PPO's iteration), once per stage run: a marker file in the stage's
directory records that it happened, so the worker group Ray restarts goes on from the latest complete
checkpoint instead of dying again. Unset, nothing happens.
"""

from __future__ import annotations

import os
from pathlib import Path

FAULT_ENV = "RLHF_FAULT_AT_STEP"


def maybe_inject_fault(stage_dir: Path, step: int, rank: int) -> None:
    if rank != 0 or step != int(os.environ.get(FAULT_ENV, "0")):
        return
    marker = stage_dir / "fault_injected"
    if not marker.exists():
        marker.touch()
        os._exit(1)
