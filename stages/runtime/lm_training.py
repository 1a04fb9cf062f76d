"""Language-model training shared by `pretrain` and `sft`: TRL's SFTTrainer (the HF Trainer's DeepSpeed
integration) on every Ray Train worker, with resumable checkpoints and the stage's run-dir files.

Per worker: load the tokenizer and the initial model, build the trainer from the stage's config,
resume from the latest complete checkpoint if there is one, train, and save the final model in HF
format (gathered from ZeRO-3 shards; with LoRA, the adapter and the merged model).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from common.config import Config, LoraSection, TrainSection
from common.run_dir import RunDir
from stages.runtime.checkpoints import publish_model
from stages.runtime.ray_workers import run_on_workers


@dataclass
class LMTrainingSpec:
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


def train_lm(spec: LMTrainingSpec) -> Path:
    """Train on the Ray workers; returns the final model directory."""
    run_dir = RunDir(spec.run_dir)
    worker = _worker if spec.method == "causal_lm" else _method_worker
    run_on_workers(spec.config.ray, spec.config.run.torch_threads, worker, spec, name=spec.stage,
                   storage=run_dir.stage_dir(spec.stage) / "ray")
    return run_dir.model_dir(spec.stage)


def _worker(spec: LMTrainingSpec, rank: int) -> None:
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from stages.models.loading import load_tokenizer, model_kwargs, peft_config
    from stages.runtime.hf_trainer import (
        StageFiles,
        resume_point,
        save_final,
        training_arguments,
    )

    config = spec.config
    run_dir = RunDir(spec.run_dir)

    args = SFTConfig(
        **training_arguments(spec.train, config, run_dir, spec.stage, rank),
        max_length=spec.train.max_length,
        packing=spec.packing,
        packing_strategy="wrapped",
        completion_only_loss=not spec.packing,
        dataset_text_field="text",
    )
    tokenizer = load_tokenizer(spec.tokenizer)
    set_seed(config.run.seed)  # new weights (LoRA's A under peft_config) are the run's, not chance's
    model = AutoModelForCausalLM.from_pretrained(spec.init_model, **model_kwargs(config.model, config.deepspeed.precision))
    trainer_class = SFTTrainer if config.ray.use_gpu else _full_logits_trainer_class()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=spec.dataset,
        processing_class=tokenizer,
        peft_config=peft_config(spec.lora) if spec.lora else None,
        callbacks=[StageFiles(run_dir, spec.stage, rank)],
    )
    trainer.train(resume_from_checkpoint=resume_point(run_dir, spec.stage, rank))
    save_final(trainer, tokenizer, run_dir, spec.stage, spec.init_model, spec.lora, rank, AutoModelForCausalLM)


def _full_logits_trainer_class():
    """TRL's SFTTrainer with the LM loss taken from the model's full logits, for workers without a GPU.

    TRL always scores through its fused LM head (trl/kernels/chunked_logprob.py): tiles of positions in
    Python, the head's matmul done again in backward. On a GPU that saves the (batch, length, vocabulary)
    logits of a large vocabulary; on CPU it was 60% of a step of the 4 x 256 GPT-2 with its 8,192-token
    vocabulary (bench.lm_throughput --profile). The loss is TRL's own: summed next-token NLL over the
    labels that are not ignored, divided by the Trainer's token count (of every rank, times the ranks,
    as DDP averages). The logged entropy and token accuracy are computed on the logging step's batch,
    where TRL gathers them across ranks on every step."""
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    from stages.core.functional import IGNORE_INDEX

    class FullLogitsSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._unlogged_tokens = 0  # tokens through the model since the last log, this rank

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            logits, targets = outputs.logits[:, :-1], inputs["labels"][:, 1:]
            nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            count = (targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
            loss = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            if self.model.training:
                self._record_metrics(inputs, logits.detach(), targets)
            return (loss, outputs) if return_outputs else loss

        def _record_metrics(self, inputs, logits, targets) -> None:
            if "attention_mask" in inputs:
                self._unlogged_tokens += inputs["attention_mask"].sum()
            else:  # padding-free batches carry position_ids instead
                self._unlogged_tokens += inputs["position_ids"].size(1)
            if (self.state.global_step + 1) % self.state.logging_steps:
                return  # every rank is at the same step: the gathers below run on all of them or none
            with torch.no_grad():
                valid = targets != IGNORE_INDEX
                log_probs = logits.float().log_softmax(-1)
                entropy = -(log_probs.exp() * log_probs).sum(-1)[valid].sum()
                correct = (logits.argmax(-1) == targets)[valid].sum()
            device = logits.device
            gather = self.accelerator.gather_for_metrics
            valid_tokens = gather(valid.sum()).sum()
            metrics = self._metrics["train"]
            metrics["entropy"].append((gather(entropy).sum() / valid_tokens).item() if valid_tokens > 0 else 0.0)
            metrics["mean_token_accuracy"].append((gather(correct).sum() / valid_tokens).item() if valid_tokens > 0 else 0.0)
            self._total_train_tokens += gather(torch.as_tensor(self._unlogged_tokens, device=device)).sum().item()
            self._unlogged_tokens = 0
            metrics["num_tokens"] = [self._total_train_tokens]

    return FullLogitsSFTTrainer


# ---- sft.method bitune and cmlm: their own modules under the HF Trainer ----------------------------

TRAINED_WEIGHTS = "trained_weights.pt"


def method_model(spec: LMTrainingSpec):
    """The method's trainable module (not a PreTrainedModel), its batch collator and its tokenizer: the
    spec's for Bitune; for cmlm the encoder's (sft.cmlm.encoder) or the spec's, with a mask token added."""
    from functools import partial

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from stages.models.loading import load_tokenizer

    section = spec.train
    if spec.method == "bitune":
        from stages.models.bitune import BituneModel, BituneSettings, collate

        bitune = section.bitune
        settings = BituneSettings(variant=bitune.variant, s_init=bitune.s_init, ablation=bitune.ablation,
                                  r=bitune.lora.r, alpha=bitune.lora.alpha, target_modules=bitune.lora.target_modules)
        tokenizer = load_tokenizer(spec.tokenizer)
        base = AutoModelForCausalLM.from_pretrained(spec.init_model, local_files_only=True)
        return BituneModel(base, settings), partial(collate, tokenizer=tokenizer, max_length=section.max_length), tokenizer
    from stages.models.cmlm import (
        CMLMCollator,
        CMLMModel,
        CMLMSettings,
        add_mask_token,
        build_encoder,
    )

    cmlm = section.cmlm
    tokenizer = load_tokenizer(cmlm.encoder or spec.tokenizer, "sft.cmlm.encoder" if cmlm.encoder else "model.tokenizer")
    add_mask_token(tokenizer)
    if cmlm.encoder:
        encoder = AutoModelForMaskedLM.from_pretrained(cmlm.encoder, local_files_only=True)
    else:
        encoder = build_encoder(cmlm.init, tokenizer)
    settings = CMLMSettings(src_mask_ratio=cmlm.src_mask_ratio, label_smoothing=cmlm.label_smoothing,
                            length_loss_weight=cmlm.length_loss_weight, length_mode=cmlm.length_mode,
                            fixed_length=cmlm.fixed_length, decode_iters=cmlm.decode_iters, length_beam=cmlm.length_beam)
    collator = CMLMCollator(tokenizer, settings, max_source_length=section.max_length, max_target_length=section.max_length,
                            seed=spec.config.run.seed)
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


