"""Draw ShapesWorld scenes with PIL.

Objects are drawn at 4x resolution and box-filtered down (anti-aliasing), on
a plain light-grey background. A scene is in unit coordinates, so one scene
renders at any size; ``render_caption`` lays out a caption's scene from a seed
and is deterministic per (caption, seed, size).
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from . import grammar as G
from .parse import scene_from_caption

#: Supersampling factor for anti-aliasing.
SUPERSAMPLE = 4


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw ``shape`` filling ``box`` = (x0, y0, x1, y1) in pixel coordinates.

    Triangles point up; a diamond touches the middle of each side of the box.
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {G.SHAPES}")


def _check_size(size) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 1024:
        raise ValueError(f"size must be an int in 16..1024 (pixels per side), got {size!r}")
    return size


def render(scene: G.Scene, size: int = 32, *, antialias: bool = True) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    >>> render(G.Scene((G.SceneObject("red", "circle", "large", 0.5, 0.5),)), 32).size
    (32, 32)
    """
    # 1. check inputs
    if not isinstance(scene, G.Scene):
        raise TypeError(f"scene must be a grammar.Scene, got {type(scene).__name__}")
    size = _check_size(size)
    k = SUPERSAMPLE if antialias else 1
    side = size * k
    # 2. draw every object in its bounding square on a large canvas
    img = Image.new("RGB", (side, side), G.BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        if o.colour not in G.COLOURS:
            raise ValueError(f"unknown colour {o.colour!r}; expected one of {tuple(G.COLOURS)}")
        half = o.side * side / 2
        cx, cy = o.x * side, o.y * side
        # PIL boxes include their last pixel, hence the -1
        draw_shape(draw, o.shape, (cx - half, cy - half, cx + half - 1, cy + half - 1), G.COLOURS[o.colour])
    # 3. box-filter down: each output pixel is the mean of its k x k block
    return img.resize((size, size), Image.BOX) if k > 1 else img


def render_caption(caption: str, seed: int, size: int = 32) -> Image.Image:
    """Render caption ``caption`` with layout jitter drawn from ``seed``.

    The same (caption, seed, size) always gives the same image.

    >>> render_caption("a red circle left of a blue square", seed=0).size
    (32, 32)
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    # seed the layout with caption and seed together so captions do not share layouts
    rng = random.Random(f"{seed}\x00{caption}")
    return render(scene_from_caption(caption, rng), size)


def render_scene_for_caption(caption: str, seed: int, size: int = 32) -> tuple[G.Scene, Image.Image]:
    """Like ``render_caption`` but also returns the scene (the exact ground truth)."""
    rng = random.Random(f"{seed}\x00{caption}")
    scene = scene_from_caption(caption, rng)
    return scene, render(scene, size)
