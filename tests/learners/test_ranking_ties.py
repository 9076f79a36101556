"""`ranking_loss` with a labeler's ties: tied pairs are no term of the loss or the metrics, and each prompt's
untied pairs are averaged over their own count. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest
import torch

from raylhf.learners.ranking_loss import ranking_loss
from raylhf.learners.reward_model import RankedGroup, evaluate_rankings, group_batch, reward_model_from_policy

TOL = 1e-9


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def ties(rows):
    return torch.tensor(rows, dtype=torch.bool)


def softplus(x):  # -log σ(x) = log(1 + e^-x)
    return math.log1p(math.exp(-x))


def test_k3_one_tie_by_hand():
    # Ranking 0 > 1 > 2 with 0 and 1 tied (tied = [True, False]), r = [1.0, 0.5, -1.0].
    # Pairs by position: (0,1) tied -> left out; (0,2) counts (tied[1] is False); (1,2) counts. N = 2.
    #   -log σ(1.0 - -1.0) = log(1 + e^-2)   = 0.126928
    #   -log σ(0.5 - -1.0) = log(1 + e^-1.5) = 0.201413
    #   loss = (0.126928 + 0.201413) / 2 = 0.164170
    scores, order = t([[1.0, 0.5, -1.0]]), torch.tensor([[0, 1, 2]])
    loss, metrics = ranking_loss(scores, order, ties([[True, False]]))
    assert abs(loss.item() - (softplus(2.0) + softplus(1.5)) / 2) < TOL
    assert abs(loss.item() - 0.164170) < 1e-6
    # Both counted pairs are ordered as ranked; margins 2.0 and 1.5.
    assert metrics == {"accuracy": 1.0, "pairs": 2.0, "margin": 1.75}
    # Without the tie all three pairs count: (0.126928 + 0.201413 + log(1 + e^-0.5) = 0.474077) / 3 = 0.267473.
    untied = ranking_loss(scores, order, ties([[False, False]]))[0].item()
    assert abs(untied - 0.267473) < 1e-6
    assert untied == ranking_loss(scores, order)[0].item()  # no ties: the same as tied=None


def test_each_prompt_averages_over_its_own_untied_pairs():
    # Prompt 0 as above (N = 2, 0.164170); prompt 1 the same scores without ties (N = 3, 0.267473).
    # Each prompt weighs 1/P: loss = (0.164170 + 0.267473) / 2 = 0.215821, not the pooled (0.328341 +
    # 0.802418) / 5 = 0.226152. Metrics pool the 5 counted pairs: margins 2, 1.5 | 2, 1.5, 0.5 -> 7.5 / 5 = 1.5.
    scores, order = t([[1.0, 0.5, -1.0], [1.0, 0.5, -1.0]]), torch.tensor([[0, 1, 2], [0, 1, 2]])
    loss, metrics = ranking_loss(scores, order, ties([[True, False], [False, False]]))
    expected = ((softplus(2.0) + softplus(1.5)) / 2 + (softplus(2.0) + softplus(1.5) + softplus(0.5)) / 3) / 2
    assert abs(loss.item() - expected) < TOL and abs(loss.item() - 0.215821) < 1e-6
    assert metrics["pairs"] == 5.0 and abs(metrics["margin"] - 1.5) < TOL and metrics["accuracy"] == 1.0


def test_ties_chain_over_a_run_of_positions():
    # K = 4, ranking 2 > 0 > 3 > 1 with tied = [True, True, False]: responses 2, 0, 3 form one tie group,
    # response 1 is below all of them. Counted pairs: (2,1), (0,1), (3,1); the three inside the group are not,
    # (2,3) included although 2 and 3 are not neighbours. r = [0.2, 0.0, 1.0, -0.3]:
    #   r2 - r1 = 1.0 -> log(1 + e^-1)   = 0.313262
    #   r0 - r1 = 0.2 -> log(1 + e^-0.2) = 0.598139
    #   r3 - r1 = -0.3 -> log(1 + e^0.3) = 0.854355 (ordered wrongly)
    #   loss = 1.765756 / 3 = 0.588585 ; accuracy 2/3 ; margin (1.0 + 0.2 - 0.3) / 3 = 0.3
    scores, order = t([[0.2, 0.0, 1.0, -0.3]]), torch.tensor([[2, 0, 3, 1]])
    loss, metrics = ranking_loss(scores, order, ties([[True, True, False]]))
    assert abs(loss.item() - (softplus(1.0) + softplus(0.2) + softplus(-0.3)) / 3) < TOL
    assert abs(loss.item() - 0.588585) < 1e-6
    assert metrics["pairs"] == 3.0 and abs(metrics["accuracy"] - 2 / 3) < TOL and abs(metrics["margin"] - 0.3) < TOL
    # tied = [False, True, False]: groups {2} {0, 3} {1}; only (0,3) is left out, 5 of the 6 pairs count.
    assert ranking_loss(scores, order, ties([[False, True, False]]))[1]["pairs"] == 5.0


def test_a_tied_pair_gets_no_gradient():
    # K = 3, 0 > {1 = 2}: the pairs are (0,1) and (0,2). Responses 1 and 2 are pushed down by their pair with 0
    # only, so at r = [0, 0, 0] each gets -d/dr_l of log(1 + e^-(r0 - r_l)) / 2 = -σ(0) / 2 = -0.25 (sign: the
    # gradient of the loss w.r.t. r_l is +σ(r_l - r0) / 2 = 0.25), r0 gets -0.5, and nothing couples 1 and 2.
    scores = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = ranking_loss(scores, torch.tensor([[0, 1, 2]]), ties([[False, True]]))
    loss.backward()
    assert torch.allclose(scores.grad, t([[-0.5, 0.25, 0.25]]), atol=TOL)
    assert abs(loss.item() - math.log(2)) < TOL  # both pairs at margin 0: log 2


def test_tie_entries_past_a_prompts_responses_are_ignored():
    # Prompt 1 ranks K_p = 2 of K = 3 (one -1 pad): its tied[1] sits past K_p - 1 and must not matter.
    scores, order = t([[1.0, 0.5, -1.0], [0.3, -0.2, 99.0]]), torch.tensor([[0, 1, 2], [1, 0, -1]])
    a = ranking_loss(scores, order, ties([[True, False], [False, True]]))
    b = ranking_loss(scores, order, ties([[True, False], [False, False]]))
    assert a[0].item() == b[0].item() and a[1] == b[1]


def test_a_prompt_with_every_pair_tied_is_refused():
    with pytest.raises(ValueError, match=r"prompts \[1\] have every pair tied"):
        ranking_loss(t([[1.0, 0.0], [0.5, 0.2]]), torch.tensor([[0, 1], [1, 0]]), ties([[False], [True]]))
    with pytest.raises(ValueError, match=r"tied must be a bool tensor \[P, K-1\]"):
        ranking_loss(t([[1.0, 0.0, 0.5]]), torch.tensor([[0, 1, 2]]), ties([[False, False, False]]))
    with pytest.raises(ValueError, match="bool"):
        ranking_loss(t([[1.0, 0.0]]), torch.tensor([[0, 1]]), torch.tensor([[0]]))


def _loop_loss(scores, order, tied):
    """The definition, one pair at a time: positions i < j count unless tied[i..j-1] are all True."""
    per_prompt = []
    for s, o, tie in zip(scores, order, tied):
        o = [x for x in o if x >= 0]
        terms = [softplus(s[o[i]] - s[o[j]]) for i, j in combinations(range(len(o)), 2)
                 if not all(tie[i:j])]
        per_prompt.append(sum(terms) / len(terms))
    return sum(per_prompt) / len(per_prompt)


def test_vectorised_equals_the_pair_loop():
    rng = random.Random(5)
    k, rows = 6, []
    while len(rows) < 40:
        k_p = rng.randint(2, k)
        order = rng.sample(range(k_p), k_p) + [-1] * (k - k_p)
        tie = [rng.random() < 0.4 for _ in range(k - 1)]
        if all(tie[: k_p - 1]):
            continue  # nothing to train on: refused, tested above
        rows.append(([rng.gauss(0, 1) for _ in range(k)], order, tie))
    scores, order, tied = (list(x) for x in zip(*rows))
    loss, _ = ranking_loss(t(scores), torch.tensor(order), ties(tied))
    assert abs(loss.item() - _loop_loss(scores, order, tied)) < 1e-12


def test_group_batch_carries_ties_and_keeps_the_untied_path():
    # Groups without a tie give tied=None (the loss's path without ties); a tie is padded with False to K-1.
    groups = [([[1, 2], [1, 3], [1, 4]], [0, 1, 2]), RankedGroup([[1, 5], [1, 6]], [1, 0], [False])]
    *_, order, tied = group_batch(groups, pad_id=0)
    assert tied is None and order.tolist() == [[0, 1, 2], [1, 0, -1]]
    *_, tied = group_batch([*groups, RankedGroup([[1, 7], [1, 8]], [1, 0], [False]),
                            RankedGroup([[1, 7], [1, 8], [1, 9]], [2, 0, 1], [True, False])], pad_id=0)
    assert tied.tolist() == [[False, False], [False, False], [False, False], [True, False]]


def test_reward_model_metrics_count_untied_pairs_only(tiny_checkpoint):
    # Group 0 ranks 2 > 1 > 0 with 2 and 1 tied: 2 of its 3 pairs count; group 1 (no ties) has 1 pair.
    model = reward_model_from_policy(tiny_checkpoint, device="cpu")
    groups = [RankedGroup([[1, 12, 40, 2], [1, 12, 41, 2], [1, 12, 42, 2]], [2, 1, 0], [True, False]),
              ([[1, 13, 50, 2], [1, 13, 51, 2]], [1, 0])]
    assert evaluate_rankings(model, groups, 0, torch.device("cpu"), False)["pairs"] == 3.0
