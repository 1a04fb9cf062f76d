"""Stage `ppo`: PPO-ptx against the reward model with a per-token KL penalty to the SFT policy and
the pretraining-mix term (InstructGPT section 3.5, Eq. 2; App. C.4). The loop is stages/ppo_trainer.py.

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


def model_paths(config: Config, run_dir: RunDir) -> dict[str, str]:
    """actor, reference, reward_model, critic: the given local paths, or the pipeline's outputs."""
    ppo = config.ppo
    actor = check_model_dir(ppo.actor, "ppo.actor") if ppo.actor else require_causal_lm(run_dir.model_dir("sft"), "ppo")
    reward_model = check_model_dir(ppo.reward_model, "ppo.reward_model") if ppo.reward_model else run_dir.model_dir("rm")
    return {
        "actor": str(actor),
        "reference": str(check_model_dir(ppo.reference, "ppo.reference") if ppo.reference else actor),
        "reward_model": str(reward_model),
        "critic": str(check_model_dir(ppo.critic, "ppo.critic") if ppo.critic else reward_model),
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


def ppo(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    # 1. models, tokenizer, prompts, pretraining text: checked before Ray starts
    paths = model_paths(config, run_dir)
    tokenizer_dir = tokenizer_path(config.model, paths["actor"])
    tokenizer = load_tokenizer(tokenizer_dir)
    prompts, validation, tasks = prompt_pools(config, tokenizer)
    pretraining = pretraining_text(config.data.pretrain, config.world)["text"] if config.ppo.ptx_coef > 0 else []
    # 2. train on the Ray workers
    spec = PPOTrainingSpec(config=config, run_dir=str(run_dir.root), stage=stage, tokenizer=str(tokenizer_dir), prompts=prompts,
                 validation_prompts=validation, pretraining=pretraining, tasks=tasks, **paths)
    run_on_workers(config.ray, config.run.torch_threads, train_on_worker, spec, name=stage, storage=run_dir.stage_dir(stage) / "ray")
    # 3. DIR/ppo/model: the best policy within the KL budget, else the last one
    stage_dir = run_dir.stage_dir(stage)
    chosen = stage_dir / BEST_DIR if (stage_dir / BEST_DIR).is_dir() else stage_dir / "final"
    shutil.rmtree(stage_dir / "model.tmp", ignore_errors=True)
    shutil.copytree(chosen, stage_dir / "model.tmp")
    publish_dir(stage_dir / "model.tmp", run_dir.model_dir(stage))
    training = json.loads((stage_dir / "training.json").read_text())
    metrics = {f"ppo/{k}": float(v) for k, v in training.items()}
    return StageResult(outputs={"model": f"{stage}/model", "final": f"{stage}/final"}, metrics=metrics)

