"""Stage `dpo`: Direct Preference Optimization (Rafailov et al. 2023) on the K-way rankings the reward model
reads, from the SFT policy, against the SFT policy as the frozen reference (spec/estimators.md section 4).

A batch element is one prompt's K responses, as in the reward stage; the loss is DPO's over all its strict
pairs (dpo.loss all_pairs, ties dropped) or the Plackett-Luce likelihood of its whole ranking (plackett_luce,
ties by Breslow's rule); with dpo.ptx_coef > 0 a pretraining LM loss joins the same step.

Reads:  DIR/sft/model (or dpo.model; dpo.reference, else the same weights, as the reference); data.rankings
        or DIR/label/rankings.jsonl (tie records dropped and counted, dpo/ties_dropped), split by prompt as
        the reward stage splits it (rm.heldout_fraction);
        pretraining text with dpo.ptx_coef > 0.
Writes: DIR/dpo/model (HF causal LM; with dpo.lora merged), DIR/dpo/checkpoints, metrics.jsonl,
        tensorboard/, reference_logprobs.json (the reference's log-probs, computed once), heldout.json.
"""

from __future__ import annotations

import json

from common.config import Config
from common.errors import InputError
from common.run_dir import RunDir
from stages.data.datasets import pretraining_text
from stages.data.rankings import training_rankings
from stages.dpo.training import HELDOUT_FILE, STAGE, DPOTrainingSpec, train_dpo
from stages.models.loading import (
    check_model_dir,
    load_tokenizer,
    require_causal_lm,
    tokenizer_path,
)
from stages.runtime.lifecycle import StageResult


def dpo(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. the policy, its reference and their tokenizer
    section = config.dpo
    init = check_model_dir(section.model, "dpo.model") if section.model else require_causal_lm(run_dir.model_dir("sft"), "dpo")
    reference = check_model_dir(section.reference, "dpo.reference") if section.reference else init
    tokenizer_dir = tokenizer_path(config.model, init)
    tokenizer = load_tokenizer(tokenizer_dir)
    # 2. the rankings, on the reward model's side of the split
    rankings = training_rankings(config, run_dir, tokenizer, STAGE)
    path, train, heldout = rankings.path, rankings.train, rankings.heldout
    if not train:
        raise InputError(f"{path}: no ranking left to train DPO on after holding out rm.heldout_fraction of the prompts")
    pretraining = pretraining_text(config.data.pretrain, config.world)["text"] if section.ptx_coef > 0 else []

    def records(groups):
        eos = tokenizer.eos_token
        return [{"prompt": g.prompt, "responses": [r.removesuffix(eos) for r in g.responses], "tiers": [list(t) for t in g.tiers]}
                for g in groups]

    # 3. train on the Ray workers; they save DIR/dpo/model and score the held-out rankings
    train_dpo(DPOTrainingSpec(config=config, run_dir=str(run_dir.root), init_model=str(init), reference_model=str(reference),
                              tokenizer=str(tokenizer_dir), train_groups=records(train), heldout_groups=records(heldout),
                              pretraining=pretraining))
    metrics = {"dpo/train_rankings": len(train), "dpo/heldout_rankings": len(heldout), "dpo/ties_dropped": rankings.ties_dropped}
    metrics.update(json.loads((run_dir.stage_dir(STAGE) / HELDOUT_FILE).read_text()))
    return StageResult(outputs={"model": f"{STAGE}/model"}, metrics=metrics)
