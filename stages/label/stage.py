"""Stage `label`: the sample stage's candidates ranked, and the rankings exported for the reward model.

labeling.mode simulated: the tiny world's simulated annotators rank every prompt through the same
store API as the app, with their noise calibrated on these candidates to InstructGPT's inter-annotator
agreement (72.6%) unless labeling.annotator_noise is given; overlap prompts get two rankings, which
the agreement figures are measured on. Their rankings belong to this labeling config: they go into a
batch of the store named by the stage's fingerprint, so a changed config ranks anew (the earlier
rankings stay in the database, untouched) and the same config always gives the same rankings. An
annotator's noise is drawn per response, not in the order the batch shows them: candidates that a
change upstream left as they were (a new config key, say) get the same rankings too.
labeling.mode human: people rank in `rlhf label serve`. Until labeling.min_rankings are in, the stage
leaves the run awaiting_labels (its progress in `rlhf status`); `rlhf run --resume` goes on from here.
People's rankings are never thrown away: simulated mode refuses to run over them.

Reads:  the ranking database (the sample stage's batch), DIR/sample/candidates.jsonl.
Writes: an immutable export snapshot DIR/labeling/exports/<time>-<hash>/ (K-way rankings, pairwise
        records, manifest with counts, hashes and agreement), and DIR/label/rankings.jsonl, the
        snapshot's K-way file, which the rm stage reads.
"""

from __future__ import annotations

import json

from common.config import Config
from common.errors import AwaitingLabels, InputError
from common.files import atomic_write_text, read_jsonl
from common.run_dir import RunDir
from labeling_ui.export import export_snapshot
from labeling_ui.simulated import (
    SimulatedAnnotator,
    calibrate_noise,
    label_through_store,
    simulated_batch,
)
from labeling_ui.store import open_run_store
from stages.data.datasets import world_tasks
from stages.runtime.lifecycle import StageResult


def simulate(config: Config, run_dir: RunDir, store) -> dict[str, float]:
    candidates_path = run_dir.stage_dir("sample") / "candidates.jsonl"
    records = read_jsonl(candidates_path)
    if any("world_task" not in r for r in records):
        raise InputError("labeling.mode simulated ranks by the tiny world's hidden preference, and "
                         f"{candidates_path} has prompts of no tiny-world task; set labeling.mode: human")
    tasks = world_tasks(candidates_path)
    labeling = config.labeling
    noise = labeling.annotator_noise
    if noise is None:
        noise = calibrate_noise([(tasks[r["prompt"]], [c["text"] for c in r["candidates"]]) for r in records],
                                labeling.annotator_agreement, config.run.seed)
    annotators = [SimulatedAnnotator(f"sim-{j}", seed=config.run.seed, noise=noise) for j in range(labeling.simulated_annotators)]
    counts = label_through_store(store, annotators, tasks)
    return {"label/annotator_noise": noise, "label/skipped": float(counts["skipped"])}


def label(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. the store, serving the sample stage's batch (people), or this labeling config's own (simulated)
    sample_batch = run_dir.stage_record("sample")["fingerprint"]
    if config.labeling.mode == "simulated":
        people = open_run_store(config.labeling, run_dir.root, batch=sample_batch).rankings()
        if people:
            raise InputError(f"labeling.mode simulated: the ranking database holds {len(people)} rankings by people of these "
                             "candidates, which simulated rankings would replace in the export; keep labeling.mode human "
                             "(people's rankings are never thrown away), or give labeling.database a new database")
        store = open_run_store(config.labeling, run_dir.root, batch=simulated_batch(sample_batch, run_dir.stage_record(stage)["fingerprint"]))
        store.import_records(read_jsonl(run_dir.stage_dir("sample") / "candidates.jsonl"), "candidates.jsonl")
    else:
        store = open_run_store(config.labeling, run_dir.root, batch=sample_batch)
    # 2. rankings: from the simulated annotators, or as many as people have made
    metrics = simulate(config, run_dir, store) if config.labeling.mode == "simulated" else {}
    ranked = len(store.rankings())
    if ranked < config.labeling.min_rankings and config.labeling.mode == "human":
        coverage = store.coverage()
        raise AwaitingLabels(f"{ranked} of {config.labeling.min_rankings} rankings in "
                             f"({coverage['ranked_prompts']} of {coverage['prompts']} prompts ranked)",
                             {"label/rankings": float(ranked), "label/min_rankings": float(config.labeling.min_rankings)})
    # 3. an immutable snapshot, and its K-way file where the rm stage reads it
    snapshot = export_snapshot(store, run_dir.root / "labeling" / "exports")
    atomic_write_text(run_dir.stage_dir(stage) / "rankings.jsonl", (snapshot / "rankings.jsonl").read_text())
    manifest = json.loads((snapshot / "manifest.json").read_text())
    agreement = {k: float(v) for k, v in manifest["agreement"].items() if isinstance(v, (int, float))}
    metrics.update({"label/rankings": float(manifest["counts"]["rankings"]), "label/prompts": float(manifest["counts"]["prompts"]),
                    "label/pairs": float(manifest["counts"]["pairs"]), **{f"label/{k}": v for k, v in agreement.items()}})
    return StageResult(outputs={"rankings": f"{stage}/rankings.jsonl", "snapshot": str(snapshot.relative_to(run_dir.root))},
                       metrics=metrics)

