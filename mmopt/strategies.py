"""Strategies: which trials the proposer sees, in which order, with which labels.

The loop evaluates every candidate; a strategy decides what the next
proposal is conditioned on, and owns that history completely: proposers show
it as it is and never re-sort or re-filter it. The order is the one the
OPT2I meta-prompt uses: worst first, best last, with every infeasible trial
before every feasible one (so the last line is always the best trial that
meets the constraints, and a trial that broke one is never presented as the
best). Each trial carries its label (``Trial.status``) and feedback.

OPT2I conditions on the top-k trials so far (``TopKHistory``); a beam keeps
fewer, stronger parents and forgets the rest (``BeamHistory``). New search
methods are new strategies, not new loops.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from mmopt.component import Configurable
from mmopt.types import Trial, rank_key


@runtime_checkable
class Strategy(Protocol):
    name: str

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        """Trials to show the proposer, in display order (infeasible first, then feasible ascending)."""
        ...

    def config(self) -> dict: ...


def display_order(trials: Sequence[Trial]) -> list[Trial]:
    """``trials`` worst first, best last, infeasible before feasible (``rank_key`` ascending)."""
    return sorted(trials, key=rank_key)


def _top(trials: Sequence[Trial], k: int) -> list[Trial]:
    return sorted(trials, key=rank_key, reverse=True)[:k]


class TopKHistory(Configurable):
    """OPT2I's history: the ``k`` best trials so far (feasible ones rank first).

    >>> ts = [Trial(i, 0, f"p{i}", o, {}) for i, o in enumerate([0.1, 0.5, 0.3])]
    >>> [t.prompt for t in TopKHistory(2).history(ts)]
    ['p2', 'p1']
    """

    name = "topk"

    def __init__(self, k: int = 10):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"history size k must be an int >= 1, got {k!r}")
        self.k = k
        self.register_config(k=k)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        return display_order(_top(trials, self.k))


class BeamHistory(Configurable):
    """A beam: only the ``width`` best trials of the *latest two iterations*.

    Older trials drop out even if good, so the proposer keeps moving away from
    the start instead of re-polishing the same early winners.
    """

    name = "beam"

    def __init__(self, width: int = 3):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"beam width must be an int >= 1, got {width!r}")
        self.width = width
        self.register_config(width=width)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        if not trials:
            return []
        last = max(t.iteration for t in trials)
        recent = [t for t in trials if t.iteration >= last - 1]
        return display_order(_top(recent, self.width))


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
