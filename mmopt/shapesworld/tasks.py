"""A small suite of classification tasks rendered from ShapesWorld, where prompt learning can show.

The shipped ShapesWorld CLIP already reaches 0.958 zero-shot on single-object
colour x shape renders, so the suite adds harder questions and harder images:

* ``colour_shape``: one object; 24 classes (6 colours x 4 shapes), e.g. "red circle".
* ``count``: one to four objects of one colour and shape; 4 classes ("two objects").
* ``relation``: a circle and a square; 4 classes by where the circle is
  ("circle to the left of a square", ... "above", "below").

Every task has three splits, each a deterministic function of its seed:

* ``train``: the pool few-shot draws come from (draw ``d`` renders with its own seed);
* ``test``: in distribution (the grey background, the two sizes and the clean
  renders of the training captions);
* ``shift``: the same classes under a shift no training image has: a coloured
  or dark background from a palette never used, pixel noise, blur, object
  sizes outside the two trained ones.

Base-to-new: the first half of the class list is ``base`` (trained on), the
second half ``new`` (never seen by a learner), as in CoCoOp's protocol; each is
evaluated among its own classes only.

>>> task = get_task("count")
>>> task.classnames
('one object', 'two objects', 'three objects', 'four objects')
>>> len(task.images("test", per_class=2).labels)
8
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import grammar as G
from ..prompt_learning.data import ImageSet, base_new_split
from .render import SUPERSAMPLE, draw_shape

#: Canvas side (pixels) of every task image: the shipped CLIP's input size.
IMAGE_SIZE = 64
#: Backgrounds of the shifted split: tinted or darker greys, none the training grey (235, 235, 235).
SHIFT_BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (225, 225, 205), (210, 222, 235), (215, 235, 215), (235, 215, 225), (200, 200, 200),
)
#: Object sides (fraction of the canvas) of the shifted split: outside the trained 0.22 / 0.34.
SHIFT_SIDES = (0.16, 0.18, 0.40, 0.44)
#: Standard deviation of the shifted split's pixel noise (0-255 scale) and its blur radius.
SHIFT_NOISE = 18.0
SHIFT_BLUR = 1.0
SPLITS = ("train", "test", "shift")
#: Seeds of the evaluation splits (the train pool is seeded per few-shot draw).
SPLIT_SEEDS = {"test": 1_000_003, "shift": 2_000_003}

NUMBER_CLASSES = ("one object", "two objects", "three objects", "four objects")
RELATION_CLASSES = tuple(f"circle {G.RELATION_PHRASES[r][0]} a square" for r in G.RELATIONS)


@dataclass(frozen=True)
class Obj:
    """One object to draw: colour, shape, side (fraction of the canvas), centre (unit coordinates)."""

    colour: str
    shape: str
    side: float
    x: float
    y: float


def draw(objects: list[Obj], *, size: int = IMAGE_SIZE, background=G.BACKGROUND, noise: float = 0.0,
         blur: float = 0.0, rng: random.Random | None = None) -> Image.Image:
    """Draw ``objects`` like the ShapesWorld renderer (4x supersampled), then add the shift's
    noise and blur. ``rng`` seeds the noise (required when ``noise > 0``)."""
    side = size * SUPERSAMPLE
    img = Image.new("RGB", (side, side), tuple(background))
    pen = ImageDraw.Draw(img)
    for o in objects:
        half = o.side * side / 2
        cx, cy = o.x * side, o.y * side
        draw_shape(pen, o.shape, (cx - half, cy - half, cx + half - 1, cy + half - 1), G.COLOURS[o.colour])
    img = img.resize((size, size), Image.BOX)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if noise > 0:
        if rng is None:
            raise ValueError("draw(noise > 0) needs an rng for the noise")
        gen = np.random.default_rng(rng.randrange(2**32))
        pixels = np.asarray(img, dtype=np.float32) + gen.normal(0.0, noise, (size, size, 3))
        img = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return img


def _place(sides: list[float], rng: random.Random, ok: Callable[[list[tuple[float, float]]], bool] = lambda _: True,
           tries: int = 2000) -> list[tuple[float, float]]:
    """Centres for objects of ``sides`` that do not overlap (the grammar's gap) and pass ``ok``."""
    for _ in range(tries):
        centres: list[tuple[float, float]] = []
        for s in sides:
            half = s / 2 + G.BORDER
            for _ in range(60):
                c = (rng.uniform(half, 1 - half), rng.uniform(half, 1 - half))
                if all(abs(c[0] - p[0]) >= (s + q) / 2 + G.GAP or abs(c[1] - p[1]) >= (s + q) / 2 + G.GAP
                       for p, q in zip(centres, sides)):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == len(sides) and ok(centres):
            return centres
    raise ValueError(f"could not place {len(sides)} objects of sides {sides}")


@dataclass(frozen=True)
class Task:
    """One classification task of the suite: its classes, hand-written prompt and renderer.

    ``render(label, rng, shifted)`` draws one image of class ``label``;
    ``hand_template`` is the zero-shot prompt (``"{}"`` is the class name);
    ``flip_safe`` says whether a horizontal flip keeps the label (not for relations).
    """

    name: str
    classnames: tuple[str, ...]
    hand_template: str
    render: Callable[[int, random.Random, bool], Image.Image]
    flip_safe: bool = True

    @property
    def base(self) -> tuple[int, ...]:
        """The first half of the classes (trained on in base-to-new)."""
        return base_new_split(self.classnames)[0]

    @property
    def new(self) -> tuple[int, ...]:
        """The second half (never seen by a learner in base-to-new)."""
        return base_new_split(self.classnames)[1]

    def images(self, split: str, per_class: int, seed: int | None = None, classes=None) -> ImageSet:
        """``per_class`` images of every class (or of ``classes``) from ``split``.

        ``seed``: the draw (required for ``train``; the evaluation splits have fixed
        seeds, so every method is tested on the same images).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class must be an int >= 1, got {per_class!r}")
        if split == "train" and seed is None:
            raise ValueError("the train split needs the few-shot draw's seed")
        seed = SPLIT_SEEDS[split] if seed is None else seed
        classes = tuple(range(len(self.classnames))) if classes is None else tuple(classes)
        images, labels = [], []
        for c in classes:
            # one RNG per (task, split, seed, class): adding classes never changes the others' images
            rng = random.Random(f"{self.name}/{split}/{seed}/{c}")
            for _ in range(per_class):
                images.append(self.render(c, rng, split == "shift"))
                labels.append(c)
        return ImageSet(images, labels, self.classnames,
                        {"task": self.name, "split": split, "seed": seed, "per_class": per_class})


def _shift(rng: random.Random, shifted: bool) -> dict:
    if not shifted:
        return {}
    return {"background": rng.choice(SHIFT_BACKGROUNDS), "noise": SHIFT_NOISE,
            "blur": SHIFT_BLUR if rng.random() < 0.5 else 0.0, "rng": rng}


def _side(rng: random.Random, shifted: bool, small_only: bool = False) -> float:
    if shifted:
        return rng.choice(SHIFT_SIDES[:2] if small_only else SHIFT_SIDES)
    return G.SIZE_FRACTION["small"] if small_only else G.SIZE_FRACTION[rng.choice(G.SIZES)]


COLOUR_SHAPE_CLASSES = tuple(f"{c} {s}" for c in G.COLOURS for s in G.SHAPES)


def _render_colour_shape(label: int, rng: random.Random, shifted: bool) -> Image.Image:
    colour, shape = COLOUR_SHAPE_CLASSES[label].split()
    side = _side(rng, shifted)
    (x, y), = _place([side], rng)
    return draw([Obj(colour, shape, side, x, y)], **_shift(rng, shifted))


def _render_count(label: int, rng: random.Random, shifted: bool) -> Image.Image:
    n = label + 1
    colour, shape = rng.choice(list(G.COLOURS)), rng.choice(G.SHAPES)
    # the shift's largest sides fit one object only: small ones from two on
    side = _side(rng, shifted, small_only=n >= 2)
    centres = _place([side] * n, rng)
    return draw([Obj(colour, shape, side, x, y) for x, y in centres], **_shift(rng, shifted))


def _render_relation(label: int, rng: random.Random, shifted: bool) -> Image.Image:
    relation = G.RELATIONS[label]
    c1, c2 = rng.sample(list(G.COLOURS), 2)
    # at most one of the shift's largest sides: two of them leave no room for a clear relation
    sides = rng.sample([_side(rng, shifted), _side(rng, shifted, small_only=True)], 2)

    def clear(centres):  # the grammar's layout rule: clearly along the axis, more along than across
        (x1, y1), (x2, y2) = centres
        dx, dy = x2 - x1, y2 - y1
        along, across = {"left of": (dx, abs(dy)), "right of": (-dx, abs(dy)),
                         "above": (dy, abs(dx)), "below": (-dy, abs(dx))}[relation]
        return along >= G.LAYOUT_MARGIN and across <= along

    (x1, y1), (x2, y2) = _place(sides, rng, clear)
    return draw([Obj(c1, "circle", sides[0], x1, y1), Obj(c2, "square", sides[1], x2, y2)],
                **_shift(rng, shifted))


TASKS: dict[str, Task] = {
    "colour_shape": Task("colour_shape", COLOUR_SHAPE_CLASSES, "a picture of a {}", _render_colour_shape),
    "count": Task("count", NUMBER_CLASSES, "a picture of {}", _render_count),
    "relation": Task("relation", RELATION_CLASSES, "a picture of a {}", _render_relation, flip_safe=False),
}


def shapesworld_few_shot(task: str, shots: int, seed: int, classes=None) -> ImageSet:
    """``shots`` rendered training images per class of ``task`` for few-shot draw ``seed``; with
    ``classes``, only those (relabelled 0.., as :meth:`ImageSet.subset`)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    data = get_task(task).images("train", per_class=shots, seed=seed, classes=classes)
    data.meta["shots"] = shots
    return data if classes is None else data.subset(classes)


def world_words() -> list[str]:
    """Every word a ShapesWorld caption can use (PEZ's vocabulary restricted to the world)."""
    words = {w for table in (G.COLOUR_SYNONYMS, G.SHAPE_SYNONYMS, G.SIZE_SYNONYMS) for ws in table.values() for w in ws}
    words |= set(G.SHAPE_PLURALS.values()) | set(G.NUMBER_WORDS)
    words |= {w for phrases in G.RELATION_PHRASES.values() for ph in phrases for w in ph.split()}
    words |= {w for prefix in G.CAPTION_PREFIXES for w in prefix.split()} | {"a", "an", "and", "the", "is", "are"}
    return sorted(words)


def get_task(name: str) -> Task:
    """A task of the suite by name (``colour_shape``, ``count``, ``relation``)."""
    if name not in TASKS:
        raise ValueError(f"unknown ShapesWorld task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]
