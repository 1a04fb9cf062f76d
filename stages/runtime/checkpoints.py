"""Resumable checkpoints and published models.

Checkpoints: one folder per step under DIR/<stage>/checkpoints, and a `latest` marker written last,
after every rank has finished writing. A checkpoint half-written when a crash came is never named by
the marker, so it is never resumed from.
Models: every stage publishes its model the one way `publish_model` does (rank 0 writes a temp folder,
renames it into place, every rank waits), so no reader ever sees half a model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from common.files import atomic_write_jsonl, atomic_write_text, read_jsonl

LATEST_MARKER = "latest"


def mark_latest(checkpoints_dir: Path, folder_name: str) -> None:
    atomic_write_text(checkpoints_dir / LATEST_MARKER, folder_name + "\n")


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    marker = checkpoints_dir / LATEST_MARKER
    if not marker.exists():
        return None
    folder = checkpoints_dir / marker.read_text().strip()
    return folder if folder.is_dir() else None


def truncate_metrics(metrics_path: Path, last_step: int) -> None:
    """Drop records logged after `last_step`: a resumed run logs those steps again."""
    if not metrics_path.exists():
        return
    kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= last_step]
    atomic_write_jsonl(metrics_path, kept)


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Replace `final_dir` with the completely written `tmp_dir` (rename, not copy)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    tmp_dir.rename(final_dir)


def barrier() -> None:
    """Wait for every rank of the worker group (nothing to wait for in a single process). Under NCCL the
    barrier names this rank's GPU: without it NCCL guesses a device and can hang (as TRL found)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def publish_model(final_dir: Path, rank: int, write: Callable[[Path], None]) -> None:
    """Rank 0 calls `write(tmp)` on a fresh temp folder beside `final_dir`, then renames it into place;
    every rank waits until it has. What needs every rank (gathering ZeRO-3 shards) happens before."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        publish_dir(tmp, final_dir)
    barrier()


def merge_lora(auto_class, base_model: str, adapter_dir: Path, **load_kwargs):
    """The base model with the adapter merged in, built on this rank alone.

    Training is over: HF's DeepSpeed config is unset first, or ZeRO-3's zero.Init would make this
    one-rank load wait for the other ranks in a collective they never join."""
    from peft import PeftModel
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    base = auto_class.from_pretrained(base_model, local_files_only=True, **load_kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
