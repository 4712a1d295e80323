"""Objective: many scorers' judgements -> one number, constraints and feedback.

Each scorer documents a ``value_range``; the objective maps every scorer's
mean over seeds to [0, 1] with that range, takes the weighted mean, and checks
hard constraints. A scorer with weight 0 is still computed and may carry a
constraint (the drift guard usually does).

Constraints come in two forms:
  * ``min``: an absolute floor on a scorer's mean ("drift similarity >= 0.7");
  * ``max_drop``: how far a candidate may fall below the *original prompt's*
    value on that scorer ("an aesthetic gain may never buy an alignment
    loss" is ``Constraint("clip", max_drop=0.0)``).
A candidate that breaks a constraint is kept in the history (the rewriter
learns from it) but can never be returned as the best.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from mmopt.types import Score, Trial


@dataclass(frozen=True)
class Constraint:
    """A hard constraint on one scorer's mean value over the search seeds."""

    scorer: str
    min: float | None = None
    max_drop: float | None = None

    def __post_init__(self):
        if self.min is None and self.max_drop is None:
            raise ValueError(f"Constraint on {self.scorer!r} needs min= or max_drop=, got neither")
        if self.max_drop is not None and self.max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")

    def violation(self, value: float, baseline: float | None) -> str | None:
        """A message when ``value`` breaks the constraint, else None."""
        if self.min is not None and value < self.min:
            return f"{self.scorer}={value:.3f} < min {self.min:.3f}"
        if self.max_drop is not None and baseline is not None and value < baseline - self.max_drop - 1e-9:
            return f"{self.scorer}={value:.3f} fell below the original's {baseline:.3f} by more than {self.max_drop:.3f}"
        return None


@dataclass
class Evaluation:
    """One candidate's evaluation: what a Trial is made from."""

    objective: float
    means: dict[str, float]
    feasible: bool
    violations: list[str] = field(default_factory=list)
    feedback: str = ""
    details: dict = field(default_factory=dict)


class Objective:
    """Weighted, normalised combination of scorers with hard constraints.

    Args:
        weights: scorer name -> weight (>= 0). Scorers not named get weight 0.
        ranges: scorer name -> (low, high) used to normalise to [0, 1];
            defaults to each scorer's ``value_range``.
        constraints: hard constraints (see module docstring).

    >>> obj = Objective({"clip": 1.0}, ranges={"clip": (0.0, 2.5)})
    >>> ev = obj.evaluate({"clip": [Score("clip", 1.25), Score("clip", 2.5)]})
    >>> round(ev.objective, 3)
    0.75
    """

    def __init__(self, weights: Mapping[str, float], *, ranges: Mapping[str, tuple[float, float]] | None = None,
                 constraints: Iterable[Constraint] = ()):
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"weights must be a non-empty mapping of scorer name -> weight, got {weights!r}")
        for name, w in weights.items():
            if not isinstance(w, (int, float)) or math.isnan(w) or w < 0:
                raise ValueError(f"weight of scorer {name!r} must be a number >= 0, got {w!r}")
        if sum(weights.values()) <= 0:
            raise ValueError(f"at least one scorer needs a positive weight, got {dict(weights)}")
        self.weights = dict(weights)
        self.ranges = dict(ranges or {})
        for name, rng in self.ranges.items():
            lo, hi = rng
            if not hi > lo:
                raise ValueError(f"range of scorer {name!r} must have high > low, got {rng}")
        self.constraints = list(constraints)
        for c in self.constraints:
            if not isinstance(c, Constraint):
                raise TypeError(f"constraints must be Constraint objects, got {type(c).__name__}")

    @classmethod
    def for_scorers(cls, scorers: Sequence, weights: Mapping[str, float] | None = None,
                    constraints: Iterable[Constraint] = ()) -> "Objective":
        """Objective over ``scorers`` (objects with ``name`` and ``value_range``); equal weights by default."""
        names = [s.name for s in scorers]
        if weights is None:
            weights = {n: 1.0 for n in names}
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"weights name scorers that are not in use: {sorted(unknown)}; scorers: {names}")
        ranges = {s.name: tuple(s.value_range) for s in scorers}
        return cls(weights, ranges=ranges, constraints=constraints)

    def config(self) -> dict:
        """Weights, ranges and constraints: everything that turns scores into the objective."""
        return {"component": "mmopt.objective.Objective", "weights": dict(sorted(self.weights.items())),
                "ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
                "constraints": [{"scorer": c.scorer, "min": c.min, "max_drop": c.max_drop}
                                for c in self.constraints]}

    def normalise(self, scorer: str, value: float) -> float:
        lo, hi = self.ranges.get(scorer, (0.0, 1.0))
        return (value - lo) / (hi - lo)

    def evaluate(self, scores: Mapping[str, Sequence[Score]], baseline: Mapping[str, float] | None = None) -> Evaluation:
        """Combine per-scorer scores of one candidate (one Score per seed).

        ``baseline`` holds the original prompt's means, for ``max_drop`` constraints.
        """
        means: dict[str, float] = {}
        for name, lst in scores.items():
            vals = [float(s.value) for s in lst]
            if not vals:
                raise ValueError(f"scorer {name!r} returned no scores for a candidate")
            means[name] = sum(vals) / len(vals)
        missing = [n for n, w in self.weights.items() if w > 0 and n not in means]
        if missing:
            raise ValueError(f"objective weights scorers {missing} but got scores for {sorted(means)}")
        total_w = sum(w for n, w in self.weights.items() if w > 0)
        objective = sum(w * self.normalise(n, means[n]) for n, w in self.weights.items() if w > 0) / total_w
        violations = []
        for c in self.constraints:
            if c.scorer not in means:
                raise ValueError(f"constraint names scorer {c.scorer!r} that produced no scores")
            msg = c.violation(means[c.scorer], (baseline or {}).get(c.scorer))
            if msg:
                violations.append(msg)
        return Evaluation(
            objective=objective,
            means=means,
            feasible=not violations,
            violations=violations,
            feedback=assemble_feedback(scores, means, violations),
        )


