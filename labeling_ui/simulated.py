"""Simulated annotators for the tiny world: they rank K candidates as a human labeler would, by the
world's hidden preference (the true score) blurred by each annotator's own noise.

Agreement depends on the candidates as much as on the noise (near-identical candidates are a coin
flip to any labeler), so the noise is calibrated on the candidates at hand (`calibrate_noise`) until
two annotators agree on about as many pairs as InstructGPT's labelers did (72.6%). Identical
responses are ties: one tier.
"""

from __future__ import annotations

import random
import secrets

from labeling_ui.agreement import pairwise_agreement
from tiny_world import Task, true_score

# Gaussian noise on the true score (0 to 1.5) that gives ~73% pairwise inter-annotator agreement
# on candidates sampled from the demonstrator (tests/test_simulated_annotators.py measures it).
DEFAULT_NOISE = 0.38
INSTRUCTGPT_AGREEMENT = 0.726


class SimulatedAnnotator:
    def __init__(self, annotator_id: str, seed: int = 0, noise: float = DEFAULT_NOISE):
        self.annotator_id = annotator_id
        self.seed = seed
        self.noise = noise

    def misjudgement(self, task: Task, text: str) -> float:
        """This annotator's error on this response to this task: a standard normal of its own, drawn from
        (seed, annotator, task, response) rather than from one stream, so that a ranking does not depend
        on the order the store shows the candidates and the tasks in (which follows the store's batch,
        and so every config key upstream): the same candidates get the same rankings."""
        return random.Random(f"{self.seed}:{self.annotator_id}:{task.key}:{text}").gauss(0.0, 1.0)

    def rank(self, task: Task, candidates: list[str]) -> list[list[int]]:
        """Tiers of candidate indices, best first; identical responses share a tier."""
        perceived = {text: true_score(task, text) + self.noise * self.misjudgement(task, text) for text in dict.fromkeys(candidates)}
        order = sorted(perceived, key=perceived.__getitem__, reverse=True)
        return [[i for i, text in enumerate(candidates) if text == best] for best in order]


def agreement_at(noise: float, ranked: list[tuple[Task, list[str]]], seed: int = 0) -> float:
    """Pairwise agreement of two annotators with this noise on these (task, candidates) sets."""
    a, b = SimulatedAnnotator("calibration-a", seed, noise), SimulatedAnnotator("calibration-b", seed, noise)
    rankings_a, rankings_b = [a.rank(t, c) for t, c in ranked], [b.rank(t, c) for t, c in ranked]
    agreement = pairwise_agreement(zip(rankings_a, rankings_b, strict=True))
    # NaN, not None, when nothing is ordered: no noise level then beats the target in the bisection
    return float("nan") if agreement is None else agreement


def calibrate_noise(ranked: list[tuple[Task, list[str]]], target: float = INSTRUCTGPT_AGREEMENT, seed: int = 0,
                    high: float = 4.0, iterations: int = 16) -> float:
    """The noise at which two annotators agree on `target` of the pairs of these candidates, by bisection.

    The same seeds at every noise level draw the same standard normals, so agreement falls with the
    noise smoothly enough to bisect."""
    if not 0.5 < target < 1.0:
        raise ValueError(f"target agreement must be in (0.5, 1), got {target}")
    low = 0.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if agreement_at(middle, ranked, seed) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def label_through_store(store, annotators: list[SimulatedAnnotator], tasks: dict[str, Task]) -> dict[str, int]:
    """The simulated annotators work through the store as people do in the app: each in turn takes
    its next task, ranks the candidates in their display order, rates each (Likert from its tier) and
    submits, until no task is left. A prompt whose candidates are all identical is skipped, as a
    person would skip it. `tasks` maps prompt text to its tiny-world task. Returns the counts."""
    from labeling_ui.schema import LabelingError

    users = {}
    for annotator in annotators:
        try:
            users[annotator.annotator_id] = store.user(annotator.annotator_id).id
        except LabelingError:
            users[annotator.annotator_id] = store.add_user(annotator.annotator_id, "annotator", secrets.token_hex(16))
    counts = {"submitted": 0, "skipped": 0}
    working = list(annotators)
    while working:
        for annotator in list(working):
            user = users[annotator.annotator_id]
            task = store.next_task(user)
            if task is None:
                working.remove(annotator)
                continue
            ids = [c for c, _ in task.candidates]
            tiers = annotator.rank(tasks[task.prompt], [text for _, text in task.candidates])
            if len(tiers) < 2:
                store.skip(user, task.assignment_id, "identical candidates")
                counts["skipped"] += 1
                continue
            ranking = [[ids[i] for i in tier] for tier in tiers]
            likert = {c: 7 - round(6 * t / (len(tiers) - 1)) for t, tier in enumerate(ranking) for c in tier}
            store.submit(user, task.assignment_id, ranking, likert, idempotency_key=f"{user}:{task.assignment_id}")
            counts["submitted"] += 1
    return counts


def simulated_batch(sample_batch: str, labeling_fingerprint: str) -> str:
    """The store batch of one simulated labeling: the sample stage's candidates, ranked under one labeling
    config (the label stage's fingerprint). A changed config ranks in a batch of its own, so nothing is
    re-ranked over and nothing kept from another config."""
    return f"{sample_batch}:simulated:{labeling_fingerprint}"
