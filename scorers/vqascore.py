"""VQAScore (Lin et al., 2024): P("yes" | image, "Does this figure show '{text}'? ...").

The whole intent goes into one yes/no question; the score is the VQA
backend's P(yes) normalised over {yes, no}, in [0, 1]. Works with every
backend of :mod:`mmopt.scorers.vqa` (and any ``mmopt.types.VQAModel``).
"""
from __future__ import annotations

from typing import Any, Sequence

from mmopt.types import Generation, Score

from .media import check_generations, check_intent

__all__ = ["VQAScorer", "VQASCORE_QUESTION", "from_name"]

VQASCORE_QUESTION = "Does this figure show '{text}'? Please answer yes or no."


class VQAScorer:
    """VQAScore of each generation against the intent (Scorer protocol; range 0..1).

    ``question`` is the template (``{text}`` placeholder), by default the
    paper's. All generations go to ONE ``vqa.answer`` call.

    >>> scorer = VQAScorer(create("vqa", "hf-vlm:qwen2.5-vl-7b"))  # doctest: +SKIP
    >>> scorer.score(generations, "a red cat on a mat")[0].value  # doctest: +SKIP
    0.87
    """

    value_range = (0.0, 1.0)

    def __init__(self, vqa: Any, *, question: str = VQASCORE_QUESTION, name: str | None = None):
        if not callable(getattr(vqa, "answer", None)):
            raise TypeError(f"vqa must implement mmopt.types.VQAModel (.answer), got {type(vqa).__name__}")
        if not isinstance(question, str) or "{text}" not in question:
            raise ValueError(f"question must be a string with the placeholder '{{text}}', got {question!r}")
        self.vqa = vqa
        self.question = question
        self.name = name or f"vqascore:{getattr(vqa, 'name', type(vqa).__name__)}"

    def config(self) -> dict:
        return {"component": "mmopt.scorers.vqascore.VQAScorer", "vqa": self.vqa, "question": self.question}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        # 1. check inputs
        check_intent(intent)
        generations = check_generations(generations)
        if not generations:
            return []
        # 2. one question about the whole intent, one batched call
        question = self.question.format(text=" ".join(intent.split()))
        images = [g.media[len(g.media) // 2] if isinstance(g.media, (list, tuple)) else g.media
                  for g in generations]
        answers = self.vqa.answer(images, [question] * len(images))
        # 3. the score is P(yes); an unanswerable reply scores 0
        out = []
        for a in answers:
            p = 0.0 if a.answer == "unanswerable" else float(a.p_yes)
            out.append(Score(scorer=self.name, value=p,
                             details={"question": question, "answer": a.answer, "p_yes": p, "raw": a.raw}))
        return out


def from_name(rest: str, *, question: str = VQASCORE_QUESTION, **vqa_kwargs: Any) -> VQAScorer:
    """Registry factory: ``"vqascore:<vqa name or alias>"``, e.g. ``vqascore:qwen2.5-vl-7b``."""
    from mmopt import registry
    from mmopt.scorers.vqa import resolve_vqa_spec

    if not rest:
        raise ValueError("vqascore needs a VQA backend: 'vqascore:<vqa>', e.g. 'vqascore:qwen2.5-vl-7b'")
    vqa_name, alias_kwargs = resolve_vqa_spec(rest)
    vqa = registry.create("vqa", vqa_name, **{**alias_kwargs, **vqa_kwargs})
    return VQAScorer(vqa, question=question, name=f"vqascore:{rest}")
