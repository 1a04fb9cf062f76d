"""Tests for stages/ppo_math.py: worked examples V1, V2, V3, V5, V6 of
the InstructGPT algorithm notes (spec/instructgpt.md) section 6, then invariants. Runs on CPU."""

import math

import pytest
import torch

from stages.core.functional import masked_mean, masked_var, masked_whiten
from stages.core.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_estimate,
    make_kl_controller,
    policy_loss,
    ptx_combined_loss,
    sequence_kl,
    shape_rewards,
    value_loss,
)
from stages.core.ranking import reward_bias

ABS = 1e-6


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual, expected, abs=ABS):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=abs)


# V1 inputs, shared by V1, V3 and the padding tests.
V1_LOGPROBS = t([-1.0, -0.5, -2.0, -0.2])
V1_REF_LOGPROBS = t([-1.2, -0.5, -1.5, -0.4])
V1_SCORE = torch.tensor([1.5], dtype=torch.float64)
V1_VALUES = t([0.5, 0.6, 0.7, 0.8])
V1_MASK = torch.ones(1, 4, dtype=torch.bool)


# ---------------------------------------------------------------------------
# Worked examples
# ---------------------------------------------------------------------------


def test_v1_reward_shaping_and_gae():
    # gamma=1, gae_lambda=0.95, beta=0.02, 4 tokens, score 1.5.
    kl = kl_estimate(V1_LOGPROBS, V1_REF_LOGPROBS, kind="k1")
    # kl = logp - ref = [-1.0+1.2, -0.5+0.5, -2.0+1.5, -0.2+0.4]
    assert_close(kl, [[0.2, 0.0, -0.5, 0.2]])

    rewards = shape_rewards(V1_SCORE, kl, V1_MASK, beta=0.02)
    # -0.02 * kl = [-0.004, 0, 0.01, -0.004]; the score 1.5 lands on the last token: -0.004 + 1.5 = 1.496
    assert_close(rewards, [[-0.004, 0.0, 0.01, 1.496]])

    advantages, returns = gae(rewards, V1_VALUES, V1_MASK, gamma=1.0, gae_lambda=0.95)
    # delta_t = r_t + V(t+1) - V(t) = [-0.004+0.6-0.5, 0+0.7-0.6, 0.01+0.8-0.7, 1.496+0-0.8]
    #         = [0.096, 0.1, 0.11, 0.696]
    # A_3 = 0.696; A_2 = 0.11 + 0.95*0.696 = 0.7712; A_1 = 0.1 + 0.95*0.7712 = 0.83264;
    # A_0 = 0.096 + 0.95*0.83264 = 0.887008
    assert_close(advantages, [[0.887008, 0.83264, 0.7712, 0.696]])
    # R = A + V (before whitening)
    assert_close(returns, [[1.387008, 1.43264, 1.4712, 1.496]])

    # mean(A) = 0.796712, population var = 0.005059 (divide by 4); (A - mean) / sqrt(var + 1e-8)
    assert_close(masked_whiten(advantages, V1_MASK), [[1.269447, 0.505102, -0.358666, -1.415883]])

    # 0.2 + 0 - 0.5 + 0.2 = -0.1: a negative single-sample k1 sum is legitimate
    assert_close(sequence_kl(kl, V1_MASK), [-0.1])


V2_OLD_LOGPROBS = t([-1.0] * 5)
V2_LOGPROBS = t([-0.7, -1.3, -0.7, -1.3, -1.05])
V2_ADVANTAGES = t([1.0, -1.0, -1.0, 1.0, 2.0])


def test_v2_clipped_policy_loss():
    # rho = exp(new - old) = exp([0.3, -0.3, 0.3, -0.3, -0.05]) = [1.349859, 0.740818, 1.349859, 0.740818, 0.951229]
    # per token max(-A*rho, -A*clip(rho, 0.8, 1.2)):
    #   A=+1, rho=1.35: max(-1.349859, -1.2) = -1.2         (clipped)
    #   A=-1, rho=0.74: max(0.740818, 0.8)  = 0.8           (clipped)
    #   A=-1, rho=1.35: max(1.349859, 1.2)  = 1.349859      (unclipped, pessimistic)
    #   A=+1, rho=0.74: max(-0.740818, -0.8) = -0.740818    (unclipped)
    #   A=+2, rho=0.95: -1.902459                           (inside the clip range)
    # mean = -1.693418 / 5 = -0.338684; the clipped term is active on 2 of 5 tokens
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss, metrics = policy_loss(V2_LOGPROBS, V2_OLD_LOGPROBS, V2_ADVANTAGES, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.338684, abs=ABS)
    assert metrics["clipfrac"].item() == pytest.approx(0.4)
    # 0.5 * mean(delta^2) = 0.5 * (4 * 0.09 + 0.0025) / 5 = 0.03625
    assert metrics["approx_kl"].item() == pytest.approx(0.03625, abs=ABS)

    # Mask [1,1,1,1,0]: (-1.2 + 0.8 + 1.349859 - 0.740818) / 4 = 0.052260
    masked = torch.tensor([[True, True, True, True, False]])
    loss, _ = policy_loss(V2_LOGPROBS, V2_OLD_LOGPROBS, V2_ADVANTAGES, masked, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.052260, abs=ABS)


