"""Concept-level scores (in the spirit of "No Concept Left Behind"): global + per concept.

A rewriter can only fix what it is told is broken. This scorer reports a
global image-intent CLIPScore *and* one CLIPScore per concept of the intent
(the noun phrases of ``mmopt.scorers.decompose``), and names the weakest
concepts in its feedback.

``Score.value`` combines them (``combine``, on the CLIP scorer's scale, so
``value_range`` is the CLIP scorer's, ``(0, 2.5)`` by default):

* ``"global_min"`` (default): ``(global + min over concepts) / 2``. The min
  means a missing concept always costs: an image that nails two concepts and
  drops the third cannot hide behind a good global score.
* ``"global_mean"``: ``(global + mean over concepts) / 2``.
* ``"min"`` / ``"mean"``: the concepts alone.

Details: ``{"global", "concepts": {concept: score}, "min_concept", "mean_concept",
"weakest", "feedback", "decomposition", "decomposition_note"}``.

>>> scorer = create("scorer", "concepts:ViT-B-32/openai")          # doctest: +SKIP
>>> scorer.score(generations, "a red cat on a blue mat")[0].details["feedback"]   # doctest: +SKIP
'weakest concepts: a blue mat (0.31), a red cat (0.58)'
"""
from __future__ import annotations

from typing import Any, Sequence

from mmopt.types import Generation, Score

from .dcs import (clip_label, per_generation_cosines, resolve_clip, resolve_decomposer,
                  to_clip_score, weakest_feedback)
from .decompose import Decomposer
from .media import check_generations

__all__ = ["ConceptScorer", "COMBINATIONS", "from_name"]

COMBINATIONS = ("global_min", "global_mean", "min", "mean")


class ConceptScorer:
    """Global + per-concept CLIPScores of each generation against the intent.

    Args:
        clip: CLIP registry name or a loaded CLIP scorer (shared via the registry).
        llm: LLM, LLM registry name (``"smollm2"``) or ``None`` (rule-based concepts).
        decomposer: a ready ``Decomposer`` (overrides ``llm``; share one with ``dcs``).
        combine: how ``value`` is formed; one of ``COMBINATIONS`` (see module doc).
        k_weakest: how many weakest concepts the feedback names.
    """

    def __init__(self, clip: Any = "ViT-B-32/openai", *, llm: Any = None,
                 decomposer: Decomposer | None = None, cache=None, combine: str = "global_min",
                 k_weakest: int = 2, name: str | None = None):
        if combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}, got {combine!r}")
        if not isinstance(k_weakest, int) or k_weakest < 1:
            raise ValueError(f"k_weakest must be a positive int, got {k_weakest!r}")
        self.clip = resolve_clip(clip)
        self.decomposer = resolve_decomposer(llm, decomposer, cache)
        self.combine = combine
        self.k_weakest = k_weakest
        self.value_range = tuple(getattr(self.clip, "value_range", (0.0, 2.5)))
        self.name = name or f"concepts:{clip_label(clip, self.clip)}"

    def config(self) -> dict:
        return {"component": "mmopt.scorers.concepts.ConceptScorer", "clip": self.clip,
                "decomposer": self.decomposer, "combine": self.combine, "k_weakest": self.k_weakest}

    def _combine(self, global_score: float, concept_scores: list[float]) -> float:
        low, mean = min(concept_scores), sum(concept_scores) / len(concept_scores)
        return {"global_min": (global_score + low) / 2, "global_mean": (global_score + mean) / 2,
                "min": low, "mean": mean}[self.combine]

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One concept-level ``Score`` per generation."""
        decomposition = self.decomposer.decompose(intent)
        if not check_generations(generations):
            return []
        concepts = list(decomposition.phrases)
        # 1. one batch: every image x (intent + every concept)
        texts = [intent.strip(), *concepts]
        scores = to_clip_score(self.clip, per_generation_cosines(self.clip, generations, texts))
        # 2. combine and explain
        out = []
        for row in scores:
            global_score = float(row[0])
            per_concept = {c: float(v) for c, v in zip(concepts, row[1:])}
            values = list(per_concept.values())
            weakest, feedback = weakest_feedback(per_concept, self.k_weakest)
            out.append(Score(self.name, self._combine(global_score, values), {
                "global": global_score, "concepts": per_concept,
                "min_concept": min(values), "mean_concept": sum(values) / len(values),
                "combine": self.combine, "weakest": weakest, "feedback": feedback,
                "decomposition": decomposition.source, "decomposition_note": decomposition.note,
            }))
        return out


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kwargs) -> ConceptScorer:
    """Registry factory: ``"concepts:ViT-B-32/openai"``; kwargs ``llm=`` (``"run"``: the run's LLM),
    ``combine=``, ``k_weakest=``."""
    from mmopt.scorers.dcs import run_llm

    kwargs.setdefault("cache", getattr(context, "cache", None))
    return ConceptScorer(rest or "ViT-B-32/openai", llm=run_llm(llm, context), **kwargs)
