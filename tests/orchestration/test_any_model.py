"""Your files and your model through the whole pipeline: for tiny random Llama (untied, BOS added), Qwen2
(ChatML, no BOS, tied) and GPT-2 (learned positions, Conv1D, BOS = EOS, no pad, a chat template from a file)
checkpoints, `raylhf run --config <file>` on Parquet prompts, JSONL demonstrations and chosen/rejected pairs, all
as messages, runs SFT -> RM -> PPO-ptx -> eval with real Ray and vLLM actors to `report.md`, without the demo
task, without writing to any of your files; and its PPO checkpoint answers alike from the generator actors,
transformers and vLLM."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from raylhf.configs.schema import TaskConfig
from raylhf.contracts.dataio import read_records
from raylhf.contracts.records import MESSAGES_TYPE, Prompt
from raylhf.orchestration import cli
from raylhf.tasks.demo import DemoWorld, format_prompt
from tests.archs import ARCHS, GPT2_CHAT_TEMPLATE, build_tiny_checkpoint
from tests.serving_parity import assert_all_agree, greedy_everywhere

pytestmark = pytest.mark.slow  # Ray, vLLM, a pipeline run per architecture

# Small enough for a test, every stage on: SFT, RM (and the held-out judge RM), PPO with the pretraining mix,
# evaluation.
SETTINGS = {
    "sft": {"epochs": 2, "batch_size": 8}, "rm": {"epochs": 1},
    "ppo": {"total_steps": 4, "batch_size": 16, "minibatch_size": 8, "prompts_per_request": 8, "buffer_size": 32,
            "ptx_coef": 1.0, "eval_every": 0, "max_staleness": 2},
    "generation": {"max_new_tokens": 16, "cpus": []}, "reward": {"cpus": []},
    "eval": {"n_prompts": 8}, "iterate": {"rounds": 0}, "torch_threads": 1,
}


def _user(p, response: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": p.prompt}]
    return turns + ([{"role": "assistant", "content": response}] if response is not None else [])


def write_user_files(folder: Path) -> list[str]:
    """The demo world's data as a user would bring it; returns the text a tokenizer is trained on."""
    world = DemoWorld(TaskConfig(n_train_prompts=120, n_heldout_prompts=16, n_generalization_prompts=1,
                                 n_pretrain_docs=80))
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for split in ("train", "heldout"):
        prompts = world.prompts(split)
        table = pa.table({"id": pa.array(list(range(len(prompts))), pa.int64()),
                          "prompt": pa.array([_user(p) for p in prompts], MESSAGES_TYPE)})
        pq.write_table(table, folder / f"prompts_{split}.parquet")
    demos = world.demonstrations()[:96]
    (folder / "sft.jsonl").write_text("".join(json.dumps({"messages": _user(d, d.response)}) + "\n" for d in demos))
    pairs = []
    for p in world.prompts("train")[:96]:
        good, _ = world.demonstrate(p.prompt, rng, kind="good")
        bad, _ = world.demonstrate(p.prompt, rng, kind=rng.choice(["wrong", "ramble"]))
        if good != bad:
            pairs.append({"chosen": _user(p, good), "rejected": _user(p, bad)})
    (folder / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    for split in ("train", "heldout"):
        docs = world.pretraining_corpus(split)[:60]
        (folder / f"text_{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return [format_prompt(d.prompt) + d.response for d in demos] + world.pretraining_corpus("train")[:200]


def _hashes(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("arch", ARCHS)
def test_your_model_and_files_through_the_pipeline(arch, tmp_path, request):
    data = tmp_path / "my-data"
    corpus = write_user_files(data)
    model = build_tiny_checkpoint(arch, tmp_path / "my-model", corpus)
    config = {"name": arch, "output_dir": str(tmp_path / "runs"), "task": {"name": "none"},
              "model": {"path": str(model)},
              "data": {"prompts": {"train": str(data / "prompts_train.parquet"),
                                   "heldout": str(data / "prompts_heldout.parquet")},
                       "demonstrations": str(data / "sft.jsonl"), "comparisons": str(data / "prefs.jsonl"),
                       "pretraining": {"train": str(data / "text_train.jsonl"),
                                       "heldout": str(data / "text_heldout.jsonl")},
                       "columns": {"prompt_id": "id"}},
              **SETTINGS}
    if arch == "gpt2":  # GPT-2 has no chat template of its own: yours, from a file, is saved with the checkpoints
        (tmp_path / "chat.jinja").write_text(GPT2_CHAT_TEMPLATE)
        config["data"]["chat_template"] = str(tmp_path / "chat.jinja")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    before = _hashes(data, model)

    if arch == ARCHS[0]:
        # As a user runs it, in a process of its own: -X importtime lists every module the driver imports, and
        # the demo task must not be one of them.
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "raylhf", "run", "--config",
                              str(tmp_path / "my.yaml")], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        assert "raylhf.orchestration.pipeline" in out.stderr  # the import log is there: its absence below means something
        assert "raylhf.tasks.demo" not in out.stderr
    else:  # the same command in this process, on the session's Ray (a Ray and a driver fewer to start)
        request.getfixturevalue("ray_session")
        assert cli.main(["run", "--config", str(tmp_path / "my.yaml")]) == 0
    assert _hashes(data, model) == before

    run = tmp_path / "runs" / arch
    report = (run / "report.md").read_text()
    for needle in ("RM score", "KL", "win rate", "accuracy"):
        assert needle.lower() in report.lower(), needle
    assert not (run / "models" / "base").exists()  # your model was fine-tuned where it is, never copied over
    summaries = {s: json.loads((run / "summaries" / f"{s}.json").read_text()) for s in ("sft", "rm", "ppo", "eval")}
    assert summaries["ppo"]["steps"] == 4 and summaries["rm"]["train_prompts"] > 0

    prompts, _ = read_records(data / "prompts_heldout.parquet", Prompt, columns={"prompt_id": "id"})
    answers = greedy_everywhere(run / "models" / "ppo", prompts[:5])
    assert_all_agree(answers)
