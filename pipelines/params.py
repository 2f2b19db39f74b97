"""params.yaml, typed: every section is read into a dataclass, and nothing else reads the file.

Types come from the dataclass annotations: `Literal[...]` choices, `int`, `float` (ints accepted),
`bool`, `str`, `list[...]`, `dict[str, ...]`, `Optional[...]` and nested dataclasses. A value of
the wrong type and a key the dataclass does not have are errors that name the key's full path
(`remote_sensing.curate.tile_siz: unknown key; did you mean tile_size?`), never silently ignored.

`check_file` validates the whole file against every domain's schema (`domainfm params check`),
so a typo is found before a long run rather than an hour into it.

Why not pydantic (installed with DVC): its strict mode refuses plain dicts for stdlib dataclasses
and its lax mode turns "1e-3" or 2.5 into other types silently; these rules fit in a page.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from pipelines.errors import InputError

T = TypeVar("T")


class ParamsError(InputError, ValueError):
    """One or more params.yaml values are wrong; the message names each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def load_params(path: str | Path | None) -> dict[str, Any]:
    """The raw mapping of a params.yaml; {} for None."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParamsError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    return data


def section(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    """params[k1][k2]..., or {} where a level is absent or empty."""
    node: Any = params
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return {}
        node = node[key]
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ParamsError([f"{'.'.join(keys)}: expected a mapping, got {type(node).__name__}"])
    return node


def build(cls: type[T], values: dict[str, Any] | None = None, where: str = "", **overrides: Any) -> T:
    """Dataclass `cls` from its defaults, `values` and non-None `overrides`, type-checked.

    `where` is the section's key path, used in messages. Raises ParamsError listing every problem.
    """
    values = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
    problems: list[str] = []
    result = _convert(cls, values, where or cls.__name__, problems)
    if problems:
        raise ParamsError(problems)
    return result


def read(path: str | Path | None, cls: type[T], *keys: str, **overrides: Any) -> T:
    """Section `keys` of the params file at `path`, as a `cls`."""
    return build(cls, section(load_params(path), *keys), ".".join(keys), **overrides)


# ---------------------------------------------------------------- conversion


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp is object:
        return value
    if _is_dataclass_type(tp):
        return _convert_dataclass(tp, value, path, problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            trial: list[str] = []
            converted = _convert(arm, value, path, trial)
            if not trial:
                return converted
        problems.append(f"{path}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
            problems.append(f"{path}: expected a number, got {value!r}{hint}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                problems.append(f"{path}: expected {len(args)} items, got {len(value)}")
                return value
            return tuple(_convert(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return value
        value_type = args[1] if len(args) == 2 else Any
        return {k: _convert(value_type, v, f"{path}.{k}", problems) for k, v in value.items()}
    raise TypeError(f"{path}: params type {tp!r} is not supported by pipelines.params")


def _convert_dataclass(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping, got {value!r}")
        return value
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    n_before = len(problems)
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            problems.append(f"{path}.{key}: unknown key{hint}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}", problems) for k, v in value.items() if k in fields}
    if len(problems) > n_before:
        return value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks name what is wrong
        problems.append(f"{path}: {exc}")
        return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain data (for JSON records of the settings a run used)."""
    return dataclasses.asdict(obj)
