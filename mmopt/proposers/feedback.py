"""What the scorers said about a trial, as concepts a proposer can act on.

DSG-style scorers record, per seed, every question with its semantic tuple
(``"entity - whole (circle)"``, ``"attribute - color (circle, red)"``,
``"relation - spatial (red circle, blue square, left of)"``,
``"other - count (red circles, ==2)"``) and whether it scored. This module
turns those records into *concepts* with a pass rate over a trial's seeds,
so the concept-level, rule-edit and textual-gradient proposers share one
reading of the feedback (and none re-parses scorer details its own way).

>>> t = Trial(1, 1, "p", 0.5, {}, details={"dsg": [
...     {"questions": [{"question": "Is there a circle?", "tuple": "entity - whole (circle)", "score": 1.0}]},
...     {"questions": [{"question": "Is there a circle?", "tuple": "entity - whole (circle)", "score": 0.0}]}]})
>>> c = concepts(t)[0]
>>> c.kind, c.args, c.rate
('entity', ('circle',), 0.5)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from mmopt.types import Trial

__all__ = ["Concept", "concepts", "weakest", "concept_table", "parse_tuple"]

_TUPLE = re.compile(r"^\s*([A-Za-z]+)\s*-\s*([A-Za-z ]+?)\s*\((.*)\)\s*$")


def parse_tuple(text: str) -> tuple[str, str, tuple[str, ...]]:
    """``"attribute - color (circle, red)"`` -> ``("attribute", "color", ("circle", "red"))``.

    An unreadable tuple gives ``("other", "", ())``.
    """
    m = _TUPLE.match(text or "")
    if not m:
        return "other", "", ()
    args = tuple(a.strip() for a in m.group(3).split(",") if a.strip())
    return m.group(1).lower(), m.group(2).strip().lower(), args


@dataclass(frozen=True)
class Concept:
    """One checked concept of the intent and how often a trial's images showed it.

    ``kind``: entity / attribute / relation / count / other; ``sub``: the tuple's
    sub-type (``color``, ``spatial``...); ``args``: the tuple's arguments;
    ``rate``: the fraction of seeds on which its question scored; ``seeds``: how many.
    """

    question: str
    kind: str
    sub: str
    args: tuple[str, ...]
    rate: float
    seeds: int

    @property
    def label(self) -> str:
        """A short name: "circle", "circle: red", "red circle left of blue square", "red circles: 2"."""
        if self.kind == "entity":
            return self.args[0] if self.args else self.question
        if self.kind == "attribute" and len(self.args) >= 2:
            return f"{self.args[0]}: {self.args[1]}"
        if self.kind == "relation" and len(self.args) >= 3:
            return f"{self.args[0]} {self.args[2]} {self.args[1]}"
        if self.kind == "count" and len(self.args) >= 2:
            return f"{self.args[0]}: {self.args[1].lstrip('=')}"
        return self.question


def concepts(trial: Trial) -> list[Concept]:
    """Every question any scorer asked about ``trial``'s images, as concepts with pass rates,
    in the order first asked."""
    tally: dict[str, list] = {}
    for per_seed in (trial.details or {}).values():
        for d in per_seed or []:
            if not isinstance(d, dict):
                continue
            for q in d.get("questions") or []:
                text = q.get("question")
                if not text:
                    continue
                row = tally.setdefault(text, [q.get("tuple", ""), 0, 0])
                row[1] += 1
                row[2] += float(q.get("score", 1.0 if q.get("answer") == "yes" else 0.0)) >= 1.0
    out = []
    for text, (tup, n, ok) in tally.items():
        kind, sub, args = parse_tuple(tup)
        if kind == "other" and sub == "count":
            kind = "count"
        out.append(Concept(text, kind, sub, args, ok / n if n else 0.0, n))
    return out


def weakest(trial: Trial, k: int = 3) -> list[Concept]:
    """The ``k`` concepts ``trial``'s images showed least often (only those that failed somewhere)."""
    failing = [c for c in concepts(trial) if c.rate < 1.0]
    return sorted(failing, key=lambda c: c.rate)[:k]


def concept_table(trials: Sequence[Trial]) -> dict[str, dict]:
    """Per concept (question): its pass rate in each trial, for a history of trials.

    ``{question: {"concept": Concept (from the first trial that has it), "rates": {index: rate}}}``
    """
    table: dict[str, dict] = {}
    for t in trials:
        for c in concepts(t):
            row = table.setdefault(c.question, {"concept": c, "rates": {}})
            row["rates"][t.index] = c.rate
    return table
