"""The eval stage's per-policy figures, on hand-computed cases."""

import pytest

from stages.eval.stage import summarise
from stages.registry import GRAPH


def world_result(true_score, rm_score, heldout):
    n = len(true_score)
    return {"kl_to_reference": [0.0, 1.0, 2.0, 3.0][:n], "length": [1, 2, 3, 4][:n], "heldout_family": heldout,
            "family": ["add", "add", "sort", "last"][:n], "true_score": true_score, "exact_match": [1.0, 0.0, 0.0, 1.0][:n],
            "ni_exact_match": [1.0, 0.0, 1.0, 0.0][:n], "rouge_l": [1.0, 0.5, 0.0, 0.0][:n],
            "sampled_true_score": [0.0, 0.3, 0.6, 1.5][:n], "rm_score": rm_score, "lm_loss": 0.7, "decode_ms": 12.0}


def test_headline_figures_are_over_the_training_families_and_win_rates_are_paired():
    heldout = [False, False, False, True]
    policy = world_result([1.5, 0.5, 1.0, 0.0], [2.0, 1.0, 0.0, 9.0], heldout)
    sft = world_result([1.0, 0.5, 1.5, 1.0], [1.0, 0.0, -1.0, 0.0], heldout)
    summary = summarise(policy, sft)
    assert summary["true_score"] == pytest.approx(1.0)  # (1.5 + 0.5 + 1.0) / 3: the held-out family is apart
    assert summary["exact_match"] == pytest.approx(1 / 3) and summary["rouge_l"] == pytest.approx(0.5)
    assert summary["sampled_true_score"] == pytest.approx(0.3) and summary["rm_score"] == pytest.approx(1.0)
    assert summary["kl_to_sft"] == pytest.approx(1.5) and summary["response_length"] == pytest.approx(2.5)  # every prompt
    assert summary["heldout_family_true_score"] == 0.0 and summary["heldout_family_exact_match"] == 1.0
    assert summary["heldout_family_ni_exact_match"] == 0.0 and summary["heldout_family_rouge_l"] == 0.0
    assert summary["decode_ms"] == 12.0
    assert summary["win_rate_vs_sft"] == pytest.approx(0.5)  # a win, a tie, a loss
    assert summary["rm_win_rate_vs_sft"] == 1.0  # the reward model prefers all three
    assert summary["rm_win_rate_low"] == pytest.approx(1 / (1 + 1.96**2 / 3))  # Wilson at p = 1, n = 3
    assert summary["per_family"] == {"add": {"true_score": 1.0, "exact_match": 0.5}, "last": {"true_score": 0.0, "exact_match": 1.0},
                                     "sort": {"true_score": 1.0, "exact_match": 0.0}}
    assert summary["scores"] == [1.5, 0.5, 1.0] and summary["lm_loss"] == 0.7


def test_on_a_prompt_file_the_judges_decide_and_no_task_figure_is_made_up():
    def file_result(rm, heldout_rm):
        return {"kl_to_reference": [0.5, 1.5], "length": [3, 5], "heldout_family": [False, False], "rm_score": rm,
                "heldout_rm_score": heldout_rm, "decode_ms": 3.0}

    summary = summarise(file_result([1.0, 2.0], [0.0, 0.0]), file_result([0.0, 3.0], [0.0, 0.0]))
    assert summary["rm_win_rate_vs_sft"] == 0.5 and summary["heldout_rm_win_rate_vs_sft"] == 0.5
    assert summary["heldout_rm_win_rate_low"] < 0.5 < summary["heldout_rm_win_rate_high"]
    assert "true_score" not in summary and "win_rate_vs_sft" not in summary and "per_family" not in summary
    assert summary["scores"] == [1.0, 2.0] and summary["lm_loss"] is None


def test_a_policy_without_a_likelihood_has_no_kl_and_no_sampled_score():
    heldout = [False, False, False, True]
    greedy_only = {k: v for k, v in world_result([1.0, 1.0, 0.0, 0.0], [0.0] * 4, heldout).items()
                   if k not in ("kl_to_reference", "sampled_true_score", "lm_loss")}
    summary = summarise(greedy_only, world_result([1.0, 0.5, 1.5, 1.0], [0.0] * 4, heldout))
    assert summary["kl_to_sft"] is None and "sampled_true_score" not in summary and summary["lm_loss"] is None
    assert summary["true_score"] == pytest.approx(2 / 3) and summary["win_rate_vs_sft"] == pytest.approx(0.5)


def test_the_run_s_summary_says_where_over_optimisation_begins_or_that_none_shows():
    summary = GRAPH["eval"].summary
    began = summary({"ppo/overoptimisation_peak_step": 21.0, "ppo/overoptimisation_began": 1.0})
    assert began == ["over-optimisation begins at PPO iteration 21: the true score of its samples falls from there while "
                     "the reward model's climbs"]
    none = summary({"ppo/overoptimisation_peak_step": 28.0, "ppo/overoptimisation_began": 0.0})
    assert none == ["over-optimisation: none shown in PPO's iterations (the true score of its samples highest around "
                    "iteration 28; the report has the figures)"]
    assert summary({}) == []  # too few iterations to tell
