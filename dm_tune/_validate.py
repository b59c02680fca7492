"""Config objects built from untrusted mappings (YAML, CLI, Ray trial configs), parsed by pydantic.

A config class is a frozen ``pydantic.dataclasses.dataclass`` with ``config=CONFIG``; each field's
domain rule sits in its annotation (``Annotated[float, in_range(0.0, 1.0)]``) and rules between
fields in a ``model_validator`` raising ``violation``. ``parse`` is the one constructor from a
mapping, and ``config_error`` the one place where pydantic's ``ValidationError`` becomes a
``ConfigError``: one line naming the field (a dotted path for nested fields), the bad value and
what is allowed, e.g. ``noise_rate: 1.5 is not allowed; expected a number in [0.0, 1.0)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, PydanticKnownError

from dm_tune.errors import unusual_number

T = TypeVar("T")

# Unknown keys are mistakes. Values are coerced as the command line and YAML need ("0.4" -> 0.4,
# "true" -> True, 5.0 -> 5), never lossily (2.5 is not an integer; "yes" is no boolean: ``Bool``).
CONFIG = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the field, the value and what is allowed.

    ``value`` is ``dataclasses.MISSING`` for a required field that was not given.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        given = "missing" if value is dataclasses.MISSING else f"{_short_repr(value)} is not allowed"
        super().__init__(f"{field}: {given}; {allowed}")

    def __reduce__(self):  # picklable, so that Ray can carry one out of a trial
        missing = self.value is dataclasses.MISSING
        return (_config_error, (self.field, None if missing else self.value, self.allowed, missing))


def _config_error(field: str, value: Any, allowed: str, missing: bool) -> ConfigError:
    return ConfigError(field, dataclasses.MISSING if missing else value, allowed)


def _short_repr(value: Any, limit: int = 80) -> str:
    # A container is written by reprlib, which stops after a few items and levels: repr() wrote all
    # of it first, and a YAML file of a few hundred bytes whose anchors nest ten aliases per level
    # (a "billion laughs") is a container of 10**9 strings (minutes and gigabytes, then killed).
    text = _CONTAINER_REPR.repr(value) if isinstance(value, (dict, list, tuple, set, frozenset)) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel = 3
_CONTAINER_REPR.maxdict = _CONTAINER_REPR.maxlist = _CONTAINER_REPR.maxtuple = _CONTAINER_REPR.maxset = 40
_CONTAINER_REPR.maxstring = _CONTAINER_REPR.maxother = _CONTAINER_REPR.maxlong = 80


# --- field rules: Annotated metadata --------------------------------------------------------


def violation(allowed: str, field: str | None = None, value: Any = None) -> PydanticCustomError:
    """The error a rule raises; a model validator names the offending ``field`` and its ``value``."""
    ctx: dict[str, Any] = {"allowed": allowed}
    if field is not None:
        ctx.update(field=field, value=value)
    return PydanticCustomError("config", "{allowed}", ctx)


def rule(ok: Callable[[Any], bool], allowed: str) -> AfterValidator:
    """A field's domain rule, checked after the type: values where ``ok`` is false are rejected."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise violation(allowed)
        return value

    return AfterValidator(check)


def one_of(choices: Iterable[str]) -> AfterValidator:
    options = tuple(choices)
    return rule(lambda v: v in options, "expected one of: " + ", ".join(options))


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> AfterValidator:
    """Finite numbers between ``lo`` and ``hi`` (closed unless ``lo_open``/``hi_open``)."""
    if hi is None:
        bounds = f"{'>' if lo_open else '>='} {lo}"
    elif lo is None:
        bounds = f"{'<' if hi_open else '<='} {hi}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def check(value: Any) -> Any:
        # (an int is compared as it is: math.isfinite of one past float's range raised OverflowError)
        if not ((isinstance(value, int) or math.isfinite(value))
                and (lo is None or (value > lo if lo_open else value >= lo))
                and (hi is None or (value < hi if hi_open else value <= hi))):
            raise violation(f"expected {'an integer' if isinstance(value, int) else 'a number'} {bounds}")
        return value

    return AfterValidator(check)


