"""Image-to-prompt seeding: the first proposal starts from a prompt inverted from a reference image.

A user who has a picture of what they want can start the search there: the
reference image is inverted into a prompt (by any callable ``image -> text``:
PEZ hard-prompt inversion where the soft-prompt tools provide it, or
:func:`clip_retrieval`, which picks the caption of a bank that a CLIP model
finds closest to the image), that prompt is the first candidate of the first
proposal, and the wrapped proposer does the rest (it sees the inverted prompt
in the history once it is scored). The inverted text is part of the
proposer's identity: a different image gives a different run.

>>> seeded = ImageSeeded("edits", prompt="a red disc left of a blue box")     # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from mmopt.component import Configurable
from mmopt.types import Candidate, Generation, SearchState

__all__ = ["ImageSeeded", "clip_retrieval", "from_name"]


def clip_retrieval(clip: Any, captions: Sequence[str]) -> Callable[[Any], str]:
    """An inverter: the caption of ``captions`` that the CLIP scorer ``clip`` rates highest for an image.

    ``clip`` is a CLIPScore scorer (e.g. ``create("scorer", "offline:clip")``); ties keep the
    earlier caption.
    """
    captions = [c for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise ValueError("clip_retrieval needs a non-empty list of caption strings")
    if not callable(getattr(clip, "score", None)):
        raise TypeError(f"clip must be a scorer with score(generations, intent), got {type(clip).__name__}")

    def invert(image: Any) -> str:
        values = [clip.score([Generation(c, 0, image)], c)[0].value for c in captions]
        return captions[max(range(len(captions)), key=lambda i: (values[i], -i))]

    invert.__qualname__ = "clip_retrieval"
    return invert


class ImageSeeded(Configurable):
    """``proposer``, whose first proposal starts with the prompt inverted from ``image``.

    Give ``prompt`` (inverted beforehand) or ``image`` (a PIL image or a path) with
    ``invert`` (a callable ``image -> prompt``).
    """

    name = "seeded"

    def __init__(self, proposer: Any, *, prompt: str | None = None, image: Any = None,
                 invert: Callable[[Any], str] | None = None):
        from mmopt import registry

        if isinstance(proposer, (str, dict)):
            proposer = registry.create("proposer", proposer, reuse=False)
        if not callable(getattr(proposer, "propose", None)):
            raise TypeError(f"proposer must have propose(state, n), got {type(proposer).__name__}")
        if prompt is None:
            if image is None or not callable(invert):
                raise ValueError("ImageSeeded needs prompt= (already inverted) or image= with invert= (image -> prompt)")
            if isinstance(image, str):
                from PIL import Image

                image = Image.open(image).convert("RGB")
            prompt = invert(image)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the inverted prompt must be a non-empty string, got {prompt!r}")
        self.inner = proposer
        self.prompt = " ".join(prompt.split())
        self.name = f"seeded({getattr(proposer, 'name', '?')})"
        self.register_config(proposer=proposer, prompt=self.prompt)
        self.last_stats: dict = {}

    def propose(self, state: SearchState, n: int) -> list:
        first = not any(t.iteration > 0 for t in state.trials)
        out: list = []
        if first and self.prompt not in state.seen_prompts():
            out.append(Candidate(self.prompt))
        if len(out) < n:
            out += list(self.inner.propose(state, n - len(out)))
        inner = dict(getattr(self.inner, "last_stats", None) or {})
        inner.setdefault("llm_calls", 0 if not hasattr(self.inner, "llm") else 1)
        self.last_stats = {**inner, "seeded": bool(first)}
        return out


def from_name(rest: str = "", *, proposer: Any = "edits", prompt: str | None = None, image: str | None = None,
              clip: Any = None, captions: Sequence[str] | None = None, **kw: Any) -> ImageSeeded:
    """Registry factory: ``{"name": "seeded", "kwargs": {"proposer": "edits", "image": "ref.png",
    "clip": "offline:clip", "captions": [...]}}`` or ``{"kwargs": {"prompt": "..."}}``."""
    from mmopt import registry

    if rest:
        raise ValueError(f"seeded takes its settings as kwargs, not in the name: got 'seeded:{rest}'")
    invert = None
    if prompt is None and image is not None:
        if clip is None or not captions:
            raise ValueError("seeded with an image needs clip= (a CLIP scorer spec) and captions= to retrieve from")
        scorer = registry.create("scorer", clip) if isinstance(clip, (str, dict)) else clip
        invert = clip_retrieval(scorer, captions)
    return ImageSeeded(proposer, prompt=prompt, image=image, invert=invert, **kw)
