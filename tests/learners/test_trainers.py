"""The pretrain / SFT / reward-model trainers on tiny real models."""

import numpy as np
import pytest
import torch

from raylhf.configs.schema import PretrainConfig, RMConfig, SFTConfig
from raylhf.learners.batching import prompt_response_batch
from raylhf.learners.models import build_causal_lm, load_causal_lm, load_tokenizer
from raylhf.learners.pretrain import pack_documents, pretrain
from raylhf.learners.reward_model import (
    evaluate_rankings,
    load_reward_model,
    normalise_rewards,
    per_token_values,
    reward_model_from_policy,
    score_sequences,
    sequence_rewards,
    train_reward_model,
)
from raylhf.learners.sft import ResidualDropout, response_lm_loss, train_sft

CPU = torch.device("cpu")


def _noop(step, metrics):
    pass


def test_pretrain_lowers_heldout_loss(tiny_checkpoint):
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_checkpoint)
    model = build_causal_lm("tiny", tok, 256, seed=0)
    docs = tok(["count from 3 to 6 : 3 4 5 6", "add 2 and 5 : 7", "list three fruits : apple banana cherry"] * 40,
               add_special_tokens=False)["input_ids"]
    stream = pack_documents(docs, tok.bos_token_id, tok.eos_token_id)
    assert stream[0] == tok.bos_token_id and stream[len(docs[0]) + 1] == tok.eos_token_id
    rows = []
    cfg = PretrainConfig(steps=20, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, weight_decay=0.0)
    metrics = pretrain(cfg, model, stream, stream, device=CPU, bf16=False, seed=0, log=lambda s, m: rows.append(m),
                       eval_every=10)
    assert rows[0]["loss"] > 5.0  # ~ln(vocab) at random init
    assert metrics["heldout_loss"] < 0.5 * rows[0]["loss"]


def test_sft_loss_counts_response_tokens_only(tiny_checkpoint):
    model = load_causal_lm(tiny_checkpoint, device="cpu")
    prompt, response = [1, 10, 11, 12], [20, 21, 2]
    loss, m = response_lm_loss(model, [(prompt, response)], pad_id=0, device=CPU)
    assert m["tokens"] == 3
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        # response token t is predicted at position len(prompt) - 1 + t
        expected = -sum(logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # padding a second, longer example into the batch does not change the first one's contribution
    loss2, m2 = response_lm_loss(model, [(prompt, response), ([1, 30, 31, 32, 33, 34], [40, 2])], 0, CPU)
    assert m2["tokens"] == 5


def test_prompt_response_batch_masks():
    ids, attn, resp = prompt_response_batch([([1, 5], [6, 2]), ([1, 5, 7], [2])], pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 2], [1, 5, 7, 2]]
    assert resp.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]] and attn.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_residual_dropout_only_in_training(tiny_checkpoint):
    model = load_causal_lm(tiny_checkpoint, device="cpu")
    x = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        ref = model(x).logits
        hooks = ResidualDropout(model.model.layers, 0.5)
        model.eval()
        assert torch.allclose(model(x).logits, ref)
        model.train()
        assert not torch.allclose(model(x).logits, ref)
        hooks.remove()
        model.eval()
        assert torch.allclose(model(x).logits, ref)


def test_sft_learns_and_keeps_best_epoch(tiny_checkpoint):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_checkpoint, device="cpu")
    examples = [([1, 10 + i % 5, 11], [20 + i % 5, 2]) for i in range(40)]  # response determined by prompt
    rows = []
    cfg = SFTConfig(epochs=3, batch_size=8, lr=3e-3, grad_clip=1.0, residual_dropout=0.1)
    metrics = train_sft(cfg, model, examples[:32], examples[32:], pad_id=0, device=CPU, bf16=False, seed=0,
                        log=lambda s, m: rows.append(m))
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < 0.5 * val[0]
    assert metrics["best_val_loss"] == pytest.approx(min(val))
    assert not model.training


def _toy_groups(n, rng):
    """Prompts [1, p]; responses [1, p, t, 2]; the labeler prefers higher token t."""
    groups = []
    for _ in range(n):
        p = int(rng.integers(10, 20))
        tokens = rng.choice(np.arange(30, 60), size=int(rng.integers(2, 5)), replace=False)
        seqs = [[1, p, int(t), 2] for t in tokens]
        ranking = [int(i) for i in np.argsort(-tokens, kind="stable")]
        groups.append((seqs, ranking))
    return groups


def test_reward_model_learns_rankings_and_normalises(tiny_checkpoint, tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, val = _toy_groups(160, rng), _toy_groups(40, rng)
    model = reward_model_from_policy(tiny_checkpoint, device="cpu")
    before = evaluate_rankings(model, val, 0, CPU, False)
    assert before["accuracy"] == 0.0  # zero-initialised head: every pair is a tie, none ordered correctly
    cfg = RMConfig(epochs=3, batch_prompts=8, lr=1e-3, grad_clip=1.0)
    metrics = train_reward_model(cfg, model, train, val, pad_id=0, device=CPU, bf16=False, seed=0, log=_noop)
    assert metrics["val_accuracy"] > 0.8
    demos = [[1, 12, 45, 2], [1, 15, 33, 2], [1, 11, 58, 2]]
    normalise_rewards(model, demos, pad_id=0, device=CPU)
    assert score_sequences(model, demos, 0, CPU).mean() == pytest.approx(0.0, abs=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = load_reward_model(tmp_path, device="cpu")
    np.testing.assert_allclose(score_sequences(reloaded, demos, 0, CPU), score_sequences(model, demos, 0, CPU),
                               atol=1e-6)


def test_reward_read_at_last_token_is_padding_invariant(tiny_checkpoint):
    torch.manual_seed(0)
    model = reward_model_from_policy(tiny_checkpoint, device="cpu")
    torch.nn.init.normal_(model.score.weight)
    seqs = [[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 11, 2]]
    together = score_sequences(model, seqs, 0, CPU, max_tokens=64)  # one micro-batch of 3 x 6 padded tokens
    alone = np.array([score_sequences(model, [s], 0, CPU)[0] for s in seqs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    ids = torch.tensor([[1, 7, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    values = per_token_values(model, ids, mask)
    assert values.shape == (1, 5)
    assert sequence_rewards(model, ids, mask)[0].item() == pytest.approx(values[0, 2].item())


def test_reward_head_learning_rate_is_its_own_multiple_of_the_trunks(tiny_checkpoint):
    """`rm.head_lr_scale` scales the head's step only: one Adam step moves a parameter by about its learning
    rate, so at a scale of 1e-6 the head moves by at most ~1e-9 while the trunk moves by ~1e-3. (The head is
    set off zero first: a zero head passes the trunk no gradient.)"""
    torch.manual_seed(0)
    groups = _toy_groups(8, np.random.default_rng(0))
    model = reward_model_from_policy(tiny_checkpoint, device="cpu")
    torch.nn.init.normal_(model.score.weight, std=0.02)
    head = model.score.weight.detach().clone()
    trunk = [p.detach().clone() for n, p in model.named_parameters() if not n.startswith("score")]
    cfg = RMConfig(epochs=1, batch_prompts=8, lr=1e-3, head_lr_scale=1e-6)
    train_reward_model(cfg, model, groups, groups[:2], pad_id=0, device=CPU, bf16=False, seed=0, log=_noop)
    assert 0 < (model.score.weight - head).abs().max().item() < 1e-8
    moved = max((p - q).abs().max().item()
                for q, (_, p) in zip(trunk, [(n, p) for n, p in model.named_parameters() if not n.startswith("score")]))
    assert moved > 1e-4
