"""Argument types and helpers shared by the CLI's commands.

Every numeric option is checked by argparse itself, so a bad value is
rejected before any model loads or any file is written.
"""
from __future__ import annotations

import argparse
import sys


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def progress_bar(total: int, desc: str, unit: str = "it", disable: bool = False):
    """A tqdm bar on stderr (hidden with ``disable``)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=disable)
