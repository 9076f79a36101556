"""Your files and models as a run's inputs: named in the config, checked before anything is written, never
written over; a run without a task names every file it still needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raylhf.configs.loader import ConfigError, load_config
from raylhf.contracts.records import Prompt
from raylhf.orchestration import cli
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.stages import stage_data
from raylhf.tasks import load_task


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _taskless(tmp_path: Path, model: Path, **files: Path) -> list[str]:
    base = {"prompts": _jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"add {i} and 2"} for i in range(4)]),
            "demos": _jsonl(tmp_path / "demos.jsonl", [{"messages": [
                {"role": "user", "content": f"add {i} and 2"}, {"role": "assistant", "content": f" {i + 2}"}]}
                for i in range(4)]),
            "pairs": _jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"add {i} and 2", "chosen": f" {i + 2}",
                                                        "rejected": " no"} for i in range(4)])}
    base.update(files)
    return ["task.name=none", f"model.path={model}", f"data.prompts.train={base['prompts']}",
            f"data.prompts.heldout={base['prompts']}", f"data.demonstrations={base['demos']}",
            f"data.comparisons={base['pairs']}", "ppo.ptx_coef=0", "iterate.rounds=0", f"output_dir={tmp_path / 'runs'}"]


def test_a_run_without_a_task_names_each_file_it_needs():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["task.name=none", "iterate.rounds=0"])
    for key in ("data.prompts.train", "data.prompts.heldout", "model.path", "data.demonstrations",
                "data.comparisons"):
        assert key in str(e.value)
    with pytest.raises(ConfigError, match="iterate.rounds.*no labeler"):
        load_config("tiny", ["task.name=none", "iterate.rounds=1"])
    with pytest.raises(ConfigError, match="data.input_template.*placeholder"):
        load_config("tiny", ["data.input_template=Q {question} A"])
    assert load_task(load_config("tiny", []).task).name == "demo"


def test_task_by_import_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="no task module 'nope.task'"):
        load_task(load_config("tiny", ["task.name=nope.task"]).task)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "task.py").write_text("def build(cfg):\n    return ('built', cfg.seed)\n")
    assert load_task(load_config("tiny", ["task.name=pkg.task", "task.seed=3"]).task) == ("built", 3)


def test_column_flags_set_data_columns(capsys):
    assert cli.main(["config", "--prompt-key", "question", "--chosen-key", "good", "--prompt-id-key", "uid"]) == 0
    columns = yaml.safe_load(capsys.readouterr().out)["data"]["columns"]
    assert (columns["prompt"], columns["chosen"], columns["prompt_id"]) == ("question", "good", "uid")
    assert load_config("tiny", ["data.columns.prompt=q"]).data.columns.mapping() == {"prompt": "q"}


def test_run_paths_read_your_files(tmp_path):
    cfg = load_config("tiny", [f"data.prompts.train={tmp_path}/p.parquet", f"data.comparisons={tmp_path}/c.jsonl",
                               f"model.path={tmp_path}/base", f"reward.rm_path={tmp_path}/rm"])
    paths = RunPaths.for_config(tmp_path / "run", cfg)
    assert paths.prompts("train") == tmp_path / "p.parquet"
    assert paths.prompts("heldout") == tmp_path / "run" / "data" / "prompts_heldout.jsonl"
    assert paths.comparisons == tmp_path / "c.jsonl" and paths.model("base") == tmp_path / "base"
    assert paths.model("rm") == tmp_path / "rm" and paths.provided("model_sft") is None
    round1 = paths.round(1)
    # A round ranks its own comparisons and trains its own reward model; prompts and SFT are the run's.
    assert round1.comparisons == tmp_path / "run" / "rounds" / "1" / "comparisons.jsonl"
    assert round1.model("rm") == tmp_path / "run" / "rounds" / "1" / "models" / "rm"
    assert round1.prompts("train") == tmp_path / "p.parquet" and round1.model("sft") == tmp_path / "run" / "models" / "sft"


def test_the_data_stage_never_writes_over_a_file(tmp_path):
    cfg = load_config("tiny", ["task.n_train_prompts=20", "task.n_heldout_prompts=5", "task.n_generalization_prompts=5",
                               "task.n_pretrain_docs=20"])
    data = tmp_path / "data"
    data.mkdir()
    mine = _jsonl(data / "prompts_train.jsonl", [{"prompt_id": "mine", "prompt": "my own prompt"}])
    before = mine.read_bytes()
    summary = stage_data(cfg, load_task(cfg.task), data)
    assert mine.read_bytes() == before and summary["kept"] == ["prompts_train.jsonl"]
    assert (data / "prompts_heldout.jsonl").exists() and (data / "demonstrations.jsonl").exists()


def test_run_refuses_a_bad_row_of_your_data_before_writing(tmp_path, tiny_checkpoint, capsys):
    pairs = _jsonl(tmp_path / "bad_pairs.jsonl", [{"prompt": "add 1 and 2", "chosen": " 3", "rejected": " 4"},
                                                  {"prompt": "add 2 and 2", "chosen": " 4", "rejected": " 4"}])
    assert cli.main(["run", *_taskless(tmp_path, tiny_checkpoint, pairs=pairs)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"data error: {pairs}:line 2: field 'rejected': same as 'chosen'"]
    assert not (tmp_path / "runs").exists()


def test_run_refuses_a_reward_model_with_another_tokenizer(tmp_path, tiny_checkpoint, capsys):
    from raylhf.learners.models import build_causal_lm, train_tokenizer

    other = tmp_path / "other_rm"
    tokenizer = train_tokenizer(["completely different words here"] * 30, 280, other)
    build_causal_lm("tiny", tokenizer, 128).save_pretrained(other)
    capsys.readouterr()  # the checkpoint writer's progress bar
    assert cli.main(["run", *_taskless(tmp_path, tiny_checkpoint), f"reward.rm_path={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: reward.rm_path:") and "model.path" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_prompts_given_as_messages_reach_records(tmp_path):
    from raylhf.contracts.dataio import read_records

    path = _jsonl(tmp_path / "p.jsonl", [{"id": 7, "prompt": [{"role": "system", "content": "be brief"},
                                                               {"role": "user", "content": "hi"}]}])
    (p,), _ = read_records(path, Prompt, columns={"prompt_id": "id"})
    assert (p.prompt_id, p.prompt, len(p.messages)) == ("7", "hi", 2)


USER = {"role": "user", "content": "add 1 and 2"}
BAD_INPUTS = [  # (which file, its row, the one-line message after `<file>:line 1: `)
    ("demos", {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": " 3"}]},
     "field 'messages[0]': unknown role 'wizard'"),
    ("demos", {"messages": [USER]}, "field 'messages': "),
    ("pairs", {"prompt": "add 1 and 2", "chosen": " 3", "rejected": " 3"}, "field 'rejected': same as 'chosen'"),
    ("pairs", {"prompt": "add 1 and 2", "responses": [" 3", " 4"], "ranking": [0, 0]}, "field 'ranking': "),
    ("pairs", {"prompt": "add 1 and 2", "responses": [f" {i}" for i in range(10)], "ranking": list(range(10))},
     "field 'responses': "),
    # ~900 characters (within data.max_prompt_chars), ~770 tokens: more than the model's context of 256
    ("demos", {"prompt": " ".join(["zebra quokka"] * 70), "response": " 3"}, "field 'response': prompt + response are"),
    ("prompts", {"text": "add 1 and 2"}, "field 'prompt': "),
    ("prompts", {"prompt": 12}, "field 'prompt': "),
]


@pytest.mark.parametrize("which, row, message", BAD_INPUTS,
                         ids=["unknown role", "no final assistant turn", "chosen == rejected", "ranking not a permutation",
                              "K > 9", "too long", "missing field", "wrong type"])
def test_each_bad_input_is_one_line_and_exit_3(tmp_path, tiny_checkpoint, capsys, which, row, message):
    bad = _jsonl(tmp_path / f"bad_{which}.jsonl", [row])
    assert cli.main(["run", *_taskless(tmp_path, tiny_checkpoint, **{which: bad})]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"data error: {bad}:line 1: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_chosen_rejected_train_the_same_batches_as_k2_rankings(tmp_path, tiny_checkpoint):
    from raylhf.contracts.dataio import read_records
    from raylhf.contracts.formatting import PromptFormat
    from raylhf.contracts.records import Comparison
    from raylhf.learners.models import load_tokenizer
    from raylhf.orchestration.stages import comparison_groups

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt_id": f"c{i}", "prompt": f"add {i} and 2", "chosen": f" {i + 2}",
                                               "rejected": " no"} for i in range(3)])
    native = _jsonl(tmp_path / "native.jsonl", [{"prompt_id": f"c{i}", "prompt": f"add {i} and 2",
                                                 "responses": [f" {i + 2}", " no"], "ranking": [0, 1]} for i in range(3)])
    fmt = PromptFormat(load_tokenizer(tiny_checkpoint))
    a, b = (comparison_groups(fmt, read_records(p, Comparison)[0]) for p in (pairs, native))
    assert a == b and len(a) == 3


def test_skipped_rows_are_counted_in_the_stage_summary(tmp_path, tiny_checkpoint):
    from raylhf.orchestration.stages import stage_sft

    cfg = load_config("tiny", ["data.on_bad_rows=skip", "sft.epochs=1", "torch_threads=1", "device=cpu"])
    demos = _jsonl(tmp_path / "demos.jsonl", [{"prompt": f"add {i} and 2", "response": f" {i + 2}"} for i in range(6)]
                   + [{"messages": [USER]}, {"prompt": "add 1 and 2", "completion": 3}])
    summary = stage_sft(cfg, RunPaths(tmp_path / "run"), tiny_checkpoint, demos, tmp_path / "sft")
    assert summary["train_examples"] + summary["val_examples"] == 6
    reasons = summary["skipped_rows"][str(demos)]
    assert sum(reasons.values()) == 2 and len(reasons) == 2, reasons


def test_a_base_model_you_put_in_the_run_is_never_pretrained_over(tmp_path, tiny_checkpoint):
    import shutil

    from raylhf.orchestration.pipeline import Stages, placed_base_model

    paths = RunPaths(tmp_path / "run")
    shutil.copytree(tiny_checkpoint, paths.model("base"))
    before = {p.name: p.read_bytes() for p in paths.model("base").iterdir()}
    stage = Stages(paths, report=lambda *_: None)

    def pretrain():
        raise AssertionError("pretrained over your model")

    stage("pretrain", True, pretrain, provided=placed_base_model(paths))
    assert stage.summaries["pretrain"] == {"provided": str(paths.model("base"))}
    assert {p.name: p.read_bytes() for p in paths.model("base").iterdir()} == before
    # A base model the stage wrote itself (it has a summary) is the stage's own: skipped as a finished stage.
    (paths.root / "summaries").mkdir()
    (paths.root / "summaries" / "pretrain.json").write_text("{}")
    assert placed_base_model(paths) is None
