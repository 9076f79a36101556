"""A scratch run for a benchmark: copies of the parts of a finished run it reads, in a temporary directory.

A benchmark that takes `--run` measures stages on that run's data and models, and a stage writes records
beside the paths it is given (metrics.jsonl, summaries/, checkpoints/, its output). Pointed at the run itself
it would replace the run's PPO checkpoint and metrics rows (`run_ppo(..., fresh=True)`), so every benchmark
works in a `scratch_run` instead: the source run is only read, and its files are byte-identical afterwards.

Copies, not links: a stage that writes a file it was given through a link would write into the source run.
The demo run's data and models are tens of MB, a second to copy.

    with scratch_run(args.run, ["data", "models/sft", "models/rm"]) as run:
        cfg = load_config(args.config, [*args.overrides, *run_overrides(run)])
        summary = run_ppo(cfg, RunPaths(run), ...)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence


@contextlib.contextmanager
def scratch_run(source: Path, parts: Sequence[str], parent: Path | None = None, keep: bool = False
                ) -> Iterator[Path]:
    """A run directory named like `source`, inside a new temporary directory (under `parent` when given),
    holding copies of `parts` of it (paths relative to the run: `data`, `models/sft`, `rounds/1/comparisons.jsonl`,
    ...; a part the run does not have is left out, the benchmark checks what it needs). Removed on exit unless
    `keep`."""
    source = Path(source)
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{source.name}-", dir=parent))
    run = tmp / source.name
    run.mkdir()
    try:
        for part in parts:
            src, dst = source / part, run / part
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=False)
            elif src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        yield run
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run_overrides(run: Path) -> list[str]:
    """Config overrides that make a scratch run the configured run (`output_dir`/`name`)."""
    return [f"output_dir={run.parent}", f"name={run.name}"]
