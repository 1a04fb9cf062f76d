"""Evaluation metrics on hand-computed cases (the Natural-Instructions cases from the seed-systems spec)."""

import pytest

from stages.scoring.metrics import (
    calibration_bins,
    ni_exact_match,
    normalize_answer,
    overoptimisation_onset,
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


def test_overoptimisation_begins_where_the_true_score_peaks_and_the_reward_model_score_climbs_on():
    steps, proxy = list(range(1, 8)), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    true = [0.2, 0.4, 0.6, 0.8, 0.6, 0.4, 0.2]
    # means of 3: true 0.4 (iterations 1-3), 0.6, 2/3 (3-5, around 4), 0.6, 0.4 (5-7); proxy 0.4 around 4,
    # 0.6 at the end. Successive differences +-0.2: sd sqrt(6 * 0.04 / 5); an iteration's noise that / sqrt 2;
    # margin 2 * noise * sqrt(2 / 3)
    onset = overoptimisation_onset(steps, proxy, true, window=3)
    assert onset.peak_step == 4
    assert (onset.true_at_peak, onset.true_at_end) == pytest.approx((2 / 3, 0.4))
    assert (onset.proxy_at_peak, onset.proxy_at_end) == pytest.approx((0.4, 0.6))
    assert onset.margin == pytest.approx(2 * (0.048 ** 0.5) / 2 ** 0.5 * (2 / 3) ** 0.5)
    assert onset.true_fell and onset.began
    both_fall = overoptimisation_onset(steps, proxy[::-1], true, window=3)
    assert both_fall.true_fell and not both_fall.began  # a worse policy by both judges, not a gamed reward model


def test_a_true_score_still_rising_or_falling_within_its_noise_is_no_overoptimisation():
    steps, proxy = list(range(1, 9)), [0.1 * s for s in range(1, 9)]
    rising = overoptimisation_onset(steps, proxy, [0.1 * s for s in steps], window=3)
    assert rising.peak_step == 7 and not rising.true_fell and not rising.began  # the last window, 6-8
    jittery = [0.5, 0.9, 0.4, 0.8, 0.5, 0.9, 0.45, 0.8]  # means of 3: 0.6, 0.7, 0.567, 0.733 (4-6), 0.617, 0.717
    noisy = overoptimisation_onset(steps, proxy, jittery, window=3)
    assert noisy.peak_step == 5 and noisy.true_at_peak - noisy.true_at_end == pytest.approx(0.05 / 3)
    assert noisy.margin > 0.4 and not noisy.began  # a fall of 0.017 is the iterations' noise
    assert overoptimisation_onset(steps[:3], proxy[:3], jittery[:3], window=3) is None
    with pytest.raises(ValueError, match="differ in length"):
        overoptimisation_onset(steps, proxy, jittery[:-1])
