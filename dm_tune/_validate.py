"""Building frozen config dataclasses from untrusted mappings (YAML, CLI, Ray trial configs).

One constructor, ``build``, rejects unknown keys, coerces and type-checks every value from the
field's annotation and runs the field's own check (``field(metadata={"check": fn})``). Every
failure is a ``ConfigError`` whose message names the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")


# --- small reusable checks: each returns None when fine, else the "allowed" text --------------


def one_of(choices: Iterable[str]) -> Callable[[Any], str | None]:
    options = tuple(choices)

    def check(v: Any) -> str | None:
        return None if v in options else "expected one of: " + ", ".join(options)

    return check


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        bad = (not math.isfinite(v)
               or (lo is not None and (v <= lo if lo_open else v < lo))
               or (hi is not None and (v >= hi if hi_open else v > hi)))
        if not bad:
            return None
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        return f"expected a number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    return check


def check(fn: Callable[[Any], str | None], default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """``dataclasses.field`` with a value check in its metadata."""
    return dataclasses.field(default=default, metadata={"check": fn}, **kw)


# --- coercion ------------------------------------------------------------------------------


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as e:
                errors.append(e.allowed)
        raise ConfigError(name, value, " or ".join(errors))
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise ConfigError(name, value, "expected a list")
        return tuple(_coerce(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, where=name)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(name, value, "expected a mapping")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(name, value, "expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(name, value, "expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(name, value, "expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(name, value, "expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, value, "expected a number") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "expected a string")
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {name}")  # a bug, not user input


def build(cls: type[T], values: Mapping[str, Any], where: str = "") -> T:
    """Construct the frozen dataclass ``cls`` from ``values``, validating every field."""
    if not isinstance(values, Mapping):
        raise ConfigError(where or cls.__name__, values, "expected a mapping of field: value")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - set(fields), key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", values[unknown[0]],
                          "unknown field; known fields: " + ", ".join(sorted(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}{name}", None, "this field is required")
            continue
        value = _coerce(f"{prefix}{name}", values[name], hints[name])
        fn = f.metadata.get("check")
        if fn is not None and value is not None:
            problem = fn(value)
            if problem:
                raise ConfigError(f"{prefix}{name}", value, problem)
        kwargs[name] = value
    return cls(**kwargs)
