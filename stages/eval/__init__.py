"""Stage `eval` (stage.py): every policy on held-out prompts, judged by the true score (tiny world) and
by reward models; writes the run's report (report.py)."""

from common.config import COMPARED_METHODS, SFT_COMPARED_METHODS, Config, method_stage
from common.graph import StageDeclaration
from common.inputs import require_dataset, require_model_dir

JUDGES = {"": "the true score", "rm_": "the reward model", "heldout_rm_": "the held-out reward model"}


def _input_replaced(config: Config, name: str) -> bool:
    if name == "rm":
        return config.eval.reward_model is not None or config.ppo.reward_model is not None
    return config.eval.policies is not None


def check_inputs(config: Config) -> None:
    require_dataset(config.eval.prompts, "eval.prompts")
    require_dataset(config.eval.heldout_text, "eval.heldout_text")
    for name, path in (config.eval.policies or {}).items():
        require_model_dir(path, f"eval.policies.{name}")
    require_model_dir(config.eval.reward_model, "eval.reward_model")
    require_model_dir(config.eval.heldout_reward_model, "eval.heldout_reward_model")
    require_model_dir(config.ppo.reward_model, "ppo.reward_model")


def _summary(metrics: dict[str, float]) -> list[str]:
    lines = []
    if "ppo/true_score" in metrics:
        lines.append(f"held-out true score (tiny world, 0 to 1.5): SFT {metrics['sft/true_score']:.3f} -> "
                     f"PPO-ptx {metrics['ppo/true_score']:.3f} (sampled {metrics['sft/sampled_true_score']:.3f} -> "
                     f"{metrics['ppo/sampled_true_score']:.3f}), KL to SFT {metrics['ppo/kl_to_sft']:.2f}")
    for prefix, judge in JUDGES.items():
        if f"ppo/{prefix}win_rate_vs_sft" in metrics:
            low, high = metrics[f"ppo/{prefix}win_rate_low"], metrics[f"ppo/{prefix}win_rate_high"]
            lines.append(f"PPO-ptx beats SFT on {100 * metrics[f'ppo/{prefix}win_rate_vs_sft']:.0f}% of held-out prompts "
                         f"by {judge} (95% interval {100 * low:.0f}-{100 * high:.0f}%)")
    if "ppo_no_ptx/lm_loss" in metrics:
        sft_loss = metrics["sft/lm_loss"]
        lines.append(f"pretraining LM loss against SFT: {metrics['ppo/lm_loss'] - sft_loss:+.4f} with ptx, "
                     f"{metrics['ppo_no_ptx/lm_loss'] - sft_loss:+.4f} without")
    if "ppo/overoptimisation_began" in metrics:
        peak = int(metrics["ppo/overoptimisation_peak_step"])
        lines.append(f"over-optimisation begins at PPO iteration {peak}: the true score of its samples falls from there while "
                     "the reward model's climbs" if metrics["ppo/overoptimisation_began"] else
                     f"over-optimisation: none shown in PPO's iterations (the true score of its samples highest around "
                     f"iteration {peak}; the report has the figures)")
    compared = [name for name in ("ppo", *map(method_stage, COMPARED_METHODS)) if f"{name}/win_rate_vs_sft" in metrics]
    if len(compared) > 1:
        lines.append("methods from the same SFT policy, held-out true score (win rate against SFT): " + ", ".join(
            f"{name} {metrics[f'{name}/true_score']:.3f} ({100 * metrics[f'{name}/win_rate_vs_sft']:.0f}%)" for name in compared))
    methods = [name for name in ("sft", *(f"sft_{m}" for m in SFT_COMPARED_METHODS)) if f"{name}/true_score" in metrics]
    if len(methods) > 1:
        lines.append("SFT methods, held-out true score (decoding ms per response): " + ", ".join(
            f"{name.removeprefix('sft_')} {metrics[f'{name}/true_score']:.3f} ({metrics[f'{name}/decode_ms']:.1f})"
            for name in methods))
    return lines


DECLARATION = StageDeclaration(
    name="eval",
    entry="stages.eval.stage:evaluate",
    inputs=("pretrain", "sft", "rm", "ppo", "ppo_no_ptx", *(f"sft_{m}" for m in SFT_COMPARED_METHODS),
            *map(method_stage, COMPARED_METHODS)),
    config_keys=("world", "model.name_or_path", "data.mixture", "eval", "rm.max_length", "ppo.reward_model", "rollout.engine",
                 "rollout.dtype"),
    outputs=("report", "policies", "responses"),
    headline=("ppo/win_rate_vs_sft",),
    # eval.policies and eval.reward_model evaluate models on disk instead of the pipeline's
    input_replaced=_input_replaced,
    check_inputs=check_inputs,
    summary=_summary,
)
