"""The command line itself: overrides anywhere among the flags, quiet output into a closed pipe, and an import
light enough for `raylhf --help` (no torch, Ray or vLLM). No Ray starts here."""

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import raylhf

from raylhf.orchestration import cli

COMMANDS = ["config", "data", "pretrain", "sft", "rm", "collect", "ppo", "rm-eval", "eval", "run", "iterate"]


@pytest.mark.parametrize("argv", [
    ["rm", "--out", "X", "name=r", "rm.epochs=4"],
    ["rm", "name=r", "--out", "X", "rm.epochs=4"],
    ["rm", "name=r", "rm.epochs=4", "--out", "X"],
    ["rm", "name=r", "--out=X", "rm.epochs=4"],
])
def test_overrides_anywhere_among_the_flags(argv):
    args = cli.parse_args(argv)
    assert (args.command, args.overrides, args.out) == ("rm", ["name=r", "rm.epochs=4"], Path("X"))


def test_flag_values_with_equals_stay_the_flags():
    args = cli.parse_args(["eval", "name=r", "--policy", "sft=/m/sft", "eval.n_prompts=4", "--policy=ppo=/m/ppo",
                           "--rm", "/m/a=b", "output_dir=s3://runs?endpoint_override=h:9000&scheme=http"])
    assert args.policy == ["sft=/m/sft", "ppo=/m/ppo"]
    assert args.rm == Path("/m/a=b")
    assert args.overrides == ["name=r", "eval.n_prompts=4", "output_dir=s3://runs?endpoint_override=h:9000&scheme=http"]


def test_other_positionals_and_flags_without_values():
    args = cli.parse_args(["data", "--out", "d", "demo", "name=r", "--config", "small", "task.n_train_prompts=8"])
    assert (args.which, args.out, args.config, args.overrides) == ("demo", Path("d"), "small",
                                                                   ["name=r", "task.n_train_prompts=8"])
    args = cli.parse_args(["ppo", "name=r", "--resume", "ppo.total_steps=8", "--address", "ray://head:10001"])
    assert (args.resume, args.fresh, args.address) == (True, False, "ray://head:10001")
    assert args.overrides == ["name=r", "ppo.total_steps=8"]
    assert cli.parse_args(["iterate", "x.y=1", "--rounds", "3"]).rounds == 3
    assert cli.parse_args(["config"]).overrides == []


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: command"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["rm", "name=r", "--bogus"], "raylhf rm: error: unrecognized arguments: --bogus"),
    (["iterate", "--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
    (["data"], "the following arguments are required: which\n"),
])
def test_bad_command_lines_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    usage = text[: text.index("\n\n")]
    # The intermixed parse hides the positionals while it reads the flags; the usage must still list them.
    assert usage.startswith(f"usage: raylhf {command} [-h]") and "[key.path=value ...]" in usage, usage
    assert "--config CONFIG" in text and re.search(r"key\.path=value\s+config overrides", text), text


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(f"    {command} " in text for command in COMMANDS), text
    assert "anywhere after the command" in text


def test_config_through_the_installed_command_line(tmp_path):
    out = raylhf(["config", "ppo.kl_coef=0.05", "--config", "tiny", "name=r"], cwd=tmp_path, timeout=120)
    assert "name: r\n" in out.stdout and "kl_coef: 0.05\n" in out.stdout


def test_bad_override_is_one_line_and_status_2(capsys):
    assert cli.main(["config", "name=r", "--explain", "nope.key=1"]) == 2
    assert capsys.readouterr().err == "config error: nope.key: unknown key\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("not an input error")

    monkeypatch.setattr(cli, "load_config", broken)
    with pytest.raises(RuntimeError, match="not an input error"):
        cli.main(["config"])


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    def lost_connection(args):
        raise BrokenPipeError("a worker's connection")

    monkeypatch.setattr(cli, "_dispatch", lost_connection)
    with pytest.raises(BrokenPipeError, match="a worker's connection"):
        cli.main(["config"])


def test_output_into_a_closed_pipe_ends_quietly():
    # `raylhf config --explain | head -3`. The pipe holds one page, so the command is still writing (the
    # explanation is ~25 kB) when the reader closes its end, whatever the machine's default pipe size.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    child = subprocess.Popen([sys.executable, "-m", "raylhf", "config", "--explain"], stdout=write_end,
                             stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        head = [reader.readline() for _ in range(3)]
    _, stderr = child.communicate(timeout=120)
    assert head[0].startswith("name = "), head
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr, stderr
    assert child.returncode == 141, stderr  # as if stopped by SIGPIPE, like other tools cut short by `head`


def test_the_command_line_imports_no_torch_ray_or_vllm():
    # What `raylhf --help` loads: the module and its parser. Each of these takes a second or more to import.
    code = ("import sys\n"
            "from raylhf.orchestration import cli\n"
            "cli.build_parser()\n"
            "print(' '.join(m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"imported by raylhf.orchestration.cli: {out.stdout.strip()}"
