"""One shortened pipeline run for every end-to-end test of the orchestration (built once per session)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `cli_runs`, shared by the test modules here

from cli_runs import SMALL, raylhf  # noqa: E402


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """`raylhf run` on `SMALL`: a run directory with every stage's output (data, base, SFT, RM, PPO, eval)."""
    root = tmp_path_factory.mktemp("pipeline")
    raylhf(["run", f"output_dir={root}", "name=short", *SMALL], cwd=root)
    return root / "short"
