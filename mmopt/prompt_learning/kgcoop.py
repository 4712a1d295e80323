"""KgCoOp: CoOp kept close to the hand-written prompt (Yao et al., "Visual-Language Prompt Tuning
with Knowledge-guided Context Optimization", CVPR 2023).

CoOp's learned context drifts away from what CLIP knows, and accuracy on
classes it was not trained on drops below zero-shot. KgCoOp adds the distance
between each class's learned text feature and the feature of the hand-written
prompt (``"a photo of a {}."``) to the loss::

    loss = cross_entropy + w * (1 - mean_c cos(t_c(learned), t_c(hand-written)))

with ``w = 8.0`` by default (the paper's). No extra parameters, no extra cost
at test time: the cheapest known fix for CoOp's loss on new classes.

>>> KgCoOp("offline:clip", init="a photo of a", hand_template="a photo of a {}.").fit(train)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmopt.prompt_learning.adapter import PromptBatch, check_template
from mmopt.prompt_learning.coop import CoOp


class KgCoOp(CoOp):
    """CoOp plus the knowledge-guided regulariser. Arguments as :class:`CoOp`, plus:

    Args:
        hand_template: the hand-written prompt whose text features anchor the context.
        weight: the regulariser's weight ``w`` (8.0 in the paper).

    Defaults follow the paper: 4 context tokens from "a photo of a".
    """

    name = "kgcoop"

    def __init__(self, clip: Any = "offline:clip", *, init: str | None = "a photo of a",
                 hand_template: str = "a photo of a {}.", weight: float = 8.0, **kwargs: Any):
        check_template(hand_template)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"weight must be a number >= 0, got {weight!r}")
        self.hand_template = hand_template
        self.weight = float(weight)
        super().__init__(clip, init=init, **kwargs)
        self._anchor: torch.Tensor | None = None

    def _settings(self) -> dict:
        return {**super()._settings(), "hand_template": self.hand_template, "weight": self.weight}

    def _init_extra(self, gen: torch.Generator, prompts: PromptBatch) -> list:
        # the anchor: hand-written prompt features of the training classes (fixed)
        self._anchor = self.adapter.template_features(self.hand_template, prompts.classnames)
        return []

    def _loss(self, feats, labels, prompts, ctx) -> torch.Tensor:
        text = self.adapter.text_features(prompts, ctx)
        ce = F.cross_entropy(self.adapter.logit_scale * feats @ text.T, labels)
        distance = 1.0 - F.cosine_similarity(text, self._anchor, dim=-1).mean()
        return ce + self.weight * distance


__all__ = ["KgCoOp"]
