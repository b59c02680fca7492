"""Lazy package exports (PEP 562): a package re-exports its public names without importing
their modules until one is used, so that light entry points stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: dict[str, Any], exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose globals are ``package`` and whose
    public names come from ``exports`` (name -> defining module)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        package[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(package) | set(exports))

    return __getattr__, __dir__
