"""Stage `sample` (stage.py): K candidates per prompt from the SFT policy into the ranking database."""

from common.graph import StageDeclaration

DECLARATION = StageDeclaration(
    name="sample",
    entry="stages.sample.stage:sample",
    inputs=("sft",),
    config_keys=("world", "sample", "labeling.select", "labeling.embedder", "labeling.dedup_threshold",
                 "labeling.pool_factor"),
    outputs=("candidates",),
    headline=("sample/prompts",),
    # a rankings file (data.rankings) skips sampling and labeling
    enabled=lambda config: config.data.rankings is None,
    input_replaced=lambda config, name: config.sample.policies is not None,
)
