"""Tasks supply prompts, demonstrations, pretraining text and judgement. `task.name` selects the module
`raylhf.tasks.<name>` (the built-in `demo`) or, with a dot, any module by import path; its `build(task_config)`
returns an object satisfying `raylhf.contracts.protocols.Task`. `none` is a run without a task: its data come
from `data.*` files and it is judged without ground truth."""

from __future__ import annotations

import importlib

from raylhf.configs.loader import ConfigError
from raylhf.configs.schema import TaskConfig


def load_task(cfg: TaskConfig):
    """The configured task, or None for `task.name: none`."""
    if cfg.name == "none":
        return None
    name = cfg.name if "." in cfg.name else f"raylhf.tasks.{cfg.name}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if name.startswith(e.name or "\0"):
            raise ConfigError(f"task.name: no task module '{name}' (demo, none, or a module by import path)") from None
        raise
    if not callable(getattr(module, "build", None)):
        raise ConfigError(f"task.name: module '{name}' has no build(task_config) function")
    return module.build(cfg)
