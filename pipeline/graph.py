"""The stage graph: each stage by name, the stages whose outputs it reads, and the config keys that
decide its outputs. A stage's fingerprint hashes those keys and its inputs' fingerprints, so a config
change reruns the stage and everything downstream of it, and nothing else."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from pipeline.config import Config

# Keys that change every training stage's result (num_workers sets the global batch size). How the
# work is placed does not: addresses, threads, restart budgets, ZeRO stage and offload, so a stage
# can move to ZeRO-3 or offload when memory runs short without invalidating what came before.
_COMMON_KEYS = ("run.seed", "deepspeed.precision", "ray.num_workers")


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    config_keys: tuple[str, ...]
    enabled: Callable[[Config], bool] = lambda config: True
    # an input the config makes unnecessary (e.g. a model given as a path instead of the stage's output)
    input_replaced: Callable[[Config, str], bool] = lambda config, name: False
    # parts of its config keys the stage does not read, so that changing them does not rerun it
    ignored: Callable[[Config], tuple[str, ...]] = lambda config: ()


def _sft_ignored(config: Config) -> tuple[str, ...]:
    return tuple(f"sft.{method}" for method in ("bitune", "cmlm") if method != config.sft.method)


# what the comparison stages sft_<method> do not read: the pipeline's method, its pretraining mix and its LoRA
_SFT_METHOD_IGNORED = {
    "lora": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.cmlm", "sft.bitune.variant", "sft.bitune.s_init",
             "sft.bitune.ablation"),
    "bitune": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.cmlm"),
    "cmlm": ("sft.method", "sft.pretrain_mix", "model.lora", "sft.bitune"),
}


def _ppo_input_replaced(config: Config, name: str) -> bool:
    return (config.ppo.actor if name == "sft" else config.ppo.reward_model) is not None


def _eval_input_replaced(config: Config, name: str) -> bool:
    if name == "rm":
        return config.eval.reward_model is not None or config.ppo.reward_model is not None
    return config.eval.policies is not None


_SFT_KEYS = ("model", "world", "data.sft", "data.mixture", "data.pretrain", "sft")
SFT_METHODS = ("lora", "bitune", "cmlm")  # eval.compare_sft_methods

STAGES: tuple[Stage, ...] = (
    # pretrain builds the tiny world's base model; a real base model (model.name_or_path) skips it
    Stage("pretrain", (), ("model", "world", "data.pretrain", "pretrain"), lambda c: c.model.name_or_path is None),
    Stage("sft", ("pretrain",), _SFT_KEYS, ignored=_sft_ignored),
    # other SFT methods beside the pipeline's, for the eval stage's comparison
    *(Stage(f"sft_{method}", ("pretrain",), _SFT_KEYS, lambda c, m=method: m in c.eval.compare_sft_methods,
            ignored=lambda c, m=method: _SFT_METHOD_IGNORED[m]) for method in SFT_METHODS),
    # sample draws K candidates per prompt from the SFT policy into the ranking database; label has them
    # ranked (simulated annotators, or people in `rlhf label serve`) and exports the rankings; a
    # rankings file skips both
    Stage("sample", ("sft",), ("world", "sample", "labeling.select", "labeling.embedder", "labeling.dedup_threshold",
                               "labeling.pool_factor"), lambda c: c.data.rankings is None,
          input_replaced=lambda c, name: c.sample.policies is not None),
    Stage("label", ("sample",), ("labeling",), lambda c: c.data.rankings is None),
    Stage("rm", ("sft", "label"), ("world", "data.sft", "data.mixture", "data.rankings", "rm"),
          input_replaced=lambda c, name: name == "sft" and c.rm.model is not None),
    Stage("ppo", ("sft", "rm"), ("world", "data.pretrain", "ppo"), input_replaced=_ppo_input_replaced),
    # the same PPO without the pretraining mix, for the eval stage's comparison
    Stage(
        "ppo_no_ptx",
        ("sft", "rm"),
        ("world", "data.pretrain", "ppo"),
        lambda c: c.eval.compare_without_ptx,
        input_replaced=_ppo_input_replaced,
    ),
    # eval.policies and eval.reward_model evaluate models on disk instead of the pipeline's
    Stage("eval", ("pretrain", "sft", "rm", "ppo", "ppo_no_ptx", *(f"sft_{method}" for method in SFT_METHODS)),
          ("world", "data.mixture", "eval", "rm.max_length", "ppo.reward_model"), input_replaced=_eval_input_replaced),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def enabled_stages(config: Config) -> list[Stage]:
    return [s for s in STAGES if s.enabled(config)]


def inputs_of(name: str, config: Config) -> list[str]:
    """The enabled stages whose outputs `name` reads."""
    enabled = {s.name for s in enabled_stages(config)}
    this = stage(name)
    return [i for i in this.inputs if i in enabled and not this.input_replaced(config, i)]


def _value(config: Config, dotted: str):
    node = config.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def _without(values: dict, dotted: tuple[str, ...]) -> dict:
    """`values` (key -> value, a value a nested dict) without the parts named by dotted paths."""
    for path in dotted:
        for key in values:
            if path.startswith(key + "."):
                node = values[key]
                *parents, last = path[len(key) + 1 :].split(".")
                for part in parents:
                    node = node[part]
                node.pop(last, None)
            elif path == key:
                values[key] = None
    return values


def fingerprints(config: Config) -> dict[str, str]:
    """Fingerprint of every enabled stage, in graph order."""
    result: dict[str, str] = {}
    for s in enabled_stages(config):
        payload = {
            "stage": s.name,
            "config": _without({key: _value(config, key) for key in _COMMON_KEYS + s.config_keys}, s.ignored(config)),
            "inputs": {i: result[i] for i in inputs_of(s.name, config)},
        }
        result[s.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return result


def require_inputs(name: str, config: Config, run_dir) -> None:
    """InputError unless every input of stage `name` is done in `run_dir` (a RunDir) with this config."""
    from pipeline.errors import InputError

    prints = fingerprints(config)
    if name not in prints:
        raise InputError(f"stage {name} is disabled by this config")
    for needed in inputs_of(name, config):
        if not run_dir.is_done(needed, prints[needed]):
            raise InputError(
                f"stage {name} needs stage {needed} done with this config in {run_dir.root}; run it first "
                f"(rlhf run --run-dir {run_dir.root} --stages {needed})"
            )
