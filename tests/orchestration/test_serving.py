"""The demo's trained checkpoints serve as they are: the same greedy answers from raylhf's generator actors,
transformers and vLLM (chat and text completion), with nothing but the checkpoint directory."""

import pytest

from raylhf.contracts.dataio import read_records
from raylhf.contracts.records import Prompt
from tests.serving_parity import assert_all_agree, greedy_everywhere

pytestmark = pytest.mark.slow  # a pipeline run, Ray actors and a vLLM engine

# What a server reads besides the weights: the tokenizer, its chat template and the generation config.
SERVING_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def test_demo_checkpoints_answer_alike_everywhere(pipeline_run):
    models = pipeline_run / "models"
    # SFT writes the serving files and PPO carries them over unchanged, so the PPO policy's parity holds for
    # SFT's checkpoint as well (its weights are served by the same engines the same way).
    for name in SERVING_FILES:
        assert (models / "sft" / name).read_bytes() == (models / "ppo" / name).read_bytes(), name
    prompts, _ = read_records(pipeline_run / "data" / "prompts_heldout.jsonl", Prompt)
    answers = greedy_everywhere(models / "ppo", prompts[:5])
    assert set(answers) == {"generator actors", "transformers chat template", "vllm chat", "vllm generate"}
    assert_all_agree(answers)
