"""Stage `sample` (stage.py): K candidates per prompt from the SFT policy into the ranking database."""

from common.config import Config
from common.graph import StageDeclaration
from common.inputs import require_causal_lm_for_vllm, require_dataset, require_model_dir


def check_inputs(config: Config) -> None:
    require_dataset(config.sample.prompt_file, "sample.prompt_file")
    for name, path in (config.sample.policies or {}).items():
        require_model_dir(path, f"sample.policies.{name}")
        if config.rollout.engine == "vllm":
            require_causal_lm_for_vllm(path, f"sample.policies.{name}")
    require_model_dir(config.labeling.embedder, "labeling.embedder")


DECLARATION = StageDeclaration(
    name="sample",
    entry="stages.sample.stage:sample",
    inputs=("sft",),
    config_keys=("world", "sample", "rollout.engine", "rollout.dtype", "labeling.select", "labeling.embedder", "labeling.dedup_threshold",
                 "labeling.pool_factor"),
    outputs=("candidates",),
    headline=("sample/prompts",),
    # a rankings file (data.rankings) skips sampling and labeling
    enabled=lambda config: config.data.rankings is None,
    input_replaced=lambda config, name: config.sample.policies is not None,
    check_inputs=check_inputs,
)
