"""Evaluation metrics as small pure functions: Natural-Instructions exact match and ROUGE-L, a paired
win rate with its confidence interval, and reward-model calibration bins."""

from __future__ import annotations

import math
import re
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
