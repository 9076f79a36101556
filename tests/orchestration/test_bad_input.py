"""Bad input is refused before anything starts: one line naming the key, flag, file or line, a non-zero exit
status (2 config, 3 data), no traceback, and nothing written.

The command-line cases run `python -m raylhf` (exit status and stderr as a user sees them) or `cli.main`
in-process where the import of transformers would make a subprocess slow; `check_ppo_inputs` is called
directly (it is what `raylhf ppo` runs before Ray starts).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from raylhf.actors.checkpoint import eos_token_ids
from raylhf.actors.hf_engine import HFEngine
from raylhf.configs.loader import load_config
from raylhf.contracts.dataio import DataError
from raylhf.contracts.formatting import PromptFormat
from raylhf.contracts.hf_checkpoint import CheckpointError
from raylhf.learners.models import load_causal_lm, load_tokenizer
from raylhf.learners.reward_model import load_reward_model, reward_model_from_policy
from raylhf.orchestration import cli
from raylhf.orchestration.paths import RunPaths
from raylhf.orchestration.preflight import check_ppo_inputs, read_demonstrations, read_prompts

LONG = " ".join(["zebra quokka"] * 70)  # ~900 characters (under data.max_prompt_chars), ~770 tokens (over 256)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prompts(n: int, prefix: str = "p") -> list[dict]:
    return [{"prompt_id": f"{prefix}{i}", "prompt": f"add {i} and {i + 1}"} for i in range(n)]


def _demos(n: int) -> list[dict]:
    return [{"prompt_id": f"d{i}", "prompt": f"add {i} and 2", "response": f" {i + 2}"} for i in range(n)]


def _comparisons(n: int) -> list[dict]:
    return [{"prompt_id": f"c{i}", "prompt": f"add {i} and 2", "responses": [f" {i + 2}", " no"], "ranking": [0, 1]}
            for i in range(n)]


def _raylhf(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylhf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _assert_one_line(stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_dir(tmp_path):
    """An output directory with one file in it already; a failing command must leave it as it was."""
    out = tmp_path / "runs"
    (out / "r").mkdir(parents=True)
    (out / "r" / "notes.txt").write_text("existing")
    return out


def _run_args(run_dir: Path) -> list[str]:
    return [f"output_dir={run_dir}", "name=r"]


# ---------------------------------------------------------------------------------------------- 1. config
@pytest.mark.parametrize("overrides,needles", [
    (["ppo.buffer_size=16"], ["ppo.buffer_size: must be at least one learner batch", "ppo.batch_size = 64", "(got 16)"]),
    (["ppo.batch_size=8", "ppo.prompts_per_request=8", "generation.n=4", "ppo.buffer_size=16"],
     ["ppo.buffer_size:", "ppo.prompts_per_request x generation.n = 8 x 4 = 32"]),
    (["ray.num_cpus=1"], ["ray.num_cpus: the PPO actors need 2 CPUs", "generation.num_generators x generation.num_cpus",
                          "the local Ray has 1 (ray.num_cpus)"]),
    (["generation.num_generators=4096"], ["ray.num_cpus: the PPO actors need 2049.5 CPUs",
                                          "this machine's CPU count, ray.num_cpus unset"]),
])
def test_config_that_does_not_fit_together_exits_2(run_dir, overrides, needles):
    before = _tree(run_dir)
    out = _raylhf(["sft", *_run_args(run_dir), *overrides], cwd=run_dir)
    assert out.returncode == 2, out
    line = _assert_one_line(out.stderr, "config error: invalid config", *needles)
    assert line.startswith("config error: ")
    assert _tree(run_dir) == before


# ---------------------------------------------------------------------------------------------- 5. checkpoints
@pytest.mark.parametrize("command,flag", [("sft", "--model"), ("rm", "--model"), ("rm-eval", "--sft"),
                                          ("ppo", "--policy")])
def test_missing_checkpoint_never_reaches_the_hub(run_dir, tmp_path, command, flag):
    before = _tree(run_dir)
    out = _raylhf([command, flag, "does/not/exist", *_run_args(run_dir)], cwd=tmp_path)
    assert out.returncode == 2, out
    _assert_one_line(out.stderr, f"config error: {flag}: does/not/exist does not exist",
                     "expected a local Hugging Face checkpoint directory")
    assert _tree(run_dir) == before


def test_directory_without_config_json_is_not_a_checkpoint(run_dir, tmp_path):
    (tmp_path / "weights").mkdir()
    before = _tree(run_dir)
    out = _raylhf(["sft", "--model", str(tmp_path / "weights"), *_run_args(run_dir)], cwd=tmp_path)
    assert out.returncode == 2, out
    _assert_one_line(out.stderr, f"config error: --model: not a Hugging Face checkpoint: {tmp_path / 'weights'} "
                                 "has no config.json")
    assert _tree(run_dir) == before


def test_every_loader_checks_the_path_first(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a missing checkpoint reached transformers")

    for cls in (transformers.AutoTokenizer, transformers.AutoConfig, transformers.AutoModelForCausalLM,
                transformers.AutoModelForTokenClassification):
        monkeypatch.setattr(cls, "from_pretrained", no_hub)
    missing = tmp_path / "nope"
    for load in (load_tokenizer, load_causal_lm, load_reward_model, reward_model_from_policy):
        with pytest.raises(CheckpointError, match=rf"^reward\.rm_path: {re.escape(str(missing))} does not exist"):
            load(missing, key="reward.rm_path")
    (tmp_path / "empty").mkdir()
    for load in (eos_token_ids, HFEngine):
        with pytest.raises(CheckpointError, match=r"not a Hugging Face checkpoint: .*empty has no config\.json"):
            load(tmp_path / "empty")


def test_a_causal_lm_is_not_a_reward_model(tiny_checkpoint):
    with pytest.raises(CheckpointError, match=r"^--rm: .* holds a LlamaForCausalLM; expected a \*ForTokenClassification"):
        load_reward_model(tiny_checkpoint, device="cpu", key="--rm")


# ---------------------------------------------------------------------------------------------- 2. empty data
def test_empty_comparisons_do_not_train_a_reward_model(run_dir, tmp_path, tiny_checkpoint):
    data = tmp_path / "comparisons.jsonl"
    data.write_text("\n")
    before = _tree(run_dir)
    out = _raylhf(["rm", "--model", str(tiny_checkpoint), "--data", str(data), *_run_args(run_dir)], cwd=tmp_path)
    assert out.returncode == 3, out
    _assert_one_line(out.stderr, f"data error: {data}: empty dataset: no Comparison rows")
    assert _tree(run_dir) == before


def test_empty_corpus_stops_pretraining(run_dir, tmp_path):
    paths = RunPaths(run_dir / "r")
    _jsonl(paths.corpus("train"), [])
    _jsonl(paths.corpus("heldout"), [{"doc_id": "h0", "text": "some text"}])
    before = _tree(run_dir)
    out = _raylhf(["pretrain", *_run_args(run_dir)], cwd=tmp_path)
    assert out.returncode == 3, out
    _assert_one_line(out.stderr, f"data error: {paths.corpus('train')}: empty dataset: no Document rows")
    assert _tree(run_dir) == before


@pytest.mark.parametrize("command,flag,rows", [("sft", "--data", []), ("rm", "--data", []), ("collect", "--prompts", [])])
def test_empty_dataset_names_the_file(capsys, run_dir, tmp_path, tiny_checkpoint, command, flag, rows):
    data = _jsonl(tmp_path / "data.jsonl", rows)
    model_flag = "--policy" if command == "collect" else "--model"
    before = _tree(run_dir)
    code = cli.main([command, model_flag, str(tiny_checkpoint), flag, str(data), *_run_args(run_dir)])
    assert code == 3
    _assert_one_line(capsys.readouterr().err, f"data error: {data}: empty dataset: no ")
    assert _tree(run_dir) == before


def test_skip_policy_still_refuses_a_file_without_a_valid_row(capsys, run_dir, tmp_path, tiny_checkpoint):
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt_id": "a"}\n[1]\n')
    code = cli.main(["sft", "--model", str(tiny_checkpoint), "--data", str(data), *_run_args(run_dir),
                     "data.on_bad_rows=skip"])
    assert code == 3
    _assert_one_line(capsys.readouterr().err, f"data error: {data}: no valid rows: all 2 rows are bad",
                     "first: line 1: field 'prompt': missing")


def test_one_demonstration_is_too_few_to_split(capsys, run_dir, tmp_path, tiny_checkpoint):
    data = _jsonl(tmp_path / "demos.jsonl", _demos(1))
    assert cli.main(["sft", "--model", str(tiny_checkpoint), "--data", str(data), *_run_args(run_dir)]) == 3
    _assert_one_line(capsys.readouterr().err, f"data error: {data}: 1 demonstrations are too few",
                     "sft.val_fraction")


# ---------------------------------------------------------------------------------------------- 3. duplicate ids
def test_duplicate_prompt_ids(capsys, run_dir, tmp_path, tiny_checkpoint):
    data = _jsonl(tmp_path / "prompts.jsonl", _prompts(2) + [{"prompt_id": "p0", "prompt": "say hi"}])
    before = _tree(run_dir)
    assert cli.main(["collect", "--policy", str(tiny_checkpoint), "--prompts", str(data), *_run_args(run_dir)]) == 3
    _assert_one_line(capsys.readouterr().err, f"data error: {data}:line 3: duplicate prompt_id 'p0' (first at line 1)")
    assert _tree(run_dir) == before


def test_duplicate_prompt_ids_skipped_keep_the_first(tmp_path):
    cfg = load_config("tiny", ["data.on_bad_rows=skip"])
    data = _jsonl(tmp_path / "prompts.jsonl", _prompts(2) + [{"prompt_id": "p0", "prompt": "say hi"}])
    kept = read_prompts(cfg, data)
    assert [(p.prompt_id, p.prompt) for p in kept] == [("p0", "add 0 and 1"), ("p1", "add 1 and 2")]


# ---------------------------------------------------------------------------------------------- 4. context
@pytest.mark.parametrize("command,rows,reason", [
    ("sft", _demos(3) + [{"prompt_id": "x", "prompt": LONG, "response": " 1"}], "field 'response': prompt + response are"),
    ("rm", _comparisons(3) + [{"prompt_id": "x", "prompt": "hi", "responses": [" a", LONG], "ranking": [0, 1]}],
     "field 'responses': prompt + response 1 are"),
])
def test_sequences_longer_than_the_context(capsys, run_dir, tmp_path, tiny_checkpoint, command, rows, reason):
    data = _jsonl(tmp_path / "data.jsonl", rows)
    before = _tree(run_dir)
    assert cli.main([command, "--model", str(tiny_checkpoint), "--data", str(data), *_run_args(run_dir)]) == 3
    _assert_one_line(capsys.readouterr().err, f"data error: {data}:line 4: {reason}",
                     f"more than the model's context of 256 tokens (max_position_embeddings of {tiny_checkpoint})")
    assert _tree(run_dir) == before


def test_long_demonstrations_skipped_and_counted(tmp_path, tiny_checkpoint, caplog):
    cfg = load_config("tiny", ["data.on_bad_rows=skip"])
    data = _jsonl(tmp_path / "demos.jsonl", _demos(2) + [{"prompt_id": "x", "prompt": LONG, "response": " 1"}])
    kept = read_demonstrations(cfg, data, PromptFormat(load_tokenizer(tiny_checkpoint)), 256, tiny_checkpoint)
    assert [d.prompt_id for d in kept] == ["d0", "d1"]
    assert "skipped 1 bad rows, kept 2" in caplog.text and "line 3: field 'response': prompt + response are" in caplog.text


# ---------------------------------------------------------------------------------------------- 6. ppo inputs
@pytest.fixture
def ppo_run(tmp_path, tiny_checkpoint):
    """A run directory with everything `raylhf ppo` reads; tests break one thing each."""
    paths = RunPaths(tmp_path / "run")
    _jsonl(paths.prompts("train"), _prompts(4))
    _jsonl(paths.prompts("heldout"), _prompts(2, "h"))
    _jsonl(paths.corpus("train"), [{"doc_id": "t0", "text": "some text"}])
    return paths


def _ppo_check(paths, policy, rm=None, overrides=()):
    check_ppo_inputs(load_config("tiny", list(overrides)), paths, policy, policy if rm is None else rm)


def test_ppo_inputs_pass(ppo_run, tiny_checkpoint):
    _ppo_check(ppo_run, tiny_checkpoint)


def test_ppo_checkpoints(ppo_run, tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=rf"^--policy: {re.escape(str(tmp_path / 'nope'))} does not exist"):
        _ppo_check(ppo_run, tmp_path / "nope", tiny_checkpoint)
    (tmp_path / "rm").mkdir()
    with pytest.raises(CheckpointError, match=r"^--rm: not a Hugging Face checkpoint: .*rm has no config\.json"):
        _ppo_check(ppo_run, tiny_checkpoint, tmp_path / "rm")
    with pytest.raises(CheckpointError, match=r"^reward\.rm_path: .*nope does not exist"):
        _ppo_check(ppo_run, tiny_checkpoint, overrides=[f"reward.rm_path={tmp_path / 'nope'}"])


@pytest.mark.parametrize("rows,match", [
    (None, r"prompts_train\.jsonl: file not found"),
    ([], r"prompts_train\.jsonl: empty dataset: no Prompt rows"),
    (_prompts(2) + [{"prompt_id": "p1", "prompt": "again"}], r"prompts_train\.jsonl:line 3: duplicate prompt_id 'p1'"),
    (_prompts(2) + [{"prompt_id": "x", "prompt": LONG}],
     r"prompts_train\.jsonl:line 3: field 'prompt': \d+ tokens; with generation\.max_new_tokens = 32 that is more than "
     r"the model's context of 256 tokens"),
])
def test_ppo_train_prompts(ppo_run, tiny_checkpoint, rows, match):
    path = ppo_run.prompts("train")
    path.unlink()
    if rows is not None:
        _jsonl(path, rows)
    with pytest.raises(DataError, match=match):
        _ppo_check(ppo_run, tiny_checkpoint)


def test_ppo_prompts_too_long_are_skipped_but_one_must_fit(ppo_run, tiny_checkpoint):
    skip = ["data.on_bad_rows=skip"]
    _jsonl(ppo_run.prompts("train"), _prompts(1) + [{"prompt_id": "x", "prompt": LONG}])
    _ppo_check(ppo_run, tiny_checkpoint, overrides=skip)
    _jsonl(ppo_run.prompts("train"), [{"prompt_id": "x", "prompt": LONG}, {"prompt_id": "y", "prompt": LONG}])
    with pytest.raises(DataError, match=r"prompts_train\.jsonl: no valid rows: all 2 rows are bad .* line 1: field 'prompt': \d+ tokens"):
        _ppo_check(ppo_run, tiny_checkpoint, overrides=skip)


def test_ppo_heldout_prompts_and_corpus_only_when_used(ppo_run, tiny_checkpoint):
    ppo_run.prompts("heldout").unlink()
    ppo_run.corpus("train").unlink()
    with pytest.raises(DataError, match=r"prompts_heldout\.jsonl: file not found"):
        _ppo_check(ppo_run, tiny_checkpoint)
    with pytest.raises(DataError, match=r"corpus_train\.jsonl: file not found"):
        _ppo_check(ppo_run, tiny_checkpoint, overrides=["ppo.eval_every=0"])
    _ppo_check(ppo_run, tiny_checkpoint, overrides=["ppo.eval_every=0", "ppo.ptx_coef=0"])


# ---------------------------------------------------------------------------------------------- Ray jobs
def test_relative_output_dir_in_a_submitted_job_is_refused(tmp_path):
    # A submitted job runs in a private copy of its uploaded working directory (Ray's job config says so);
    # a relative output_dir there would be lost with the job.
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0.zip"}, "metadata": {"job_submission_id": "raysubmit_x"}}
    env = dict(os.environ, RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job))
    out = subprocess.run([sys.executable, "-m", "raylhf", "data", "demo", "name=r"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 2
    _assert_one_line(out.stderr, "output_dir: 'runs' is relative", "raysubmit_x", "absolute path")
    assert not (tmp_path / "runs").exists()
    ok = subprocess.run([sys.executable, "-m", "raylhf", "data", "demo", f"output_dir={tmp_path / 'abs'}", "name=r",
                         "task.n_train_prompts=20", "task.n_heldout_prompts=5", "task.n_generalization_prompts=5",
                         "task.n_pretrain_docs=20"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "abs" / "r" / "data" / "prompts_train.jsonl").exists()
