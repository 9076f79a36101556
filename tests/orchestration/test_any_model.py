"""Your files and your model through the whole pipeline: for tiny random Llama (untied, BOS added), Qwen2
(ChatML, no BOS, tied) and GPT-2 (learned positions, Conv1D, BOS = EOS, no pad, a chat template from a file)
checkpoints, `raylhf run --config <file>` on Parquet prompts, JSONL demonstrations and chosen/rejected pairs, all
as messages, runs SFT -> RM -> PPO-ptx -> eval with real Ray and vLLM actors to `report.md`, without the demo
task, without writing to any of your files; and its PPO checkpoint answers alike from the generator actors,
transformers and vLLM."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import json
import random
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


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.asked: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == DEMO or name.startswith(DEMO + "."):
            self.asked.append(name)
            raise ImportError(f"{name} imported by a run without a task")
        return None


DEMO = "raylhf.tasks.demo"


@contextlib.contextmanager
def demo_task_unimportable():
    """`raylhf.tasks.demo` and its submodules out of `sys.modules` (and off their package) and refused by the
    import system for the duration; put back afterwards. Asserts nothing asked for them."""
    saved = {name: mod for name, mod in sys.modules.items() if name == DEMO or name.startswith(DEMO + ".")}
    package = sys.modules.get("raylhf.tasks")
    attribute = package.__dict__.pop("demo", None) if package is not None else None
    for name in saved:
        del sys.modules[name]
    finder = _Refuse()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(saved)
        if attribute is not None:
            package.demo = attribute
    assert not finder.asked, finder.asked


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

    # The whole pipeline in this process, on the session's Ray, with the demo task unimportable: any import of
    # it by the driver (a stage, the report, a check) fails the run.
    request.getfixturevalue("ray_session")
    with demo_task_unimportable():
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


def test_the_guard_refuses_the_demo_task_and_puts_it_back():
    import raylhf.tasks.demo as before

    with pytest.raises(AssertionError, match="raylhf.tasks.demo"):
        with demo_task_unimportable():
            with pytest.raises(ImportError):
                from raylhf.tasks import demo  # noqa: F401
    import raylhf.tasks.demo as after

    assert after is before and sys.modules[DEMO] is before
