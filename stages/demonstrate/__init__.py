"""Stage `demonstrate` (stage.py): people write SFT demonstrations of the tiny world's SFT prompts in the
app's Write tab; only in labeling.mode human with labeling.min_demonstrations > 0, and then `sft` trains
on them instead of the tiny world's demonstrator."""

from common.config import Config
from common.graph import StageDeclaration

# which prompts go in the Write tab's pool: the tiny world's SFT stream (world.demonstrations of it, unless
# labeling.demonstration_prompts says how many); the demonstrator's style and accuracy do not matter here
_PROMPT_KEYS = ("world.seed", "world.heldout_families", "world.heldout_instance_fraction", "world.demonstrations",
                "labeling.demonstration_prompts")


def _ignored(config: Config) -> tuple[str, ...]:
    return ("world.demonstrations",) if config.labeling.demonstration_prompts is not None else ()


def _summary(metrics: dict[str, float]) -> list[str]:
    written, people = metrics["demonstrate/demonstrations"], metrics["demonstrate/annotators"]
    return [f"SFT on {written:.0f} demonstrations people wrote (annotators: {people:.0f}), not the tiny world's demonstrator"]


DECLARATION = StageDeclaration(
    name="demonstrate",
    entry="stages.demonstrate.stage:demonstrate",
    inputs=(),
    config_keys=(*_PROMPT_KEYS, "labeling.database", "labeling.min_demonstrations"),
    outputs=("demonstrations",),
    headline=("demonstrate/demonstrations",),
    enabled=lambda config: config.labeling.people_demonstrate,
    ignored=_ignored,
    summary=_summary,
)