def test_v3_clipped_value_loss():
    old_values = V1_VALUES
    values = t([0.9, 0.55, 0.2, 0.85])
    returns = t([1.387008, 1.43264, 1.4712, 1.496])  # R from V1
    # V_clip = clip(V_new, V_old - 0.2, V_old + 0.2) = [0.7, 0.55, 0.5, 0.85]
    # unclipped (V_new - R)^2 = [0.237177, 0.779053, 1.615949, 0.417316]
    # clipped   (V_clip - R)^2 = [0.471980, 0.779053, 0.943229, 0.417316]
    # 0.5 * mean(max) = 0.5 * (0.471980 + 0.779053 + 1.615949 + 0.417316) / 4 = 0.410537
    # the clipped error is larger only on token 0, so clipfrac = 1/4
    loss, clipfrac = value_loss(values, old_values, returns, V1_MASK, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.410537, abs=ABS)
    assert clipfrac.item() == pytest.approx(0.25)
    # Without clipping, 0.5 * MSE would be 0.381187 (clipping only ever raises the loss).
    assert (0.5 * ((values - returns) ** 2).mean()).item() == pytest.approx(0.381187, abs=ABS)


def test_v5_adaptive_kl_code_form():
    # Z19 style task: init beta 0.15, target 6.0, horizon 10000 episodes, batch of 1024 episodes.
    ctl = AdaptiveKLController(init_beta=0.15, target=6.0, horizon=10000)
    # current 9.0: error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2; mult = 1 + 0.2 * 1024/10000 = 1.02048
    # beta = 0.15 * 1.02048 = 0.153072
    ctl.update(current_kl=9.0, n_steps=1024)
    assert ctl.value == pytest.approx(0.153072, abs=1e-12)
    # current 5.4: error = 5.4/6 - 1 = -0.1 (inside the clip); mult = 1 - 0.1 * 0.1024 = 0.98976
    # beta = 0.153072 * 0.98976 = 0.15150454272
    ctl.update(current_kl=torch.tensor(5.4), n_steps=1024)
    assert ctl.value == pytest.approx(0.15150454272, abs=1e-9)

    # Paper form beta_{t+1} = beta_t (1 + K_beta e_t) with K_beta = 0.1 is n_steps/horizon = 0.1.
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=3.0, n_steps=1000)  # e = clip(-0.5) = -0.2; beta = 0.1 * (1 - 0.02) = 0.098
    assert ctl.value == pytest.approx(0.098, abs=1e-12)

    # IG uses a fixed beta = 0.02: update never moves it.
    fixed = make_kl_controller("fixed", beta=0.02)
    fixed.update(current_kl=100.0, n_steps=512)
    assert fixed.value == 0.02


def test_v6_ptx_combination():
    # Bias normalisation lives in rm_math (V6 first half is tested there too): b = -mean(0.8, 1.2, 1.0, 0.6) = -0.9
    b = reward_bias(torch.tensor([0.8, 1.2, 1.0, 0.6], dtype=torch.float64))
    assert (1.5 + b).item() == pytest.approx(0.6, abs=ABS)
    # PPO-ptx: V2's policy loss + ptx_coef * ptx LM loss = -0.338684 + 27.8 * 2.3 = -0.338684 + 63.94 = 63.601316
    mask = torch.ones(1, 5, dtype=torch.bool)
    pg, _ = policy_loss(V2_LOGPROBS, V2_OLD_LOGPROBS, V2_ADVANTAGES, mask)
    combined = ptx_combined_loss(pg, torch.tensor(2.3, dtype=torch.float64), ptx_coef=27.8)
    assert combined.item() == pytest.approx(63.601316, abs=ABS)


# ---------------------------------------------------------------------------
# Masked positions change nothing
# ---------------------------------------------------------------------------


def padded(x, fill):
    """V1 row padded with two positions after EOS holding garbage."""
    return torch.cat([x, t([fill, -fill])], dim=1)


PAD_MASK = torch.tensor([[True, True, True, True, False, False]])


