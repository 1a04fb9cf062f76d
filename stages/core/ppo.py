"""PPO math for the InstructGPT RL stage (Ouyang et al. 2022, arXiv:2203.02155, §3.5 Eq. 2, App. C.4).

Pure functions of tensors and floats: KL estimators, per-token reward shaping, GAE and the
critic-free estimators beside it (GRPO, Dr. GRPO, RLOO, REINFORCE++; spec/estimators.md), the
clipped policy loss and its aggregation modes, the value loss, the PPO-ptx combination and the KL
controllers. Nothing here knows about models, devices or workers, so every trainer
(single GPU, DeepSpeed, Ray) uses the same code. Equations follow
the InstructGPT algorithm notes (spec/instructgpt.md) sections 3-5 and the estimator notes
(spec/estimators.md) sections 1-2; their worked examples (V1-V6, E1-E5) are the tests.

Shapes: B batch (episodes), T response tokens, V vocabulary; a group estimator's batch is P prompts x n
samples, prompt-major (row p * n + j is prompt p's j-th sample).
Masks: ``response_mask`` is a bool (B, T) tensor, True = real response token (the EOS
token included); positions after EOS are False and never influence any output at a
real position. Every loss and metric reduces through ``masked_mean``.
"""

import torch

from stages.core.functional import last_token_index, masked_mean

# ---------------------------------------------------------------------------
# KL to the reference (SFT) policy and reward shaping
# ---------------------------------------------------------------------------

# Schulman's estimators of KL(pi || pi_ref) from samples of pi, with delta = log pi - log pi_ref
# (http://joschu.net/blog/kl-approx.html; OpenRLHF models/utils.py::compute_approx_kl).
_KL_ESTIMATORS = {
    "k1": lambda delta: delta,  # unbiased, can be negative per sample; IG's Eq. 2 term
    "k2": lambda delta: 0.5 * delta**2,
    "k3": lambda delta: torch.expm1(-delta) + delta,  # e^{-delta} - 1 + delta >= 0, unbiased
}


def kl_estimate(logprobs, ref_logprobs, kind="k1"):
    """Per-token KL estimate between the policy and the reference (spec §4 item 1).

    logprobs: (B, T) log pi_old(y_t | x, y_<t) of the sampled tokens.
    ref_logprobs: (B, T) log pi_SFT(y_t | x, y_<t) of the same tokens.
    kind: "k1" (log-ratio, used by InstructGPT), "k2" (0.5 * delta^2) or "k3" (e^-delta - 1 + delta).
    Returns (B, T); values at masked positions are meaningless, mask them downstream.
    """
    if kind not in _KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator kind={kind!r}; supported: {sorted(_KL_ESTIMATORS)}")
    return _KL_ESTIMATORS[kind](logprobs - ref_logprobs)


def sequence_kl(kl, response_mask):
    """Per-sequence KL: sum over real tokens of the per-token estimate. (B, T) -> (B,).

    Its batch mean is the ``objective/kl`` that the adaptive controller tracks (LHP).
    """
    return torch.where(response_mask, kl, 0.0).sum(-1)



def shape_rewards(scores, kl, response_mask, beta, score_clip=None):
    """Per-token rewards r_t = -beta * kl_t + 1[t = last real token] * score (IG Eq. 2, spec §4 item 2).

    scores: (B,) sequence reward r~ = r_theta(x, y) + b, already bias-normalised (rm_math.reward_bias).
    kl: (B, T) per-token KL estimate (``kl_estimate``); response_mask: (B, T) bool.
    beta: KL coefficient (IG uses a fixed 0.02). score_clip: optional bound c, scores
    are clipped to [-c, c] first (DeepSpeed-Chat uses 5; IG and LHP do not clip).
    Returns (B, T) rewards, zero at masked positions. The score goes at the last real
    token, not at column T-1, because responses end at different lengths.
    """
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    rewards = torch.where(response_mask, -beta * kl, 0.0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(response_mask)] += scores.to(rewards.dtype)
    return rewards


# ---------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------


