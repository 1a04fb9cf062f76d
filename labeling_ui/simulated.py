"""Simulated annotators for the tiny world: they rank K candidates as a human labeler would, by the
world's hidden preference (the true score) blurred by each annotator's own noise.

The noise is tuned so that two annotators agree on about 73% of the pairs they both order, as
InstructGPT's labelers did (72.6%). Identical responses are ties: one tier.
"""

from __future__ import annotations

import random
from itertools import combinations

from tiny_world import Task, true_score

# Gaussian noise on the true score (0 to 1.5) that gives ~73% pairwise inter-annotator agreement
# on candidates sampled from the demonstrator (tests/test_simulated_annotators.py measures it).
DEFAULT_NOISE = 0.38


class SimulatedAnnotator:
    def __init__(self, annotator_id: str, seed: int = 0, noise: float = DEFAULT_NOISE):
        self.annotator_id = annotator_id
        self.noise = noise
        self._rng = random.Random(f"{seed}:{annotator_id}")

    def rank(self, task: Task, candidates: list[str]) -> list[list[int]]:
        """Tiers of candidate indices, best first; identical responses share a tier."""
        perceived: dict[str, float] = {}
        for text in candidates:
            if text not in perceived:
                perceived[text] = true_score(task, text) + self._rng.gauss(0.0, self.noise)
        order = sorted(perceived, key=perceived.__getitem__, reverse=True)
        return [[i for i, text in enumerate(candidates) if text == best] for best in order]


def pair_orders(tiers: list[list[int]]) -> dict[tuple[int, int], int]:
    """For each strictly ordered pair (i < j): +1 if i is preferred, -1 if j is."""
    rank_of = {c: r for r, tier in enumerate(tiers) for c in tier}
    return {
        (i, j): (1 if rank_of[i] < rank_of[j] else -1)
        for i, j in combinations(sorted(rank_of), 2)
        if rank_of[i] != rank_of[j]
    }


def pairwise_agreement(rankings_a: list[list[list[int]]], rankings_b: list[list[list[int]]]) -> float:
    """Fraction of pairs ordered by both annotators on which they agree (ties excluded)."""
    agree = total = 0
    for tiers_a, tiers_b in zip(rankings_a, rankings_b, strict=True):
        orders_a, orders_b = pair_orders(tiers_a), pair_orders(tiers_b)
        for pair in orders_a.keys() & orders_b.keys():
            total += 1
            agree += orders_a[pair] == orders_b[pair]
    return agree / total if total else float("nan")
