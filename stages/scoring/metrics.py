"""Evaluation metrics as small pure functions: Natural-Instructions exact match and ROUGE-L, a paired
win rate with its confidence interval, reward-model calibration bins, and where reward over-optimisation
begins in a run's PPO curves."""

from __future__ import annotations

import math
import re
import statistics
import string
from collections.abc import Sequence
from dataclasses import dataclass

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_scorer = None


def normalize_answer(text: str) -> str:
    """Natural-Instructions normalisation: lowercase, punctuation removed, whitespace collapsed
    (articles are kept)."""
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def ni_exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in references))


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """Max over references of ROUGE-L F (LCS-based, Porter stemming), as Natural-Instructions scores it."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return max(_scorer.score(reference, prediction)["rougeL"].fmeasure for reference in references)


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + ties / 2) / n
    low: float  # 95% confidence interval of the rate
    high: float
    n: int


def win_rate(scores: Sequence[float], baseline_scores: Sequence[float], z: float = 1.96) -> WinRate:
    """How often a policy beats a baseline on the same prompts: a win is 1, a tie 1/2, a loss 0. The
    interval is Wilson's score interval for that rate over n prompts, which stays honest at rates
    near 0 or 1 (the normal approximation collapses to a point there)."""
    if len(scores) != len(baseline_scores) or not scores:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists, got {len(scores)} and {len(baseline_scores)}")
    n = len(scores)
    rate = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline_scores)) / n
    denominator = 1 + z * z / n
    center = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return WinRate(rate, max(0.0, center - half), min(1.0, center + half), n)


def calibration_bins(predicted: Sequence[float], observed: Sequence[float], bins: int = 5) -> list[tuple[float, float, int]]:
    """(mean predicted probability, observed frequency, count) per equal-width bin of the prediction,
    for a reliability plot: a reward model's sigmoid(r_a - r_b) against how often a was preferred."""
    totals = [[0.0, 0.0, 0] for _ in range(bins)]
    for p, o in zip(predicted, observed, strict=True):
        total = totals[min(int(p * bins), bins - 1)]
        total[0] += p
        total[1] += o
        total[2] += 1
    return [(p / n, o / n, n) for p, o, n in totals if n]


@dataclass(frozen=True)
class Overoptimisation:
    """The true score's peak over PPO iterations, against the reward-model score (each a running mean)."""

    window: int  # iterations in each mean
    peak_step: int  # the middle iteration of the window whose true-score mean is highest
    true_at_peak: float
    true_at_end: float
    proxy_at_peak: float  # the reward-model score's mean there
    proxy_at_end: float
    margin: float  # how far below its peak the true score's last mean must end to count as a fall, not noise

    @property
    def true_fell(self) -> bool:
        return self.true_at_peak - self.true_at_end > self.margin

    @property
    def began(self) -> bool:
        """The true score fell from its peak by more than its noise while the reward-model score went on
        rising: the policy games the reward model from peak_step on (Gao et al. 2022: the gold reward
        peaks and falls while the proxy climbs)."""
        return self.true_fell and self.proxy_at_end > self.proxy_at_peak


def running_means(values: Sequence[float], window: int) -> list[float]:
    """Mean of each full window of `window` consecutive values, the first starting at values[0]."""
    return [sum(values[i:i + window]) / window for i in range(len(values) - window + 1)]


def overoptimisation_onset(steps: Sequence[int], proxy: Sequence[float], true: Sequence[float],
                           window: int = 5) -> Overoptimisation | None:
    """Where the true score of PPO's samples peaks against the reward-model (proxy) score of the same
    samples, both smoothed by a running mean of `window` iterations (one iteration's 64 episodes are
    noisy), the peak placed at its window's middle iteration (an odd window centres it); None with fewer
    than `window` + 1 iterations. Only full windows count, so a lucky first iteration cannot be the
    peak; the end is the last full window's mean. The margin is two standard errors of the difference
    of two means of `window` iterations, an iteration's noise taken from the true score's successive
    differences (their sd / sqrt 2: a slow trend barely moves them)."""
    if not len(steps) == len(proxy) == len(true):
        raise ValueError(f"steps, proxy and true scores differ in length: {len(steps)}, {len(proxy)}, {len(true)}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if len(steps) <= window:
        return None
    true_means, proxy_means = running_means(true, window), running_means(proxy, window)
    peak = max(range(len(true_means)), key=true_means.__getitem__)  # the first, on a tie
    differences = [b - a for a, b in zip(true, true[1:])]
    noise = statistics.stdev(differences) / math.sqrt(2) if len(differences) > 1 else 0.0
    margin = 2 * noise * math.sqrt(2 / window)
    return Overoptimisation(window, steps[peak + (window - 1) // 2], true_means[peak], true_means[-1], proxy_means[peak],
                            proxy_means[-1], margin)
