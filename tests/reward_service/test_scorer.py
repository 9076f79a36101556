"""In-process scoring math (no Ray): values, padding invariance, the one reward-model path shared with the RM
trainer, programmatic sources, config errors."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError

from raylhf.configs.loader import ConfigError, load_config
from raylhf.configs.schema import RewardConfig, RewardSourceConfig
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.hf_checkpoint import CheckpointError
from raylhf.contracts.protocols import Scorer
from raylhf.contracts.records import Prompt, Rollout
from raylhf.learners.batching import pack_microbatches
from raylhf.learners.reward_model import evaluate_rankings, load_reward_model, score_sequences
from raylhf.reward_service.errors import RewardConfigError, ScoringError
from raylhf.reward_service.normalize import RewardTransform
from raylhf.reward_service.programmatic import load_reward_function
from raylhf.reward_service.rejects import (
    EMPTY_SEQUENCE,
    NONFINITE_FUNCTION_REWARD,
    NONFINITE_RM_SCORE,
    TOKEN_OUT_OF_VOCAB,
    TOO_LONG,
)
from raylhf.reward_service.rewards import length_penalty
from raylhf.reward_service.scorer import RewardScorer
from tests.reward_service.faulty_rewards import NAN_MARKER, RAISE_MARKER, SOURCE

LENGTH_PENALTY = "raylhf.reward_service.rewards:length_penalty"


@pytest.fixture(scope="module")
def scorer(rm_checkpoint, tiny_checkpoint):
    # A small micro-batch budget so a batch of 12 spans several micro-batches.
    cfg = RewardConfig(max_tokens_per_microbatch=200)
    return RewardScorer(cfg, rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """An importable module of test reward functions (text, tokens, broken ones)."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            def count_word(prompts, responses, word="cat"):
                return [float(r.split().count(word)) for r in responses]

            def prompt_chars(prompts, responses):
                return [float(len(p)) for p in prompts]

            def nan_reward(prompt_ids, response_ids):
                return [float("nan")] * len(response_ids)

            def too_few(prompt_ids, response_ids):
                return [0.0]

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_scores_and_ref_logprobs_equal_a_direct_model_call(scorer, make_rollouts, expected, close):
    assert isinstance(scorer, Scorer)
    rollouts = make_rollouts(12, seed=1)
    scored = scorer.score(rollouts)
    assert [r.sample_id for r in scored] == [r.sample_id for r in rollouts]
    for r, s in zip(rollouts, scored):
        want_score, want_lp = expected(r)
        assert s.score == close(want_score)
        assert len(s.ref_logprobs) == len(r.response_ids)
        assert s.ref_logprobs == close(want_lp)
        assert s.t_scored > 0 and s.response_ids == r.response_ids and s.logprobs == r.logprobs
        assert r.score is None and r.ref_logprobs is None  # inputs untouched: new Rollout objects


def test_result_does_not_depend_on_batch_composition(scorer, make_rollouts, close):
    target = make_rollouts(1, seed=2, prompt_len=(12, 12), response_len=(10, 10))[0]
    alone = scorer.score([target])[0]
    longer = make_rollouts(5, seed=3, prompt_len=(20, 30), response_len=(30, 60))
    shorter = make_rollouts(5, seed=4, prompt_len=(2, 5), response_len=(1, 4))
    for batch in (longer + [target], [target] + shorter, shorter + [target] + longer):
        got = next(s for s in scorer.score(batch) if s.sample_id == target.sample_id)
        # Other padded widths run other kernel shapes: equal up to float32 rounding.
        assert got.score == close(alone.score)
        assert got.ref_logprobs == close(alone.ref_logprobs)


def test_pad_id_inside_content_is_scored_at_the_last_token(scorer, make_rollouts, expected, close):
    from transformers import AutoConfig  # deferred: seconds to import

    pad = AutoConfig.from_pretrained(scorer.rm.name_or_path).pad_token_id
    r = make_rollouts(1, seed=5)[0]
    # A response cut by length whose last sampled token happens to be the pad id.
    r = dataclasses.replace(r, response_ids=[pad, 7, pad, 9, pad], logprobs=[-1.0] * 5, finish_reason="length")
    batch = scorer.score([r] + make_rollouts(3, seed=6, response_len=(20, 30)))
    want_score, want_lp = expected(r)
    assert batch[0].score == close(want_score)
    assert batch[0].ref_logprobs == close(want_lp)


