"""Stage `ppo`: PPO-ptx against the reward model with a per-token KL penalty to the SFT policy and
the pretraining-mix term (InstructGPT section 3.5, Eq. 2; App. C.4). The loop is trainer.py; with rollout.engine vllm the
stage starts the vLLM engines (Ray actors) that the workers sample from, and stops them at the end.

Reads:  the actor and reference (DIR/sft/model), the reward model and critic start (DIR/rm/model),
        each replaceable by a local path (ppo.actor, ppo.reference, ppo.reward_model, ppo.critic);
        prompts from ppo.prompts or the tiny world; pretraining text from data.pretrain or the tiny
        world's corpus.
Writes: DIR/ppo/model (the policy with the best validation score within the KL budget, HF format),
        DIR/ppo/final (the last policy), DIR/ppo/checkpoints, metrics.jsonl, tensorboard/. What
        the policy is worth on held-out prompts is the eval stage's to say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.config import Config
from common.errors import InputError
from common.run_dir import RunDir
from stages.data.datasets import make_world, pretraining_text
from stages.data.files import prompts_from_file
from stages.models.loading import (
    check_model_dir,
    load_tokenizer,
    require_causal_lm,
    tokenizer_path,
)
from stages.ppo.trainer import BEST_DIR, PPOTrainingSpec, train_on_worker
from stages.runtime.checkpoints import publish_dir
from stages.runtime.lifecycle import StageResult
from stages.runtime.ray_workers import run_on_workers
from stages.scoring.vllm_engines import stop_engines


def model_paths(config: Config, run_dir: RunDir) -> dict[str, str | None]:
    """actor, reference, reward_model, critic: the given local paths, or the pipeline's outputs; no critic with a
    critic-free estimator."""
    ppo = config.ppo
    actor = check_model_dir(ppo.actor, "ppo.actor") if ppo.actor else require_causal_lm(run_dir.model_dir("sft"), "ppo")
    reward_model = check_model_dir(ppo.reward_model, "ppo.reward_model") if ppo.reward_model else run_dir.model_dir("rm")
    return {
        "actor": str(actor),
        "reference": str(check_model_dir(ppo.reference, "ppo.reference") if ppo.reference else actor),
        "reward_model": str(reward_model),
        "critic": str(check_model_dir(ppo.critic, "ppo.critic") if ppo.critic else reward_model) if ppo.uses_critic else None,
    }


def prompt_pools(config: Config, tokenizer) -> tuple[list[str], list[str], dict | None]:
    """(training prompts, validation prompts, prompt -> tiny-world task or None)."""
    ppo = config.ppo
    if ppo.prompts is not None:
        prompts = list(dict.fromkeys(prompts_from_file(ppo.prompts, tokenizer, "ppo.prompts")))
        tasks = None
    else:
        examples = {}
        for example in make_world(config.world).train_examples(3 * (ppo.prompt_pool + ppo.validation_prompts), "ppo"):
            examples.setdefault(example.prompt, example)
        prompts = list(examples)[: ppo.prompt_pool + ppo.validation_prompts]
        tasks = {prompt: examples[prompt].task for prompt in prompts}
    if len(prompts) <= ppo.validation_prompts:
        raise InputError(f"ppo.validation_prompts ({ppo.validation_prompts}) leaves no training prompt of {len(prompts)}")
    return prompts[ppo.validation_prompts :], prompts[: ppo.validation_prompts], tasks


def engine_model_dir(actor: str, tokenizer, stage_dir: Path) -> str:
    """The directory vLLM engines start from: the actor's, when it holds its tokenizer too (vLLM reads both
    from one place); else a copy with the run's tokenizer, DIR/<stage>/engine_init."""
    if (Path(actor) / "tokenizer_config.json").exists():
        return actor
    target = stage_dir / "engine_init"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(actor, target)
    tokenizer.save_pretrained(str(target))
    return str(target)


def start_rollout_engines(config: Config, model_dir: str) -> list:
    from stages.scoring.vllm_engines import engine_specs, start_engines

    specs = engine_specs(config.rollout, model_dir, config.run.seed, config.deepspeed.precision, config.ray.use_gpu)
    return start_engines(config.ray, config.rollout, specs)


def ppo(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. models, tokenizer, prompts, pretraining text: checked before Ray starts
    paths = model_paths(config, run_dir)
    tokenizer_dir = tokenizer_path(config.model, paths["actor"])
    tokenizer = load_tokenizer(tokenizer_dir)
    prompts, validation, tasks = prompt_pools(config, tokenizer)
    pretraining = pretraining_text(config.data.pretrain, config.world)["text"] if config.ppo.ptx_coef > 0 else []
    # 2. vLLM engines (rollout.engine vllm), started from the actor's starting weights, then train on the Ray workers
    engines = start_rollout_engines(config, engine_model_dir(paths["actor"], tokenizer, run_dir.stage_dir(stage))) \
        if config.rollout.engine == "vllm" else None
    spec = PPOTrainingSpec(config=config, run_dir=str(run_dir.root), stage=stage, tokenizer=str(tokenizer_dir), prompts=prompts,
                           validation_prompts=validation, pretraining=pretraining, tasks=tasks, engines=engines, **paths)
    try:
        run_on_workers(config.ray, config.run.torch_threads, train_on_worker, spec, name=stage,
                       storage=run_dir.stage_dir(stage) / "ray")
    finally:
        if engines is not None:
            stop_engines(engines)
    # 3. DIR/ppo/model: the best policy within the KL budget, else the last one
    stage_dir = run_dir.stage_dir(stage)
    chosen = stage_dir / BEST_DIR if (stage_dir / BEST_DIR).is_dir() else stage_dir / "final"
    shutil.rmtree(stage_dir / "model.tmp", ignore_errors=True)
    shutil.copytree(chosen, stage_dir / "model.tmp")
    publish_dir(stage_dir / "model.tmp", run_dir.model_dir(stage))
    training = json.loads((stage_dir / "training.json").read_text())
    metrics = {f"ppo/{k}": float(v) for k, v in training.items()}
    return StageResult(outputs={"model": f"{stage}/model", "final": f"{stage}/final"}, metrics=metrics)

