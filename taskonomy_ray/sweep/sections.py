"""Typed sections from a parsed workflow mapping: wrong types and unknown keys refused by name.

Each dataclass field's annotation says what its YAML value must be; a bad value fails when the
workflow loads, naming the setting, not on a worker hours later.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from ..errors import ConfigError, unknown_name


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# What a YAML value must be for each field type of these dataclasses (nested sections are built
# and checked on their own; optional settings check themselves, with what null means).
_EXPECTED: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "tuple[int, ...]": (lambda v: isinstance(v, tuple) and all(map(_is_int, v)),
                        "a list of integers, e.g. [128, 512]"),
    "tuple[int, int, int]": (lambda v: isinstance(v, tuple) and all(map(_is_int, v)),
                             "a list of three integers, e.g. [5, 5, 6]"),
    "tuple[float, float, float]": (lambda v: isinstance(v, tuple) and all(map(_is_number, v)),
                                   "a list of three numbers, e.g. [0.5, 0.25, 0.25]"),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
                        "a list of task names, e.g. [normal, reshading]"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a mapping of settings"),
    "dict[str, float]": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _is_number(x) for k, x in v.items()),
        "a mapping of task names to numbers, e.g. {segment_semantic: 3}"),
}


def _check_types(cls: type, kwargs: dict[str, Any], where: str) -> None:
    """Refuse a value of the wrong type now, naming the setting, not on a worker hours later."""
    prefix = "" if where == "the workflow" else f"{where}."
    for f in fields(cls):
        if f.name in kwargs and f.type in _EXPECTED:
            ok, what = _EXPECTED[f.type]
            value = kwargs[f.name]
            if not ok(value):
                shown = list(value) if isinstance(value, tuple) else value  # as YAML wrote it
                raise ConfigError(f"{prefix}{f.name} must be {what}, got {shown!r}")


def build(cls: type, raw: Any, where: str) -> Any:
    """Construct dataclass `cls` from a mapping, refusing unknown keys with a suggestion."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    for key in raw:
        if key not in names:
            raise unknown_name(f"key in {where}", key, sorted(names))
    kwargs = dict(raw)
    for f in fields(cls):
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    _check_types(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e
