"""Diverse against random prompt selection for labeling (labeling.select) at an equal labeling budget.

For each way of choosing and each seed, a real `sample -> label -> rm` run from a finished run's SFT
policy: the same number of prompts ranked by the same simulated annotators, the reward model trained
as the pipeline trains it. Then every reward model on one common test set, which no selection saw:
K candidates sampled from SFT for the tiny world's held-out prompts, ordered by the world's true
score. The figure is pairwise accuracy there, over the pairs whose true scores differ (a tie in the
reward model's scores counts half); it goes into the run's report (DIR/eval/report.md) as well.

    python -m bench.prompt_selection --from runs/tiny [--budget 300] [--seeds 0 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

from bench import record
from common.files import atomic_write_json

WAYS = ("random", "diverse")


def pairwise_accuracy(scores: list[list[float]], truth: list[list[float]]) -> float:
    """Over every prompt's candidate pairs with different true scores: the share the scores order as the
    truth does (a tie in the scores counts half)."""
    right, pairs = 0.0, 0
    for predicted, true in zip(scores, truth):
        for i, j in itertools.combinations(range(len(true)), 2):
            if true[i] == true[j]:
                continue
            pairs += 1
            if predicted[i] == predicted[j]:
                right += 0.5
            elif (predicted[i] > predicted[j]) == (true[i] > true[j]):
                right += 1.0
    if pairs == 0:
        raise ValueError("pairwise_accuracy: no pair of candidates differs in true score")
    return right / pairs


def test_set(source: Path, k: int, per_family: int, seed: int) -> tuple[list[str], list[list[str]], list[list[float]]]:
    """Held-out prompts of the training families, K candidates sampled from SFT for each, their true scores."""
    import torch
    from transformers import AutoModelForCausalLM

    from common.config import load_config
    from stages.data.datasets import make_world
    from stages.models.loading import load_tokenizer
    from stages.scoring.evaluation import generate
    from tiny_world import true_score

    world = make_world(load_config(source / "config.yaml").world)
    examples = [e for e in world.heldout_examples(per_family) if e.task.family in world.train_families]
    model = AutoModelForCausalLM.from_pretrained(source / "sft" / "model", local_files_only=True)
    torch.manual_seed(seed)
    flat = generate(model, load_tokenizer(source / "sft" / "model"), [e.prompt for e in examples for _ in range(k)], do_sample=True)
    candidates = [flat[i * k : (i + 1) * k] for i in range(len(examples))]
    truth = [[true_score(e.task, c) for c in cs] for e, cs in zip(examples, candidates)]
    return [e.prompt for e in examples], candidates, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="a run directory with sft done")
    parser.add_argument("--out", help="where the runs go (default: <from>-prompt-selection)")
    parser.add_argument("--budget", type=int, default=300, help="prompts ranked per run (the labeling budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run")
    args = parser.parse_args()
    source = Path(args.source).resolve()
    out = Path(args.out or f"{source}-prompt-selection").resolve()
    sft = source / "sft" / "model"

    # 1. one sample -> label -> rm run per way of choosing and seed, all from the same SFT policy
    for seed, way in itertools.product(args.seeds, WAYS):
        overrides = [f"sample.policies={{sft: {sft}}}", f"rm.model={sft}", f"labeling.select={way}",
                     f"sample.prompts={args.budget}", f"run.seed={seed}", *args.set]
        command = [sys.executable, "-m", "pipeline", "run", str(source / "config.yaml"), "--stages", "sample,label,rm",
                   "--run-dir", str(out / f"{way}-{seed}"), "--resume", *sum((["--set", s] for s in overrides), [])]
        print(f"[bench] {way}, seed {seed}: {args.budget} prompts ranked", flush=True)
        subprocess.run(command, check=True)

    # 2. every reward model on the common test set
    from stages.scoring.evaluation import judge

    prompts, candidates, truth = test_set(source, k=4, per_family=40, seed=1234)
    k = len(candidates[0])
    flat_prompts = [p for p in prompts for _ in range(k)]
    accuracy: dict[str, list[float]] = {way: [] for way in WAYS}
    for seed, way in itertools.product(args.seeds, WAYS):
        scores = judge(out / f"{way}-{seed}" / "rm" / "model", flat_prompts, {"c": [c for cs in candidates for c in cs]}, 128)["c"]
        accuracy[way].append(pairwise_accuracy([scores[i * k : (i + 1) * k] for i in range(len(prompts))], truth))

    print(f"\nreward-model pairwise accuracy against the true order, {len(prompts)} held-out prompts x {k} SFT candidates")
    print(f"{'selection':<10}{'budget':>8}" + "".join(f"{'seed ' + str(s):>9}" for s in args.seeds) + f"{'mean':>9}")
    means = {}
    for way in WAYS:
        means[way] = sum(accuracy[way]) / len(accuracy[way])
        print(f"{way:<10}{args.budget:>8}" + "".join(f"{a:>9.3f}" for a in accuracy[way]) + f"{means[way]:>9.3f}")
    rows = [{"selection": way, "ranked prompts": args.budget, "accuracy per seed": accuracy[way], "mean accuracy": means[way]}
            for way in WAYS]
    atomic_write_json(out / "prompt_selection.json", rows)  # the benchmark's own output, beside its runs
    print(f"figures: {out / 'prompt_selection.json'}")
    record("prompt_selection", f"RM accuracy, random selection ({args.budget} prompts)", means["random"], "pairs, true order")
    record("prompt_selection", f"RM accuracy, diverse selection ({args.budget} prompts)", means["diverse"], "pairs, true order",
           "> random")


if __name__ == "__main__":
    main()
