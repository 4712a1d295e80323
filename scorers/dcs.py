"""Decomposed CLIPScore (dCS, as used by OPT2I): CLIPScore per noun phrase, averaged.

A single CLIPScore of a long prompt is dominated by its most salient part; an
image that drops "a blue mat" from "a red cat on a blue mat" barely loses.
dCS splits the intent into noun phrases (``mmopt.scorers.decompose``: an LLM
when given, rules otherwise), scores every image against every phrase with
CLIP, and takes the mean over phrases. The per-phrase scores tell a rewriter
which concepts are missing.

``Score.value`` = mean over phrases of CLIPScore(image, phrase), on the CLIP
scorer's scale (``value_range`` is the CLIP scorer's). Details:
``{"phrases": {phrase: score}, "weakest": [...], "feedback": "weakest concepts: ...",
"decomposition": "llm" | "rules" | "whole", "decomposition_note": ...}``.

>>> dcs = create("scorer", "dcs:ViT-B-32/openai", llm="smollm2")   # doctest: +SKIP
>>> dcs.score(generations, "a red cat on a blue mat")[0].details["phrases"]  # doctest: +SKIP
{'a red cat': 0.71, 'a blue mat': 0.42}
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from mmopt.types import Generation, Score

from .decompose import Decomposer
from .media import check_generations, flatten_media

__all__ = ["DecomposedCLIPScore", "resolve_clip", "clip_label", "resolve_decomposer", "clip_cosines",
           "to_clip_score", "per_generation_cosines",
           "weakest_feedback", "from_name"]


def resolve_clip(clip: Any):
    """A CLIP scorer: given one (anything with ``text_image_similarity``), or built via the registry."""
    if hasattr(clip, "text_image_similarity") or hasattr(clip, "encode_images"):
        return clip
    if isinstance(clip, str) and clip.strip():
        from mmopt import registry

        return registry.create("scorer", clip if clip.startswith("clip:") else f"clip:{clip}")
    raise TypeError(f"clip must be a CLIP registry name or a CLIP scorer, got {clip!r}")


def clip_label(spec: Any, clip: Any) -> str:
    """The CLIP part of a scorer name: ``"ViT-B-32/openai"`` for spec or loaded model."""
    label = spec if isinstance(spec, str) else getattr(clip, "model_name", getattr(clip, "name", "clip"))
    label = str(label)
    return label[len("clip:"):] if label.startswith("clip:") else label


def resolve_decomposer(llm: Any = None, decomposer: Decomposer | None = None, cache=None) -> Decomposer:
    """A ``Decomposer`` from an LLM object, an LLM registry name (``"smollm2"``) or ``None`` (rules)."""
    if decomposer is not None:
        if not isinstance(decomposer, Decomposer):
            raise TypeError(f"decomposer must be a Decomposer, got {type(decomposer).__name__}")
        return decomposer
    if isinstance(llm, str):
        from mmopt import registry

        llm = registry.create("llm", llm)
    return Decomposer(llm, cache=cache)


@torch.no_grad()
def clip_cosines(clip: Any, images: list, texts: list[str]) -> torch.Tensor:
    """Cosines of every image against every text, shape ``(len(images), len(texts))``.

    Uses the CLIP scorer's ``text_image_similarity`` (its text embeddings are
    cached, so an intent's phrases are encoded once per process).
    """
    sim = torch.as_tensor(clip.text_image_similarity(images, texts), dtype=torch.float32).cpu()
    if sim.shape != (len(images), len(texts)):
        raise ValueError(f"CLIP similarity has shape {tuple(sim.shape)}, expected "
                         f"({len(images)}, {len(texts)})")
    return sim


def to_clip_score(clip: Any, cosine: torch.Tensor) -> torch.Tensor:
    """CLIPScore on the CLIP scorer's own scale (``w * max(cos, 0)``, w = 2.5 by default)."""
    convert = getattr(clip, "clip_score_from_cosine", None)
    return convert(cosine) if callable(convert) else 2.5 * cosine.clamp(min=0)


