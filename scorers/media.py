"""Checking and flattening the media of generations for image scorers.

Image scorers work on flat batches of RGB ``PIL.Image``s. A video generation
carries a list of frames; its score is the mean over its frames. These helpers
do the checking (bad input gets a clear error) and the bookkeeping.

>>> from PIL import Image
>>> from mmopt.types import Generation
>>> gens = [Generation("p", 0, Image.new("L", (8, 8))),
...         Generation("p", 1, [Image.new("RGB", (8, 8))] * 2)]
>>> images, owner = flatten_media(gens)
>>> [im.mode for im in images], owner
(['RGB', 'RGB', 'RGB'], [0, 1, 1])
>>> mean_per_generation([1.0, 2.0, 4.0], owner, 2)
[1.0, 3.0]
"""
from __future__ import annotations

from typing import Any, Sequence

from mmopt.types import Generation

__all__ = ["check_intent", "check_generations", "as_rgb", "flatten_media", "mean_per_generation"]


def check_intent(intent: Any) -> str:
    """``intent`` unchanged, or ``ValueError`` when it is not a non-empty string."""
    if not isinstance(intent, str) or not intent.strip():
        raise ValueError(f"intent must be a non-empty string, got {intent!r}")
    return intent


def check_generations(generations: Any) -> list[Generation]:
    """``generations`` as a list, or ``TypeError`` naming what was received."""
    if isinstance(generations, (str, bytes)) or not isinstance(generations, Sequence):
        raise TypeError(f"generations must be a sequence of Generation, got {type(generations).__name__}")
    for i, g in enumerate(generations):
        if not isinstance(g, Generation):
            raise TypeError(f"generations[{i}] must be a Generation, got {type(g).__name__}")
    return list(generations)


def as_rgb(image: Any, where: str = "image"):
    """An RGB copy of a PIL image (L, RGBA, P, ... converted); errors for non-images and empty ones."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"{where} must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where} is empty ({image.width}x{image.height}); expected a non-empty image")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency on white, as a viewer would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def flatten_media(generations: Sequence[Generation]):
    """All images of ``generations`` (frames of a video in order) and the generation index of each.

    Returns ``(images, owner)`` with ``owner[k]`` the index of the generation image ``k`` came from.
    """
    images, owner = [], []
    for i, g in enumerate(check_generations(generations)):
        media = g.media
        frames = list(media) if isinstance(media, (list, tuple)) else [media]
        if not frames:
            raise ValueError(f"generations[{i}].media is an empty frame list; expected an image or frames")
        for j, frame in enumerate(frames):
            where = f"generations[{i}].media" + (f"[{j}]" if isinstance(media, (list, tuple)) else "")
            images.append(as_rgb(frame, where))
            owner.append(i)
    return images, owner


def mean_per_generation(values: Sequence[float], owner: Sequence[int], n: int) -> list[float]:
    """Average per-image ``values`` back to one value per generation (frames -> video)."""
    sums, counts = [0.0] * n, [0] * n
    for v, i in zip(values, owner):
        sums[i] += float(v)
        counts[i] += 1
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]
