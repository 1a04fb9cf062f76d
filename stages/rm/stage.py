"""Stage `rm`: the reward model, trained on K-way rankings with InstructGPT's loss (section 3.5, Eq. 1;
App. C.2): all C(K,2) strict pairs of one prompt in one batch element, ties dropped, one epoch.

Reads:  DIR/sft/model (or rm.model) to initialise from; data.rankings (a K-way labeling export or
        pairwise records; records with no strict pair are dropped and counted, rm/ties_dropped) or
        DIR/label/rankings.jsonl; the demonstrations SFT trained on (people's, data.sft or the tiny
        world's demonstrator: stages.data.datasets.demonstrations) for the normalisation.
Writes: DIR/rm/model (AutoModelForSequenceClassification, num_labels=1, `reward_bias` in config.json;
        with rm.lora also DIR/rm/adapter), DIR/rm/checkpoints, metrics.jsonl, tensorboard/, and the
        held-out diagnostics (rm_eval) in metrics.jsonl and the manifest.
"""

from __future__ import annotations

import json

from common.config import Config
from common.files import append_jsonl, atomic_write_json, read_jsonl
from common.run_dir import RunDir
from stages.data.datasets import demonstrations, world_tasks
from stages.data.rankings import RankingGroup, training_rankings
from stages.models.loading import (
    check_model_dir,
    load_tokenizer,
    require_causal_lm,
    tokenizer_path,
)
from stages.models.reward_model import reward_text
from stages.rm.evaluation import calibration_pairs, label_metrics, world_metrics
from stages.rm.training import SCORES_FILE, STAGE, RMTrainingSpec, train_rm
from stages.runtime.lifecycle import StageResult
from stages.scoring.metrics import calibration_bins


def group_texts(group: RankingGroup, eos_token: str) -> list[str]:
    return [reward_text(group.prompt, response, eos_token) for response in group.responses]


def rm(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. the model to initialise from, and its tokenizer
    init = check_model_dir(config.rm.model, "rm.model") if config.rm.model else require_causal_lm(run_dir.model_dir("sft"), "rm")
    tokenizer_dir = tokenizer_path(config.model, init)
    tokenizer = load_tokenizer(tokenizer_dir)
    eos = tokenizer.eos_token
    # 2. comparisons split by prompt, and demonstrations for the normalisation
    rankings = training_rankings(config, run_dir, tokenizer, STAGE)
    path, train, heldout = rankings.path, rankings.train, rankings.heldout
    demos = demonstrations(config, run_dir, tokenizer, STAGE)
    demos = demos.select(range(min(config.rm.normalise_on, len(demos))))
    # 3. train on the Ray workers; they save DIR/rm/model with the bias and score the held-out candidates
    spec = RMTrainingSpec(
        config=config,
        run_dir=str(run_dir.root),
        init_model=str(init),
        tokenizer=str(tokenizer_dir),
        train_groups=[{"texts": group_texts(g, eos), "tiers": [list(t) for t in g.tiers]} for g in train],
        heldout_texts=[text for g in heldout for text in group_texts(g, eos)],
        demonstration_texts=[reward_text(d["prompt"], d["completion"], eos) for d in demos],
    )
    train_rm(spec)
    # 4. held-out diagnostics, on normalised scores
    scored = json.loads((run_dir.stage_dir(STAGE) / SCORES_FILE).read_text())
    flat = [s + scored["bias"] for s in scored["heldout_raw_scores"]]
    scores, start = [], 0
    for group in heldout:
        scores.append(flat[start : start + len(group.responses)])
        start += len(group.responses)
    # a prompt ranked by two annotators is two rankings (groups) of one prompt
    metrics = {"rm/train_prompts": len({g.prompt for g in train}), "rm/heldout_prompts": len({g.prompt for g in heldout}),
               "rm/train_rankings": len(train), "rm/heldout_rankings": len(heldout), "rm/ties_dropped": rankings.ties_dropped,
               "rm/bias": scored["bias"]}
    if heldout:
        metrics.update(label_metrics(heldout, scores, config.rm.margin))
        bins = calibration_bins(*calibration_pairs(heldout, scores))
        atomic_write_json(run_dir.stage_dir(STAGE) / "calibration.json",
                          [{"predicted": p, "observed": o, "pairs": n} for p, o, n in bins])
        if config.data.rankings is None:
            metrics.update(world_metrics(heldout, scores, world_tasks(path)))
    log_final_metrics(run_dir, metrics)
    outputs = {"model": f"{STAGE}/model"}
    if config.rm.lora:
        outputs["adapter"] = f"{STAGE}/adapter"
    return StageResult(outputs=outputs, metrics=metrics)


def log_final_metrics(run_dir: RunDir, metrics: dict[str, float]) -> None:
    """One more metrics.jsonl record, at the last training step, and the same in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    step = max((r.get("step", 0) for r in read_jsonl(run_dir.metrics_path(STAGE))), default=0)
    append_jsonl(run_dir.metrics_path(STAGE), {"step": step, **metrics})
    with SummaryWriter(str(run_dir.tensorboard_dir(STAGE))) as writer:
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)

