"""The stage graph, in general: what a stage declares, and the fingerprints that follow from it.

Each stage package declares itself (`stages/<name>/__init__.py`: a `StageDeclaration`); the graph of
the pipeline is those declarations in order (`stages/registry.py`). A stage's fingerprint hashes the
config keys it reads and its inputs' fingerprints, so a config change reruns the stage and everything
downstream of it, and nothing else. This module knows no stage by name.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from common.config import Config
from common.errors import InputError

# Keys that change every training stage's result (num_workers sets the global batch size). How the
# work is placed does not: addresses, threads, restart budgets, ZeRO stage and offload, so a stage
# can move to ZeRO-3 or offload when memory runs short without invalidating what came before.
COMMON_KEYS = ("run.seed", "deepspeed.precision", "ray.num_workers")


def _always(config: Config) -> bool:
    return True


def _never_replaced(config: Config, name: str) -> bool:
    return False


def _nothing_ignored(config: Config) -> tuple[str, ...]:
    return ()


def _same_config(config: Config) -> Config:
    return config


def _nothing_to_check(config: Config) -> None:
    return None


def _no_summary(metrics: dict[str, float]) -> list[str]:
    return []


@dataclass(frozen=True)
class StageDeclaration:
    """What a stage reads and writes, for the orchestration (graph, status, runner) to read.

    entry: "module:function", the stage body `fn(config, run_dir, resume, stage) -> StageResult`;
        `python -m stages.<name>` runs it through the stage lifecycle.
    inputs: stages whose outputs it reads; config_keys: dotted config keys whose values decide its outputs.
    outputs: the names the body must return (paths relative to the run directory, in the manifest).
    headline: metric names `rlhf status` shows, the first one first.
    """

    name: str
    entry: str
    inputs: tuple[str, ...]
    config_keys: tuple[str, ...]
    outputs: tuple[str, ...]
    headline: tuple[str, ...] = ()
    enabled: Callable[[Config], bool] = _always
    # an input the config makes unnecessary (e.g. a model given as a path instead of the stage's output)
    input_replaced: Callable[[Config, str], bool] = _never_replaced
    # parts of its config keys the stage does not read, so that changing them does not rerun it
    ignored: Callable[[Config], tuple[str, ...]] = _nothing_ignored
    # the config the body sees (a comparison stage runs another stage's body on a changed config)
    config_view: Callable[[Config], Config] = _same_config
    # cheap checks of the files and models the config names (common/inputs.py), run before Ray or torch start
    check_inputs: Callable[[Config], None] = _nothing_to_check
    # lines for the end of `rlhf run`, from the stage's manifest metrics
    summary: Callable[[dict[str, float]], list[str]] = _no_summary


def _value(dumped: dict, dotted: str):
    node = dumped
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


class StageGraph:
    """The pipeline's stages in run order."""

    def __init__(self, stages: tuple[StageDeclaration, ...]):
        names = [s.name for s in stages]
        for index, declared in enumerate(stages):
            if names.count(declared.name) > 1:
                raise ValueError(f"stage {declared.name} is declared twice")
            for needed in declared.inputs:
                if needed not in names[:index]:
                    raise ValueError(f"stage {declared.name} reads {needed}, which is not declared before it")
        self.stages = stages
        self.names = tuple(names)

    def __getitem__(self, name: str) -> StageDeclaration:
        for declared in self.stages:
            if declared.name == name:
                return declared
        raise KeyError(name)

    def enabled(self, config: Config) -> list[StageDeclaration]:
        return [s for s in self.stages if s.enabled(config)]

    def inputs_of(self, name: str, config: Config) -> list[str]:
        """The enabled stages whose outputs `name` reads."""
        enabled = {s.name for s in self.enabled(config)}
        this = self[name]
        return [i for i in this.inputs if i in enabled and not this.input_replaced(config, i)]

    def fingerprints(self, config: Config) -> dict[str, str]:
        """Fingerprint of every enabled stage, in graph order."""
        dumped = config.model_dump(mode="json")
        result: dict[str, str] = {}
        for s in self.enabled(config):
            payload = {
                "stage": s.name,
                "config": _without({key: copy.deepcopy(_value(dumped, key)) for key in COMMON_KEYS + s.config_keys},
                                   s.ignored(config)),
                "inputs": {i: result[i] for i in self.inputs_of(s.name, config)},
            }
            result[s.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        return result

    def require_inputs(self, name: str, config: Config, run_dir) -> None:
        """InputError unless every input of stage `name` is done in `run_dir` (a RunDir) with this config."""
        prints = self.fingerprints(config)
        if name not in prints:
            raise InputError(f"stage {name} is disabled by this config")
        for needed in self.inputs_of(name, config):
            if not run_dir.is_done(needed, prints[needed]):
                raise InputError(
                    f"stage {name} needs stage {needed} done with this config in {run_dir.root}; run it first "
                    f"(rlhf run --run-dir {run_dir.root} --stages {needed})"
                )
