"""Negative prompts, co-optimised: the positive prompt kept, the negative prompt searched.

Where the pipeline uses a negative prompt (classifier-free guidance steers
away from it), it is part of the candidate (``Candidate.negative``) and is
reported beside the positive prompt. This proposer takes the strategy's
feasible history, best first, keeps each parent's positive prompt and edits
its negative prompt: add a term, drop one, or swap one, from a vocabulary of
generic failure modes (``assets/styles/negatives.json``, written for mmopt).
``raw`` mode (registry name ``raw``) never touches the positive prompt: every
candidate is the user's prompt as typed, only its negative prompt changes.

Combine it with a positive-prompt proposer with ``mix`` (e.g.
``{"name": "mix", "kwargs": {"proposers": ["edits", "negative"]}}``) to
search both; the edits proposer keeps a parent's negative prompt.

>>> import random; from mmopt.types import SearchState
>>> [c.text for c in NegativeProposer(positive="intent").propose(SearchState("a red fox", 1, [], [], random.Random(0)), 2)]
['a red fox', 'a red fox']
"""
from __future__ import annotations

import importlib.resources
import json
import os
import random
from typing import Any, Sequence

from mmopt import protect
from mmopt.component import Configurable
from mmopt.types import Candidate, SearchState

__all__ = ["NegativeProposer", "MixProposer", "load_terms", "from_name", "raw_from_name", "mix_from_name"]


