"""The demo world of the default config, shared by the demo task's tests."""

from __future__ import annotations

import pytest

from raylhf.configs.schema import TaskConfig
from raylhf.tasks import demo
from raylhf.tasks.demo import DemoWorld


@pytest.fixture(scope="session")
def world() -> DemoWorld:
    """The world of the default config (its datasets are built once, on first use)."""
    return demo.build(TaskConfig())
