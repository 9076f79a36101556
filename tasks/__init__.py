"""Tasks supply prompts, demonstrations, pretraining text and judgement. `task.name` selects the
module `tasks.<name>`, whose `build(task_config)` returns an object satisfying `contracts.protocols.Task`."""

from __future__ import annotations

import importlib

from configs.loader import ConfigError
from configs.schema import TaskConfig


def load_task(cfg: TaskConfig):
    try:
        module = importlib.import_module(f"tasks.{cfg.name}")
    except ModuleNotFoundError as e:
        if e.name == f"tasks.{cfg.name}":
            raise ConfigError(f"task.name: no task module 'tasks.{cfg.name}'") from None
        raise
    return module.build(cfg)
