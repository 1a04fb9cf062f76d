"""Resumable checkpoints: one folder per step under DIR/<stage>/checkpoints, and a `latest` marker
written last, after every rank has finished writing. A checkpoint half-written when a crash came is
never named by the marker, so it is never resumed from."""

from __future__ import annotations

import shutil
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
