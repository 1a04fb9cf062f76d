"""DPO math on K-way rankings (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7 and App. A.3; spec/estimators.md
section 4). Pure functions of tensors, like ranking.py, whose tiers they read: a ranking is a list of tiers,
best first, candidates in one tier tied.

s_y = beta * (log pi_theta(y | x) - log pi_ref(y | x)) is the implicit reward of a response (log-probs summed
over its tokens, EOS included). Two K-way losses:
  all pairs       mean over a prompt's strict pairs of -log sigmoid(s_w - s_l), then over prompts: the reward
                  stage's C(K, 2) grouping (ranking.ranking_loss), ties dropped
  Plackett-Luce   -sum over ranks of [s_tau(k) - log sum_{j at or below rank k} exp s_j], ties by Breslow's
                  rule, the likelihood of the whole order
For K = 2 both are the pairwise DPO loss.
"""

import torch

from stages.core.ranking import ranking_loss

DPO_LOSSES = ("all_pairs", "plackett_luce")


def implicit_rewards(policy_logprobs, reference_logprobs, beta):
    """s = beta * (log pi_theta(y|x) - log pi_ref(y|x)), per response: (N,), (N,) -> (N,)."""
    return beta * (policy_logprobs - reference_logprobs)


def plackett_luce_loss(scores, tiers):
    """Plackett-Luce negative log-likelihood of each prompt's ranking (DPO App. A.3), mean over prompts.

    scores: list of P 1-D tensors (K_p,) of implicit rewards; tiers: P rankings (ranking.py's tiers).
    Ties by Breslow's rule: each member of a tier has its own term, whose denominator runs over its tier and
    every worse one; the last tier adds nothing; a prompt with one tier has no term and is left out.
    """
    if len(scores) != len(tiers):
        raise ValueError(f"got scores for {len(scores)} prompts but rankings for {len(tiers)}")
    losses = []
    for prompt_scores, ranking in zip(scores, tiers):
        terms = []
        for k, tier in enumerate(ranking[:-1]):
            remaining = [c for worse in ranking[k:] for c in worse]
            normaliser = torch.logsumexp(prompt_scores[remaining], dim=0)
            terms.extend(prompt_scores[c] - normaliser for c in tier)
        if terms:
            losses.append(-torch.stack(terms).sum())
    if not losses:
        raise ValueError("no prompt in this batch has two tiers; drop fully tied prompts upstream")
    return torch.stack(losses).mean()


def dpo_loss(scores, tiers, kind="all_pairs"):
    """The K-way DPO loss of `kind` over P prompts: scores a list of P 1-D tensors of implicit rewards.
    Returns (loss, accuracy), accuracy the fraction of strict pairs with s_w > s_l."""
    pairs = ranking_loss(scores, tiers)
    if kind == "all_pairs":
        return pairs.loss, pairs.accuracy
    if kind == "plackett_luce":
        return plackett_luce_loss(scores, tiers), pairs.accuracy
    raise ValueError(f"unknown DPO loss {kind!r}; supported: {list(DPO_LOSSES)}")
