"""`ranking_loss` (InstructGPT Eq. 1) against values worked out by hand: K = 2 and 3, prompts of mixed K, a
pair loop, padding and malformed input. Ties: tests/learners/test_ranking_ties.py."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from raylhf.learners.ranking_loss import ranking_loss
from tests.learners.handworked import TOL, close, pad, t

NAN = float("nan")


def _softplus(x):
    # softplus(x) = ln(1 + e^x), so -log sigmoid(d) = softplus(-d)
    return math.log1p(math.exp(x))


def test_ranking_loss_k2_is_pairwise_logistic():
    scores = t([[0.3, -0.4]]).requires_grad_(True)
    order = torch.tensor([[1, 0]])  # response 1 preferred: r_w = -0.4, r_l = 0.3, d = -0.7
    loss, metrics = ranking_loss(scores, order)
    # -log sigmoid(-0.7) = ln(1 + e^0.7) = ln 3.013753 = 1.103141
    assert close(loss.item(), math.log(1 + math.exp(0.7)))
    assert close(loss.item(), -F.logsigmoid(torch.tensor(-0.7, dtype=torch.float64)).item())
    assert metrics == {"accuracy": 0.0, "pairs": 1.0, "margin": pytest.approx(-0.7, abs=TOL)}
    # d/dr_w = -sigmoid(-d) = -sigmoid(0.7) = -0.668188 ; d/dr_l = +0.668188
    loss.backward()
    s = 1 / (1 + math.exp(-0.7))
    assert close(scores.grad, [[s, -s]])


def test_ranking_loss_k3_by_hand_and_batch_mixing_k():
    # prompt 0: scores [1, 3, 2], ranking 1 > 2 > 0 -> pairs (1,2): d=1 ; (1,0): d=2 ; (2,0): d=1
    #   L0 = (2 ln(1+e^-1) + ln(1+e^-2)) / 3 = (2*0.313262 + 0.126928) / 3 = 0.251150
    # prompt 1: K_p = 2 (third slot padded, garbage score): L1 = ln(1+e^0.7) = 1.103141 (see above)
    # loss = (L0 + L1) / 2 = 0.677146 ; pooled accuracy 3/4 ; margin (1+2+1-0.7)/4 = 0.825
    l0 = (2 * _softplus(-1.0) + _softplus(-2.0)) / 3
    l1 = _softplus(0.7)
    scores = t([[1.0, 3.0, 2.0], [0.3, -0.4, NAN]])
    order = torch.tensor([[1, 2, 0], [1, 0, -1]])
    loss, metrics = ranking_loss(scores, order)
    assert close(loss.item(), (l0 + l1) / 2)
    assert close(metrics["accuracy"], 0.75)
    assert metrics["pairs"] == 4.0
    assert close(metrics["margin"], 0.825)
    # prompt 0 alone
    assert close(ranking_loss(scores[:1], order[:1])[0].item(), l0)


def _ranking_reference(scores, order):
    """Python loop over every ordered pair of every prompt (torch scalars, so gradients compare)."""
    per_prompt, wins, margins = [], [], []
    for p in range(scores.shape[0]):
        ranked = [i for i in order[p].tolist() if i >= 0]
        losses = []
        for a in range(len(ranked)):
            for b in range(a + 1, len(ranked)):
                d = scores[p, ranked[a]] - scores[p, ranked[b]]
                losses.append(-F.logsigmoid(d))
                wins.append(float(d.item() > 0))
                margins.append(d.item())
        per_prompt.append(torch.stack(losses).mean())
    return torch.stack(per_prompt).mean(), sum(wins) / len(wins), len(wins), sum(margins) / len(margins)


def test_ranking_loss_matches_pair_loop_and_ignores_padding():
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    num_prompts, k = 10, 6
    base = torch.randn(num_prompts, k, generator=gen, dtype=torch.float64)
    order = torch.full((num_prompts, k), -1, dtype=torch.long)
    garbage = base.clone()
    for p in range(num_prompts):
        k_p = rng.randint(2, k)
        chosen = rng.sample(range(k), k_p)  # any subset of the slots, in a random ranking
        order[p, :k_p] = torch.tensor(chosen)
        for i in set(range(k)) - set(chosen):
            garbage[p, i] = NAN if i % 2 else 1e6  # unranked responses hold garbage
    ref_scores = base.clone().requires_grad_(True)
    ref_loss, ref_acc, ref_pairs, ref_margin = _ranking_reference(ref_scores, order)
    ref_loss.backward()

    scores = garbage.clone().requires_grad_(True)
    loss, metrics = ranking_loss(scores, order)
    loss.backward()
    assert close(loss.item(), ref_loss.item(), 1e-12)
    assert close(metrics["accuracy"], ref_acc, 1e-12)
    assert metrics["pairs"] == float(ref_pairs)
    assert close(metrics["margin"], ref_margin, 1e-12)
    # gradients agree at ranked responses and are exactly 0 (not nan) at unranked ones
    ranked = torch.zeros(num_prompts, k, dtype=torch.bool)
    for p in range(num_prompts):
        ranked[p, order[p][order[p] >= 0]] = True
    assert close(scores.grad[ranked].tolist(), ref_scores.grad[ranked].tolist(), 1e-12)
    assert bool((scores.grad[~ranked] == 0).all())

    # minibatch split: the batch loss is the mean of the per-prompt losses
    singles = [ranking_loss(garbage[p : p + 1], order[p : p + 1])[0].item() for p in range(num_prompts)]
    assert close(loss.item(), sum(singles) / num_prompts, 1e-12)

    # widening K with an extra padded slot changes nothing
    wider_scores = pad(garbage, 1, NAN)
    wider_order = torch.cat([order, torch.full((num_prompts, 1), -1, dtype=torch.long)], dim=1)
    assert close(ranking_loss(wider_scores, wider_order)[0].item(), ref_loss.item(), 1e-12)


@pytest.mark.parametrize(
    "order, message",
    [
        ([[0, -1, -1]], "fewer than 2"),
        ([[0, -1, 1]], "end of a row"),
        ([[0, 0, 1]], "repeats"),
        ([[0, 3, 1]], r"\[0, 3\)"),
        ([[0, -2, 1]], r"\[0, 3\)"),
    ],
)
def test_ranking_loss_rejects_bad_order(order, message):
    with pytest.raises(ValueError, match=message):
        ranking_loss(t([[0.1, 0.2, 0.3]]), torch.tensor(order))


def test_ranking_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[P, K\]"):
        ranking_loss(t([[0.1, 0.2]]), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        ranking_loss(t([[0.1, 0.2]]), t([[0, 1]]))
