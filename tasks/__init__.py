"""Tasks supply prompts, demonstrations, pretraining text and judgement. `task.name` selects the
module `tasks.<name>`, whose `build(task_config)` returns an object satisfying `raylhf.contracts.protocols.Task`."""

from __future__ import annotations

import importlib

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import TaskConfig


def load_task(cfg: TaskConfig):
    try:
        module = importlib.import_module(f"raylhf.tasks.{cfg.name}")
    except ModuleNotFoundError as e:
        if e.name == f"raylhf.tasks.{cfg.name}":
            raise ConfigError(f"task.name: no task module 'tasks.{cfg.name}'") from None
        raise
    return module.build(cfg)
