"""Tests for stages/rm_math.py: worked examples V4 and V6 of the InstructGPT algorithm notes (spec/instructgpt.md)
section 6, then invariants. Runs on CPU."""

import pytest
import torch

from stages.core.ranking import ranking_loss, reward_bias, strict_pairs

ABS = 1e-6

# V4: candidates A, B, C, D with rewards 0.1, 1.2, 0.4, -0.3; ranking B > C > D > A.
V4_REWARDS = [0.1, 1.2, 0.4, -0.3]
V4_TIERS = [[1], [2], [3], [0]]


def test_v4_four_way_ranking_loss():
    # Eq. 1, K=4: C(4,2) = 6 strict pairs, one batch element. -log sigmoid(r_w - r_l):
    #   (B,C) 0.371101  (B,D) 0.201413  (B,A) 0.287335  (C,D) 0.403186  (C,A) 0.554355  (D,A) 0.913015
    # mean = 2.730405 / 6 = 0.455068; every pair except (D,A) (-0.3 < 0.1) is ordered right: 5/6
    loss, acc = ranking_loss(torch.tensor([V4_REWARDS], dtype=torch.float64), tiers=[V4_TIERS])
    assert loss.item() == pytest.approx(0.455068, abs=ABS)
    assert acc.item() == pytest.approx(5 / 6)


def test_v4_two_prompt_batch_and_ties_dropped():
    # Second prompt, K=2: r_w = 0.5, r_l = 0.7: -log sigmoid(-0.2) = 0.798139.
    # Batch loss = mean over prompts (not pairs) = (0.455068 + 0.798139) / 2 = 0.626603
    rewards = torch.tensor([V4_REWARDS, [0.5, 0.7, 0.0, 0.0]], dtype=torch.float64)  # columns 2,3 are padding
    loss, acc = ranking_loss(rewards, tiers=[V4_TIERS, [[0], [1]]])
    assert loss.item() == pytest.approx(0.626603, abs=ABS)
    assert acc.item() == pytest.approx(5 / 7)  # accuracy is over all 7 pairs of the batch

    # A third prompt whose candidates are all tied has no strict pair: it drops out of the mean.
    rewards3 = torch.cat([rewards, torch.tensor([[3.0, -3.0, 0.0, 0.0]], dtype=torch.float64)])
    loss3, acc3 = ranking_loss(rewards3, tiers=[V4_TIERS, [[0], [1]], [[0, 1]]])
    assert loss3.item() == pytest.approx(0.626603, abs=ABS)
    assert acc3.item() == pytest.approx(5 / 7)

    # The same batch as a list of unpadded 1-D tensors gives the same numbers.
    ragged = [torch.tensor(V4_REWARDS, dtype=torch.float64), torch.tensor([0.5, 0.7], dtype=torch.float64)]
    loss_list, acc_list = ranking_loss(ragged, tiers=[V4_TIERS, [[0], [1]]])
    assert loss_list.item() == pytest.approx(0.626603, abs=ABS)
    assert acc_list.item() == pytest.approx(5 / 7)


def test_tied_pairs_contribute_nothing():
    # B > {C, D} > A: the (C,D) pair is tied, leaving 5 strict pairs; L_x divides by 5, not C(4,2) = 6.
    # (0.371101 + 0.201413 + 0.287335 + 0.554355 + 0.913015) / 5 = 0.465444
    tiers = [[1], [2, 3], [0]]
    assert strict_pairs(tiers) == [(1, 2), (1, 3), (1, 0), (2, 0), (3, 0)]
    loss, _ = ranking_loss(torch.tensor([V4_REWARDS], dtype=torch.float64), [tiers])
    assert loss.item() == pytest.approx(0.465444, abs=ABS)
    # The remaining pairs are symmetric in C and D, so swapping their rewards changes nothing;
    # had the tied (C,D) pair counted, the loss would move (0.403186 vs -log sigmoid(-0.7) = 1.103186).
    swapped = torch.tensor([[0.1, 1.2, -0.3, 0.4]], dtype=torch.float64)
    assert ranking_loss(swapped, [tiers]).loss.item() == pytest.approx(0.465444, abs=ABS)
    # A prompt that is one big tie has nothing to learn from; a batch of only such prompts is an error.
    with pytest.raises(ValueError, match="no strict pairs"):
        ranking_loss(torch.tensor([[0.3, -2.0]]), [[[0, 1]]])


def test_unranked_candidates_get_no_gradient():
    # Padding columns are simply not in any tier.
    rewards = torch.tensor([[0.5, 0.7, 123.0]], requires_grad=True)
    loss, _ = ranking_loss(rewards, [[[0], [1]]])
    loss.backward()
    assert rewards.grad[0, 2].item() == 0.0
    assert rewards.grad[0, 0].item() < 0 < rewards.grad[0, 1].item()  # push the winner up, the loser down


def test_margin():
    # -log sigmoid(0.5 - 0.7 - 1.0) = log(1 + e^{1.2}) = 1.463282
    loss, acc = ranking_loss(torch.tensor([[0.5, 0.7]], dtype=torch.float64), [[[0], [1]]], margin=1.0)
    assert loss.item() == pytest.approx(1.463282, abs=ABS)
    assert acc.item() == 0.0


def test_invalid_rankings_raise():
    with pytest.raises(ValueError, match="candidate 2 appears more than once"):
        strict_pairs([[1, 2], [2]])
    with pytest.raises(ValueError, match=r"candidate index 4 .* outside \[0, 4\)"):
        ranking_loss(torch.tensor([V4_REWARDS]), [[[1], [4]]])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        ranking_loss([torch.tensor([0.1, 0.2])], [[[0], [-1]]])
    with pytest.raises(ValueError, match="2 prompts but rankings for 1"):
        ranking_loss(torch.zeros(2, 4), [V4_TIERS])


def test_v6_reward_bias():
    # b = -mean(0.8, 1.2, 1.0, 0.6) = -3.6 / 4 = -0.9; a raw score of 1.5 becomes 1.5 - 0.9 = 0.6
    b = reward_bias(torch.tensor([0.8, 1.2, 1.0, 0.6], dtype=torch.float64))
    assert b.item() == pytest.approx(-0.9, abs=ABS)
    assert (1.5 + b).item() == pytest.approx(0.6, abs=ABS)