def assemble_feedback(scores: Mapping[str, Sequence[Score]], means: Mapping[str, float],
                      violations: Sequence[str] = (), max_lines: int = 5) -> str:
    """Text a rewriter can act on: each scorer's mean and its most frequent remarks.

    Remarks come from ``Score.details["feedback"]`` (a string, or a list of
    strings such as failed DSG questions); a remark seen on several seeds is
    listed once with its count.
    """
    lines = []
    for name, lst in scores.items():
        counts: Counter = Counter()
        for s in lst:
            fb = s.details.get("feedback") if isinstance(s.details, dict) else None
            if isinstance(fb, str) and fb.strip():
                counts[fb.strip()] += 1
            elif isinstance(fb, (list, tuple)):
                counts.update(str(x).strip() for x in fb if str(x).strip())
        line = f"{name}: {means[name]:.3f}"
        if counts:
            remarks = [f"{text} ({n}/{len(lst)} seeds)" if n > 1 else text
                       for text, n in counts.most_common(max_lines)]
            line += " | " + "; ".join(remarks)
        lines.append(line)
    lines += [f"constraint broken: {v}" for v in violations]
    return "\n".join(lines)


def pareto_front(trials: Sequence[Trial], scorers: Sequence[str]) -> list[Trial]:
    """The trials no other trial dominates on ``scorers`` (higher is better on each).

    >>> a = Trial(0, 0, "a", 0, {"x": 1, "y": 0}); b = Trial(1, 0, "b", 0, {"x": 0, "y": 1})
    >>> c = Trial(2, 0, "c", 0, {"x": 0, "y": 0})
    >>> [t.prompt for t in pareto_front([a, b, c], ["x", "y"])]
    ['a', 'b']
    """
    if len(scorers) < 2:
        raise ValueError(f"a Pareto front needs two or more scorers, got {list(scorers)}")
    front = []
    for t in trials:
        vt = [t.scores[s] for s in scorers]
        dominated = False
        for u in trials:
            if u is t:
                continue
            vu = [u.scores[s] for s in scorers]
            if all(a >= b for a, b in zip(vu, vt)) and any(a > b for a, b in zip(vu, vt)):
                dominated = True
                break
        if not dominated:
            front.append(t)
    return front
