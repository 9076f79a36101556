"""`PolicyValue`, the PPO learner's two networks, on the session's tiny real models: what its forward passes
read at the response tokens, and when the policy's output layer may run on those positions alone."""

from __future__ import annotations

import pytest
import torch

from raylhf.configs.schema import PPOConfig
from raylhf.contracts.records import Rollout
from raylhf.contracts.timing import PhaseTimer
from raylhf.learners.policy_value import PolicyValue, response_head_split
from raylhf.learners.reward_model import reward_model_from_policy
from raylhf.learners.rollout_batch import collate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def value_checkpoint(tiny_checkpoint, tmp_path_factory):
    """A value model built as the RM stage builds the reward model, with a random head so that the values
    differ from position to position."""
    torch.manual_seed(3)
    model = reward_model_from_policy(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        torch.nn.init.normal_(model.score.weight, std=0.5)
        model.score.bias.fill_(0.2)
    out = tmp_path_factory.mktemp("value_random_head")
    model.save_pretrained(out)
    return out


def _rollout(prompt: list[int], response: list[int], i: int) -> Rollout:
    t = len(response)
    return Rollout(prompt_id=f"p{i}", prompt_ids=prompt, response_ids=response, logprobs=[-6.0] * t, policy_version=0,
                   finish_reason="eos", score=0.0, ref_logprobs=[-6.0] * t, sample_id=f"s{i}")


def test_forward_passes_read_each_models_own_output_at_the_response_positions(tiny_checkpoint, value_checkpoint):
    # Response token t of a rollout with a P-token prompt is predicted at position P - 1 + t, and V(s_t) is read
    # there too: each equals the model's own forward on the rollout alone, whatever the row is padded to.
    models = PolicyValue(PPOConfig(), tiny_checkpoint, value_checkpoint, device=CPU, bf16=False,
                         trust_remote_code=False, timer=PhaseTimer())
    assert models.decoder_and_head is not None  # the policy's output layer runs on the response positions only
    rollouts = [_rollout([1, 40, 41, 42], [50, 51, 2], 0), _rollout([1, 43], [60, 61, 62, 63, 2], 1)]
    batch = collate(rollouts, 0, CPU)
    with torch.no_grad():
        logits = models.response_logits(batch)  # [2, 5, V]
        values = models.response_values(batch)  # [2, 5]
        for row, r in enumerate(rollouts):
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            p, t = len(r.prompt_ids), len(r.response_ids)
            want_logits = models.policy(input_ids=ids).logits[0, p - 1 : p - 1 + t]  # [T, V]
            want_values = models.value_model(input_ids=ids).logits[0, p - 1 : p - 1 + t, 0]  # [T]
            assert torch.allclose(logits[row, :t], want_logits, atol=1e-5)
            assert torch.allclose(values[row, :t], want_values, atol=1e-5)
            assert len(set(values[row, :t].tolist())) == t  # the head really varies by position


def test_output_layer_split_refused_where_logits_are_transformed_after_it(tiny_checkpoint):
    from transformers import LlamaForCausalLM  # deferred: seconds to import, for this test only

    class SoftCapped(LlamaForCausalLM):  # as Gemma 2 does: logits squashed after the output layer
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    assert response_head_split(LlamaForCausalLM.from_pretrained(tiny_checkpoint)) is not None
    assert response_head_split(SoftCapped.from_pretrained(tiny_checkpoint)) is None
