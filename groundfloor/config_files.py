"""YAML configs with ``--set a.b=c`` overrides, validated by a pydantic model: one loader for
every command that takes a config (`viewstream train`, `viewstream shard`).

A leaf module (imports nothing of ours but `groundfloor.errors`), so every stage can use it.
Errors name the field path and what was expected, in one line (see
`groundfloor.errors.describe_validation_error`), so the CLI prints them without a traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from groundfloor.errors import UsageError, usage_error_from

ModelT = TypeVar("ModelT")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (1, true, [1,2])."""
    if "=" not in assignment:
        raise UsageError(f"--set expects key.path=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise UsageError(f"--set has an empty key in {assignment!r}")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UsageError(f"--set {path}: {key!r} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_yaml_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping from `path` and apply `overrides`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config file {str(path)!r} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def validate(model: type[ModelT], data: dict[str, Any], what: str = "config") -> ModelT:
    """Validate `data` into pydantic `model`, turning pydantic's report into one readable line."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise usage_error_from(err, what) from None
