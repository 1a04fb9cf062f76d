"""What every HF-Trainer-based stage shares on a Ray Train worker: the training arguments built from a
TrainSection, the run-dir files (metrics.jsonl, the `latest` checkpoint marker), resume from the
latest complete checkpoint, per-step figures logged as means, work shared out over the ranks, and the
final save in HF format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from common.config import Config, LoraSection, TrainSection
from common.files import append_jsonl
from common.run_dir import RunDir
from stages.runtime.checkpoints import (
    barrier,
    latest_checkpoint,
    mark_latest,
    merge_lora,
    publish_dir,
    publish_model,
    truncate_metrics,
)
from stages.runtime.deepspeed_config import deepspeed_config
from stages.runtime.testing import maybe_inject_fault


class StageFiles(TrainerCallback):
    """metrics.jsonl records (keys prefixed "train/"), the `latest` marker once every rank has written
    its part of a checkpoint, and the recovery tests' injected fault (stages/runtime/testing.py)."""

    def __init__(self, run_dir: RunDir, stage: str, rank: int):
        self.run_dir, self.stage, self.rank = run_dir, stage, rank

    def on_step_end(self, args, state, control, **kwargs):
        maybe_inject_fault(self.run_dir.stage_dir(self.stage), state.global_step, self.rank)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, **{f"train/{k}": v for k, v in logs.items()}}
            append_jsonl(self.run_dir.metrics_path(self.stage), record)

    def on_save(self, args, state, control, **kwargs):
        barrier()
        if state.is_world_process_zero:
            mark_latest(self.run_dir.checkpoints_dir(self.stage), f"checkpoint-{state.global_step}")


class LoggedMeans(Trainer):
    """A Trainer whose compute_loss records figures of each step (`self.record(name, value)`), logged beside the
    loss as their means since the last log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recorded: dict[str, list[float]] = {}

    def record(self, name: str, value: float) -> None:
        self._recorded.setdefault(name, []).append(value)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update({name: sum(values) / len(values) for name, values in self._recorded.items() if values})
            self._recorded.clear()
        super().log(logs, *args, **kwargs)


def on_all_ranks(items: Sequence, compute: Callable[[list], list]) -> list:
    """compute(items) with every rank taking every world-th item, gathered on every rank in the items' order. Each
    rank calls compute on the same number of items (ZeRO-3 gathers parameters collectively), its share padded
    with a repeat of the first item."""
    import torch.distributed as dist

    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    share = list(items[rank::world])
    per_rank = -(-len(items) // world)
    results = compute(share + [items[0]] * (per_rank - len(share)))[: len(share)]
    gathered: list[list] = [results]
    if dist.is_initialized():
        gathered = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, results)
    merged: list = [None] * len(items)
    for r, rank_results in enumerate(gathered):
        merged[r::world] = rank_results
    return merged


def training_arguments(train: TrainSection, config: Config, run_dir: RunDir, stage: str, rank: int) -> dict[str, Any]:
    """TrainingArguments keywords shared by every stage (TRL's configs subclass TrainingArguments)."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir.tensorboard_dir(stage))
    return dict(
        output_dir=str(run_dir.checkpoints_dir(stage)),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": train.min_lr_ratio},
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        adam_beta2=train.adam_beta2,
        max_grad_norm=train.max_grad_norm,
        gradient_checkpointing=train.gradient_checkpointing,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        logging_steps=train.log_every,
        save_steps=train.checkpoint_every,
        save_total_limit=2,
        seed=config.run.seed,
        report_to=["tensorboard"],
        deepspeed=deepspeed_config(config.deepspeed, config.ray.num_workers),
        optim="adamw_torch_fused",  # the same kernel as PPO's optimizer (stages/runtime/deepspeed_config.fused_adamw)
        use_cpu=not config.ray.use_gpu,
        bf16=config.deepspeed.precision == "bf16",
        fp16=config.deepspeed.precision == "fp16",
        disable_tqdm=rank != 0,
        dataloader_num_workers=0,
    )


def resume_point(run_dir: RunDir, stage: str, rank: int) -> str | None:
    """The latest complete checkpoint (a resumed stage, or a worker group restarted by Ray); the
    metrics logged after it are dropped, since the resumed run logs those steps again."""
    latest = latest_checkpoint(run_dir.checkpoints_dir(stage))
    if latest is None:
        return None
    if rank == 0:
        truncate_metrics(run_dir.metrics_path(stage), int(latest.name.rsplit("-", 1)[1]))
    return str(latest)


def save_final(trainer, tokenizer, run_dir: RunDir, stage: str, init_model: str, lora: LoraSection | None, rank: int,
               auto_class, config_updates: dict[str, Any] | None = None, **load_kwargs) -> None:
    """Publish DIR/<stage>/model (and, with LoRA, DIR/<stage>/adapter).

    `config_updates` go into the saved model's config.json (the reward model's bias, for one).
    With LoRA the merged model is rebuilt from `init_model` with `auto_class.from_pretrained(...,
    **load_kwargs)` and the adapter."""
    stage_dir = run_dir.stage_dir(stage)
    updates = config_updates or {}
    saved = stage_dir / ("adapter.tmp" if lora else "weights.tmp")
    if lora is None:
        trainer.model.config.update(updates)
    trainer.save_model(str(saved))  # every rank takes part: ZeRO-3 gathers the shards

    def write(tmp: Path) -> None:
        if lora is None:
            saved.rename(tmp)
        else:
            merged = merge_lora(auto_class, init_model, saved, **load_kwargs)
            merged.config.update(updates)
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(saved))
            publish_dir(saved, stage_dir / "adapter")
        tokenizer.save_pretrained(str(tmp))

    publish_model(run_dir.model_dir(stage), rank, write)
