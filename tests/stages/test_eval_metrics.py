"""Evaluation metrics on hand-computed cases (the Natural-Instructions cases from the seed-systems spec)."""

import pytest

from stages.eval_metrics import calibration_bins, exact_match, normalize_answer, rouge_l, win_rate


def test_natural_instructions_exact_match_and_rouge_l():
    assert normalize_answer("  The  Cat, runs! ") == "the cat runs"
    assert exact_match("Yes", ["yes."]) == 1.0
    assert exact_match("a dog", ["dog"]) == 0.0  # articles are kept
    assert rouge_l("a dog", ["dog"]) == pytest.approx(2 / 3, abs=1e-3)
    assert rouge_l("The cats are running.", ["the cat runs"]) == pytest.approx(0.857, abs=1e-3)  # P 3/4, R 1
    assert rouge_l("the cat runs", ["a dog", "the cat runs"]) == 1.0  # the best reference counts


def test_win_rate_counts_ties_half_and_its_interval_shrinks_with_n():
    result = win_rate([1.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.3, 0.1])  # win, tie, loss, win
    assert result.rate == pytest.approx(2.5 / 4) and result.n == 4
    assert result.low < result.rate < result.high
    # outcomes 1, .5, 0, 1: sd = sqrt(((.375)^2 + (.125)^2 + (.625)^2 + (.375)^2) / 3) = 0.4787
    assert result.rate - result.low == pytest.approx(1.96 * 0.4787 / 2, abs=1e-3)  # the high end is clipped at 1
    many = win_rate([1.0, 0.5, 0.2, 0.7] * 25, [0.5, 0.5, 0.3, 0.1] * 25)
    assert many.rate == pytest.approx(0.625) and many.high - many.low < result.high - result.low
    assert win_rate([1.0] * 10, [0.0] * 10).low == 1.0
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [])


def test_calibration_bins_average_within_each_bin():
    bins = calibration_bins([0.1, 0.15, 0.9, 0.95, 1.0], [0, 1, 1, 1, 0], bins=2)
    assert bins == [(pytest.approx(0.125), 0.5, 2), (pytest.approx(0.95), pytest.approx(2 / 3), 3)]
