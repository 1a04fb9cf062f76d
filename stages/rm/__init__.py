"""Stage `rm` (stage.py): the reward model on K-way rankings (InstructGPT Eq. 1)."""

from common.config import Config
from common.graph import StageDeclaration
from common.inputs import require_dataset, require_model_dir


def check_inputs(config: Config) -> None:
    require_model_dir(config.rm.model, "rm.model")
    require_dataset(config.data.rankings, "data.rankings")
    require_dataset(config.data.sft, "data.sft")


def _summary(metrics: dict[str, float]) -> list[str]:
    if "rm/heldout_accuracy" not in metrics:
        return []
    line = f"reward model held-out accuracy: {metrics['rm/heldout_accuracy']:.3f} against the labels"
    if "rm/true_order_accuracy" in metrics:
        line += (f" (ceiling {metrics['rm/heldout_ceiling_accuracy']:.3f}), "
                 f"{metrics['rm/true_order_accuracy']:.3f} against the tiny world's true order")
    return [line]


DECLARATION = StageDeclaration(
    name="rm",
    entry="stages.rm.stage:rm",
    # demonstrate: people's demonstrations, where they replace the demonstrator's, normalise the reward
    inputs=("sft", "label", "demonstrate"),
    config_keys=("world", "model.tokenizer", "data.sft", "data.mixture", "data.rankings", "rm"),
    outputs=("model",),
    headline=("rm/heldout_accuracy",),
    input_replaced=lambda config, name: name == "sft" and config.rm.model is not None,
    check_inputs=check_inputs,
    summary=_summary,
)
