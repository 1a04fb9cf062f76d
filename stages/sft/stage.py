"""Stage `sft`: supervised fine-tuning on demonstrations (InstructGPT section 3.5, App. C.1, C.3).

Reads:  DIR/pretrain/model, or model.name_or_path (a local pretrained model); the demonstrations
        people wrote, DIR/demonstrate/demonstrations.jsonl (labeling.mode human with
        labeling.min_demonstrations > 0), else data.sft (a local dataset in TRL's formats), data.mixture
        or the tiny world's demonstrator; data.pretrain or the tiny world's corpus for the pretraining mix.
Writes: DIR/sft/model (HF format; with model.lora also DIR/sft/adapter; with sft.method bitune or cmlm
        the method's own model, loaded by stages.models.loading.load_policy), DIR/sft/checkpoints,
        metrics.jsonl, tensorboard/, and in the manifest the held-out exact match of the base
        model and of the SFT model (tiny world).
Loss on completion tokens only, plus the LM loss on `sft.pretrain_mix` pretraining documents per
demonstration (the paper's PPO-initialisation SFT mixed in 10% pretraining data).
"""

from __future__ import annotations

from pathlib import Path

from common.config import Config
from common.run_dir import RunDir
from stages.data.datasets import demonstrations, mix_pretraining, pretraining_text
from stages.models.loading import (
    check_model_dir,
    inference_device,
    load_tokenizer,
    tokenizer_path,
)
from stages.runtime.lifecycle import StageResult
from stages.runtime.lm_training import LMTrainingSpec, train_lm
from stages.scoring.evaluation import heldout_report


def base_model_dir(config: Config, run_dir: RunDir) -> Path:
    if config.model.name_or_path is None:  # the tiny world's: stage pretrain built it
        return run_dir.model_dir("pretrain")
    return check_model_dir(config.model.name_or_path, "model.name_or_path")


def sft(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. the base model and its tokenizer, checked before Ray starts
    base = base_model_dir(config, run_dir)
    tokenizer_dir = tokenizer_path(config.model, base)
    tokenizer = load_tokenizer(tokenizer_dir)
    # 2. data: demonstrations as prompt/completion, plus the pretraining mix (a causal LM's regulariser: the
    # other methods train on responses to prompts only)
    dataset = demonstrations(config, run_dir, tokenizer, stage)
    if config.sft.pretrain_mix > 0 and config.sft.method == "causal_lm":
        dataset = mix_pretraining(dataset, pretraining_text(config.data.pretrain, config.world), config.sft.pretrain_mix)
    # 3. train on the Ray workers, 4. save DIR/<stage>/model
    spec = LMTrainingSpec(
        stage=stage,
        config=config,
        run_dir=str(run_dir.root),
        init_model=str(base),
        tokenizer=str(tokenizer_dir),
        dataset=dataset,
        train=config.sft,
        lora=config.model.lora,
        packing=False,
        method=config.sft.method,
    )
    model_dir = train_lm(spec)
    outputs = {"model": str(model_dir.relative_to(run_dir.root))}
    if config.model.lora and config.sft.method == "causal_lm":
        outputs["adapter"] = str((run_dir.stage_dir(stage) / "adapter").relative_to(run_dir.root))
    # 5. held-out exact match of the base and the SFT model, on the tiny world's tasks
    metrics = {}
    if config.data.sft is None:
        device = inference_device(config.ray.use_gpu)
        metrics = heldout_report(model_dir, config.world, mixture=config.data.mixture, device=device)
        if stage == "sft":  # the comparison stages share this base: `sft` reports it once
            base_report = heldout_report(base, config.world, tokenizer_dir, config.data.mixture, device)
            metrics["base/heldout_exact_match"] = base_report["heldout_exact_match"]
    return StageResult(outputs=outputs, metrics=metrics)


def with_method(config: Config, method: str) -> Config:
    """The config of the comparison stage sft_<method> (eval.compare_sft_methods): the pipeline's SFT
    with another method. Plain LoRA takes Bitune's adapter settings and, like Bitune, no pretraining
    mix, so the two differ in Bitune only."""
    if method == "lora":
        return config.model_copy(update={"model": config.model.model_copy(update={"lora": config.sft.bitune.lora}),
                                         "sft": config.sft.model_copy(update={"method": "causal_lm", "pretrain_mix": 0.0})})
    return config.model_copy(update={"sft": config.sft.model_copy(update={"method": method})})

