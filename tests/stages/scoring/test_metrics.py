"""Evaluation metrics on hand-computed cases (the Natural-Instructions cases from the seed-systems spec)."""

import pytest

from stages.scoring.metrics import (
    calibration_bins,
    ni_exact_match,
    normalize_answer,
    rouge_l,
    win_rate,
)


def test_natural_instructions_exact_match_and_rouge_l():
    assert normalize_answer("  The  Cat, runs! ") == "the cat runs"
    assert ni_exact_match("Yes", ["yes."]) == 1.0
    assert ni_exact_match("a dog", ["dog"]) == 0.0  # articles are kept
    assert rouge_l("a dog", ["dog"]) == pytest.approx(2 / 3, abs=1e-3)
    assert rouge_l("The cats are running.", ["the cat runs"]) == pytest.approx(0.857, abs=1e-3)  # P 3/4, R 1
    assert rouge_l("the cat runs", ["a dog", "the cat runs"]) == 1.0  # the best reference counts


def test_win_rate_counts_ties_half_with_wilson_intervals():
    result = win_rate([1.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.3, 0.1])  # win, tie, loss, win
    assert result.rate == pytest.approx(2.5 / 4) and result.n == 4
    # Wilson, z = 1.96, n = 4, p = 0.625: centre 0.56376, half-width 0.34433
    assert (result.low, result.high) == (pytest.approx(0.21943, abs=1e-4), pytest.approx(0.90809, abs=1e-4))
    many = win_rate([1.0, 0.5, 0.2, 0.7] * 25, [0.5, 0.5, 0.3, 0.1] * 25)
    assert many.rate == pytest.approx(0.625) and many.high - many.low < result.high - result.low
    sweep = win_rate([1.0] * 10, [0.0] * 10)  # ten wins of ten: the interval still has width
    assert sweep.rate == 1.0 and sweep.low == pytest.approx(0.72245, abs=1e-4) and sweep.high == 1.0
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [])


def test_calibration_bins_average_within_each_bin():
    bins = calibration_bins([0.1, 0.15, 0.9, 0.95, 1.0], [0, 1, 1, 1, 0], bins=2)
    assert bins == [(pytest.approx(0.125), 0.5, 2), (pytest.approx(0.95), pytest.approx(2 / 3), 3)]
