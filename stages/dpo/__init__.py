"""Stage `dpo` (stage.py): DPO on the same K-way rankings as the reward model, from the same SFT policy,
for the eval stage's comparison of methods (enabled by `dpo` in eval.compare_methods)."""

from common.config import Config
from common.graph import StageDeclaration
from common.inputs import require_dataset, require_model_dir


def check_inputs(config: Config) -> None:
    require_model_dir(config.dpo.model, "dpo.model")
    require_model_dir(config.dpo.reference, "dpo.reference")
    require_dataset(config.data.rankings, "data.rankings")
    require_dataset(config.data.pretrain, "data.pretrain")


def _summary(metrics: dict[str, float]) -> list[str]:
    if "dpo/heldout_accuracy" not in metrics:
        return []
    return [f"DPO implicit reward, held-out ranking accuracy: {metrics['dpo/heldout_accuracy']:.3f} against the labels"]


DECLARATION = StageDeclaration(
    name="dpo",
    entry="stages.dpo.stage:dpo",
    inputs=("sft", "label"),
    # rm.heldout_fraction: DPO trains on the reward model's training prompts and is scored on its held-out ones
    config_keys=("world", "model.tokenizer", "data.rankings", "data.pretrain", "rm.heldout_fraction", "dpo"),
    outputs=("model",),
    headline=("dpo/heldout_accuracy",),
    enabled=lambda config: "dpo" in config.eval.compare_methods,
    input_replaced=lambda config, name: name == "sft" and config.dpo.model is not None,
    ignored=lambda config: () if config.dpo.ptx_coef > 0 else ("data.pretrain", "dpo.ptx_per_prompt"),
    check_inputs=check_inputs,
    summary=_summary,
)
