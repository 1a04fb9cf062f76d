"""Language-model training shared by `pretrain` and `sft`: TRL's SFTTrainer (the HF Trainer's DeepSpeed
integration) on every Ray Train worker, with resumable checkpoints and the stage's run-dir files.

Per worker: load the tokenizer and the initial model, build the trainer from the stage's config,
resume from the latest complete checkpoint if there is one, train, and save the final model in HF
format (gathered from ZeRO-3 shards; with LoRA, the adapter and the merged model).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from pipeline.config import Config, LoraSection, TrainSection
from pipeline.run_dir import RunDir
from stages.ray_train import run_on_workers


@dataclass
class LMJob:
    """Everything a worker needs; pickled to the Ray Train workers."""

    stage: str
    config: Config  # run.seed, run.torch_threads, deepspeed and ray apply to every stage
    run_dir: str
    init_model: str
    tokenizer: str
    dataset: Dataset
    train: TrainSection  # the stage's own section
    lora: LoraSection | None
    packing: bool  # pretraining: pack plain text into max_length windows


def train_lm(job: LMJob) -> Path:
    """Train on the Ray workers; returns the final model directory."""
    run_dir = RunDir(job.run_dir)
    run_on_workers(job.config.ray, _worker, {"job": job}, name=job.stage, storage=run_dir.stage_dir(job.stage) / "ray")
    return run_dir.model_dir(job.stage)


def _worker(loop_config: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from stages.hf_trainer import StageFiles, resume_point, save_final, training_arguments
    from stages.modeling import load_tokenizer, peft_config
    from stages.ray_train import world_rank

    job: LMJob = loop_config["job"]
    config = job.config
    torch.set_num_threads(config.run.torch_threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    run_dir = RunDir(job.run_dir)
    rank = world_rank()

    args = SFTConfig(
        **training_arguments(job.train, config, run_dir, job.stage, rank),
        max_length=job.train.max_length,
        packing=job.packing,
        packing_strategy="wrapped",
        completion_only_loss=not job.packing,
        dataset_text_field="text",
    )
    tokenizer = load_tokenizer(job.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(job.init_model, local_files_only=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=job.dataset,
        processing_class=tokenizer,
        peft_config=peft_config(job.lora) if job.lora else None,
        callbacks=[StageFiles(run_dir, job.stage, rank)],
    )
    trainer.train(resume_from_checkpoint=resume_point(run_dir, job.stage, rank))
    save_final(trainer, tokenizer, run_dir, job.stage, job.init_model, job.lora, rank, AutoModelForCausalLM)