def _method_worker(spec: LMTrainingSpec, rank: int) -> None:
    from transformers import TrainingArguments, set_seed

    from stages.runtime.hf_trainer import StageFiles, resume_point, training_arguments

    run_dir = RunDir(spec.run_dir)

    args = TrainingArguments(**training_arguments(spec.train, spec.config, run_dir, spec.stage, rank), remove_unused_columns=False)
    set_seed(spec.config.run.seed)  # the new weights (LoRA A, the coefficients, a cmlm encoder) are the run's, not chance's
    model, collator, tokenizer = method_model(spec)
    trainer = _method_trainer_class()(model=model, args=args, train_dataset=spec.dataset, data_collator=collator,
                                      callbacks=[StageFiles(run_dir, spec.stage, rank)])
    trainer.train(resume_from_checkpoint=resume_point(run_dir, spec.stage, rank))
    save_method_model(trainer, tokenizer, run_dir, spec, rank)


def save_method_model(trainer, tokenizer, run_dir: RunDir, spec: LMTrainingSpec, rank: int) -> None:
    """Publish DIR/<stage>/model in the method's own format, with the tokenizer."""
    import torch

    weights = run_dir.stage_dir(spec.stage) / "weights.tmp"
    trainer.save_model(str(weights))  # every rank takes part: ZeRO-3 gathers the shards

    def write(tmp: Path) -> None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # a plain model from here on, outside ZeRO-3's zero.Init
        model, _, _ = method_model(spec)
        missing, unexpected = model.load_state_dict(torch.load(weights / TRAINED_WEIGHTS), strict=False)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise RuntimeError(f"{spec.stage}: trained weights do not match the model: {sorted(trainable & set(missing))[:3]} "
                               f"{unexpected[:3]}")
        if spec.method == "bitune":
            model.save(tmp, spec.init_model)  # the frozen base stays where it is; bitune.json records its path
        else:
            model.save(tmp)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(weights)

    publish_model(run_dir.model_dir(spec.stage), rank, write)
