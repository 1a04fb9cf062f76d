"""Stage `label` (stage.py): the candidates ranked, by simulated annotators or by people, and exported."""

from common.config import Config
from common.graph import StageDeclaration

# what the sample stage reads of the labeling section (which prompts get candidates): it reruns this stage
_SAMPLE_KEYS = ("labeling.select", "labeling.embedder", "labeling.dedup_threshold", "labeling.pool_factor")
_SIMULATION_KEYS = ("labeling.simulated_annotators", "labeling.annotator_agreement", "labeling.annotator_noise")
_PEOPLE_KEYS = ("labeling.min_rankings", "labeling.reservation_minutes")
# what the demonstrate stage reads of it (people's demonstrations for SFT): no ranking depends on them
_DEMONSTRATION_KEYS = ("labeling.min_demonstrations", "labeling.demonstration_prompts")


def _ignored(config: Config) -> tuple[str, ...]:
    """Each mode's keys matter to it alone: simulated annotators' noise means nothing to people's rankings."""
    return _SAMPLE_KEYS + _DEMONSTRATION_KEYS + (_SIMULATION_KEYS if config.labeling.mode == "human" else _PEOPLE_KEYS)


DECLARATION = StageDeclaration(
    name="label",
    entry="stages.label.stage:label",
    inputs=("sample",),
    config_keys=("labeling",),
    outputs=("rankings", "snapshot"),
    headline=("label/pairwise_agreement",),
    enabled=lambda config: config.data.rankings is None,
    ignored=_ignored,
)
