"""`rlhf status DIR`: a table of every stage's state, fingerprint, duration and headline metric."""

from __future__ import annotations

from common.errors import InputError
from common.run_dir import AWAITING_LABELS, RunDir
from stages.registry import GRAPH


def status_rows(run_dir: str) -> list[dict[str, str]]:
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise InputError(f"{run.manifest_path} does not exist; is {run_dir} a run directory?")
    rows = []
    recorded = run.read_manifest()["stages"]
    for name in sorted(recorded, key=lambda n: GRAPH.names.index(n) if n in GRAPH.names else len(GRAPH.names)):
        record = recorded[name]
        duration = ""
        if "started_at" in record and "finished_at" in record:
            duration = f"{record['finished_at'] - record['started_at']:.0f} s"
        metric_name = GRAPH[name].headline[0] if name in GRAPH.names and GRAPH[name].headline else ""
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