def test_sequence_classification_reward_model_is_read_at_the_last_token(seqcls_rm_checkpoint, make_rollouts, close):
    from transformers import AutoModelForSequenceClassification  # deferred: seconds to import

    direct = AutoModelForSequenceClassification.from_pretrained(seqcls_rm_checkpoint, use_safetensors=True).eval()
    pad = direct.config.pad_token_id
    direct.config.pad_token_id = None  # a batch of one is then read at its last token, whatever it is
    scorer = RewardScorer(RewardConfig(), rm_path=str(seqcls_rm_checkpoint), ref_path=None)
    rollouts = make_rollouts(6, seed=11)
    # Cut by length on two pad ids: HF's own pooling (rightmost non-pad token) would read position P.
    rollouts[0] = dataclasses.replace(
        rollouts[0], response_ids=[5, pad, pad], logprobs=[0.0] * 3, finish_reason="length"
    )
    for r, s in zip(rollouts, scorer.score(rollouts)):
        with torch.no_grad():
            want = direct(input_ids=torch.tensor([r.prompt_ids + r.response_ids])).logits[0, 0].item()
        assert s.score == close(want)


def test_scorer_and_rm_trainer_evaluation_read_the_same_reward(rm_checkpoint, make_rollouts, close):
    # One reward-model path: the class a scorer actor hosts and the RM trainer's held-out evaluation (and the RM
    # evaluations' `score_sequences`) give a sequence the same reward, whatever else shares its forward pass.
    scorer = RewardScorer(RewardConfig(ref_logprobs=False, max_tokens_per_microbatch=100), rm_path=str(rm_checkpoint),
                          ref_path=None)
    rollouts = make_rollouts(6, seed=21)
    r = [s.score for s in scorer.score(rollouts)]
    seqs = [list(x.prompt_ids) + list(x.response_ids) for x in rollouts]
    model = load_reward_model(rm_checkpoint, device="cpu")
    assert type(model) is type(scorer.rm)
    cpu = torch.device("cpu")
    assert score_sequences(model, seqs, 0, cpu).tolist() == close(r)

    # Two prompts of K = 3, each ranked 0 > 1 > 2. Eq. 1 from the scorer's rewards, by hand: every prompt's mean of
    # -log σ(r_w - r_l) over its C(3, 2) = 3 pairs, averaged over the prompts; accuracy pooled over the 6 pairs.
    groups = [(seqs[0:3], [0, 1, 2]), (seqs[3:6], [0, 1, 2])]
    pairs = [(g + w, g + l) for g in (0, 3) for w, l in ((0, 1), (0, 2), (1, 2))]
    nll = [-math.log(1.0 / (1.0 + math.exp(-(r[w] - r[l])))) for w, l in pairs]
    got = evaluate_rankings(model, groups, pad_id=0, device=cpu, bf16=False)
    assert got["pairs"] == 6
    assert got["loss"] == close((sum(nll[:3]) / 3 + sum(nll[3:]) / 3) / 2)
    assert got["accuracy"] == pytest.approx(sum(r[w] > r[l] for w, l in pairs) / 6)  # a float32 fraction


def test_reward_model_of_another_kind_is_rejected(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"reward\.rm_path: .* holds a LlamaForCausalLM; expected a \*ForToken"):
        RewardScorer(RewardConfig(), rm_path=str(tiny_checkpoint), ref_path=None)


def test_microbatches_are_length_sorted_and_within_budget():
    lengths = [5, 40, 12, 40, 7, 30, 100]
    batches = pack_microbatches(lengths, max_tokens=80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80
    assert batches[0] == [6]  # longer than the budget: alone


def test_rm_plus_token_function_weighted_sum(rm_checkpoint, tiny_checkpoint, make_rollouts, expected, close):
    sources = [
        RewardSourceConfig(kind="rm", weight=2.0),
        RewardSourceConfig(
            kind="token_function", weight=0.5, path=LENGTH_PENALTY, kwargs={"target_tokens": 10, "coef": 0.1}
        ),
    ]
    cfg = RewardConfig(sources=sources, ref_logprobs=False)
    scorer = RewardScorer(cfg, rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))
    rollouts = make_rollouts(6, seed=7, response_len=(5, 30))
    for r, s in zip(rollouts, scorer.score(rollouts)):
        penalty = -0.1 * max(0, len(r.response_ids) - 10)
        assert s.score == close(2.0 * expected(r)[0] + 0.5 * penalty)
        assert s.ref_logprobs is None  # reference logprobs switched off: the reference is not loaded


