"""Stage `sft` (stage.py) and the comparison stages `sft_lora`, `sft_bitune`, `sft_cmlm`: the same body
with another method (eval.compare_sft_methods), for the eval stage's comparison."""

from dataclasses import replace

from common.config import SFT_COMPARED_METHODS, Config
from common.graph import StageDeclaration
from common.inputs import require_dataset, require_model_dir, require_tokenizer_dir

CONFIG_KEYS = ("model", "world", "data.sft", "data.mixture", "data.pretrain", "sft")

# what the comparison stages sft_<method> do not read: the pipeline's method, its pretraining mix and its LoRA
_METHOD_IGNORED = {
    "lora": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.cmlm", "sft.bitune.variant", "sft.bitune.s_init",
             "sft.bitune.ablation"),
    "bitune": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.cmlm"),
    "cmlm": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.bitune"),
}


def with_method(config: Config, method: str) -> Config:
    """The config of the comparison stage sft_<method>: the pipeline's SFT with another method. Plain
    LoRA takes Bitune's adapter settings and, like Bitune, no pretraining mix, so the two differ in
    Bitune only."""
    if method == "lora":
        return config.model_copy(update={"model": config.model.model_copy(update={"lora": config.sft.bitune.lora}),
                                         "sft": config.sft.model_copy(update={"method": "causal_lm", "pretrain_mix": 0.0})})
    return config.model_copy(update={"sft": config.sft.model_copy(update={"method": method})})


def check_inputs(config: Config) -> None:
    require_model_dir(config.model.name_or_path, "model.name_or_path")
    require_tokenizer_dir(config.model.tokenizer, "model.tokenizer")
    require_dataset(config.data.sft, "data.sft")
    require_dataset(config.data.pretrain, "data.pretrain")
    require_model_dir(config.sft.cmlm.encoder, "sft.cmlm.encoder")


def _sft_summary(metrics: dict[str, float]) -> list[str]:
    if "heldout_exact_match" not in metrics:
        return []
    return [f"held-out exact match (tiny world): base {metrics['base/heldout_exact_match']:.3f} -> "
            f"SFT {metrics['heldout_exact_match']:.3f}"]


DECLARATION = StageDeclaration(
    name="sft",
    entry="stages.sft.stage:sft",
    # demonstrate: only where people write the demonstrations (labeling.mode human, min_demonstrations > 0)
    inputs=("pretrain", "demonstrate"),
    config_keys=CONFIG_KEYS,
    outputs=("model",),
    headline=("heldout_exact_match",),
    ignored=lambda config: tuple(f"sft.{m}" for m in ("bitune", "cmlm") if m != config.sft.method),
    check_inputs=check_inputs,
    summary=_sft_summary,
)


def method_declaration(method: str) -> StageDeclaration:
    """Stage sft_<method>: `sft`'s body on the config with_method gives, enabled by eval.compare_sft_methods."""
    return replace(
        DECLARATION,
        name=f"sft_{method}",
        enabled=lambda config: method in config.eval.compare_sft_methods,
        ignored=lambda config: _METHOD_IGNORED[method],
        config_view=lambda config: with_method(config, method),
        summary=lambda metrics: [],  # `sft` reports the held-out figures of the shared base once
    )


METHOD_DECLARATIONS = tuple(method_declaration(method) for method in SFT_COMPARED_METHODS)
