"""Language-model training shared by `pretrain` and `sft`: TRL's SFTTrainer (the HF Trainer's DeepSpeed
integration) on every Ray Train worker, with resumable checkpoints and the stage's run-dir files.

Per worker: load the tokenizer and the initial model, build the trainer from the stage's config,
resume from the latest complete checkpoint if there is one, train, and save the final model in HF
format (gathered from ZeRO-3 shards; with LoRA, the adapter and the merged model).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from pipeline.config import Config, LoraSection, TrainSection
from pipeline.files import append_jsonl
from pipeline.run_dir import RunDir
from stages.checkpointing import latest_checkpoint, mark_latest, publish_dir, truncate_metrics
from stages.ds_config import deepspeed_config
from stages.ray_train import run_on_workers


# Fault injection for tests of recovery: rank 0 dies at this optimizer step, once per stage run.
FAULT_ENV = "RLHF_FAULT_AT_STEP"


def inject_fault_once(stage_dir: Path) -> None:
    marker = stage_dir / "fault_injected"
    if not marker.exists():
        marker.touch()
        os._exit(1)


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
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from stages.modeling import load_tokenizer, peft_config
    from stages.ray_train import world_rank

    job: LMJob = loop_config["job"]
    config = job.config
    torch.set_num_threads(config.run.torch_threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    run_dir = RunDir(job.run_dir)
    checkpoints = run_dir.checkpoints_dir(job.stage)
    rank = world_rank()
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir.tensorboard_dir(job.stage))

    fault_step = int(os.environ.get(FAULT_ENV, "0"))

    class StageFiles(TrainerCallback):
        """metrics.jsonl records, and the `latest` marker once every rank has written its part."""

        def on_step_end(self, args, state, control, **kwargs):
            if rank == 0 and state.global_step == fault_step:
                inject_fault_once(run_dir.stage_dir(job.stage))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                append_jsonl(run_dir.metrics_path(job.stage), {"step": state.global_step, **{f"train/{k}": v for k, v in logs.items()}})

        def on_save(self, args, state, control, **kwargs):
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            if state.is_world_process_zero:
                mark_latest(checkpoints, f"checkpoint-{state.global_step}")

    train = job.train
    args = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": train.min_lr_ratio},
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        adam_beta2=train.adam_beta2,
        max_grad_norm=train.max_grad_norm,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        logging_steps=train.log_every,
        save_steps=train.checkpoint_every,
        save_total_limit=2,
        seed=config.run.seed,
        report_to=["tensorboard"],
        deepspeed=deepspeed_config(config.deepspeed),
        use_cpu=not config.ray.use_gpu,
        bf16=config.deepspeed.precision == "bf16",
        fp16=config.deepspeed.precision == "fp16",
        max_length=train.max_length,
        packing=job.packing,
        packing_strategy="wrapped",
        completion_only_loss=not job.packing,
        dataset_text_field="text",
        disable_tqdm=rank != 0,
        dataloader_num_workers=0,
    )
    tokenizer = load_tokenizer(job.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(job.init_model, local_files_only=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=job.dataset,
        processing_class=tokenizer,
        peft_config=peft_config(job.lora) if job.lora else None,
        callbacks=[StageFiles()],
    )
    latest = latest_checkpoint(checkpoints)  # a resumed stage, or a worker group restarted by Ray
    if latest is not None and rank == 0:
        truncate_metrics(run_dir.metrics_path(job.stage), int(latest.name.rsplit("-", 1)[1]))
    trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    _save_final(trainer, tokenizer, job, run_dir, rank)


def _save_final(trainer, tokenizer, job: LMJob, run_dir: RunDir, rank: int) -> None:
    """Write DIR/<stage>/model (and, with LoRA, DIR/<stage>/adapter) through temp dirs and renames."""
    import torch

    stage_dir = run_dir.stage_dir(job.stage)
    final = run_dir.model_dir(job.stage)
    tmp = stage_dir / "model.tmp"
    if job.lora is None:
        trainer.save_model(str(tmp))  # every rank takes part: ZeRO-3 gathers the shards
    else:
        adapter_tmp = stage_dir / "adapter.tmp"
        trainer.save_model(str(adapter_tmp))
        if rank == 0:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(job.init_model, local_files_only=True)
            merged = PeftModel.from_pretrained(base, str(adapter_tmp)).merge_and_unload()
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(adapter_tmp))
            publish_dir(adapter_tmp, stage_dir / "adapter")
    if rank == 0:
        tokenizer.save_pretrained(str(tmp))
        publish_dir(tmp, final)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