def test_ref_logprob_source_adds_the_weighted_summed_reference_logprob(rm_checkpoint, tiny_checkpoint, make_rollouts,
                                                                        expected, close):
    sources = [RewardSourceConfig(kind="rm"), RewardSourceConfig(kind="ref_logprob", weight=0.25)]
    scorer = RewardScorer(RewardConfig(sources=sources), rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))
    rollouts = make_rollouts(6, seed=8, response_len=(3, 20))
    for r, s in zip(rollouts, scorer.score(rollouts)):
        want_score, want_lp = expected(r)
        assert s.ref_logprobs == close(want_lp)
        assert s.score == close(want_score + 0.25 * math.fsum(want_lp))


def test_ref_logprob_source_needs_reference_logprobs_and_takes_no_path():
    with pytest.raises(ValidationError, match="needs `ref_logprobs: true`"):
        RewardConfig(sources=[RewardSourceConfig(kind="rm"), RewardSourceConfig(kind="ref_logprob")], ref_logprobs=False)
    with pytest.raises(ValidationError, match="`ref_logprob` sources take no `path`"):
        RewardSourceConfig(kind="ref_logprob", path=LENGTH_PENALTY)
    with pytest.raises(ValidationError, match="at most one `ref_logprob` source"):
        RewardConfig(sources=[RewardSourceConfig(kind="ref_logprob"), RewardSourceConfig(kind="ref_logprob")])


def test_ref_logprob_source_without_a_reference_policy_is_an_error(rm_checkpoint):
    cfg = RewardConfig(sources=[RewardSourceConfig(kind="rm"), RewardSourceConfig(kind="ref_logprob")])
    with pytest.raises(ValueError, match=r"needs a reference policy \(reward\.ref_path\)"):
        RewardScorer(cfg, rm_path=str(rm_checkpoint), ref_path=None)


def test_text_function_alone_sees_decoded_prompt_and_response(tiny_checkpoint, reward_module):
    from transformers import AutoTokenizer  # deferred: seconds to import

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    count = RewardSourceConfig(kind="function", weight=1.0, path=f"{reward_module}:count_word", kwargs={"word": "cat"})
    cfg = RewardConfig(tokenizer_path=str(tiny_checkpoint), sources=[count])
    scorer = RewardScorer(cfg, rm_path=None, ref_path=None)
    assert scorer.rm is None and scorer.ref is None  # no model needed
    texts = [("repeat the word cat two times :", " cat cat"), ("add 2 and 5 :", " 7")]
    fmt = PromptFormat(tok, chat_template="none")  # the text as written, after BOS
    rollouts = [
        Rollout(f"p{i}", fmt.prompt_ids(Prompt(f"p{i}", p)), ids, [0.0] * len(ids), 0, "eos", sample_id=str(i))
        for i, (p, ids) in enumerate((p, fmt.response_ids(r)) for p, r in texts)
    ]
    assert [s.score for s in scorer.score(rollouts)] == [2.0, 0.0]
    chars_source = RewardSourceConfig(kind="function", path=f"{reward_module}:prompt_chars")
    chars = RewardScorer(cfg.model_copy(update={"sources": [chars_source]}), rm_path=None, ref_path=None)
    assert [s.score for s in chars.score(rollouts)] == [float(len(p)) for p, _ in texts]  # BOS dropped


def test_length_penalty_example():
    assert length_penalty([[1]] * 3, [[5] * 3, [5] * 10, [5] * 14], target_tokens=10, coef=0.5) == [0.0, 0.0, -2.0]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("no_such_package.rewards:fn", "cannot import module 'no_such_package.rewards'"),
        ("raylhf.reward_service.rewards:no_such_fn", "has no attribute 'no_such_fn'"),
    ],
)
def test_bad_import_path_is_a_config_error_naming_key_and_path(path, needle, rm_checkpoint):
    from raylhf.reward_service.pool import RewardPool  # deferred: imports Ray

    cfg = RewardConfig(sources=[RewardSourceConfig(kind="rm"), RewardSourceConfig(kind="token_function", path=path)])
    with pytest.raises(RewardConfigError) as err:
        RewardScorer(cfg, rm_path=str(rm_checkpoint), ref_path=None)
    assert "reward.sources[1].path" in str(err.value) and needle in str(err.value)
    with pytest.raises(RewardConfigError, match=r"reward\.sources\[1\]\.path"):
        # The pool checks in the driver, before any actor starts (no Ray needed to fail).
        RewardPool(cfg, rm_path=str(rm_checkpoint), ref_path=None)


