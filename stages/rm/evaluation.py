"""Held-out diagnostics of a reward model, from its scores of each held-out group's candidates.

Against the labels: pairwise accuracy (overall and by K), the ranking loss, the mean reward of the
chosen and of the rejected response of each pair. For the tiny world, also against the world's true
order (what PPO will really be judged by), its ceiling (the true score's own accuracy on the same
labels), and accuracy by task family and by pair type: pairs that differ in correctness, and pairs
equally correct that differ only in style. Where the RM is near 0.5, PPO can game it.

A tie in score counts half a correct answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

import torch

from stages.core.ranking import ranking_loss, strict_pairs
from stages.data.rankings import RankingGroup
from tiny_world import Task, exact_match, true_score


def _agreement(better: float, worse: float) -> float:
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


class _Tally:
    def __init__(self):
        self.hits: defaultdict[str, float] = defaultdict(float)
        self.counts: defaultdict[str, int] = defaultdict(int)

    def add(self, name: str, hit: float) -> None:
        self.hits[name] += hit
        self.counts[name] += 1

    def rates(self) -> dict[str, float]:
        return {name: self.hits[name] / self.counts[name] for name in self.counts}


def label_metrics(groups: Sequence[RankingGroup], scores: Sequence[Sequence[float]], margin: float = 0.0) -> dict[str, float]:
    """Accuracy, loss and chosen/rejected means against the annotators' labels."""
    tally = _Tally()
    chosen, rejected = [], []
    for group, group_scores in zip(groups, scores, strict=True):
        for w, l in strict_pairs(group.tiers):
            hit = _agreement(group_scores[w], group_scores[l])
            tally.add("rm/heldout_accuracy", hit)
            tally.add(f"rm/heldout_accuracy/k{len(group.responses)}", hit)
            if group.annotator_id is not None:
                tally.add(f"rm/heldout_accuracy/annotator/{group.annotator_id}", hit)
            chosen.append(group_scores[w])
            rejected.append(group_scores[l])
    loss = ranking_loss([torch.tensor(s, dtype=torch.float64) for s in scores], [g.tiers for g in groups], margin).loss
    return {
        **tally.rates(),
        "rm/heldout_loss": float(loss),
        "rm/heldout_pairs": len(chosen),
        "rm/heldout_chosen_reward": sum(chosen) / len(chosen),
        "rm/heldout_rejected_reward": sum(rejected) / len(rejected),
    }


def calibration_pairs(groups: Sequence[RankingGroup], scores: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """For every strictly ordered pair (i, j), i < j in candidate order: the reward model's predicted
    probability that i is preferred, sigmoid(r_i - r_j), and whether the label prefers it (1 or 0)."""
    predicted, observed = [], []
    for group, group_scores in zip(groups, scores, strict=True):
        better = set(strict_pairs(group.tiers))
        for i, j in combinations(range(len(group.responses)), 2):
            if (i, j) in better or (j, i) in better:
                predicted.append(1.0 / (1.0 + math.exp(group_scores[j] - group_scores[i])))
                observed.append(1.0 if (i, j) in better else 0.0)
    return predicted, observed


def world_metrics(groups: Sequence[RankingGroup], scores: Sequence[Sequence[float]], tasks: dict[str, Task]) -> dict[str, float]:
    """The tiny world's diagnostics; `tasks` maps each prompt to its task."""
    tally = _Tally()
    for group, group_scores in zip(groups, scores, strict=True):
        task = tasks[group.prompt]
        truth = [true_score(task, r) for r in group.responses]
        for w, l in strict_pairs(group.tiers):
            tally.add("rm/heldout_ceiling_accuracy", _agreement(truth[w], truth[l]))
        for i, j in combinations(range(len(group.responses)), 2):
            if truth[i] == truth[j]:
                continue
            better, worse = (i, j) if truth[i] > truth[j] else (j, i)
            hit = _agreement(group_scores[better], group_scores[worse])
            same_correctness = exact_match(task, group.responses[i]) == exact_match(task, group.responses[j])
            tally.add("rm/true_order_accuracy", hit)
            tally.add(f"rm/true_order_accuracy/{task.family}", hit)
            tally.add(f"rm/true_order_accuracy/{'style' if same_correctness else 'correctness'}_pairs", hit)
    return tally.rates()
