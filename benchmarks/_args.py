"""argparse types for the benchmark scripts' counts: a bad value is refused when parsed, with
argparse's one-line message and exit status 2, not a traceback after minutes of timing."""

from __future__ import annotations

import argparse


def _at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {least}")
        return value
    return parse


positive_int = _at_least(1)   # threads, repeats, blocks, steps, batch sizes, population sizes
count = _at_least(0)          # a number of members where 0 means none


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
