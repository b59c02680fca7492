"""User-facing errors (the CLI prints their message as one line and exits with code 2) and the
YAML reader shared by the commands, whose mistakes are such errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake in the user's input or environment (not a bug): shown as one line, exit 2."""



class DataError(ValueError):
    """Missing or malformed data on disk: names the path and the expected layout."""

    def __init__(self, path: str | Path, problem: str, layout: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}. Expected layout: {layout}")


def load_yaml(path: str, what: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {path}: file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{what} {path}: not valid YAML{where}") from None
    if data is None:
        raise UserError(f"{what} {path}: the file is empty")
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: expected a mapping of field: value at the top level")
    return data
