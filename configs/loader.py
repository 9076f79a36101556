"""Load a RunConfig from a preset or YAML file plus dotted command-line overrides."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from raylhf.configs.schema import RunConfig

PRESET_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = "tiny"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config that does not satisfy the schema; the message names each bad key path."""


# Keys that left the schema -> the key that replaced them. A config still setting one fails before validation,
# naming the replacement, rather than as an unknown key with a list of allowed ones to search.
REPLACED_KEYS = {
    "ppo.timeout_s": "supervision.call_timeout_s",
    "ppo.actor_startup_timeout_s": "supervision.startup_timeout_s",
    "ppo.max_consecutive_restarts": "supervision.max_consecutive_restarts",
    "reward.request_timeout_s": "supervision.scorer.call_timeout_s",
    "reward.startup_timeout_s": "supervision.scorer.startup_timeout_s",
    "reward.startup_attempts": "supervision.scorer.max_consecutive_restarts",
    "reward.startup_backoff_s": "supervision.scorer.backoff_s",
    "reward.max_attempts": "supervision.scorer.max_attempts",
}


def _replaced(key: str) -> str:
    new = REPLACED_KEYS[key]
    message = f"{key} was replaced by {new}"
    if new.startswith("supervision.scorer."):
        # The old key held for scorers only; the section-wide key is the other place a user may want.
        message += f" (or supervision.{new.rsplit('.', 1)[1]} for every actor kind)"
    return message


def _reject_replaced_keys(data: dict[str, Any], source: str) -> None:
    found = []
    for key in REPLACED_KEYS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            found.append(key)
    if found:
        raise ConfigError("\n".join([f"invalid config ({source}):", *(f"  {_replaced(k)}" for k in found)]))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(source: str) -> tuple[dict[str, Any], str]:
    path = Path(source)
    if not (path.suffix in (".yaml", ".yml") or os.sep in source):
        path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{source}'; presets: {', '.join(preset_names())} (or a path to a .yaml)")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data, str(path)


def _allowed_keys(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    for key in path:
        field = model.model_fields.get(key)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected key.path=value, e.g. ppo.kl_coef=0.05")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if ".".join(parts) in REPLACED_KEYS:
        raise ConfigError(f"override '{override}': {_replaced('.'.join(parts))}")
    allowed = _allowed_keys(RunConfig, parts[:-1]) if len(parts) > 1 else list(RunConfig.model_fields)
    if parts[-1] not in allowed:
        where = ".".join(parts)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        raise ConfigError(f"{where}: unknown key{hint}")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from e
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: '{p}' is not a section")
    node[parts[-1]] = value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(RunConfig, [str(p) for p in e["loc"][:-1]])
            lines.append(f"  {path}: unknown key; allowed: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {path}: {e['msg']}{got_s}")
    return "\n".join(lines)


def load_config(source: str = DEFAULT_PRESET, overrides: Sequence[str] = ()) -> RunConfig:
    """`source` is a preset name (see `configs/*.yaml`) or a YAML path; overrides are `a.b=value`."""
    data, where = _read_yaml(source)
    _reject_replaced_keys(data, where)
    for o in overrides:
        _apply_override(data, o)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where + (" + overrides" if overrides else ""))) from None


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def explain(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default and docstring."""
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.extend(explain(ann, key + "."))
        else:
            lines.append(f"{key} = {field.default!r}\n    {field.description or ''}".rstrip())
    return lines
