"""benchmarks/scratch.py: a benchmark's scratch run holds copies of what it reads, never links into the run."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "scratch.py"
_spec = importlib.util.spec_from_file_location("bench_scratch", _PATH)
scratch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scratch)


def test_a_scratch_run_copies_the_parts_named_and_is_removed(tmp_path):
    run = tmp_path / "demo"
    (run / "data").mkdir(parents=True)
    (run / "data" / "prompts_train.jsonl").write_text("prompts\n")
    (run / "models" / "sft").mkdir(parents=True)
    (run / "models" / "sft" / "model.safetensors").write_bytes(b"weights")
    (run / "rounds" / "1").mkdir(parents=True)
    (run / "rounds" / "1" / "comparisons.jsonl").write_text("ranked\n")
    (run / "metrics.jsonl").write_text("the run's\n")

    with scratch.scratch_run(run, ["data", "models/sft", "rounds/1/comparisons.jsonl", "models/rm"],
                             parent=tmp_path / "scratch") as copy:
        assert copy.name == "demo" and copy.parent.parent == tmp_path / "scratch"
        assert scratch.run_overrides(copy) == [f"output_dir={copy.parent}", "name=demo"]
        assert (copy / "rounds" / "1" / "comparisons.jsonl").read_text() == "ranked\n"
        assert not (copy / "models" / "rm").exists() and not (copy / "metrics.jsonl").exists()  # only what is named
        # Writing what the scratch run holds never reaches the run: copies, not links.
        (copy / "models" / "sft" / "model.safetensors").write_bytes(b"trained further")
        (copy / "data" / "prompts_train.jsonl").write_text("changed\n")
        assert not any(p.is_symlink() for p in copy.rglob("*"))
    assert (run / "models" / "sft" / "model.safetensors").read_bytes() == b"weights"
    assert (run / "data" / "prompts_train.jsonl").read_text() == "prompts\n"
    assert not list((tmp_path / "scratch").iterdir())