def _not_bool(error_type: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        # Text is read as a number as the CLI reads one (errors.read_number): pydantic, like
        # Python, would take "1_0" for 10.
        if isinstance(value, bool) or (isinstance(value, str) and unusual_number(value)):
            raise PydanticKnownError(error_type)  # type: ignore[arg-type]
        return value

    return BeforeValidator(check)


# To pydantic, as to Python, True is 1: a YAML `epochs: true` must be an error, not one epoch.
Int = Annotated[int, _not_bool("int_type")]
Float = Annotated[float, _not_bool("float_type")]


def _true_or_false(value: Any) -> Any:
    # pydantic takes "on", "no", "y", 1 and 0 for booleans, as YAML 1.1 did: the config reader keeps
    # such values text, so that they are refused here. "true" and "false" (any case) are the text
    # of a boolean, as a flag's value or YAML 1.2 writes it.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise PydanticKnownError("bool_type")
    return value


Bool = Annotated[bool, BeforeValidator(_true_or_false)]
# A random seed: what numpy's legacy seeding and Optuna's samplers accept (torch's take more).
SEED_MAX = 2**32 - 1
Seed = Annotated[Int, in_range(0, SEED_MAX)]


# --- parsing and the one conversion of pydantic's errors --------------------------------------


def parse(cls: type[T], values: Any, where: str = "") -> T:
    """Build the config dataclass ``cls`` from a mapping; ``where`` prefixes field names in errors."""
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        raise config_error(exc, cls, values, where) from None


def config_errors(cls: type[T]) -> type[T]:
    """Class decorator (above pydantic's ``dataclass``): ``cls(**values)``, and so
    ``dataclasses.replace``, raise ConfigError as ``parse`` does, not pydantic's ValidationError."""
    init = cls.__init__

    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args and len(args) <= len(names) and not set(names[:len(args)]) & set(kwargs):
            args, kwargs = (), {**dict(zip(names, args)), **kwargs}  # by name: an error names its field, not [0]
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, cls, kwargs) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@functools.cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(cls)


# What is allowed, by pydantic error type (https://docs.pydantic.dev/latest/errors/validation_errors/).
_ALLOWED = {
    "int_type": "expected an integer", "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list", "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "dataclass_type": "expected a mapping of field: value", "model_type": "expected a mapping of field: value",
    "missing": "this field is required", "missing_argument": "this field is required",
}
_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")


def config_error(exc: ValidationError, cls: type, values: Any, where: str = "", root: str = "") -> ConfigError:
    """The first problem pydantic found validating ``values`` as ``cls``, as one ConfigError.

    ``where`` prefixes every field path; ``root`` names the whole input when it is the problem.
    """
    err = exc.errors()[0]
    kind, loc, value, ctx = err["type"], list(err["loc"]), err["input"], err.get("ctx", {})
    if kind == "config":
        allowed = ctx["allowed"]
        if "field" in ctx:  # a rule between fields names the one to change
            loc, value = [*loc, ctx["field"]], ctx["value"]
    elif loc and loc[-1] == "[key]":  # a non-string key in a plain mapping field
        loc, allowed = loc[:-1], "expected a string as key"
    elif kind in _UNKNOWN_KEY:
        allowed = "unknown field; known fields: " + ", ".join(_field_names(cls, loc[:-1]))
        if kind == "invalid_key":  # a non-string key (YAML `1: 2`): pydantic gives the key, not its value
            value = _lookup(values, loc)
        loc[-1] = str(loc[-1]) or "''"  # (an empty key was named as the whole config: "TrainConfig: 1")
    elif kind in ("missing", "missing_argument"):
        allowed, value = _ALLOWED[kind], dataclasses.MISSING
    else:
        allowed = _ALLOWED.get(kind, err["msg"])
    return ConfigError(_dotted(where, loc) or root or cls.__name__, value, allowed)


def _dotted(where: str, loc: list[int | str]) -> str:
    path = where
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def _field_names(cls: Any, loc: list[int | str]) -> list[str]:
    """The fields of the (nested) config dataclass at ``loc``."""
    for part in loc:
        cls = typing.get_type_hints(cls)[part]
    return sorted(f.name for f in dataclasses.fields(cls))


def _lookup(values: Any, loc: list[int | str]) -> Any:
    for part in loc:
        values = values[part]
    return values
