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

from common.config import Config, LoraSection, TrainSection
from common.run_dir import RunDir
from stages.runtime.ray_workers import run_on_workers


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
    method: str = "causal_lm"  # sft.method: causal_lm (TRL's SFTTrainer), bitune or cmlm (their own modules)


def train_lm(job: LMJob) -> Path:
    """Train on the Ray workers; returns the final model directory."""
    run_dir = RunDir(job.run_dir)
    worker = _worker if job.method == "causal_lm" else _method_worker
    run_on_workers(job.config.ray, worker, {"job": job}, name=job.stage, storage=run_dir.stage_dir(job.stage) / "ray")
    return run_dir.model_dir(job.stage)


def _worker(loop_config: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from stages.runtime.hf_trainer import StageFiles, resume_point, save_final, training_arguments
    from stages.models.loading import load_tokenizer, peft_config
    from stages.runtime.ray_workers import world_rank

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


# ---- sft.method bitune and cmlm: their own modules under the HF Trainer ----------------------------

TRAINED_WEIGHTS = "trained_weights.pt"


def method_model(job: LMJob):
    """The method's trainable module (not a PreTrainedModel), its batch collator and its tokenizer: the
    job's for Bitune; for cmlm the encoder's (sft.cmlm.encoder) or the job's, with a mask token added."""
    from functools import partial

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from stages.models.loading import load_tokenizer

    section = job.train
    if job.method == "bitune":
        from stages.models.bitune import BituneModel, BituneSettings, collate

        bitune = section.bitune
        settings = BituneSettings(variant=bitune.variant, s_init=bitune.s_init, ablation=bitune.ablation,
                                  r=bitune.lora.r, alpha=bitune.lora.alpha, target_modules=bitune.lora.target_modules)
        tokenizer = load_tokenizer(job.tokenizer)
        base = AutoModelForCausalLM.from_pretrained(job.init_model, local_files_only=True)
        return BituneModel(base, settings), partial(collate, tokenizer=tokenizer, max_length=section.max_length), tokenizer
    from stages.models.cmlm import CMLMCollator, CMLMModel, CMLMSettings, add_mask_token, build_encoder

    cmlm = section.cmlm
    tokenizer = load_tokenizer(cmlm.encoder or job.tokenizer, "sft.cmlm.encoder" if cmlm.encoder else "model.tokenizer")
    add_mask_token(tokenizer)
    if cmlm.encoder:
        encoder = AutoModelForMaskedLM.from_pretrained(cmlm.encoder, local_files_only=True)
    else:
        encoder = build_encoder(cmlm.init, tokenizer)
    settings = CMLMSettings(src_mask_ratio=cmlm.src_mask_ratio, label_smoothing=cmlm.label_smoothing,
                            length_loss_weight=cmlm.length_loss_weight, length_mode=cmlm.length_mode,
                            fixed_length=cmlm.fixed_length, decode_iters=cmlm.decode_iters, length_beam=cmlm.length_beam)
    collator = CMLMCollator(tokenizer, settings, max_source_length=section.max_length, max_target_length=section.max_length,
                            seed=job.config.run.seed)
    return CMLMModel.from_tokenizer(encoder, tokenizer, settings), collator, tokenizer


def _method_trainer_class():
    from transformers import Trainer

    class MethodTrainer(Trainer):
        """Checkpoint weights are the trainable tensors in one torch file: Trainer's flat safetensors file
        fails on GPT-2's tied embeddings, and what resumes is DeepSpeed's own checkpoint anyway."""

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            import torch

            output_dir = Path(output_dir or self.args.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            trainable = {name for name, p in self.model.named_parameters() if p.requires_grad}
            torch.save({k: v.detach().cpu() for k, v in state_dict.items() if k in trainable}, output_dir / TRAINED_WEIGHTS)

    return MethodTrainer


def _method_worker(loop_config: dict) -> None:
    import torch
    from transformers import TrainingArguments, set_seed

    from stages.runtime.hf_trainer import StageFiles, resume_point, training_arguments
    from stages.runtime.ray_workers import world_rank

    job: LMJob = loop_config["job"]
    torch.set_num_threads(job.config.run.torch_threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    run_dir = RunDir(job.run_dir)
    rank = world_rank()

    args = TrainingArguments(**training_arguments(job.train, job.config, run_dir, job.stage, rank), remove_unused_columns=False)
    set_seed(job.config.run.seed)  # the new weights (LoRA A, the coefficients, a cmlm encoder) are the run's, not chance's
    model, collator, tokenizer = method_model(job)
    trainer = _method_trainer_class()(model=model, args=args, train_dataset=job.dataset, data_collator=collator,
                                      callbacks=[StageFiles(run_dir, job.stage, rank)])
    trainer.train(resume_from_checkpoint=resume_point(run_dir, job.stage, rank))
    save_method_model(trainer, tokenizer, run_dir, job, rank)


def save_method_model(trainer, tokenizer, run_dir: RunDir, job: LMJob, rank: int) -> None:
    """Write DIR/<stage>/model in the method's own format (with the tokenizer), through a temp dir and a rename."""
    import shutil

    import torch
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from stages.runtime.checkpoints import publish_dir

    stage_dir = run_dir.stage_dir(job.stage)
    weights_tmp, tmp = stage_dir / "weights.tmp", stage_dir / "model.tmp"
    trainer.save_model(str(weights_tmp))  # every rank takes part: ZeRO-3 gathers the shards
    if rank == 0:
        unset_hf_deepspeed_config()  # a plain CPU model from here on, outside ZeRO-3's zero.Init
        model, _, _ = method_model(job)
        missing, unexpected = model.load_state_dict(torch.load(weights_tmp / TRAINED_WEIGHTS), strict=False)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise RuntimeError(f"{job.stage}: trained weights do not match the model: {sorted(trainable & set(missing))[:3]} "
                               f"{unexpected[:3]}")
        if job.method == "bitune":
            model.save(tmp, job.init_model)  # the frozen base stays where it is; bitune.json records its path
        else:
            model.save(tmp)
        tokenizer.save_pretrained(str(tmp))
        publish_dir(tmp, run_dir.model_dir(job.stage))
        shutil.rmtree(weights_tmp)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
