"""Strategies: which trials survive into the history the proposer sees.

The loop evaluates every candidate; a strategy only decides what the next
proposal is conditioned on. OPT2I conditions on the top-k trials so far
(``TopKHistory``); a beam keeps fewer, stronger parents and forgets the rest
(``BeamHistory``). New search methods are new strategies, not new loops.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from mmopt.types import Trial


@runtime_checkable
class Strategy(Protocol):
    name: str

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        """Trials to show the proposer, sorted ascending by objective (best last)."""
        ...


def _rank(trials: Sequence[Trial]) -> list[Trial]:
    # Feasible trials first; among equals the earlier trial wins (stable, seed-free).
    return sorted(trials, key=lambda t: (t.feasible, t.objective, -t.index), reverse=True)


class TopKHistory:
    """OPT2I's history: the ``k`` best trials so far, infeasible ones last.

    >>> ts = [Trial(i, 0, f"p{i}", o, {}) for i, o in enumerate([0.1, 0.5, 0.3])]
    >>> [t.prompt for t in TopKHistory(2).history(ts)]
    ['p2', 'p1']
    """

    name = "topk"

    def __init__(self, k: int = 10):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"history size k must be an int >= 1, got {k!r}")
        self.k = k

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        return list(reversed(_rank(trials)[: self.k]))


class BeamHistory:
    """A beam: only the ``width`` best trials of the *latest two iterations*.

    Older trials drop out even if good, so the proposer keeps moving away from
    the start instead of re-polishing the same early winners.
    """

    name = "beam"

    def __init__(self, width: int = 3):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"beam width must be an int >= 1, got {width!r}")
        self.width = width

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        if not trials:
            return []
        last = max(t.iteration for t in trials)
        recent = [t for t in trials if t.iteration >= last - 1]
        return list(reversed(_rank(recent)[: self.width]))


STRATEGIES = {"topk": TopKHistory, "beam": BeamHistory}


def _int_arg(rest: str, what: str) -> int | None:
    if not rest:
        return None
    try:
        return int(rest)
    except ValueError as e:
        raise ValueError(f"{what} must be an integer, got {rest!r}") from e


def topk(rest: str = "", **kwargs) -> TopKHistory:
    """Registry factory for ``"topk"`` / ``"topk:5"``."""
    k = _int_arg(rest, "topk history size")
    return TopKHistory(k) if k is not None else TopKHistory(**kwargs)


def beam(rest: str = "", **kwargs) -> BeamHistory:
    """Registry factory for ``"beam"`` / ``"beam:3"``."""
    w = _int_arg(rest, "beam width")
    return BeamHistory(w) if w is not None else BeamHistory(**kwargs)
