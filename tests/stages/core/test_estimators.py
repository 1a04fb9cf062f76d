"""The critic-free estimators, loss aggregation, KL loss and surrogate options of stages/core/ppo.py against the
worked examples E1-E5 of spec/estimators.md section 6, then the edge cases it lists."""

import pytest
import torch

from stages.core.functional import masked_whiten
from stages.core.ppo import (
    aggregate_loss,
    clipped_surrogate,
    gae,
    group_centred_scores,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    kl_penalized_scores,
    policy_loss,
    returns_to_go,
    rloo_advantages,
    sequence_advantages,
    shape_rewards,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


E1_SCORES = t(0.9, 0.3, -0.4, 0.6)
E1_KL = t(0.5, 0.1, 0.0, 1.2)


def e1_penalized():
    # KL_i as the sum of a one-token response's estimate, beta 0.05
    return kl_penalized_scores(E1_SCORES, E1_KL.unsqueeze(-1), torch.ones(4, 1, dtype=torch.bool), 0.05)


def test_e1_grpo_dr_grpo_rloo():
    close(grpo_advantages(E1_SCORES, 4), [0.987827, -0.089802, -1.347037, 0.449012])
    close(grpo_advantages(E1_SCORES, 4, scale_by_std=False), [0.55, -0.05, -0.75, 0.25])
    close(rloo_advantages(E1_SCORES, 4), [0.733333, -0.066667, -1.0, 0.333333])
    # RLOO's definition: the score minus the mean of the others
    others = (E1_SCORES.sum() - E1_SCORES) / 3
    close(rloo_advantages(E1_SCORES, 4), E1_SCORES - others)


def test_e1_kl_folded_in_before_the_baseline():
    R = e1_penalized()
    close(R, [0.875, 0.295, -0.4, 0.54])
    close(grpo_advantages(R, 4), [1.013641, -0.060170, -1.346893, 0.393422])
    close(rloo_advantages(R, 4), [0.73, -0.043333, -0.97, 0.283333])


def test_groups_are_prompt_major_and_independent():
    scores = torch.cat([E1_SCORES, E1_SCORES + 10.0])
    advantages = grpo_advantages(scores, 4)
    close(advantages[:4], advantages[4:])  # a shift of one group's scores moves nothing
    close(advantages[:4], [0.987827, -0.089802, -1.347037, 0.449012])


def test_all_equal_group_gets_exactly_zero():
    scores = t(0.3, 0.3, 0.3, 0.3, 1.0, 0.0)
    for advantages in (grpo_advantages(scores, 2), grpo_advantages(scores, 2, scale_by_std=False), rloo_advantages(scores, 2)):
        assert torch.equal(advantages[:4], torch.zeros(4, dtype=torch.float64))
    # a residue of rounding (0.1 + 0.2 != 0.3) would be blown up by eps: forced to 0 too
    assert torch.equal(grpo_advantages(t(0.1 + 0.2, 0.1 + 0.2, 0.1 + 0.2), 3), torch.zeros(3, dtype=torch.float64))


def test_group_of_two_is_plus_minus_one_over_sqrt_two_whatever_the_gap():
    for gap in (1e-3, 1.0, 50.0):
        close(grpo_advantages(t(gap, 0.0), 2), [2**-0.5, -(2**-0.5)], atol=1e-3 if gap < 1e-2 else 1e-6)
    close(rloo_advantages(t(1.0, 0.0), 2), [1.0, -1.0])


def test_group_of_one_or_ragged_groups_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(t(1.0, 2.0), 1)
    with pytest.raises(ValueError, match="do not split"):
        rloo_advantages(t(1.0, 2.0, 3.0), 2)


def test_e2_kl_estimators():
    d = t(0.3, -0.2, 0.0, 1.0)
    zero = torch.zeros_like(d)
    close(kl_estimate(d, zero, "k2"), [0.045, 0.02, 0.0, 0.5])
    close(kl_estimate(d, zero, "k3"), [0.040818, 0.021403, 0.0, 0.367879])


def test_kl_loss_refuses_k1_and_has_the_expected_gradients():
    logprobs = t(-1.0, -2.0).requires_grad_()
    ref = t(-1.3, -1.8)
    mask = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="k1"):
        kl_loss(logprobs, ref, mask, "k1")
    d = (logprobs - ref).detach()
    kl_loss(logprobs, ref, mask, "k2").backward()
    close(logprobs.grad, d / 2)  # d(0.5 d^2)/d logp, token mean over 2
    logprobs.grad = None
    kl_loss(logprobs, ref, mask, "k3").backward()
    close(logprobs.grad, (1 - torch.exp(-d)) / 2)


E3_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
E3_SCORES = t(1.0, 0.0, 0.5, -0.5)
E3_KL = torch.tensor([[0.2, -0.1, 0.3], [0.4, 0.1, 9.0], [-0.2, 0.0, 0.1], [0.5, 9.0, 9.0]], dtype=torch.float64)


def reinforce_pp(scores):
    returns = returns_to_go(shape_rewards(scores, E3_KL, E3_MASK, 0.1), E3_MASK)
    return returns, masked_whiten(returns, E3_MASK)