def test_malformed_import_path_is_rejected_by_the_schema_and_the_loader():
    with pytest.raises(ValidationError, match="expected an import path"):
        RewardSourceConfig(kind="token_function", path="raylhf.reward_service.rewards.length_penalty")
    with pytest.raises(RewardConfigError, match=r"reward\.sources\[1\]\.path: .* not an import path"):
        load_reward_function("raylhf.reward_service.rewards.length_penalty", "reward.sources[1]")


def test_bad_import_path_through_the_config(reward_module, tmp_path):
    from raylhf.reward_service.pool import RewardPool  # deferred: imports Ray

    cfg = load_config("tiny", ['reward.sources=[{kind: rm}, {kind: function, path: "nowhere.mod:fn", weight: 0.5}]'])
    with pytest.raises(ConfigError, match=r"reward\.sources\[1\]\.path: cannot import module 'nowhere\.mod'"):
        RewardPool(cfg.reward, rm_path="unused", ref_path=None)
    with pytest.raises(ConfigError, match=r"reward\.sources\.1\.path"):  # malformed: rejected at load
        load_config("tiny", ['reward.sources=[{kind: rm}, {kind: function, path: "not a path"}]'])
    with pytest.raises(ConfigError, match=r"reward\.sources\.0"):
        load_config("tiny", ["reward.sources=[{kind: function}]"])
    with pytest.raises(RewardConfigError, match="resolves to a int, not a function"):
        load_reward_function(f"{reward_module}:NOT_CALLABLE")
    good = load_config("tiny", [f'reward.sources=[{{kind: token_function, path: "{LENGTH_PENALTY}"}}]'])
    # Without an `rm` source the run's RM checkpoint is not needed, so not even looked for.
    scorer = RewardScorer(good.reward, rm_path=str(tmp_path / "missing_rm"), ref_path=None)
    assert scorer.rm is None and scorer.ref is None


def test_unscorable_rollouts_are_quarantined_and_the_others_scored(scorer, make_rollouts, vocab, expected, close):
    bos, eos, n_vocab = vocab
    good = make_rollouts(4, seed=12)
    oov = dataclasses.replace(good[0], sample_id="oov", response_ids=[5, n_vocab, eos], logprobs=[-1.0] * 3)
    negative = dataclasses.replace(good[1], sample_id="negative", prompt_ids=[bos, -3, 5])
    empty = dataclasses.replace(good[2], sample_id="empty", response_ids=[], logprobs=[])
    too_long = make_rollouts(1, seed=13, prompt_len=(250, 250), response_len=(10, 10), prefix="long")[0]
    batch = [oov, good[0], negative, good[1], empty, good[2], too_long, good[3]]

    scored, rejects = scorer.score_with_rejects(batch)
    # The others are scored as if the bad ones had not been in their micro-batches.
    assert [s.sample_id for s in scored] == [r.sample_id for r in good]
    for r, s in zip(good, scored):
        want_score, want_lp = expected(r)
        assert s.score == close(want_score) and s.ref_logprobs == close(want_lp)
    assert [(j.sample_id, j.cause) for j in rejects] == [
        ("oov", TOKEN_OUT_OF_VOCAB), ("negative", TOKEN_OUT_OF_VOCAB), ("empty", EMPTY_SEQUENCE),
        (too_long.sample_id, TOO_LONG),
    ]
    assert rejects[0].detail == (
        f"response token id {n_vocab} at position 1 is outside the reward model's vocabulary [0, {n_vocab})"
    )
    assert rejects[1].detail == "prompt token id -3 at position 1 is negative"
    assert rejects[3].detail == "260 tokens exceed the reward model's 256 positions"
    assert (rejects[0].prompt_id, rejects[0].policy_version, rejects[0].response_ids) == (
        oov.prompt_id, oov.policy_version, [5, n_vocab, eos]
    )

    assert [s.sample_id for s in scorer.score(batch)] == [r.sample_id for r in good]
    assert [j.sample_id for j in scorer.last_rejects] == ["oov", "negative", "empty", too_long.sample_id]
    assert scorer.score([empty]) == [] and [j.cause for j in scorer.last_rejects] == [EMPTY_SEQUENCE]


