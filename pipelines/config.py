"""Stage configuration: dataclasses with defaults, overridden from a section of params.yaml."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def load_params(path: str | Path | None) -> dict[str, Any]:
    """Read a params.yaml; None or a missing file gives an empty dict only when path is None."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at top level")
    return data


def section(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    """params[k1][k2]..., or {} where a level is absent."""
    node: Any = params
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return {}
        node = node[key]
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ValueError(f"params section {'.'.join(keys)} must be a mapping, got {type(node).__name__}")
    return node


def build(cls: type[T], overrides: dict[str, Any] | None = None, **extra: Any) -> T:
    """Instantiate dataclass `cls` from defaults + overrides; unknown keys are an error, not ignored."""
    values = {**(overrides or {}), **{k: v for k, v in extra.items() if v is not None}}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
