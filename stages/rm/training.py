"""Reward-model training on the Ray Train workers: HF's Trainer (its DeepSpeed integration,
checkpoints and resume) with the one thing written by hand, the K-way grouping: a batch element is
one prompt's K sequences, and the loss is InstructGPT's Eq. 1 over all strict pairs inside it.

After training every rank scores its share of the held-out candidates and of the demonstrations with
the trained engine (ZeRO-3 shards stay sharded), the demonstration mean gives the normalisation bias,
and the model is saved in HF format with the bias in its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from common.config import Config
from common.files import atomic_write_text
from common.run_dir import RunDir
from stages.core.ranking import ranking_loss, reward_bias
from stages.models.reward_model import BIAS_KEY, encode, score_texts, sequence_scores
from stages.runtime.hf_trainer import (
    LoggedMeans,
    StageFiles,
    on_all_ranks,
    resume_point,
    save_final,
    training_arguments,
)
from stages.runtime.ray_workers import run_on_workers

STAGE = "rm"
SCORES_FILE = "heldout_scores.json"


@dataclass
class RMTrainingSpec:
    """Everything a worker needs; pickled to the Ray Train workers."""

    config: Config
    run_dir: str
    init_model: str
    tokenizer: str
    train_groups: list[dict]  # {"texts": K reward texts, "tiers": best first}
    heldout_texts: list[str]
    demonstration_texts: list[str]


class RankingCollator:
    """Flattens a batch of prompt groups into one padded batch of sequences, keeping the group sizes
    and tiers, so that every pair of a prompt is compared inside one batch element."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, groups: list[dict]) -> dict:
        batch = encode(self.tokenizer, [text for group in groups for text in group["texts"]], self.max_length)
        return {**batch, "group_sizes": [len(group["texts"]) for group in groups], "tiers": [group["tiers"] for group in groups]}


class RankingTrainer(LoggedMeans):
    """HF Trainer whose loss is the K-way ranking loss; logs the pairwise accuracy beside the loss."""

    def __init__(self, *args, margin: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin = margin

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = sequence_scores(model, inputs["input_ids"], inputs["attention_mask"])
        result = ranking_loss(list(torch.split(scores, inputs["group_sizes"])), inputs["tiers"], self.margin)
        self.record("accuracy", result.accuracy.item())
        return (result.loss, {"scores": scores}) if return_outputs else result.loss


def train_rm(spec: RMTrainingSpec) -> None:
    run_dir = RunDir(spec.run_dir)
    run_on_workers(spec.config.ray, spec.config.run.torch_threads, _worker, spec, name=STAGE, storage=run_dir.stage_dir(STAGE) / "ray")


def _worker(spec: RMTrainingSpec, rank: int) -> None:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        TrainingArguments,
        set_seed,
    )

    from stages.models.loading import load_tokenizer, model_kwargs, peft_config

    config, section = spec.config, spec.config.rm
    run_dir = RunDir(spec.run_dir)

    # setup: the SFT model with a fresh scalar head, the grouped data
    tokenizer = load_tokenizer(spec.tokenizer)
    load_kwargs = {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    set_seed(config.run.seed)  # the fresh score head (and LoRA's A) are the run's, not chance's
    model = AutoModelForSequenceClassification.from_pretrained(spec.init_model, **model_kwargs(config.model, config.deepspeed.precision),
                                                               **load_kwargs)
    if section.lora is not None:
        model = get_peft_model(model, peft_config(section.lora, task_type="SEQ_CLS"))
    args = TrainingArguments(**training_arguments(section, config, run_dir, STAGE, rank), remove_unused_columns=False)
    trainer = RankingTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(spec.train_groups),
        data_collator=RankingCollator(tokenizer, section.max_length),
        callbacks=[StageFiles(run_dir, STAGE, rank)],
        margin=section.margin,
    )
    # train
    trainer.train(resume_from_checkpoint=resume_point(run_dir, STAGE, rank))

    # score held-out candidates and demonstrations; the bias centres the demonstrations at 0
    engine = trainer.model_wrapped
    engine.eval()
    batch_size = 4 * section.batch_size
    def score(texts: list[str]) -> list[float]:
        with torch.no_grad():
            return score_texts(engine, tokenizer, texts, section.max_length, batch_size)

    heldout = on_all_ranks(spec.heldout_texts, score)
    demonstrations = on_all_ranks(spec.demonstration_texts, score)
    bias = float(reward_bias(torch.tensor(demonstrations)))
    if rank == 0:
        record = {"heldout_raw_scores": heldout, "bias": bias, "demonstration_raw_mean": -bias}
        atomic_write_text(run_dir.stage_dir(STAGE) / SCORES_FILE, json.dumps(record))

    # save DIR/rm/model with the bias in its config
    save_final(trainer, tokenizer, run_dir, STAGE, spec.init_model, section.lora, rank,
               AutoModelForSequenceClassification, {BIAS_KEY: bias}, **load_kwargs)
