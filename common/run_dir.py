"""The run directory (DESIGN.md): where every stage's outputs live, and the manifest that says which
are complete. The manifest is rewritten atomically under a lock; a stage is done only when its
outputs are complete and the manifest says so."""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.files import atomic_write_json

PENDING, RUNNING, AWAITING_LABELS, DONE, FAILED = "pending", "running", "awaiting_labels", "done", "failed"


class RunDir:
    def __init__(self, root: str | Path):
        # absolute, because Ray workers run in directories of their own
        self.root = Path(root).resolve()

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def model_dir(self, stage: str) -> Path:
        return self.root / stage / "model"

    def checkpoints_dir(self, stage: str) -> Path:
        return self.root / stage / "checkpoints"

    def metrics_path(self, stage: str) -> Path:
        return self.root / stage / "metrics.jsonl"

    def log_path(self, stage: str) -> Path:
        """The stage process's output (outside DIR/<stage>, which a fresh stage run clears)."""
        return self.root / "logs" / f"{stage}.log"

    def tensorboard_dir(self, stage: str) -> Path:
        return self.root / stage / "tensorboard"

    # ---- manifest ---------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text())

    def stage_record(self, stage: str) -> dict[str, Any]:
        return self.read_manifest()["stages"].get(stage, {})

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def update_stage(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the stage's record, stamping when a status starts or ends."""
        with self._locked():
            manifest = self.read_manifest()
            record = manifest["stages"].setdefault(stage, {})
            now = time.time()
            if fields.get("status") == RUNNING:
                fields.setdefault("started_at", now)
                record.pop("finished_at", None)
            elif fields.get("status") in (DONE, FAILED):
                fields.setdefault("finished_at", now)
            record.update(fields)
            atomic_write_json(self.manifest_path, manifest)
            return record

    def is_done(self, stage: str, fingerprint: str) -> bool:
        record = self.stage_record(stage)
        return record.get("status") == DONE and record.get("fingerprint") == fingerprint