@pytest.mark.parametrize("fill", [0.0, 7.0, -1e4])
def test_padding_after_eos_reproduces_v1(fill):
    kl = kl_estimate(padded(V1_LOGPROBS, fill), padded(V1_REF_LOGPROBS, -fill))
    rewards = shape_rewards(V1_SCORE, kl, PAD_MASK, beta=0.02)
    assert_close(rewards, [[-0.004, 0.0, 0.01, 1.496, 0.0, 0.0]])
    # Corrupt the (already zero) rewards after EOS too: values and rewards there must not leak.
    rewards = torch.where(PAD_MASK, rewards, fill)
    advantages, returns = gae(rewards, padded(V1_VALUES, fill), PAD_MASK)
    assert_close(advantages, [[0.887008, 0.83264, 0.7712, 0.696, 0.0, 0.0]])
    assert_close(returns, [[1.387008, 1.43264, 1.4712, 1.496, 0.0, 0.0]])
    assert_close(masked_whiten(advantages, PAD_MASK), [[1.269447, 0.505102, -0.358666, -1.415883, 0.0, 0.0]])
    assert_close(sequence_kl(kl, PAD_MASK), [-0.1])


def test_gae_skips_a_hole_in_the_mask():
    # A masked position in the middle is skipped: V(t+1) of token 1 is V of token 3 (the next real one).
    mask = torch.tensor([[True, True, False, True]])
    rewards, values = t([0.0, 0.0, 5.0, 1.0]), t([0.1, 0.2, 9.0, 0.3])
    advantages, _ = gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # A_3 = 1 - 0.3 = 0.7; A_1 = 0 + 0.3 - 0.2 + 0.7 = 0.8; A_0 = 0 + 0.2 - 0.1 + 0.8 = 0.9
    assert_close(advantages, [[0.9, 0.8, 0.0, 0.7]])


