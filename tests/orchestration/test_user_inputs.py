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
