"""stages/core/dpo.py against the worked examples E6 and E7 of spec/estimators.md section 6, with ties."""

import math

import pytest
import torch
import torch.nn.functional as F

from stages.core.dpo import dpo_loss, implicit_rewards, plackett_luce_loss


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def test_e6_pairwise():
    s = implicit_rewards(torch.tensor([-12.0, -15.0], dtype=torch.float64), torch.tensor([-13.0, -14.0], dtype=torch.float64), 0.1)
    close(s, [0.1, -0.1])
    loss, accuracy = dpo_loss([s], [[[0], [1]]], "all_pairs")
    close(loss, 0.598139)
    close(plackett_luce_loss([s], [[[0], [1]]]), 0.598139)
    assert accuracy.item() == 1.0


# E7: beta 0.5, log-ratios A 0.5, B 2.0, C -1.2, D 0
E7 = implicit_rewards(torch.tensor([0.5, 2.0, -1.2, 0.0], dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 0.5)
A, B, C, D = range(4)


def test_e7_strict_order():
    tiers = [[B], [A], [D], [C]]
    close(plackett_luce_loss([E7], [tiers]), 1.942766)
    close(dpo_loss([E7], [tiers], "all_pairs")[0], 0.375554)
    pairs = {(B, A): 0.386871, (B, D): 0.313262, (B, C): 0.183901, (A, D): 0.575939, (A, C): 0.355865, (D, C): 0.437488}
    for (w, l), value in pairs.items():
        close(-F.logsigmoid(E7[w] - E7[l]), value)


def test_e7_ties_breslow_and_dropped_pairs():
    tiers = [[B], [A, D], [C]]
    close(plackett_luce_loss([E7], [tiers]), 2.546557)
    close(dpo_loss([E7], [tiers], "all_pairs")[0], 0.335477)
    close(dpo_loss([E7], [tiers], "plackett_luce")[0], 2.546557)


def test_k2_is_pairwise_dpo_in_every_form():
    for kind in ("all_pairs", "plackett_luce"):
        close(dpo_loss([E7[[B, C]]], [[[0], [1]]], kind)[0], 0.183901)


def test_mean_over_prompts_and_fully_tied_prompts_left_out():
    second = torch.tensor([0.3, -0.3], dtype=torch.float64)
    tied = torch.tensor([1.0, 2.0], dtype=torch.float64)
    loss = plackett_luce_loss([E7, second, tied], [[[B], [A], [D], [C]], [[0], [1]], [[0, 1]]])
    close(loss, (1.942766 - F.logsigmoid(torch.tensor(0.6, dtype=torch.float64)).item()) / 2)
    with pytest.raises(ValueError, match="two tiers"):
        plackett_luce_loss([tied], [[[0, 1]]])
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss([E7], [[[B], [A]]], "ipo")


def test_plackett_luce_gradient_pushes_the_winner_up():
    s = E7.clone().requires_grad_()
    plackett_luce_loss([s], [[[B], [A], [D], [C]]]).backward()
    assert s.grad[B] < 0 < s.grad[C]
    assert math.isclose(s.grad.sum().item(), 0.0, abs_tol=1e-12)  # the loss is shift-invariant
