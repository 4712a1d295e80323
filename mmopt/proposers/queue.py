"""A proposer that puts given candidates first: pinned, hand-edited or carried over.

``QueueProposer(inner, queued=[...])`` proposes the queued candidates (those not
tried yet) before anything else, then fills the rest of the iteration from
``inner`` (the preset's proposer). The studio uses it for "edit a candidate and
add it to the search" and to carry a run's best candidates into the next
segment; :meth:`push` adds candidates while a run is going (thread-safe).

Identity: ``inner`` and the initial queue. Candidates pushed during a run are
not part of it (the run id is fixed when the run starts); they are recorded
where every proposal is, in the store's proposals of their iteration, so a
resumed run replays them.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Sequence

from mmopt.component import Configurable, describe
from mmopt.types import Candidate, SearchState


class QueueProposer(Configurable):
    """Queued candidates first, then ``inner``'s proposals.

    >>> import random
    >>> from mmopt.proposers.fixed import FixedProposer
    >>> q = QueueProposer(FixedProposer([["b", "c"]]), queued=["a"])
    >>> [c.text for c in q.propose(SearchState("x", 1, [], [], random.Random(0)), 2)]
    ['a', 'b']
    """

    name = "queue"

    def __init__(self, inner: Any, queued: Sequence[str | Candidate | dict] = ()):
        if not callable(getattr(inner, "propose", None)):
            raise TypeError(f"inner must be a proposer (with propose(state, n)), got {type(inner).__name__}")
        self.inner = inner
        self._queue = [Candidate.of(c) for c in queued]
        self._lock = threading.Lock()
        self.register_config(inner=describe(inner), queued=[c.key() for c in self._queue])
        self.last_stats: dict | None = None

    def push(self, candidates: Iterable[str | Candidate | dict]) -> None:
        """Queue more candidates for the next iteration of the running search."""
        with self._lock:
            self._queue.extend(Candidate.of(c) for c in candidates)

    def pending(self) -> list[Candidate]:
        with self._lock:
            return list(self._queue)

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        seen = {t.candidate for t in state.trials} | {Candidate(p) for p in state.pending}
        with self._lock:
            fresh = [c for c in self._queue if c not in seen]
            take, self._queue = fresh[:n], fresh[n:]
        self.last_stats = {"llm_calls": 0, "queued": len(take)}
        if len(take) >= n:
            return take
        more = list(self.inner.propose(state, n - len(take)))
        stats = getattr(self.inner, "last_stats", None)
        self.last_stats = {"llm_calls": int(stats.get("llm_calls", 1)) if isinstance(stats, dict) else 1,
                           "queued": len(take)}
        return take + [Candidate.of(c) for c in more]


def from_name(rest: str = "", *, context: Any = None, inner: Any = "opt2i", queued: Sequence = ()) -> QueueProposer:
    """Registry factory: ``{"name": "queue", "kwargs": {"inner": "opt2i", "queued": ["a prompt", ...]}}``."""
    from mmopt import registry

    if rest:
        raise ValueError(f"the queue proposer takes its settings as kwargs, not in the name: got 'queue:{rest}'")
    if isinstance(inner, (str, dict)):
        inner = registry.create("proposer", inner, context=context, reuse=False)
    return QueueProposer(inner, queued)
