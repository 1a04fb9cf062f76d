"""Stage `label` (stage.py): the candidates ranked, by simulated annotators or by people, and exported."""

from common.graph import StageDeclaration

DECLARATION = StageDeclaration(
    name="label",
    entry="stages.label.stage:label",
    inputs=("sample",),
    config_keys=("labeling",),
    outputs=("rankings", "snapshot"),
    headline=("label/pairwise_agreement",),
    enabled=lambda config: config.data.rankings is None,
)