def test_shape_rewards_puts_score_at_each_rows_last_real_token_and_clips():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    kl = torch.zeros(2, 3, dtype=torch.float64)
    rewards = shape_rewards(torch.tensor([10.0, -10.0], dtype=torch.float64), kl, mask, beta=0.02, score_clip=5.0)
    assert_close(rewards, [[0.0, 0.0, 5.0], [-5.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="no real token"):
        shape_rewards(torch.ones(2, dtype=torch.float64), kl, torch.tensor([[True, False, False], [False] * 3]), beta=0.02)


def test_losses_ignore_masked_positions():
    mask = torch.tensor([[True, True, True, True, False]])
    garbage = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.bool)
    ref_loss, ref_metrics = policy_loss(V2_LOGPROBS, V2_OLD_LOGPROBS, V2_ADVANTAGES, mask)
    loss, metrics = policy_loss(
        torch.where(garbage, 50.0, V2_LOGPROBS), V2_OLD_LOGPROBS, torch.where(garbage, float("nan"), V2_ADVANTAGES), mask
    )
    assert loss.item() == ref_loss.item()
    assert metrics["clipfrac"].item() == ref_metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["approx_kl"].item() == ref_metrics["approx_kl"].item()

    returns = t([1.0, 1.0, 1.0, 1.0, 1.0])
    ref_loss, _ = value_loss(V2_LOGPROBS, V2_OLD_LOGPROBS, returns, mask)
    loss, _ = value_loss(torch.where(garbage, 1e6, V2_LOGPROBS), V2_OLD_LOGPROBS, returns, mask)
    assert loss.item() == ref_loss.item()


def test_clipped_tokens_get_no_policy_gradient():
    # V2 tokens 0 and 1 are clipped, so d loss / d logprobs is zero there.
    logprobs = V2_LOGPROBS.clone().requires_grad_(True)
    loss, _ = policy_loss(logprobs, V2_OLD_LOGPROBS, V2_ADVANTAGES, torch.ones(1, 5, dtype=torch.bool))
    loss.backward()
    grad = logprobs.grad[0]
    assert grad[0].item() == 0.0 and grad[1].item() == 0.0
    assert (grad[2:] != 0).all()


def test_masked_mean_var_whiten():
    x = t([1.0, 2.0, 3.0, float("nan")])
    mask = torch.tensor([[True, True, True, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    # population variance: ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3 (the unbiased estimate would be 1)
    assert masked_var(x, mask).item() == pytest.approx(2 / 3)
    whitened = masked_whiten(x, mask)
    assert_close(whitened, [[-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0]], abs=1e-5)
    # shift_mean=False keeps the original mean (LHP reward whitening)
    assert masked_mean(masked_whiten(x, mask, shift_mean=False), mask).item() == pytest.approx(2.0)
    # per-row reduction
    rows = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    assert_close(masked_mean(rows, torch.tensor([[True, True], [True, False]]), dim=-1), [2.0, 5.0])
    # an empty mask gives 0, not NaN
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


# ---------------------------------------------------------------------------
# KL estimators, entropy, controllers
# ---------------------------------------------------------------------------


def test_kl_estimators():
    logprobs, ref_logprobs = t([-1.0, -0.5, -2.0]), t([-1.2, -0.5, -1.5])
    delta = logprobs - ref_logprobs  # [0.2, 0, -0.5]
    assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), delta)
    assert_close(kl_estimate(logprobs, ref_logprobs, "k2"), 0.5 * delta**2)  # [0.02, 0, 0.125]
    k3 = kl_estimate(logprobs, ref_logprobs, "k3")
    # e^{-0.2} - 1 + 0.2 = 0.018731; 0; e^{0.5} - 1 - 0.5 = 0.148721
    assert_close(k3, [[0.018731, 0.0, 0.148721]])
    assert (k3 >= 0).all()


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown KL estimator kind='k4'.*\['k1', 'k2', 'k3'\]"):
        kl_estimate(V1_LOGPROBS, V1_REF_LOGPROBS, kind="k4")


def test_entropy_from_logits():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert_close(entropy_from_logits(logits), expected, abs=1e-5)
    # uniform over V=11 -> log 11
    assert entropy_from_logits(torch.zeros(1, 1, 11)).item() == pytest.approx(math.log(11), abs=1e-6)


def test_kl_controller_state_dict_round_trip():
    ctl = make_kl_controller("adaptive", beta=0.15, target=6.0, horizon=10000)
    for kl in (9.0, 4.0, 7.5):
        ctl.update(kl, n_steps=512)
    restored = AdaptiveKLController(init_beta=0.15, target=6.0, horizon=10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    ctl.update(6.6, n_steps=512)
    restored.update(6.6, n_steps=512)
    assert restored.value == ctl.value

    fixed = FixedKLController(0.02)
    other = FixedKLController(0.5)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.02


def test_make_kl_controller_errors():
    with pytest.raises(ValueError, match="needs target"):
        make_kl_controller("adaptive", beta=0.15)
    with pytest.raises(ValueError, match=r"supported: \['adaptive', 'fixed'\]"):
        make_kl_controller("pid", beta=0.15)
    assert isinstance(make_kl_controller("adaptive", 0.15, target=6.0), AdaptiveKLController)


def test_truncated_importance_weights_equal_plain_ppo_when_the_sampler_agrees_and_cap_or_drop_otherwise():
    from stages.core.ppo import policy_loss, truncated_importance_weights

    old = torch.log(torch.tensor([[0.5, 0.2, 0.1, 0.4]]))
    mask = torch.tensor([[True, True, True, False]])
    logprobs, advantages = old + 0.1, torch.tensor([[1.0, -0.5, 2.0, 3.0]])
    plain, _ = policy_loss(logprobs, old, advantages, mask)
    for mode in ("none", "token_truncate", "token_mask"):
        weights, kept, clipfrac = truncated_importance_weights(old, old, mask, mode, 0.5, 5.0)
        loss, _ = policy_loss(logprobs, old, advantages, kept, token_weights=weights)
        assert loss.item() == pytest.approx(plain.item(), abs=1e-7) and clipfrac.item() == 0.0
    # the sampler thought token 0 far less likely (ratio 10), token 1 far more likely (ratio 0.1)
    rollout = old - torch.log(torch.tensor([[10.0, 0.1, 1.0, 10.0]]))
    weights, kept, clipfrac = truncated_importance_weights(old, rollout, mask, "token_truncate", 0.5, 5.0)
    assert_close(weights, torch.tensor([[5.0, 0.1, 1.0, 5.0]]), abs=1e-5)
    assert torch.equal(kept, mask) and clipfrac.item() == pytest.approx(1 / 3)
    weights, kept, clipfrac = truncated_importance_weights(old, rollout, mask, "token_mask", 0.5, 5.0)
    assert torch.equal(kept, torch.tensor([[False, False, True, False]])) and clipfrac.item() == pytest.approx(2 / 3)
    # the weighted loss is the token mean of w x the clipped surrogate
    weights, kept, _ = truncated_importance_weights(old, rollout, mask, "token_truncate", 0.5, 5.0)
    loss, _ = policy_loss(logprobs, old, advantages, kept, token_weights=weights)
    ratio = torch.exp(logprobs - old)
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)) * weights
    assert loss.item() == pytest.approx(per_token[mask].mean().item(), abs=1e-6)
