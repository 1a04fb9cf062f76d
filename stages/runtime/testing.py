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


ENGINE_FAULT_ENV = "RLHF_ENGINE_FAULT_AT_CALL"
ENGINE_FAULT_MARKER_ENV = "RLHF_ENGINE_FAULT_MARKER"


def maybe_kill_engine(call: int) -> None:
    """With RLHF_ENGINE_FAULT_AT_CALL=N and RLHF_ENGINE_FAULT_MARKER=<file>, a vLLM engine's process dies in
    its N-th generate call, once (the marker file records it), as a crashed engine would."""
    marker = os.environ.get(ENGINE_FAULT_MARKER_ENV)
    if not marker or call != int(os.environ.get(ENGINE_FAULT_ENV, "0")) or Path(marker).exists():
        return
    Path(marker).touch()
    os._exit(1)
