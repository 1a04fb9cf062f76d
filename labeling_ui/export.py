"""Exports of the ranking database (labeling spec section 6): immutable snapshots, each a folder with

  rankings.jsonl   K-way, one record per submitted ranking (its latest version), by prompt id then
                   annotator (never by submission, which differs from run to run), tiers best first;
                   never a ranking a reviewer rejected, and an adjudicated one with the reviewer's tiers
                   in the annotator's group (adjudicated_by names the reviewer, null elsewhere):
                   what the reward stage reads (InstructGPT's grouping: all C(K,2) pairs of a prompt
                   in one batch element, ties dropped)
  pairs.jsonl      the same as pairwise prompt/chosen/rejected records for other tools (TRL's
                   RewardTrainer, OpenRLHF), with group_id so a loader can keep a prompt's pairs together
  demonstrations.jsonl  the written demonstrations (latest version of each, a reviewer's rejected ones
                   never), {prompt, completion} with prompt_id, annotator_id, version, guideline_version
                   and split, by prompt id then annotator: SFT reads it as it is (data.sft)
  manifest.json    counts, each file's SHA-256, the agreement figures, guideline versions, time, and
                   the demonstrations' own counts and guideline versions (`demonstrations`)

Multi-annotator policy (spec 6.3 a): each annotator's ranking is its own group (group_id = prompt id
and annotator), as summarize-from-feedback keeps its worker ids. Gold items are never exported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.files import atomic_write_json, atomic_write_jsonl
from labeling_ui.agreement import agreement_report, pair_orders
from labeling_ui.store import LabelStore

RUN_SPECIFIC = ("assignment_id", "submitted_at")
POLICY = ("each annotator's ranking is its own group (labeling spec 6.3 a); gold items and rankings a reviewer rejected "
          "are not exported; an adjudicated ranking is the reviewer's tiers in the annotator's group")


def pairwise_records(rankings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every strictly ordered pair of every ranking as prompt/chosen/rejected; tied pairs are dropped."""
    pairs = []
    for record in rankings:
        texts = {c["id"]: c["text"] for c in record["candidates"]}
        for (first, second), order in pair_orders(record["ranking"]).items():
            chosen, rejected = (first, second) if order > 0 else (second, first)
            pairs.append({"prompt": record["prompt"], "chosen": texts[chosen], "rejected": texts[rejected],
                          "group_id": f"{record['prompt_id']}:{record['annotator_id']}"})
    return pairs


def agreement(store: LabelStore) -> dict[str, Any]:
    return agreement_report([(r["prompt_id"], r["annotator_id"], r["ranking"]) for r in store.rankings()])


def export_snapshot(store: LabelStore, exports_dir: str | os.PathLike) -> Path:
    """Write a new snapshot folder under `exports_dir` and return it. The folder is named by time and
    content hash and written whole before it appears (a temporary folder renamed into place); an
    export of unchanged data returns the existing snapshot instead of a copy."""
    # the assignment id (random) and the submission time differ in every run of the pipeline, and two
    # identical runs must export identical files; prompt, annotator and version still identify a record
    rankings = [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in store.rankings()]
    pairs = pairwise_records(rankings)
    demonstrations = [{k: v for k, v in d.items() if k not in RUN_SPECIFIC} for d in store.demonstrations()]
    exports_dir = Path(exports_dir)
    exports_dir.mkdir(parents=True, exist_ok=True)
    tmp = exports_dir / f".{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    atomic_write_jsonl(tmp / "rankings.jsonl", rankings)
    atomic_write_jsonl(tmp / "pairs.jsonl", pairs)
    atomic_write_jsonl(tmp / "demonstrations.jsonl", demonstrations)
    digests = {name: hashlib.sha256((tmp / name).read_bytes()).hexdigest()
               for name in ("rankings.jsonl", "pairs.jsonl", "demonstrations.jsonl")}
    content = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:12]
    for existing in sorted(exports_dir.glob(f"*-{content}")):
        shutil.rmtree(tmp)
        return existing
    report = agreement_report([(r["prompt_id"], r["annotator_id"], r["ranking"]) for r in rankings])
    atomic_write_json(tmp / "manifest.json", {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"rankings": len(rankings), "prompts": len({r["prompt_id"] for r in rankings}),
                   "annotators": len({r["annotator_id"] for r in rankings}), "pairs": len(pairs)},
        "sha256": digests,
        "agreement": report,
        "guideline_versions": sorted({r["guideline_version"] for r in rankings}),
        "demonstrations": {"count": len(demonstrations), "prompts": len({d["prompt_id"] for d in demonstrations}),
                           "annotators": len({d["annotator_id"] for d in demonstrations}),
                           "guideline_versions": sorted({d["guideline_version"] for d in demonstrations})},
        "multi_annotator_policy": POLICY,
    })
    for path in tmp.iterdir():
        path.chmod(0o444)  # a snapshot is read, never rewritten
    name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{content}"
    tmp.rename(exports_dir / name)
    return exports_dir / name
