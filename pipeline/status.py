"""`rlhf status DIR`: a table of every stage's state, fingerprint, duration and headline metric."""

from __future__ import annotations

from pipeline.errors import InputError
from pipeline.run_dir import AWAITING_LABELS, RunDir

HEADLINE = {
    "pretrain": "final_loss",
    "sft": "heldout_exact_match",
    "sample": "sample/prompts",
    "label": "label/pairwise_agreement",
    "rm": "rm/heldout_accuracy",
    "ppo": "ppo/best_validation_score",
    "ppo_no_ptx": "ppo/best_validation_score",
    "eval": "ppo/win_rate_vs_sft",
}


def status_rows(run_dir: str) -> list[dict[str, str]]:
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise InputError(f"{run.manifest_path} does not exist; is {run_dir} a run directory?")
    rows = []
    for name, record in run.read_manifest()["stages"].items():
        duration = ""
        if "started_at" in record and "finished_at" in record:
            duration = f"{record['finished_at'] - record['started_at']:.0f} s"
        metric_name = HEADLINE.get(name, "")
        value = record.get("metrics", {}).get(metric_name)
        rows.append(
            {
                "stage": name,
                "state": record.get("status", ""),
                "fingerprint": record.get("fingerprint", ""),
                "job id": record.get("job_id") or "",
                "duration": duration,
                "headline": record.get("progress") if record.get("status") == AWAITING_LABELS
                else f"{metric_name} {value:.3f}" if value is not None else record.get("error") or "",
            }
        )
    return rows


def print_status(run_dir: str) -> None:
    rows = status_rows(run_dir)
    columns = ["stage", "state", "fingerprint", "job id", "duration", "headline"]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))
