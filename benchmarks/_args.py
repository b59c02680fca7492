"""argparse types for the benchmark scripts' counts: a bad value is refused when parsed, with
argparse's one-line message and exit status 2, not a traceback after minutes of timing."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number >= 1 (threads, repeats, blocks, steps, batch sizes, population sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def count(text: str) -> int:
    """A whole number >= 0 (0: none)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a block's duration in ms)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
    return value


def positive_ints(text: str) -> list[int]:
    """Comma-separated whole numbers >= 1, e.g. ``1,4,16``."""
    values = []
    for part in text.split(","):
        try:
            values.append(positive_int(part.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers >= 1, "
                                             f"e.g. 1,4,16") from None
    return values