@torch.no_grad()
def gae(rewards, values, response_mask, gamma=1.0, gae_lambda=0.95):
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438, Eq. 16).

    delta_t = r_t + gamma * V(t+1) - V(t), A_t = delta_t + gamma * gae_lambda * A_{t+1},
    with V(T+1) = 0 after the last real token. IG uses gamma = 1; gae_lambda is not stated
    in the paper, 0.95 is the LHP / DeepSpeed-Chat default.

    rewards, values (V_old at rollout), response_mask: (B, T).
    Returns (advantages, returns), both (B, T) and zero at masked positions;
    returns = advantages + values, taken before whitening (the critic regresses on
    unwhitened targets). Masked positions are skipped, so values or rewards written
    into padding (or a hole in the mask) never reach a real position.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        real = response_mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * gae_lambda * next_advantage
        # At a masked position carry the next real token's V and A through unchanged.
        next_advantage = torch.where(real, advantage, next_advantage)
        next_value = torch.where(real, values[:, t], next_value)
        advantages[:, t] = torch.where(real, advantage, 0.0)
    returns = torch.where(response_mask, advantages + values, 0.0)
    return advantages, returns


# Critic-free estimators (spec/estimators.md section 2): each sequence's score R_i is one action's return,
# and its advantage goes to every real token of the response.


def kl_penalized_scores(scores, kl, response_mask, beta):
    """R_i = r~_i - beta * KL_i with KL_i = sum_t kl_{i,t}: the KL folded into the sequence's score before any
    group baseline (RLOO paper; TRL's RLOO). scores (B,), kl (B, T) -> (B,)."""
    return scores - beta * sequence_kl(kl, response_mask).to(scores.dtype)