def test_nonfinite_function_reward_quarantines_that_rollout_never_zero(make_rollouts, vocab, reward_module):
    eos = vocab[1]
    rollouts = make_rollouts(3, seed=14)
    nan = dataclasses.replace(rollouts[1], response_ids=[*NAN_MARKER, eos], logprobs=[-1.0] * 5)
    scorer = RewardScorer(RewardConfig(sources=[RewardSourceConfig(kind="token_function", path=SOURCE)]),
                          rm_path=None, ref_path=None)
    scored = scorer.score([rollouts[0], nan, rollouts[2]])
    assert [(s.sample_id, s.score) for s in scored] == [(rollouts[0].sample_id, 0.0), (rollouts[2].sample_id, 0.0)]
    (reject,) = scorer.last_rejects
    assert (reject.sample_id, reject.cause) == (nan.sample_id, NONFINITE_FUNCTION_REWARD)
    assert reject.detail == f"reward function {SOURCE} returned nan"

    nan_for_all = RewardSourceConfig(kind="token_function", path=f"{reward_module}:nan_reward")
    nothing = RewardScorer(RewardConfig(sources=[nan_for_all]), rm_path=None, ref_path=None)
    assert nothing.score(rollouts) == []  # no rollout gets a reward it was not given
    assert [j.sample_id for j in nothing.last_rejects] == [r.sample_id for r in rollouts]


def test_reward_model_overflow_quarantines_only_that_rollout(rm_checkpoint, tmp_path, make_rollouts):
    from transformers import AutoModelForTokenClassification  # deferred: seconds to import

    rollouts = make_rollouts(6, seed=15)
    rm = AutoModelForTokenClassification.from_pretrained(rm_checkpoint, use_safetensors=True).eval()
    with torch.no_grad():
        base = rm.model
        hidden = torch.stack(
            [base(input_ids=torch.tensor([r.prompt_ids + r.response_ids])).last_hidden_state[0, -1] for r in rollouts]
        ).abs()  # [N, H]: what the head reads, at each rollout's last token
        top2 = hidden.topk(2, dim=0).values  # [2, H]
        d = int((top2[0] / top2[1]).argmax())  # the feature whose largest value stands out most
        assert float(top2[0, d] / top2[1, d]) > 1.01  # far above float rounding
        first = int(hidden[:, d].argmax())
        # A finite head that overflows float32 for the largest |h_d| only: w * sqrt(a * b) is the float32 maximum.
        w = torch.finfo(torch.float32).max / float((top2[0, d] * top2[1, d]).sqrt())
        rm.score.weight.zero_()
        rm.score.weight[0, d] = w
        rm.score.bias.zero_()
    rm.save_pretrained(tmp_path / "overflow_rm")

    scorer = RewardScorer(RewardConfig(), rm_path=str(tmp_path / "overflow_rm"), ref_path=None)
    scored = scorer.score(rollouts)
    assert [s.sample_id for s in scored] == [r.sample_id for i, r in enumerate(rollouts) if i != first]
    assert all(math.isfinite(s.score) for s in scored)
    (reject,) = scorer.last_rejects
    assert (reject.sample_id, reject.cause) == (rollouts[first].sample_id, NONFINITE_RM_SCORE)
    assert reject.detail in ("reward model returned inf", "reward model returned -inf")


