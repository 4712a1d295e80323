"""A proposer that replays a fixed schedule of candidates.

Useful to re-evaluate known prompts through the loop (same store, cache and
objective), and to measure the loop itself without LLM time.
"""
from __future__ import annotations

from typing import Sequence

from mmopt.types import SearchState


class FixedProposer:
    """Returns ``schedule[i-1]`` at iteration ``i`` (iteration 0 is the original prompt).

    >>> p = FixedProposer([["a red cube", "a crimson cube"]])
    >>> from mmopt.types import SearchState; import random
    >>> p.propose(SearchState("a cube", 1, [], [], random.Random(0)), 5)
    ['a red cube', 'a crimson cube']
    """

    name = "fixed"

    def __init__(self, schedule: Sequence[Sequence[str]]):
        if isinstance(schedule, str) or not all(
                not isinstance(row, str) and all(isinstance(p, str) for p in row) for row in schedule):
            raise TypeError("schedule must be a list of lists of prompt strings, one list per iteration")
        self.schedule = [list(row) for row in schedule]

    def propose(self, state: SearchState, n: int) -> list[str]:
        if state.iteration - 1 >= len(self.schedule):
            return []
        return self.schedule[state.iteration - 1][:n]