def _groups(scores, group_size):
    if group_size < 2:
        raise ValueError(f"a group baseline needs at least 2 samples per prompt, got group_size={group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.view(-1, group_size)


def grpo_advantages(scores, group_size, scale_by_std=True, eps=1e-6):
    """GRPO's outcome advantage (DeepSeekMath section 4.1.2): A_i = (R_i - mean_g R) / (std_g R + eps), with the
    sample std of the group; scale_by_std=False is Dr. GRPO's R_i - mean_g R. scores (B,) -> (B,).

    A group whose scores are all equal gets exactly 0 (its rounding residue divided by eps would not be); the
    statistics are taken in float64, so that scores a few float32 ulps apart are not blown up by rounding."""
    groups = _groups(scores, group_size).double()
    centred = groups - groups.mean(-1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    all_equal = groups.amax(-1, keepdim=True) == groups.amin(-1, keepdim=True)
    return torch.where(all_equal, 0.0, centred).reshape(-1).to(scores.dtype)


def rloo_advantages(scores, group_size):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = R_i - mean_{j != i} R_j = n / (n - 1) (R_i - mean_g R).
    scores (B,) -> (B,)."""
    groups = _groups(scores, group_size)
    return (group_size / (group_size - 1) * (groups - groups.mean(-1, keepdim=True))).reshape(-1)


def group_centred_scores(scores, group_size):
    """r~_i - mean_g r~: REINFORCE++'s baseline variant, before shaping. scores (B,) -> (B,)."""
    groups = _groups(scores, group_size)
    return (groups - groups.mean(-1, keepdim=True)).reshape(-1)


def returns_to_go(rewards, response_mask, gamma=1.0):
    """G_t = sum_{s >= t} gamma^(s - t) r_s over real tokens (REINFORCE++'s return before global whitening):
    GAE with a zero critic and lambda = 1. rewards, response_mask (B, T) -> (B, T), zero at masked positions."""
    return gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)[0]


def sequence_advantages(advantages, response_mask):
    """A sequence's advantage at each of its real tokens. advantages (B,), response_mask (B, T) -> (B, T)."""
    return torch.where(response_mask, advantages.unsqueeze(-1), 0.0)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def aggregate_loss(per_token, response_mask, mode="token_mean", max_length=None, normaliser=None):
    """A per-token loss (B, T) reduced to a scalar (spec/estimators.md 1.3); every mode masks, so padding never leaks.

    token_mean: sum m * l / N, N the real tokens (or `normaliser`: the trainer's share of the tokens of every rank,
      so that DeepSpeed's average over ranks is the global token mean); verl's and DAPO's default.
    seq_mean_token_mean: mean_i (sum_t m * l / |o_i|), GRPO's Eq. 3 (short answers weigh more per token).
    seq_mean_token_sum_norm: mean_i (sum_t m * l / max_length), Dr. GRPO's constant normaliser.
    """
    if mode == "token_mean":
        if normaliser is None:
            return masked_mean(per_token, response_mask)
        return torch.where(response_mask, per_token, 0.0).sum() / normaliser
    sums = torch.where(response_mask, per_token, 0.0).sum(-1)
    if mode == "seq_mean_token_mean":
        return (sums / response_mask.sum(-1).clamp(min=1)).mean()
    if mode == "seq_mean_token_sum_norm":
        if max_length is None:
            raise ValueError("seq_mean_token_sum_norm needs max_length (the response budget L_max)")
        return (sums / max_length).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; supported: token_mean, seq_mean_token_mean, seq_mean_token_sum_norm")


def clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps=0.2, clip_eps_high=None, dual_clip=None):
    """Per-token clipped surrogate l_t = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)) (PPO Eq. 7; DAPO's
    clip-higher when clip_eps_high is set); dual_clip c > 1 caps it at -c * A where A < 0 (Ye et al. 2019).
    Returns (l, clipped): clipped marks the tokens where a clip is the active term. All (B, T)."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + (clip_eps if clip_eps_high is None else clip_eps_high))
    per_token = torch.maximum(pg_loss1, pg_loss2)
    clipped = pg_loss2 > pg_loss1
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be above 1, got {dual_clip}")
        capped = (advantages < 0) & (-dual_clip * advantages < per_token)
        per_token = torch.where(capped, -dual_clip * advantages, per_token)
        clipped = clipped | capped
    return per_token, clipped


def policy_loss(logprobs, old_logprobs, advantages, response_mask, clip_eps=0.2, token_weights=None, clip_eps_high=None,
                dual_clip=None, loss_agg="token_mean", max_length=None, normaliser=None):
    """Clipped surrogate loss (Schulman et al. 2017, arXiv:1707.06347, Eq. 7; spec §4 item 5).

    logprobs: (B, T) log pi_theta (with grad); old_logprobs: (B, T) log pi_old at rollout;
    advantages: (B, T), usually whitened; response_mask: (B, T) bool.
    loss = aggregate(max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps))), a token mean by default (see
    ``clipped_surrogate`` and ``aggregate_loss`` for the other options); with token_weights (detached, e.g.
    truncated importance weights), each token's term is multiplied by its weight.
    Returns (loss, metrics) with detached scalars:
      clipfrac: fraction of real tokens where a clipped term is the active one;
      approx_kl: 0.5 * mean((log pi_theta - log pi_old)^2), the k2 estimate of KL(old || new).
    """
    log_ratio = logprobs - old_logprobs
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high, dual_clip)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate_loss(per_token, response_mask, loss_agg, max_length, normaliser)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean(clipped.float(), response_mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, response_mask),
        }
    return loss, metrics


def kl_loss(logprobs, ref_logprobs, response_mask, kind="k3", loss_agg="token_mean", max_length=None, normaliser=None):
    """The KL to the reference as a loss term (GRPO Eq. 3-4), with gradient through log pi_theta: k2's is that of
    KL(pi || pi_ref), k3's that of KL(pi_ref || pi); k1's has expectation 0 on-policy, so it is refused. Each
    token's estimate is clamped to [-10, 10] (verl, OpenRLHF). Aggregated like the policy loss."""
    if kind == "k1":
        raise ValueError("k1 as a loss does not regularise (its gradient has expectation 0): use k2 or k3")
    per_token = kl_estimate(logprobs, ref_logprobs, kind).clamp(-10.0, 10.0)
    return aggregate_loss(per_token, response_mask, loss_agg, max_length, normaliser)


