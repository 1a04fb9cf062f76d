"""Stage `pretrain`: the tiny world's base model, trained from scratch (stage.py)."""

from common.graph import StageDeclaration
from common.inputs import require_dataset

DECLARATION = StageDeclaration(
    name="pretrain",
    entry="stages.pretrain.stage:pretrain",
    inputs=(),
    # of the tiny world, only what its corpus is drawn from: changing the demonstrator or the splits
    # retrains SFT onwards, not the base model
    config_keys=("model", "world.seed", "world.corpus_docs", "data.pretrain", "pretrain"),
    outputs=("model",),
    headline=("final_loss",),
    # a real base model (model.name_or_path) skips it
    enabled=lambda config: config.model.name_or_path is None,
    check_inputs=lambda config: require_dataset(config.data.pretrain, "data.pretrain"),
)
