"""Stage `ppo` (stage.py): PPO-ptx against the reward model; `ppo_no_ptx`, the same body with the
pretraining mix off (ppo.ptx_coef = 0), enabled by eval.compare_without_ptx, so that the eval stage can
show what the ptx term saves (InstructGPT's "PPO" against "PPO-ptx"); and `ppo_<estimator>`, the same body
with a critic-free estimator and eval.compare_group_size samples per prompt, enabled by eval.compare_methods."""

from dataclasses import replace

from common.config import CRITIC_KEYS, ESTIMATORS, Config
from common.graph import StageDeclaration
from common.inputs import require_dataset, require_model_dir


def _input_replaced(config: Config, name: str) -> bool:
    return (config.ppo.actor if name == "sft" else config.ppo.reward_model) is not None


def check_inputs(config: Config) -> None:
    for key in ("actor", "reference", "reward_model", "critic"):
        require_model_dir(getattr(config.ppo, key), f"ppo.{key}")
    require_dataset(config.ppo.prompts, "ppo.prompts")
    require_dataset(config.data.pretrain, "data.pretrain")


def without_ptx(config: Config) -> Config:
    return config.model_copy(update={"ppo": config.ppo.model_copy(update={"ptx_coef": 0.0})})


DECLARATION = StageDeclaration(
    name="ppo",
    entry="stages.ppo.stage:ppo",
    inputs=("sft", "rm"),
    config_keys=("world", "model.tokenizer", "data.pretrain", "ppo", "rollout"),
    outputs=("model", "final"),
    headline=("ppo/best_validation_score",),
    input_replaced=_input_replaced,
    check_inputs=check_inputs,
)

# the same stage with the pretraining mix off, enabled by eval.compare_without_ptx
NO_PTX_DECLARATION = replace(
    DECLARATION,
    name="ppo_no_ptx",
    enabled=lambda config: config.eval.compare_without_ptx,
    config_view=without_ptx,
)


def with_estimator(config: Config, estimator: str) -> Config:
    """The config of stage ppo_<estimator>: the pipeline's PPO-ptx (same reward model, episodes, KL and ptx) with
    a critic-free estimator on groups of eval.compare_group_size samples."""
    ppo = config.ppo.model_copy(update={"estimator": estimator, "group_size": config.eval.compare_group_size})
    return config.model_copy(update={"ppo": ppo})


def estimator_declaration(estimator: str) -> StageDeclaration:
    return replace(
        DECLARATION,
        name=f"ppo_{estimator}",
        enabled=lambda config: estimator in config.eval.compare_methods,
        config_keys=(*DECLARATION.config_keys, "eval.compare_group_size"),
        # what the config view replaces, and the critic it does not build
        ignored=lambda config: tuple(f"ppo.{key}" for key in ("estimator", "group_size", *CRITIC_KEYS)),
        config_view=lambda config: with_estimator(config, estimator),
    )


ESTIMATOR_DECLARATIONS = tuple(estimator_declaration(e) for e in ESTIMATORS if e != "gae")
