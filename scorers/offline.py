"""Offline scorers for ShapesWorld: the shipped tiny CLIP and detector-backed DSG.

* ``"offline:clip"``: CLIPScore with mmopt's own CLIP (``mmopt/assets/shapesworld/clip``),
  loaded through the normal local-directory path of ``"clip:<dir>"``.
* ``"offline:dsg"``: DSG whose questions come from the ShapesWorld caption parser
  (no LLM needed) and whose answers come from the detector VQA (``"vqa:shapes"``);
  every question about a ShapesWorld caption is answered exactly on renders.
* ``"offline:dsg-video"``: DSG on ShapesWorld clips: questions about the object and its
  motion from the video caption parser, answered on sampled frames by the detector's
  tracker (``"vqa:shapes-video"``).

>>> from mmopt.registry import create
>>> create("scorer", "offline:dsg").score(generations, "two red circles")   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any


def from_name(rest: str, **kwargs: Any):
    """Registry factory for ``"offline:clip"`` and ``"offline:dsg"``."""
    if rest == "clip":
        from mmopt.pipelines.offline import shipped_model_dir
        from mmopt.scorers.clip import from_name as clip_from_name

        scorer = clip_from_name(str(shipped_model_dir("clip")), **kwargs)
        scorer.name = "offline:clip"  # scores and objective weights use the registry name
        return scorer
    if rest == "dsg":
        from mmopt import registry
        from mmopt.scorers.dsg import DSGScorer
        from mmopt.shapesworld.parse import dsg_questions

        # questions= (a mapping prompt -> questions, e.g. a batch's GenEval annotations) replaces the parser
        questions = kwargs.pop("questions", None) or dsg_questions
        return DSGScorer(registry.create("vqa", "shapes"), questions=questions, name="offline:dsg", **kwargs)
    if rest == "dsg-video":
        from mmopt import registry
        from mmopt.scorers.dsg import DSGScorer
        from mmopt.shapesworld.video import video_dsg_questions

        return DSGScorer(registry.create("vqa", "shapes-video"), questions=video_dsg_questions,
                         name="offline:dsg-video", **kwargs)
    raise ValueError(f"offline scorers are 'offline:clip', 'offline:dsg' and 'offline:dsg-video', "
                     f"got 'offline:{rest}'")
