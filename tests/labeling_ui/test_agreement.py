"""Inter-annotator agreement on rankings with ties, against values computed by hand."""

import math

import pytest

from labeling_ui.agreement import (
    agreement_report,
    kendall_tau_b,
    krippendorff_alpha_ordinal,
    pair_orders,
    pairwise_agreement,
)


def test_pair_orders_sign_each_strictly_ordered_pair_and_leave_out_ties():
    # c2 > c1 = c3 > c4: (c1,c2) j preferred; (c1,c3) tied, left out; the rest i preferred
    assert pair_orders([["c2"], ["c1", "c3"], ["c4"]]) == {
        ("c1", "c2"): -1, ("c1", "c4"): 1, ("c2", "c3"): 1, ("c2", "c4"): 1, ("c3", "c4"): 1,
    }


def test_pairwise_agreement_pools_pairs_over_prompts_and_skips_ties_and_unshared_candidates():
    first_prompt = ([["c1"], ["c2"], ["c3"], ["c4"]], [["c2"], ["c1"], ["c3"]])
    second_prompt = ([["c1", "c2"], ["c3"]], [["c3"], ["c1"], ["c2"]])
    # first: c4 only in a, skipped; (c1,c2) disagree, (c1,c3) agree, (c2,c3) agree -> 2 of 3
    # second: (c1,c2) tied in a, skipped; (c1,c3) and (c2,c3) disagree -> 0 of 2
    # pooled (2 + 0) / (3 + 2) = 0.4, not the mean of 2/3 and 0
    assert pairwise_agreement(iter([first_prompt, second_prompt])) == pytest.approx(0.4)


def test_pairwise_agreement_is_none_when_no_pair_is_ordered_by_both():
    assert pairwise_agreement([]) is None
    assert pairwise_agreement([([[1, 2, 3]], [[1], [2], [3]])]) is None  # a ties everything


def test_kendall_tau_b_by_hand():
    # over the shared {1, 2, 3, 4} (5 only in a): n0 = 6, n1 = 0, n2 = 1 (1 = 2 in b);
    # concordant (1,3) (1,4) (2,3) (2,4), discordant (3,4): (4 - 1) / sqrt(6 * 5) = 3 / sqrt(30)
    assert kendall_tau_b([[1], [2], [3], [4], [5]], [[1, 2], [4], [3]]) == pytest.approx(3 / math.sqrt(30))
    # n0 = 3, x = y in a, y = z in b: n1 = n2 = 1; (x,z) concordant: 1 / sqrt(2 * 2) = 0.5
    assert kendall_tau_b([["x", "y"], ["z"]], [["x"], ["y", "z"]]) == pytest.approx(0.5)


def test_kendall_tau_b_is_one_for_the_same_ranking_and_minus_one_for_its_reverse():
    ranking = [["a"], ["b", "c"], ["d"]]
    # n0 = 6, n1 = n2 = 1, C = 5: 5 / sqrt(5 * 5) = 1; reversed: D = 5 -> -1
    assert kendall_tau_b(ranking, ranking) == pytest.approx(1.0)
    assert kendall_tau_b(ranking, ranking[::-1]) == pytest.approx(-1.0)


def test_kendall_tau_b_is_none_when_a_ranking_ties_every_shared_pair():
    assert kendall_tau_b([[1, 2, 3]], [[1], [2], [3]]) is None  # n0 - n1 = 3 - 3 = 0
    assert kendall_tau_b([[1], [2]], [[1], [3]]) is None  # one shared candidate: n0 = 0


def test_krippendorff_alpha_ordinal_reproduces_krippendorffs_worked_example():
    # "Computing Krippendorff's Alpha-Reliability" (2011), 4 coders x 12 units, values 1-5, ordinal 0.815
    coders = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    units = [{coder: values[u] for coder, values in coders.items() if values[u] is not None} for u in range(12)]
    # unit 12 (B only) is unpairable; the other 11 give n = 40 values, n_1..n_5 = 9, 13, 10, 5, 3;
    # sum o_ck delta^2_ck = 1891, sum n_c n_k delta^2_ck = 399480 (delta^2 ordinal, from those n_v):
    # 1 - (40 - 1) * 1891 / 399480 = 0.815388
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.815388, abs=1e-6)


def test_krippendorff_alpha_ordinal_by_hand():
    units = [{"A": 0, "B": 0}, {"A": 1, "B": 2}, {"A": 2, "B": 2}, {"A": 0}]
    # last unit unpairable; n_0 = 2, n_1 = 1, n_2 = 3, n = 6; o_00 = o_22 = 2, o_12 = o_21 = 1
    # ordinal delta^2: 01 = (3 - 3/2)^2 = 2.25, 12 = (4 - 4/2)^2 = 4, 02 = (6 - 5/2)^2 = 12.25
    # sum o delta^2 = 2 * 4 = 8; sum n_c n_k delta^2 = 2 * (2*1*2.25 + 1*3*4 + 2*3*12.25) = 180
    # 1 - 5 * 8 / 180 = 7/9  (interval would give 1 - 5 * 2 / 58: the metric matters here)
    assert krippendorff_alpha_ordinal(units) == pytest.approx(7 / 9)


