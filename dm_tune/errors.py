"""User-facing errors: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or environment (not a bug): shown as one line, exit 2."""
