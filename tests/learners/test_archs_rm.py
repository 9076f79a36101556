"""The reward model, its scorer and the PPO learner's checkpoints on tiny Llama, Qwen2 and GPT-2 models.

The families differ where the RM path used to assume Llama: GPT-2's token classifier calls its head
`classifier` (Llama and Qwen2: `score`), GPT-2 has no pad token (config.pad_token_id None) and dropout in
its transformer, Qwen2 ties its embeddings and has no BOS. No vLLM here (tests/actors/test_archs.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from raylhf.configs.schema import PPOConfig, RewardConfig, RMConfig
from raylhf.contracts.records import Rollout
from raylhf.learners.models import load_causal_lm, load_tokenizer
from raylhf.learners.ppo import MASTER_FILE, PPOLearner
from raylhf.learners.reward_model import (
    load_reward_model,
    normalise_rewards,
    ranking_batch_loss,
    reward_head,
    reward_model_from_policy,
    score_sequences,
    train_reward_model,
)
from raylhf.reward_service.scorer import RewardScorer
from tests.archs import ARCHS, build_tiny_checkpoint
from tests.conftest import CORPUS

CPU = torch.device("cpu")
# The same sequence scored alone and padded into a batch: float32 CPU kernels of other shapes differ by ~1e-7.
BATCH_ATOL = 1e-5
HEAD_NAMES = {"llama": "score", "qwen2": "score", "gpt2": "classifier"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends with other processes
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {arch: build_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"tiny_{arch}"), CORPUS) for arch in ARCHS}


def test_tiny_checkpoints_have_their_family_traits(checkpoints):
    """What tests/archs.py promises of each family, as transformers loads it."""
    traits = {}
    for arch, path in checkpoints.items():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        eos = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        traits[arch] = (type(config).__name__, config.tie_word_embeddings, head_dim, tokenizer.bos_token,
                        tokenizer.eos_token, tokenizer.pad_token, tokenizer.encode("add 2")[0] == tokenizer.bos_token_id,
                        tokenizer.chat_template is not None,
                        [tokenizer.convert_ids_to_tokens(i) for i in eos])
    assert traits == {
        "llama": ("LlamaConfig", False, 64, "<|begin_of_text|>", "<|end_of_text|>", None, True, True,
                  ["<|end_of_text|>", "<|eot_id|>"]),
        "qwen2": ("Qwen2Config", True, 64, None, "<|im_end|>", "<|endoftext|>", False, True,
                  ["<|im_end|>", "<|endoftext|>"]),
        "gpt2": ("GPT2Config", True, 64, "<|endoftext|>", "<|endoftext|>", None, False, False, ["<|endoftext|>"]),
    }
    llama = AutoTokenizer.from_pretrained(checkpoints["llama"], local_files_only=True)
    text = llama.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    ids = llama.encode(text, add_special_tokens=False)  # the template writes BOS; header tokens are single ids
    assert llama.convert_ids_to_tokens(ids[:2]) == ["<|begin_of_text|>", "<|start_header_id|>"]


def sequences(tokenizer) -> list[list[int]]:
    """Prompt + response token sequences of different lengths (BOS where the tokenizer adds one)."""
    texts = ["add 2 and 5 : 7", "list three fruits : apple banana cherry", "count from 3 to 6 : 3 4 5 6", "cat cat"]
    return [tokenizer.encode(t) + [tokenizer.eos_token_id] for t in texts]


def groups(seqs: list[list[int]]) -> list[tuple[list[list[int]], list[int]]]:
    """Two ranked groups (K = 3 and K = 2) over the sequences."""
    return [([seqs[0], seqs[1], seqs[2]], [2, 0, 1]), ([seqs[3], seqs[1]], [0, 1])]


@pytest.mark.parametrize("arch", ARCHS)
def test_reward_model_scores_and_trains_on_each_family(arch, checkpoints, tmp_path):
    path = checkpoints[arch]
    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token_id is not None  # GPT-2 and Llama have none: load_tokenizer pads with EOS
    model = reward_model_from_policy(path, device="cpu")
    head = reward_head(model)
    assert head is getattr(model, HEAD_NAMES[arch]) and head.out_features == 1
    seqs = sequences(tokenizer)
    # A zero head gives every sequence the reward 0 exactly, whatever the transformer computes.
    assert score_sequences(model, seqs, tokenizer.pad_token_id, CPU).tolist() == [0.0] * len(seqs)

    with torch.no_grad():
        # std 0.1 over 128 normalised features: rewards of order 1, where float32 rounding is ~1e-7
        head.weight.copy_(0.1 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)))
    batched = score_sequences(model, seqs, tokenizer.pad_token_id, CPU)
    model.eval()
    with torch.no_grad():  # the model's own forward (transformer, its dropout, head) at each last token
        own = [model(torch.tensor([s])).logits[0, -1, 0].item() for s in seqs]
    assert batched.tolist() == pytest.approx(own, abs=BATCH_ATOL)
    assert max(own) - min(own) > 100 * BATCH_ATOL  # the comparison could fail: the rewards differ

    # One optimiser step on two ranked groups from a zero head: every pair ties, the loss is log 2, and the
    # step lowers it (the head's gradient is the only non-zero one, and it points down).
    with torch.no_grad():
        head.weight.zero_()
    batch = groups(seqs)
    logged = []
    train_reward_model(RMConfig(epochs=1, batch_prompts=len(batch), lr=1e-3), model, batch, batch,
                       pad_id=tokenizer.pad_token_id, device=CPU, bf16=False, seed=0,
                       log=lambda step, m: logged.append(m))
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logged[1]["val_loss"] < math.log(2) - 1e-3
    assert head.weight.abs().sum() > 0

    shift = normalise_rewards(model, seqs, tokenizer.pad_token_id, CPU)
    normalised = score_sequences(model, seqs, tokenizer.pad_token_id, CPU)
    assert abs(normalised.mean()) < 1e-5 and shift != 0.0

    model.save_pretrained(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    assert type(loaded).__name__.endswith("ForTokenClassification")
    assert score_sequences(loaded, seqs, tokenizer.pad_token_id, CPU).tolist() == pytest.approx(normalised.tolist(),
                                                                                                abs=BATCH_ATOL)
    loss, _ = ranking_batch_loss(loaded, batch, tokenizer.pad_token_id, CPU)
    assert loss.item() == pytest.approx(logged[1]["val_loss"], abs=1e-5)


def rollout(prompt, response, i: int = 0, version: int = 0) -> Rollout:
    return Rollout(prompt_id=f"p{i}", prompt_ids=list(prompt), response_ids=list(response),
                   logprobs=[-5.0] * len(response), policy_version=version, finish_reason="eos",
                   score=float(i % 3) - 1.0, ref_logprobs=[-5.0] * len(response), sample_id=f"s{i}")


def rollouts(tokenizer, version: int = 0) -> list[Rollout]:
    seqs = sequences(tokenizer)
    return [rollout(s[:3], s[3:], i, version) for i, s in enumerate(seqs)]


@pytest.mark.parametrize("arch", ARCHS)
def test_scorer_reads_rewards_and_reference_logprobs(arch, checkpoints, tmp_path):
    """The reward service on each family: GPT-2's config has no pad id (the scorer pads with any id, masked)."""
    path = checkpoints[arch]
    tokenizer = load_tokenizer(path)
    rm = reward_model_from_policy(path, device="cpu")
    with torch.no_grad():
        reward_head(rm).weight.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    rm.save_pretrained(tmp_path / "rm")
    scorer = RewardScorer(RewardConfig(max_tokens_per_microbatch=64), rm_path=tmp_path / "rm", ref_path=path)
    batch = rollouts(tokenizer)
    scored = scorer.score(batch)
    assert len(scored) == len(batch) and not scorer.last_rejects
    seqs = [list(r.prompt_ids) + list(r.response_ids) for r in batch]
    assert [r.score for r in scored] == pytest.approx(score_sequences(rm, seqs, 0, CPU).tolist(), abs=BATCH_ATOL)
    policy = load_causal_lm(path, device="cpu").eval()
    for r in scored:  # against one unpadded forward pass of the reference policy
        with torch.no_grad():
            logits = policy(torch.tensor([list(r.prompt_ids) + list(r.response_ids)])).logits[0]
        p = len(r.prompt_ids)
        expected = logits[p - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
        assert r.ref_logprobs == pytest.approx(expected.tolist(), abs=BATCH_ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_ppo_checkpoint_keeps_the_input_dtype_and_resumes_exactly(arch, tmp_path_factory):
    """A bf16 policy and value model train in float32 and are saved in bf16 again; the float32 masters saved
    beside them make the resumed learner's weights the trained ones bit for bit."""
    root = tmp_path_factory.mktemp(f"bf16_{arch}")
    policy_path = build_tiny_checkpoint(arch, root / "policy", CORPUS, dtype="bfloat16")
    value = reward_model_from_policy(policy_path, device="cpu")
    assert value.dtype == torch.bfloat16  # loaded as the checkpoint is
    value.save_pretrained(root / "value")
    cfg = PPOConfig(lr=1e-3, value_lr=1e-3, kl_coef=0.0, minibatch_size=4, ptx_coef=0.0)
    learner = PPOLearner(cfg, policy_path, root / "value", device="cpu", seed=0)
    assert learner.policy.dtype == learner.value_model.dtype == torch.float32  # training is float32
    tokenizer = load_tokenizer(policy_path)
    metrics = learner.train_step(rollouts(tokenizer))
    assert metrics["optimizer_steps"] == 1.0
    learner.save_checkpoint(root / "ckpt")

    for part in ("policy", "value"):
        config = json.loads((root / "ckpt" / part / "config.json").read_text())
        assert config["dtype"] == "bfloat16", part
        with safe_open(str(root / "ckpt" / part / "model.safetensors"), framework="pt") as f:
            assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}, part
            names = set(f.keys())
        assert ("lm_head.weight" in names) == (arch == "llama") or part == "value"  # tied heads stored once
    stops = [json.loads((d / "generation_config.json").read_text())["eos_token_id"] for d in (policy_path,
                                                                                              root / "ckpt" / "policy")]
    assert stops[0] == stops[1]  # EOS and end-of-turn stay the engines' stop tokens
    saved = load_causal_lm(root / "ckpt" / "policy", device="cpu")
    assert saved.dtype == torch.bfloat16
    trained = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    rounded = dict(saved.named_parameters())
    assert all(torch.equal(rounded[n], t.to(torch.bfloat16)) for n, t in trained.items())
    # the step moved the float32 weights off the bf16 grid: the file alone would not resume exactly
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in trained.values())
    assert (root / "ckpt" / MASTER_FILE).exists()

    resumed = PPOLearner(cfg, policy_path, root / "value", device="cpu", seed=0)
    resumed.load_checkpoint(root / "ckpt")
    assert resumed.models.policy_dtype == torch.bfloat16 and resumed.policy.dtype == torch.float32
    assert all(torch.equal(p, trained[n]) for n, p in resumed.policy.named_parameters())
    values = {n: p.detach() for n, p in learner.value_model.named_parameters()}
    assert all(torch.equal(p, values[n]) for n, p in resumed.value_model.named_parameters())


def test_float32_checkpoint_writes_no_master_weights(checkpoints, tmp_path):
    path = checkpoints["gpt2"]
    reward_model_from_policy(path, device="cpu").save_pretrained(tmp_path / "value")
    cfg = PPOConfig(lr=1e-3, value_lr=1e-3, kl_coef=0.0, minibatch_size=4, ptx_coef=0.0)
    learner = PPOLearner(cfg, path, tmp_path / "value", device="cpu", seed=0)
    learner.save_checkpoint(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "policy" / "config.json").read_text())["dtype"] == "float32"
    assert not (tmp_path / "ckpt" / MASTER_FILE).exists()