def test_e3_reinforce_pp():
    returns, advantages = reinforce_pp(E3_SCORES)
    close(returns, [[0.96, 0.98, 0.97], [-0.05, -0.01, 0.0], [0.51, 0.49, 0.49], [-0.55, 0.0, 0.0]])
    close(advantages, [[1.072479, 1.112282, 1.092380], [-0.937590, -0.857983, 0.0], [0.176904, 0.137100, 0.137100],
                       [-1.932673, 0.0, 0.0]])


def test_e3_reinforce_pp_with_group_baseline():
    centred = group_centred_scores(E3_SCORES, 2)
    close(centred, [0.5, -0.5, 0.5, -0.5])
    returns, advantages = reinforce_pp(centred)
    close(returns, [[0.46, 0.48, 0.47], [-0.55, -0.51, 0.0], [0.51, 0.49, 0.49], [-0.55, 0.0, 0.0]])
    close(advantages, [[0.658169, 0.699737, 0.678953], [-1.441043, -1.357906, 0.0], [0.762090, 0.720522, 0.720522],
                       [-1.441043, 0.0, 0.0]])


def test_global_whitening_from_moments_of_two_ranks_equals_whitening_the_whole_batch():
    returns, whole = reinforce_pp(E3_SCORES)
    halves = [(returns[:2], E3_MASK[:2]), (returns[2:], E3_MASK[2:])]
    count = sum(m.sum() for _, m in halves)
    mean = sum(torch.where(m, r, 0.0).sum() for r, m in halves) / count
    var = sum(torch.where(m, r, 0.0).pow(2).sum() for r, m in halves) / count - mean**2
    close(torch.cat([masked_whiten(r, m, moments=(mean, var)) for r, m in halves]), whole)


def test_sequence_advantage_goes_to_real_tokens_only():
    close(sequence_advantages(t(2.0, -1.0), E3_MASK[1:3]), [[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]])


E4_LOSS = torch.tensor([[0.4, -0.2, 0.1, 0.3], [-0.5, 0.6, 9.0, 9.0], [0.8, 9.0, 9.0, 9.0]], dtype=torch.float64)
E4_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)


def test_e4_aggregation_modes_ignore_padding():
    close(aggregate_loss(E4_LOSS, E4_MASK, "token_mean"), 0.214286)
    close(aggregate_loss(E4_LOSS, E4_MASK, "seq_mean_token_mean"), 0.333333)
    close(aggregate_loss(E4_LOSS, E4_MASK, "seq_mean_token_sum_norm", max_length=5), 0.1)
    # a rank's share of a global token mean: its sum over (all ranks' tokens / ranks)
    close(aggregate_loss(E4_LOSS, E4_MASK, "token_mean", normaliser=torch.tensor(14.0 / 2)), 1.5 / 7)
    with pytest.raises(ValueError, match="max_length"):
        aggregate_loss(E4_LOSS, E4_MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(E4_LOSS, E4_MASK, "sum")


E5_RATIO = t(1.35, 0.70, 1.25, 4.00, 0.90)
E5_ADV = t(1.0, 1.0, -1.0, -0.5, -2.0)


def test_e5_surrogate_clip_higher_and_dual_clip():
    logprobs, old = torch.log(E5_RATIO), torch.zeros(5, dtype=torch.float64)
    mask = torch.ones(5, dtype=torch.bool)
    per_token, _ = clipped_surrogate(logprobs, old, E5_ADV, 0.2)
    close(per_token, [-1.2, -0.7, 1.25, 2.0, 1.8])
    per_token, _ = clipped_surrogate(logprobs, old, E5_ADV, 0.2, clip_eps_high=0.28)
    close(per_token, [-1.28, -0.7, 1.25, 2.0, 1.8])
    per_token, clipped = clipped_surrogate(logprobs, old, E5_ADV, 0.2, clip_eps_high=0.28, dual_clip=3.0)
    close(per_token, [-1.28, -0.7, 1.25, 1.5, 1.8])
    assert clipped.tolist() == [True, False, False, True, False]
    loss, _ = policy_loss(logprobs, old, E5_ADV, mask, 0.2, clip_eps_high=0.28, dual_clip=3.0)
    close(loss, 0.514)
    with pytest.raises(ValueError, match="above 1"):
        clipped_surrogate(logprobs, old, E5_ADV, dual_clip=1.0)


def test_default_policy_loss_is_unchanged_by_the_new_options():
    generator = torch.Generator().manual_seed(0)
    logprobs, old, adv = (torch.randn(3, 5, generator=generator) for _ in range(3))
    mask = torch.rand(3, 5, generator=generator) > 0.3
    ratio = torch.exp(logprobs - old)
    expected = torch.where(mask, torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)), 0.0).sum() / mask.sum()
    loss, _ = policy_loss(logprobs, old, adv, mask)
    assert torch.equal(loss, expected)


def test_returns_to_go_are_gae_with_zero_values_and_lambda_one():
    rewards = torch.where(E3_MASK, torch.arange(12.0, dtype=torch.float64).view(4, 3), 0.0)
    close(returns_to_go(rewards, E3_MASK), [[3.0, 3.0, 2.0], [7.0, 4.0, 0.0], [21.0, 15.0, 8.0], [9.0, 0.0, 0.0]])
    close(returns_to_go(rewards, E3_MASK, gamma=0.5), gae(rewards, torch.zeros_like(rewards), E3_MASK, 0.5, 1.0)[0])