def truncated_importance_weights(old_logprobs, rollout_logprobs, response_mask, mode="none", low=0.5, high=5.0):
    """Truncated importance sampling against the sampler's numerics (spec rollout_engines 2.4): the rollout
    came from pi_rollout (vLLM), PPO's ratio is taken against pi_old (the actor's own forward), so each
    token's surrogate is weighted by w = pi_old / pi_rollout, detached.

    token_truncate: w = min(w, high), every token kept; token_mask: w = 1, tokens with w outside
    [low, high] dropped from the mask; none: w = 1. Returns (weights, mask, is_clipfrac), the last the
    fraction of real tokens whose ratio was capped or dropped.
    """
    ratio = torch.exp(old_logprobs - rollout_logprobs).detach()
    if mode == "token_truncate":
        outside = ratio > high
        return ratio.clamp(max=high), response_mask, masked_mean(outside.float(), response_mask)
    if mode == "token_mask":
        outside = (ratio < low) | (ratio > high)
        return torch.ones_like(ratio), response_mask & ~outside, masked_mean(outside.float(), response_mask)
    if mode != "none":
        raise ValueError(f"TIS mode {mode!r}: expected none, token_truncate or token_mask")
    return torch.ones_like(ratio), response_mask, torch.zeros((), device=ratio.device)


def value_loss(values, old_values, returns, response_mask, clip_eps=0.2):
    """Clipped value loss (LHP ``train_policy.py``; spec §4 item 6; clipping not stated in IG).

    values: (B, T) V_theta (with grad); old_values: (B, T) V_old at rollout;
    returns: (B, T) GAE returns; response_mask: (B, T) bool.
    V_clip = clip(V_theta, V_old - eps, V_old + eps);
    loss = 0.5 * masked_mean(max((V_theta - R)^2, (V_clip - R)^2)).
    Returns (loss, clipfrac), clipfrac = fraction of real tokens where the clipped error is larger.
    """
    values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(v_loss_unclipped, v_loss_clipped), response_mask)
    with torch.no_grad():
        clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).float(), response_mask)
    return loss, clipfrac


def entropy_from_logits(logits):
    """Entropy of the categorical over the vocabulary, per token. logits (B, T, V) -> (B, T).

    H = logsumexp(z) - sum_v softmax(z)_v * z_v (verl ``entropy_from_logits``); logits must be finite.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def ptx_combined_loss(policy_loss, ptx_lm_loss, ptx_coef):
    """PPO-ptx actor loss: policy_loss + ptx_coef * ptx_lm_loss (IG Eq. 2, App. C.4).

    ptx_coef is Eq. 2's gamma (27.8 in IG); ptx_lm_loss is the mean next-token NLL on
    pretraining text. IG accumulates the PPO and the scaled pretraining gradients into the
    same buffers, which is what one backward pass on this sum does. The scale of ptx_coef
    depends on how ptx_lm_loss is normalised (here: a per-token mean).
    """
    return policy_loss + ptx_coef * ptx_lm_loss


# ---------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, arXiv:1909.08593, §2.2; LHP train_policy.py)
# ---------------------------------------------------------------------------


class FixedKLController:
    """Constant beta; InstructGPT uses 0.02 (App. C.4)."""

    def __init__(self, beta):
        self.value = float(beta)

    def update(self, current_kl, n_steps):
        pass

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller driving the mean sequence KL towards ``target`` (LHP code form).

    mult = 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon; beta *= mult.
    n_steps is the number of episodes in the batch and horizon is in episodes, so Z19's
    paper form with K_beta = 0.1 is the case n_steps / horizon = 0.1.
    """

    def __init__(self, init_beta, target, horizon=10000):
        if target is None or target <= 0:
            raise ValueError(f"adaptive KL control needs a positive target KL in nats per sequence, got {target!r}")
        if horizon <= 0:
            raise ValueError(f"horizon must be a positive number of episodes, got {horizon!r}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """current_kl: batch mean of sequence_kl after this PPO iteration; n_steps: episodes in the batch."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self):
        # target and horizon come from the config; only the adapted beta is state.
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = float(state["value"])


def make_kl_controller(kind, beta, target=None, horizon=10000):
    """Build a KL controller: kind "fixed" (beta constant) or "adaptive" (beta is the initial value)."""
    if kind == "fixed":
        return FixedKLController(beta)
    if kind == "adaptive":
        if target is None:
            raise ValueError(
                "adaptive KL controller needs target (mean sequence KL in nats, e.g. 6.0 as in Ziegler et al.); "
                "set a target or use kind='fixed'"
            )
        return AdaptiveKLController(beta, target, horizon)
    raise ValueError(f"unknown KL controller kind={kind!r}; supported: ['adaptive', 'fixed']")
