"""The demo's trained checkpoints serve as they are: the same greedy answers from raylhf's generator actors,
transformers and vLLM (chat and text completion), with nothing but the checkpoint directory."""

import pytest

from raylhf.contracts.dataio import read_records
from raylhf.contracts.records import Prompt
from tests.serving_parity import assert_all_agree, greedy_everywhere

pytestmark = pytest.mark.slow  # a pipeline run, Ray actors and a vLLM engine


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_demo_checkpoint_answers_alike_everywhere(pipeline_run, stage):
    prompts, _ = read_records(pipeline_run / "data" / "prompts_heldout.jsonl", Prompt)
    answers = greedy_everywhere(pipeline_run / "models" / stage, prompts[:5])
    assert set(answers) == {"generator actors", "transformers chat template", "vllm chat", "vllm generate"}
    assert_all_agree(answers)