def test_krippendorff_alpha_ordinal_is_none_without_two_pairable_units_or_without_variation():
    assert krippendorff_alpha_ordinal([]) is None
    assert krippendorff_alpha_ordinal([{"A": 0, "B": 1}, {"A": 1}]) is None  # one pairable unit
    assert krippendorff_alpha_ordinal([{"A": 1, "B": 1}, {"A": 1, "B": 1}]) is None  # one value: 0/0


# p1: ann1 c1 > c2 > c3, ann2 c2 > c1 > c3, ann3 c1 > c2 = c3; p2: ann1 c1 = c2 > c3, ann2 c3 > c1 > c2;
# p3: ann3 alone. ann1's first ranking of p1 is replaced by its resubmission.
RANKINGS = [
    ("p1", "ann1", [["c3"], ["c2"], ["c1"]]),
    ("p1", "ann1", [["c1"], ["c2"], ["c3"]]),
    ("p1", "ann2", [["c2"], ["c1"], ["c3"]]),
    ("p1", "ann3", [["c1"], ["c2", "c3"]]),
    ("p2", "ann1", [["c1", "c2"], ["c3"]]),
    ("p2", "ann2", [["c3"], ["c1"], ["c2"]]),
    ("p3", "ann3", [["c1"], ["c2"]]),
]
# per ranking pair: agreeing / shared ordered pairs, and tau-b
#   p1 ann1-ann2: 2/3 ((c1,c2) disagree), tau (2 - 1) / sqrt(3 * 3) = 1/3
#   p1 ann1-ann3: 2/2 ((c2,c3) tied in ann3), tau 2 / sqrt(3 * 2) = 2/sqrt(6)
#   p1 ann2-ann3: 1/2 ((c1,c2) disagree), tau (1 - 1) / sqrt(3 * 2) = 0
#   p2 ann1-ann2: 0/2 ((c1,c2) tied in ann1), tau -2 / sqrt(2 * 3) = -2/sqrt(6)


def test_agreement_report_overall():
    report = agreement_report(RANKINGS)
    assert report["overlap_prompts"] == 2  # p1, p2
    assert report["pairwise_agreement"] == pytest.approx(5 / 9)  # (2 + 2 + 1 + 0) / (3 + 2 + 2 + 2)
    assert report["kendall_tau_b"] == pytest.approx(1 / 12)  # (1/3 + 2/sqrt6 + 0 - 2/sqrt6) / 4
    # units (prompt, candidate) -> tier indices: p1 c1 {0,1,0}, c2 {1,0,1}, c3 {2,2,1}; p2 c1 {0,1},
    # c2 {0,2}, c3 {1,0}; p3's are unpairable. Coincidences (1/2 per pair in the 3-value units):
    # o_00 = o_11 = o_22 = 1, o_01 = 4, o_12 = 1, o_02 = 1 (each both ways); n_0 = 6, n_1 = 6, n_2 = 3, n = 15
    # ordinal delta^2: 01 = (12 - 6)^2 = 36, 12 = (9 - 4.5)^2 = 20.25, 02 = (15 - 4.5)^2 = 110.25
    # sum o delta^2 = 2 * (4*36 + 20.25 + 110.25) = 549; sum n_c n_k delta^2 = 2 * (36*36 + 18*20.25 + 18*110.25) = 7290
    # 1 - 14 * 549 / 7290 = -22/405: below chance
    assert report["krippendorff_alpha"] == pytest.approx(-22 / 405)


def test_agreement_report_per_annotator():
    per_annotator = agreement_report(RANKINGS)["per_annotator"]
    assert per_annotator == {
        # p1 with ann2 and ann3, p2 with ann2: (2 + 2 + 0) / (3 + 2 + 2); tau (1/3 + 2/sqrt6 - 2/sqrt6) / 3
        "ann1": {"rankings": 2, "pairwise_agreement": pytest.approx(4 / 7), "kendall_tau_b": pytest.approx(1 / 9)},
        # p1 with ann1 and ann3, p2 with ann1: (2 + 1 + 0) / (3 + 2 + 2); tau (1/3 + 0 - 2/sqrt6) / 3
        "ann2": {"rankings": 2, "pairwise_agreement": pytest.approx(3 / 7),
                 "kendall_tau_b": pytest.approx((1 / 3 - 2 / math.sqrt(6)) / 3)},
        # p1 with ann1 and ann2 (p3 alone counts as a ranking only): (2 + 1) / (2 + 2); tau (2/sqrt6 + 0) / 2
        "ann3": {"rankings": 2, "pairwise_agreement": pytest.approx(3 / 4),
                 "kendall_tau_b": pytest.approx(1 / math.sqrt(6))},
    }


def test_agreement_report_without_overlap_has_nothing_to_compute():
    report = agreement_report([("p1", "ann1", [["c1"], ["c2"]]), ("p2", "ann2", [["c2"], ["c1"]])])
    assert report == {
        "overlap_prompts": 0,
        "pairwise_agreement": None,
        "kendall_tau_b": None,
        "krippendorff_alpha": None,
        "per_annotator": {
            "ann1": {"rankings": 1, "pairwise_agreement": None, "kendall_tau_b": None},
            "ann2": {"rankings": 1, "pairwise_agreement": None, "kendall_tau_b": None},
        },
    }
