"""Clauses of a prompt: split at commas, "and" and semicolons, and joined back.

Shared by the rule edits (:mod:`mmopt.proposers.edits`) and the evolutionary
strategy's crossover (:mod:`mmopt.strategies`).
"""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["clauses", "join_clauses"]

_CLAUSE_SPLIT = re.compile(r",\s+(?:and\s+)?|\s+and\s+|;\s*")


def clauses(text: str) -> list[str]:
    """A prompt's clauses: split at commas, "and" and semicolons.

    >>> clauses("a red circle, a blue square and the circle left of the square")
    ['a red circle', 'a blue square', 'the circle left of the square']
    """
    return [c.strip() for c in _CLAUSE_SPLIT.split(text.strip().rstrip(".")) if c.strip()]


def join_clauses(parts: Sequence[str]) -> str:
    """Clauses back into one prompt ("A, B and C")."""
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]
