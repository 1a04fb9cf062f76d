"""The pipeline's stages in run order, from each stage package's declaration; `run(name)` is what
`python -m stages.<name>` does. The orchestration (pipeline/) knows the stages through GRAPH alone."""

from __future__ import annotations

import importlib

from common.graph import StageGraph
from stages import demonstrate, dpo, label, ppo, pretrain, rm, sample, sft
from stages import eval as evaluation

GRAPH = StageGraph((
    pretrain.DECLARATION,
    demonstrate.DECLARATION,
    sft.DECLARATION,
    *sft.METHOD_DECLARATIONS,
    sample.DECLARATION,
    label.DECLARATION,
    rm.DECLARATION,
    ppo.DECLARATION,
    ppo.NO_PTX_DECLARATION,
    *ppo.ESTIMATOR_DECLARATIONS,
    dpo.DECLARATION,
    evaluation.DECLARATION,
))


def run(name: str, argv: list[str] | None = None) -> None:
    """`python -m stages.<name> --config FILE --run-dir DIR`: the stage's body under the stage lifecycle."""
    from stages.runtime.lifecycle import run_stage

    declared = GRAPH[name]
    module, function = declared.entry.split(":")

    def body(*args):
        # imported after the config and the inputs are checked: the body's imports (torch, transformers,
        # DeepSpeed) take 5-10 s, which a refused run should not wait for
        return getattr(importlib.import_module(module), function)(*args)

    run_stage(GRAPH, declared, body, argv)