def load_terms(vocabulary: str | os.PathLike | dict | list | None = None) -> list[str]:
    """The negative terms: the shipped list, a JSON path, a dict with ``terms``, or a list."""
    if vocabulary is None:
        data = json.loads((importlib.resources.files("mmopt.assets") / "styles" / "negatives.json").read_text("utf-8"))
    elif isinstance(vocabulary, (dict, list)):
        data = vocabulary
    elif isinstance(vocabulary, (str, os.PathLike)):
        path = os.path.expanduser(str(vocabulary))
        if not os.path.isfile(path):
            raise ValueError(f"negative-term file not found: {path!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    else:
        raise TypeError(f"vocabulary must be None, a path, a dict or a list, got {type(vocabulary).__name__}")
    terms = data.get("terms") if isinstance(data, dict) else data
    if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
        raise ValueError("negative terms must be a non-empty list of strings")
    return [" ".join(t.lower().split()) for t in terms]


def _split(negative: str | None) -> list[str]:
    return [t.strip() for t in (negative or "").split(",") if t.strip()]


class NegativeProposer(Configurable):
    """Edits of the negative prompt (add / drop / swap a term) of the history's prompts.

    ``vocabulary``: None (shipped), a path, a dict or a list; ``max_terms``: the most terms
    in a negative prompt; ``positive``: ``"history"`` (keep each parent's prompt) or
    ``"intent"`` (raw mode: always the user's prompt).
    """

    name = "negative"

    def __init__(self, vocabulary: Any = None, *, max_terms: int = 4, positive: str = "history"):
        if isinstance(max_terms, bool) or not isinstance(max_terms, int) or max_terms < 1:
            raise ValueError(f"max_terms must be an int >= 1, got {max_terms!r}")
        if positive not in ("history", "intent"):
            raise ValueError(f"positive must be 'history' or 'intent' (raw mode), got {positive!r}")
        self.terms = load_terms(vocabulary)
        self.max_terms, self.positive = max_terms, positive
        if positive == "intent":
            self.name = "raw"
        self.register_config(terms=self.terms, max_terms=max_terms, positive=positive)
        self.last_stats: dict = {}

    def _edit(self, terms: list[str], rng: random.Random) -> list[str]:
        free = [t for t in self.terms if t not in terms]
        ops = (["add"] * 3 if free and len(terms) < self.max_terms else []) + (["drop"] if terms else []) + \
            (["swap"] * 2 if terms and free else [])
        if not ops:
            return terms
        op = rng.choice(ops)
        out = list(terms)
        if op == "add":
            out.append(rng.choice(free))
        elif op == "drop":
            out.pop(rng.randrange(len(out)))
        else:
            out[rng.randrange(len(out))] = rng.choice(free)
        return out

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        """Up to ``n`` candidates whose negative prompts are new for their positive prompt."""
        if not isinstance(state, SearchState):
            raise TypeError(f"state must be a SearchState, got {type(state).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        rng = random.Random(state.rng.randrange(2**31))
        self.last_stats = {"llm_calls": 0}
        intent = " ".join(protect.strip_keep_tags(state.intent).split())
        feasible = [t for t in reversed(state.history) if t.feasible]
        if self.positive == "intent":
            feasible = [t for t in feasible if t.prompt == intent]
        parents = [(t.prompt, t.negative) for t in feasible] or [(intent, None)]
        seen = {t.candidate for t in state.trials}
        out: list[Candidate] = []
        for attempt in range(20 * n):
            if len(out) >= n:
                break
            text, negative = parents[(len(out) + attempt // n) % len(parents)]
            terms = self._edit(_split(negative), rng)
            cand = Candidate(text, ", ".join(terms))
            if cand in seen or cand in out or ", ".join(terms) == (negative or ""):
                continue
            if state.screen is not None and state.screen(cand):
                continue
            out.append(cand)
        return out


class MixProposer(Configurable):
    """Several proposers share each iteration: proposer ``i`` is asked for about ``weights[i]``
    of the ``n`` candidates (in turn, the first ones get the remainder)."""

    name = "mix"

    def __init__(self, proposers: Sequence[Any], weights: Sequence[float] | None = None):
        if isinstance(proposers, (str, dict)) or len(proposers) < 1:
            raise ValueError("mix needs a list of proposers (objects or registry specs)")
        from mmopt import registry

        self.proposers = [registry.create("proposer", p, reuse=False) if isinstance(p, (str, dict)) else p
                          for p in proposers]
        weights = list(weights) if weights is not None else [1.0] * len(self.proposers)
        if len(weights) != len(self.proposers) or any(not isinstance(w, (int, float)) or w <= 0 for w in weights):
            raise ValueError(f"weights must be one positive number per proposer, got {weights!r}")
        self.weights = [float(w) for w in weights]
        self.name = "mix(" + ",".join(getattr(p, "name", "?") for p in self.proposers) + ")"
        self.register_config(proposers=self.proposers, weights=self.weights)
        self.last_stats: dict = {}

    def split(self, n: int) -> list[int]:
        total = sum(self.weights)
        shares = [int(n * w / total) for w in self.weights]
        for i in range(n - sum(shares)):
            shares[i % len(shares)] += 1
        return shares

    def propose(self, state: SearchState, n: int) -> list:
        out: list = []
        calls = 0
        for proposer, k in zip(self.proposers, self.split(n)):
            if k < 1:
                continue
            out += list(proposer.propose(state, k))
            stats = getattr(proposer, "last_stats", None)
            calls += int(stats.get("llm_calls", 0)) if isinstance(stats, dict) else 0
        self.last_stats = {"llm_calls": calls}
        return out


def from_name(rest: str = "", **kw: Any) -> NegativeProposer:
    """Registry factory: ``"negative"`` (shipped terms) or ``"negative:/path/terms.json"``."""
    if rest:
        kw.setdefault("vocabulary", rest)
    return NegativeProposer(**kw)


def raw_from_name(rest: str = "", **kw: Any) -> NegativeProposer:
    """Registry factory: ``"raw"``: no rewriting; only the negative prompt of the user's prompt is searched."""
    if rest:
        kw.setdefault("vocabulary", rest)
    return NegativeProposer(positive="intent", **kw)


def mix_from_name(rest: str = "", *, proposers: Sequence[Any] = (), **kw: Any) -> MixProposer:
    """Registry factory: ``{"name": "mix", "kwargs": {"proposers": ["edits", "negative"]}}``."""
    if rest:
        raise ValueError(f"mix takes its proposers as kwargs, not in the name: got 'mix:{rest}'")
    return MixProposer(proposers, **kw)
