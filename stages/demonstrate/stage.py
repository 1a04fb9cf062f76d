"""Stage `demonstrate`: SFT demonstrations written by people (InstructGPT section 3.5 fine-tunes on labelers'
demonstrations), in labeling.mode human with labeling.min_demonstrations > 0.

The tiny world's SFT prompts (the ones its demonstrator would answer) go into the ranking database's pool
of demonstration prompts, which people answer in the Write tab of `rlhf label serve`. Until
labeling.min_demonstrations are written, the stage leaves the run awaiting_labels (its progress in
`rlhf status`); `rlhf run --resume` goes on from here. The pool is one for the whole database, so
prompts imported by hand (`rlhf label import --demonstrations`) are written and counted too.

Reads:  the ranking database (its pool of demonstrations).
Writes: DIR/demonstrate/demonstrations.jsonl, the latest version of every demonstration that no reviewer
        rejected ({prompt_id, prompt, completion, annotator_id, version, ...}, the export's format),
        which the sft stage trains on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from common.config import Config, WorldSection
from common.errors import AwaitingLabels
from common.files import atomic_write_jsonl
from common.run_dir import RunDir
from labeling_ui.store import open_run_store
from stages.data.datasets import make_world
from stages.runtime.lifecycle import StageResult


def world_prompts(world: WorldSection, n: int) -> list[dict]:
    """The first n prompts of the tiny world's SFT stream as demonstration tasks. The id carries the prompt's
    hash, so that another world's prompt at the same position is a new task, not taken for this one."""
    records = []
    for i, example in enumerate(make_world(world).train_examples(n, "sft")):
        digest = hashlib.sha256(example.prompt.encode()).hexdigest()[:10]
        records.append({"prompt_id": f"world-sft-{i:05d}-{digest}", "prompt": example.prompt, "kind": "demonstration",
                        "world_task": asdict(example.task)})
    return records


def demonstrate(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    labeling = config.labeling
    # 1. the prompts into the pool (those already there are left as they are: a resumed run adds nothing).
    # Demonstrations are one pool whatever batch of candidates a store serves, and SFT comes before any:
    # the store gets a batch of its own, which stays empty.
    store = open_run_store(labeling, run_dir.root, batch=stage)
    store.import_records(world_prompts(config.world, labeling.world_prompts_to_write(config.world)), "tiny world")
    # 2. as many demonstrations as people have written
    written = store.demonstrations()
    if len(written) < labeling.min_demonstrations:
        raise AwaitingLabels(f"{len(written)} of {labeling.min_demonstrations} demonstrations in (written in the Write tab)",
                             {"demonstrate/demonstrations": float(len(written)),
                              "demonstrate/min_demonstrations": float(labeling.min_demonstrations)})
    # 3. where the sft stage reads them
    atomic_write_jsonl(run_dir.stage_dir(stage) / "demonstrations.jsonl", written)
    return StageResult(outputs={"demonstrations": f"{stage}/demonstrations.jsonl"},
                       metrics={"demonstrate/demonstrations": float(len(written)),
                                "demonstrate/annotators": float(len({d["annotator_id"] for d in written}))})
