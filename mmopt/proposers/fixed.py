"""A proposer that replays a fixed schedule of candidates.

Useful to re-evaluate known prompts through the loop (same store, cache and
objective), and to measure the loop itself without LLM time.
"""
from __future__ import annotations

from typing import Sequence

from mmopt.component import Configurable
from mmopt.types import Candidate, SearchState


class FixedProposer(Configurable):
    """Returns ``schedule[i-1]`` at iteration ``i`` (iteration 0 is the original prompt).

    Entries are prompt strings or candidates (``Candidate`` or
    ``{"text", "negative", "payload"}`` dicts).

    >>> p = FixedProposer([["a red cube", "a crimson cube"]])
    >>> from mmopt.types import SearchState; import random
    >>> [c.text for c in p.propose(SearchState("a cube", 1, [], [], random.Random(0)), 5)]
    ['a red cube', 'a crimson cube']
    """

    name = "fixed"

    def __init__(self, schedule: Sequence[Sequence[str | Candidate | dict]]):
        if isinstance(schedule, str) or any(isinstance(row, (str, dict, Candidate)) for row in schedule):
            raise TypeError("schedule must be a list of lists of prompts, one list per iteration")
        try:
            self.schedule = [[Candidate.of(c) for c in row] for row in schedule]
        except (TypeError, ValueError) as e:
            raise TypeError(f"schedule must be a list of lists of prompts, one list per iteration: {e}") from e
        self.register_config(schedule=[[c.key() for c in row] for row in self.schedule])

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        if state.iteration - 1 >= len(self.schedule):
            return []
        return self.schedule[state.iteration - 1][:n]


def from_name(rest: str = "", *, schedule: Sequence[Sequence[str]] = (), **kw) -> FixedProposer:
    """Registry factory: ``{"name": "fixed", "kwargs": {"schedule": [["p1", "p2"], ["p3"]]}}``."""
    if rest:
        raise ValueError(f"the fixed proposer takes its schedule as kwargs, not in the name: got 'fixed:{rest}'")
    return FixedProposer(schedule, **kw)
