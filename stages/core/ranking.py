"""Reward-model math for InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, §3.5 Eq. 1, App. C.2).

Pure functions of tensors: the K-way ranking loss and the reward bias used before RL.
See the InstructGPT algorithm notes (spec/instructgpt.md) section 2 and worked examples V4, V6.

Shapes: P prompts, K candidates per prompt.
A ranking is given as tiers: a list of tiers, best first, each tier a list of candidate
indices; candidates within one tier are tied. Candidates in no tier take no part.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RankingLoss(NamedTuple):
    loss: torch.Tensor  # scalar, mean over prompts of the per-prompt mean pair loss
    accuracy: torch.Tensor  # scalar, fraction of strict pairs in the batch with r_w > r_l


def strict_pairs(tiers, num_candidates=None):
    """All (w, l) with w in an earlier tier than l; tied candidates form no pair.

    tiers: list of tiers (lists of candidate indices), best first.
    Raises ValueError if a candidate appears twice, or (given num_candidates K) is outside [0, K).
    """
    seen = set()
    for tier in tiers:
        for c in tier:
            if c in seen:
                raise ValueError(f"candidate {c} appears more than once in ranking {tiers}; rank each candidate once")
            if num_candidates is not None and not 0 <= c < num_candidates:
                raise ValueError(f"candidate index {c} in ranking {tiers} is outside [0, {num_candidates})")
            seen.add(c)
    return [(w, l) for i, better in enumerate(tiers) for worse in tiers[i + 1 :] for w in better for l in worse]


def ranking_loss(rewards, tiers, margin=0.0):
    """K-way ranking loss (IG Eq. 1), with every comparison of one prompt forming one batch element.

    rewards: (P, K) tensor (padding columns simply go unranked) or a list of P 1-D tensors (K_p,).
    tiers: list of P rankings (see module docstring).
    Per prompt, L_x = mean over strict pairs P_x of -log sigmoid(r_w - r_l - margin);
    the loss is the mean of L_x over prompts with at least one strict pair. Ties are dropped
    and L_x divides by |P_x|, not C(K, 2) (the spec's reading of Eq. 1 vs App. C.2).
    Returns RankingLoss(loss, accuracy); accuracy counts r_w == r_l as wrong and ignores margin.
    """
    if len(rewards) != len(tiers):
        raise ValueError(f"got rewards for {len(rewards)} prompts but rankings for {len(tiers)}")
    if isinstance(rewards, torch.Tensor):
        if rewards.dim() != 2:
            raise ValueError(f"rewards must be (P, K) or a list of 1-D tensors, got shape {tuple(rewards.shape)}")
        sizes = [rewards.shape[1]] * rewards.shape[0]
        flat = rewards.reshape(-1)
    else:
        sizes = [r.numel() for r in rewards]
        flat = torch.cat([r.reshape(-1) for r in rewards])

    # Flat index tensors for every strict pair in the batch: prompt, winner, loser.
    prompt_idx, w_idx, l_idx = [], [], []
    offset = 0
    for p, (size, ranking) in enumerate(zip(sizes, tiers)):
        for w, l in strict_pairs(ranking, size):
            prompt_idx.append(p)
            w_idx.append(offset + w)
            l_idx.append(offset + l)
        offset += size
    if not prompt_idx:
        raise ValueError("no strict pairs in this batch (all candidates tied or unranked); drop such prompts upstream")
    prompt_idx, w_idx, l_idx = (torch.tensor(i, device=flat.device) for i in (prompt_idx, w_idx, l_idx))

    diff = flat[w_idx] - flat[l_idx]
    pair_losses = -F.logsigmoid(diff - margin)
    num_prompts = len(sizes)
    per_prompt_sum = torch.zeros(num_prompts, dtype=pair_losses.dtype, device=flat.device).index_add(
        0, prompt_idx, pair_losses
    )
    pairs_per_prompt = torch.bincount(prompt_idx, minlength=num_prompts)
    has_pairs = pairs_per_prompt > 0
    loss = (per_prompt_sum[has_pairs] / pairs_per_prompt[has_pairs]).mean()
    accuracy = (diff.detach() > 0).float().mean()
    return RankingLoss(loss, accuracy)


def reward_bias(demo_scores):
    """b = -mean of RM scores on labeler demonstrations (IG §3.5), so demonstrations score 0 on average.

    demo_scores: (N,) r_theta(x, y_demo). Eq. 1 is shift-invariant, so the bias is fixed after training
    and added to every score given to PPO.
    """
    return -torch.as_tensor(demo_scores).mean()
