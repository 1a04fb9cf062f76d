"""The arithmetic inside the benchmarks, on hand-computed cases (the benchmarks themselves print figures)."""

import pytest

from bench.prompt_selection import pairwise_accuracy


def test_pairwise_accuracy_skips_true_ties_and_counts_score_ties_half():
    # prompt 1: pairs (0,1) and (0,2) differ in truth and are ordered right; (1,2) is a true tie, skipped.
    # prompt 2: (0,1) is a score tie (half), (0,2) is ordered wrong, (1,2) a true tie. (2 + 0.5) / 4
    assert pairwise_accuracy([[3, 2, 1], [1, 1, 0]], [[2, 1, 1], [0, 1, 1]]) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="no pair"):
        pairwise_accuracy([[1, 2]], [[0.5, 0.5]])
