"""Stage `pretrain`: the tiny world's base model, trained from scratch on its pretraining corpus.

Reads:  the config (model.init, world.seed and world.corpus_docs, data.pretrain, pretrain).
Writes: DIR/pretrain/model (HF format, with the char-level tokenizer trained here),
        DIR/pretrain/checkpoints, metrics.jsonl, tensorboard/.
Skipped by the pipeline when model.name_or_path names a pretrained base model.
"""

from __future__ import annotations

from transformers import set_seed

from common.config import Config
from common.files import read_jsonl
from common.run_dir import RunDir
from stages.data.datasets import make_world, pretraining_text
from stages.models.loading import (
    attention_implementation,
    build_model,
    train_char_tokenizer,
)
from stages.runtime.lifecycle import StageResult
from stages.runtime.lm_training import LMTrainingSpec, train_lm


def pretrain(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. data: plain text, packed into max_length windows by the trainer
    corpus = pretraining_text(config.data.pretrain, config.world)
    init_dir = run_dir.stage_dir(stage) / "init"
    if not resume or not init_dir.exists():
        # 2. tokenizer and initial weights, written once so that every worker (and a resumed run)
        #    starts from the same ones
        world = make_world(config.world)
        tokenizer = train_char_tokenizer([world.alphabet(), *corpus["text"]])
        set_seed(config.run.seed)
        model = build_model(config.model.init, tokenizer, attention_implementation(config.model.attn_implementation, config.deepspeed.precision))
        model.save_pretrained(str(init_dir))
        tokenizer.save_pretrained(str(init_dir))
    # 3. train on the Ray workers, 4. save DIR/pretrain/model
    spec = LMTrainingSpec(
        stage=stage,
        config=config,
        run_dir=str(run_dir.root),
        init_model=str(init_dir),
        tokenizer=str(init_dir),
        dataset=corpus,
        train=config.pretrain,
        lora=None,
        packing=True,
    )
    model_dir = train_lm(spec)
    losses = [r["train/loss"] for r in read_jsonl(run_dir.metrics_path(stage)) if "train/loss" in r]
    metrics = {"final_loss": losses[-1]} if losses else {}  # none when max_steps < log_every
    return StageResult(outputs={"model": str(model_dir.relative_to(run_dir.root))}, metrics=metrics)