def per_generation_cosines(clip: Any, generations: Sequence[Generation],
                           texts: list[str]) -> torch.Tensor:
    """Cosines ``(len(generations), len(texts))``, averaged over frames for a video."""
    images, owner = flatten_media(generations)
    sim = clip_cosines(clip, images, texts)
    owner_t = torch.tensor(owner)
    return torch.stack([sim[owner_t == i].mean(0) for i in range(len(generations))])


def weakest_feedback(per_concept: dict[str, float], k: int = 2) -> tuple[list[str], str]:
    """The ``k`` lowest-scoring concepts and a sentence a rewriter can act on."""
    ranked = sorted(per_concept, key=lambda c: per_concept[c])
    weakest = ranked[:k] if len(ranked) > 1 else ranked
    text = "weakest concepts: " + ", ".join(f"{c} ({per_concept[c]:.2f})" for c in weakest)
    return weakest, text


class DecomposedCLIPScore:
    """dCS: mean CLIPScore over the intent's noun phrases, with per-phrase details.

    Args:
        clip: CLIP registry name (``"ViT-B-32/openai"``, local dir, ``hf-hub:...``)
            or a loaded CLIP scorer; shared through the registry so it loads once.
        llm: an LLM, an LLM registry name (``"smollm2"``) or ``None`` for the
            rule-based splitter.
        decomposer: a ready ``Decomposer`` (overrides ``llm``), e.g. to share its cache.
        k_weakest: how many weakest phrases the feedback names.
    """

    def __init__(self, clip: Any = "ViT-B-32/openai", *, llm: Any = None,
                 decomposer: Decomposer | None = None, cache=None, k_weakest: int = 2,
                 name: str | None = None):
        if not isinstance(k_weakest, int) or k_weakest < 1:
            raise ValueError(f"k_weakest must be a positive int, got {k_weakest!r}")
        self.clip = resolve_clip(clip)
        self.decomposer = resolve_decomposer(llm, decomposer, cache)
        self.k_weakest = k_weakest
        self.value_range = tuple(getattr(self.clip, "value_range", (0.0, 1.0)))
        self.name = name or f"dcs:{clip_label(clip, self.clip)}"

    def config(self) -> dict:
        return {"component": "mmopt.scorers.dcs.DecomposedCLIPScore", "clip": self.clip,
                "decomposer": self.decomposer, "k_weakest": self.k_weakest}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One dCS per generation (video: phrase scores averaged over frames first)."""
        decomposition = self.decomposer.decompose(intent)
        if not check_generations(generations):
            return []
        phrases = list(decomposition.phrases)
        # one batch: every image x every phrase
        clip_scores = to_clip_score(self.clip, per_generation_cosines(self.clip, generations, phrases))
        out = []
        for per_phrase in clip_scores:
            scores = {p: float(v) for p, v in zip(phrases, per_phrase)}
            weakest, feedback = weakest_feedback(scores, self.k_weakest)
            out.append(Score(self.name, float(per_phrase.mean()), {
                "phrases": scores, "weakest": weakest, "feedback": feedback,
                "decomposition": decomposition.source,
                "decomposition_note": decomposition.note,
            }))
        return out


def run_llm(llm: Any, context: Any) -> Any:
    """``llm="run"`` means the run's LLM (from the registry's run context)."""
    if llm == "run":
        return context.get_llm("the concept decomposition (llm='run')")
    return llm


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kwargs) -> DecomposedCLIPScore:
    """Registry factory: ``"dcs:ViT-B-32/openai"`` (any CLIP name); kwargs ``llm=`` (an LLM, a
    registry name, or ``"run"`` for the run's LLM; default: rule-based phrases), ``k_weakest=``."""
    kwargs.setdefault("cache", getattr(context, "cache", None))
    return DecomposedCLIPScore(rest or "ViT-B-32/openai", llm=run_llm(llm, context), **kwargs)