def test_failures_not_about_one_rollout_are_errors(rm_checkpoint, tmp_path, make_rollouts, vocab, reward_module):
    from transformers import AutoModelForTokenClassification  # deferred: seconds to import

    rollouts = make_rollouts(3, seed=8)
    too_few = RewardSourceConfig(kind="token_function", path=f"{reward_module}:too_few")
    with pytest.raises(ScoringError, match=rf"reward function {reward_module}:too_few returned 1 values for 3"):
        RewardScorer(RewardConfig(sources=[too_few]), rm_path=None, ref_path=None).score(rollouts)
    raising = RewardScorer(RewardConfig(sources=[RewardSourceConfig(kind="token_function", path=SOURCE)]),
                           rm_path=None, ref_path=None)
    trigger = dataclasses.replace(rollouts[0], response_ids=[*RAISE_MARKER, vocab[1]], logprobs=[-1.0] * 5)
    with pytest.raises(ScoringError, match=rf"reward function {SOURCE} raised ValueError"):
        raising.score([rollouts[1], trigger])

    bad_rm = AutoModelForTokenClassification.from_pretrained(rm_checkpoint, use_safetensors=True)
    with torch.no_grad():
        bad_rm.score.weight.fill_(float("nan"))
    bad_rm.save_pretrained(tmp_path / "nan_rm")
    # Broken for every rollout: a load error, not a quarantine of everything it is given.
    with pytest.raises(ValueError, match=r"reward\.rm_path: .*nan_rm: parameter score\.weight holds NaN or inf"):
        RewardScorer(RewardConfig(), rm_path=str(tmp_path / "nan_rm"), ref_path=None)
    with pytest.raises(CheckpointError, match="reward.rm_path: .* does not exist"):
        RewardScorer(RewardConfig(), rm_path=str(tmp_path / "missing"), ref_path=None)


def test_transform_fixed_running_and_clip():
    fixed = RewardTransform(RewardConfig(normalize="fixed", shift=1.0, scale=2.0, clip=3.0))
    assert fixed([0.0, 1.0, 2.5, 10.0]) == [-2.0, 0.0, 3.0, 3.0]

    running = RewardTransform(RewardConfig(normalize="running"), eps=0.0)
    # Batch 1: mean 2, var ((1-2)^2 + (3-2)^2)/2 = 1 -> [-1, 1].
    assert running([1.0, 3.0]) == pytest.approx([-1.0, 1.0])
    # Batch 2 merged: values 1, 3, 5 -> mean 3, var (4 + 0 + 4)/3 = 8/3 -> 5 maps to 2/sqrt(8/3).
    assert running([5.0]) == pytest.approx([2.0 / math.sqrt(8.0 / 3.0)])
    resumed = RewardTransform(RewardConfig(normalize="running"), eps=0.0)
    resumed.load_state_dict(running.state_dict())
    assert resumed([3.0]) == running([3.0])

    clip_only = RewardTransform(RewardConfig(clip=0.5))
    assert clip_only([-2.0, 0.25, 2.0]) == [-0.5, 0.25, 0.5]


def test_scorer_applies_the_configured_normalisation(rm_checkpoint, tiny_checkpoint, make_rollouts, expected, close):
    cfg = load_config("tiny", ["reward.normalize=fixed", "reward.shift=0.25", "reward.scale=2.0", "reward.clip=0.5"])
    scorer = RewardScorer(cfg.reward, rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))
    rollouts = make_rollouts(4, seed=9)
    for r, s in zip(rollouts, scorer.score(rollouts)):
        assert s.score == close(max(-0.5, min(0.5, (expected(r)[0] - 0.25) * 2.0)))
        assert s.ref_logprobs is not None
    raw = RewardScorer(cfg.reward, rm_path=str(rm_checkpoint), ref_path=None, apply_transform=False)
    assert [s.score for s in raw.score(rollouts)] == close([expected(r)[0] for r in rollouts])


def test_config_paths_win_over_the_run_defaults(rm_checkpoint, tiny_checkpoint, tmp_path):
    cfg = RewardConfig(rm_path=str(rm_checkpoint), ref_path=str(tiny_checkpoint))
    scorer = RewardScorer(cfg, rm_path=str(tmp_path / "unused_rm"), ref_path=str(tmp_path / "unused_sft"))
    assert scorer.describe()["rm"] == "LlamaForTokenClassification" and scorer.describe()["ref"] == "LlamaForCausalLM"
    with pytest.raises(CheckpointError, match="reward.ref_path: .* does not exist"):
        RewardScorer(RewardConfig(), rm_path=str(rm_checkpoint), ref_path=str(tmp_path / "missing_sft"))
    no_ref = RewardScorer(RewardConfig(ref_logprobs=False), rm_path=str(rm_checkpoint), ref_path=str(tmp_path / "x"))
    assert no_ref.ref is None
