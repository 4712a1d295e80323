"""Human feedback as a scorer: the user's pairwise picks and thumbs, stored with the run.

The studio asks "which of these two is better?" (or thumbs up/down on one
candidate). Those judgements enter the objective like any other scorer, at the
weight the user sets (PROMST / "Prompt Optimization with Human Feedback" use
them the same way: a preference model over prompts steering the search).

The model is Bradley-Terry: every prompt text has a strength fitted to the
picks (a thumb up is a win, a thumb down a loss, against a neutral reference),
with one virtual draw against the reference so that an unjudged prompt scores
exactly 0.5 and a single pick moves it only part of the way. A generation's
value is its prompt's probability of beating the reference, in [0, 1].

Picks are the scorer's configuration (``human:`` with ``picks=[...]``), so its
identity changes with every new pick: scores are recomputed for the new picks
(cheap: no image is re-rendered), nothing stale comes from the cache.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from mmopt.component import Configurable
from mmopt.types import Generation, Score

REFERENCE = "\x00reference"
FIT_ITERATIONS = 200


def _check_pick(p: Any, i: int) -> dict:
    if not isinstance(p, dict):
        raise ValueError(f"pick {i} must be an object, got {type(p).__name__}")
    if {"winner", "loser"} <= set(p):
        if not (isinstance(p["winner"], str) and isinstance(p["loser"], str)) or p["winner"] == p["loser"]:
            raise ValueError(f"pick {i} needs two different prompt texts as winner and loser, got {p!r}")
        return {"winner": p["winner"], "loser": p["loser"]}
    if {"prompt", "vote"} <= set(p):
        if not isinstance(p["prompt"], str) or p["vote"] not in (1, -1):
            raise ValueError(f"pick {i}: a vote is {{'prompt': text, 'vote': 1 or -1}}, got {p!r}")
        return {"prompt": p["prompt"], "vote": int(p["vote"])}
    raise ValueError(f"pick {i} must be {{'winner', 'loser'}} or {{'prompt', 'vote'}}, got {p!r}")


def bradley_terry(picks: Sequence[dict], iterations: int = FIT_ITERATIONS) -> dict[str, float]:
    """Strengths (reference = 1) fitted by the MM algorithm; each prompt also gets one draw
    (half a win, half a loss) against the reference as a prior.

    >>> s = bradley_terry([{"winner": "a", "loser": "b"}])
    >>> s["a"] > 1.0 > s["b"]
    True
    """
    games: list[tuple[str, str]] = []  # (winner, loser)
    for p in picks:
        if "winner" in p:
            games.append((p["winner"], p["loser"]))
        else:
            games.append((p["prompt"], REFERENCE) if p["vote"] > 0 else (REFERENCE, p["prompt"]))
    players = sorted({x for g in games for x in g} - {REFERENCE})
    wins = {x: 0.5 for x in players}  # the prior draw
    pairs: dict[tuple[str, str], float] = {}
    for w, l in games:
        if w != REFERENCE:
            wins[w] += 1.0
        key = tuple(sorted((w, l)))
        pairs[key] = pairs.get(key, 0.0) + 1.0
    for x in players:  # the prior: one game against the reference
        key = tuple(sorted((x, REFERENCE)))
        pairs[key] = pairs.get(key, 0.0) + 1.0
    s = {x: 1.0 for x in players}
    s[REFERENCE] = 1.0
    for _ in range(iterations):
        new = {}
        for x in players:
            denom = sum(n / (s[a] + s[b]) for (a, b), n in pairs.items() if x in (a, b))
            new[x] = wins[x] / denom if denom > 0 else s[x]
        s.update(new)
    return {x: s[x] for x in players}


class HumanPreferenceScorer(Configurable):
    """Scores each generation by its prompt's Bradley-Terry win probability (range 0..1)."""

    value_range = (0.0, 1.0)

    def __init__(self, picks: Sequence[dict] = (), *, name: str = "human"):
        self.picks = [_check_pick(p, i) for i, p in enumerate(picks)]
        self.name = name
        strengths = bradley_terry(self.picks)
        self._p = {x: v / (v + 1.0) for x, v in strengths.items()}
        self.register_config(picks=self.picks)

    def value_for(self, prompt: str) -> float:
        return self._p.get(prompt, 0.5)

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        out = []
        for g in generations:
            v = self.value_for(g.candidate.text)
            n = sum(1 for p in self.picks if g.candidate.text in (p.get("winner"), p.get("loser"), p.get("prompt")))
            out.append(Score(self.name, v, {"judgements": n, "feedback": "" if n == 0 or not math.isfinite(v) else
                                            f"people preferred this prompt with probability {v:.2f}"}))
        return out


def from_name(rest: str = "", *, picks: Sequence[dict] = ()) -> HumanPreferenceScorer:
    """Registry factory: ``{"name": "human", "kwargs": {"picks": [{"winner": "...", "loser": "..."}]}}``."""
    return HumanPreferenceScorer(picks, name="human" if not rest else f"human:{rest}")
