"""ShapesWorld clips: one shape with a known motion, and a frame-set VQA that checks it.

A checkable video world for the video scorers. A clip shows one coloured shape
that does one of ``MOTIONS``:

* ``left`` / ``right`` / ``up`` / ``down``: it slides 0.4 of the frame that way;
* ``growing``: its side grows from 0.18 to 0.42 of the frame;
* ``colour``: it turns from its colour into ``to_colour`` halfway through (a blend would
  pass through greys no colour name fits);
* ``static``: it stands still;
* ``flickering``: it is there on even frames and gone on odd ones.

Captions say it in words ("a red circle moving to the left", "a blue square
turning yellow"); :func:`parse_video_caption` reads them back,
:func:`video_dsg_questions` turns one into DSG questions (the object, then its
motion, which depends on it), and :class:`ShapesVideoVQA` answers such
questions about a list of frames from the detector's positions, sizes and
colours over time: a ``VQAModel`` that takes frame sets (``takes_frames``).

>>> clip = render_clip(VideoSpec("red", "circle", "left"), seed=0)
>>> ShapesVideoVQA().answer([clip], ["Is the red circle moving to the left?"])[0].answer
'yes'
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image, ImageDraw

from ..types import DSGQuestion, VQAAnswer
from . import grammar as G
from .detect import DetectedObject, detect
from .render import SUPERSAMPLE, draw_shape
from .vqa import parse_question

MOTIONS = ("left", "right", "up", "down", "growing", "colour", "static", "flickering")
#: How a caption or a question says each motion (the first phrase is the canonical one).
#: ``colour`` is also said as "turning <colour>".
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moving to the left", "moving left", "sliding to the left", "sliding left", "going left"),
    "right": ("moving to the right", "moving right", "sliding to the right", "sliding right", "going right"),
    "up": ("moving up", "moving upwards", "rising", "going up"),
    "down": ("moving down", "moving downwards", "falling", "sinking", "going down"),
    "growing": ("growing", "getting bigger", "expanding"),
    "colour": ("changing colour", "changing color", "changing its colour", "changing its color"),
    "static": ("standing still", "not moving", "motionless", "static", "still"),
    "flickering": ("flickering", "blinking"),
}
#: Unit-coordinate displacement of a moving shape over the clip, and the side range of a growing one.
TRAVEL = 0.4
GROW_FROM, GROW_TO = 0.18, 0.42
#: Decision thresholds of the tracker (unit coordinates; side ratio; share of frames).
MOVE_MIN = 0.12
GROW_MIN = 1.35
PRESENT_MIN = 0.8


@dataclass(frozen=True)
class VideoSpec:
    """What a clip shows: a ``colour`` ``shape`` doing ``motion`` (``to_colour`` for "colour")."""

    colour: str
    shape: str
    motion: str
    to_colour: str | None = None

    def __post_init__(self):
        if self.colour not in G.COLOURS or (self.to_colour is not None and self.to_colour not in G.COLOURS):
            raise ValueError(f"colours must be among {tuple(G.COLOURS)}, got {self.colour!r} / {self.to_colour!r}")
        if self.shape not in G.SHAPES:
            raise ValueError(f"shape must be one of {G.SHAPES}, got {self.shape!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        if (self.motion == "colour") != (self.to_colour is not None) or self.to_colour == self.colour:
            raise ValueError("a 'colour' motion needs a to_colour different from its colour (and only it has one)")

    @property
    def caption(self) -> str:
        """The canonical caption, e.g. ``"a red circle moving to the left"``."""
        what = f"turning {self.to_colour}" if self.motion == "colour" else MOTION_PHRASES[self.motion][0]
        return f"a {self.colour} {self.shape} {what}"


def all_specs() -> list[VideoSpec]:
    """One spec per (motion, shape), colours varied deterministically: 32 clips' worth."""
    colours = list(G.COLOURS)
    out = []
    for m, motion in enumerate(MOTIONS):
        for s, shape in enumerate(G.SHAPES):
            colour = colours[(m + s) % len(colours)]
            to = colours[(m + s + 3) % len(colours)] if motion == "colour" else None
            out.append(VideoSpec(colour, shape, motion, to))
    return out


# --------------------------------------------------------------------------- rendering


def _states(spec: VideoSpec, n: int, rng: random.Random) -> list[tuple[float, float, float, tuple, bool]]:
    """(x, y, side, rgb, visible) of the shape in each of ``n`` frames."""
    side = GROW_FROM if spec.motion == "growing" else 0.26
    margin = 0.08 + side / 2
    dx = {"left": -TRAVEL, "right": TRAVEL}.get(spec.motion, 0.0)
    dy = {"up": -TRAVEL, "down": TRAVEL}.get(spec.motion, 0.0)
    # start where the whole path stays inside the frame (jittered by the seed)
    x0 = rng.uniform(margin + max(0.0, -dx), 1 - margin - max(0.0, dx))
    y0 = rng.uniform(margin + max(0.0, -dy), 1 - margin - max(0.0, dy))
    if spec.motion == "growing":  # room for the final size
        x0 = y0 = 0.5 + rng.uniform(-0.02, 0.02)
    out = []
    for t in range(n):
        f = t / max(1, n - 1)
        s = GROW_FROM + (GROW_TO - GROW_FROM) * f if spec.motion == "growing" else side
        rgb = G.COLOURS[spec.to_colour if spec.to_colour and t >= n / 2 else spec.colour]
        visible = spec.motion != "flickering" or t % 2 == 0
        out.append((x0 + dx * f, y0 + dy * f, s, rgb, visible))
    return out


def render_clip(spec: VideoSpec, seed: int, frames: int = 16, size: int = 64) -> list[Image.Image]:
    """The clip of ``spec`` as ``frames`` RGB frames of ``size`` px (anti-aliased like stills).

    The same (spec, seed, frames, size) always gives the same frames.

    >>> len(render_clip(VideoSpec("blue", "square", "static"), 0, frames=4))
    4
    """
    if not isinstance(spec, VideoSpec):
        raise TypeError(f"spec must be a VideoSpec, got {type(spec).__name__}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"size must be an int in 16..1024, got {size!r}")
    rng = random.Random(f"{seed}\x00{spec.caption}")
    k = SUPERSAMPLE
    out = []
    for x, y, side, rgb, visible in _states(spec, frames, rng):
        img = Image.new("RGB", (size * k, size * k), G.BACKGROUND)
        if visible:
            half, cx, cy = side * size * k / 2, x * size * k, y * size * k
            draw_shape(ImageDraw.Draw(img), spec.shape, (cx - half, cy - half, cx + half - 1, cy + half - 1), rgb)
        out.append(img.resize((size, size), Image.BOX))
    return out


# --------------------------------------------------------------------------- captions and questions


def _find_motion(text: str) -> tuple[str, str | None, str] | None:
    """(motion, to_colour, the text without the motion phrase) of a caption or question."""
    low = " ".join(text.lower().replace("?", " ").replace(".", " ").split())
    colours = "|".join(w for syns in G.COLOUR_SYNONYMS.values() for w in syns)
    m = re.search(rf"\b(?:turning|becoming) ({colours})\b", low)
    if m:
        to = next(c for c, syns in G.COLOUR_SYNONYMS.items() if m.group(1) in syns)
        return "colour", to, (low[:m.start()] + low[m.end():]).strip()
    for motion, phrases in MOTION_PHRASES.items():
        for phrase in sorted(phrases, key=len, reverse=True):
            m = re.search(rf"\b(?:is |that is |which is )?{re.escape(phrase)}\b", low)
            if m:
                return motion, None, (low[:m.start()] + low[m.end():]).strip()
    return None


def parse_video_caption(text: str) -> VideoSpec | None:
    """The spec a ShapesWorld video caption describes; None when it is not one.

    >>> parse_video_caption("A big red circle sliding left").motion
    'left'
    """
    if not isinstance(text, str):
        return None
    found = _find_motion(text)
    if found is None:
        return None
    motion, to, rest = found
    query = parse_question(f"is there {rest}")
    if query is None or query.kind != "exists" or len(query.phrases) != 1:
        return None
    np_ = query.phrases[0]
    if np_.colour is None or np_.shape is None or to == np_.colour:
        return None
    return VideoSpec(np_.colour, np_.shape, motion, to)


def video_dsg_questions(caption: str) -> list[DSGQuestion]:
    """DSG questions of a ShapesWorld video caption: the object, then its motion (a child).

    >>> [q.question for q in video_dsg_questions("a red circle moving to the left")]
    ['Is there a red circle?', 'Is the red circle moving to the left?']
    """
    spec = parse_video_caption(caption)
    if spec is None:
        return []
    noun = f"{spec.colour} {spec.shape}"
    if spec.motion == "colour":
        action, phrase = f"action - change ({spec.shape}, turning {spec.to_colour})", f"turning {spec.to_colour}"
    else:
        action, phrase = f"action - motion ({spec.shape}, {spec.motion})", MOTION_PHRASES[spec.motion][0]
    return [DSGQuestion(1, f"entity - whole ({spec.shape})", f"Is there a {noun}?"),
            DSGQuestion(2, action, f"Is the {noun} {phrase}?", (1,))]


# --------------------------------------------------------------------------- tracking


@dataclass(frozen=True)
class Track:
    """The subject of a question over a clip: where it was seen, and what it did."""

    seen: tuple[DetectedObject | None, ...]
    motion: str | None          # one of MOTIONS; None when the subject is not in the clip
    last_colour: str | None = None

    @property
    def present(self) -> float:
        return sum(d is not None for d in self.seen) / max(1, len(self.seen))


def _side(d: DetectedObject) -> float:
    return float(d.bbox[2] - d.bbox[0])


def classify(seen: Sequence[DetectedObject | None]) -> str | None:
    """The motion of a tracked object from its detections per frame (None: never seen)."""
    found = [d for d in seen if d is not None]
    if not found:
        return None
    toggles = sum((a is None) != (b is None) for a, b in zip(seen, seen[1:]))
    if len(found) / len(seen) < PRESENT_MIN and toggles >= 2:
        return "flickering"
    first, last = found[0], found[-1]
    if first.colour != last.colour:
        return "colour"
    dx, dy = last.x - first.x, last.y - first.y
    if max(abs(dx), abs(dy)) >= MOVE_MIN:
        if abs(dx) >= abs(dy):
            return "left" if dx < 0 else "right"
        return "up" if dy < 0 else "down"
    if _side(last) / max(_side(first), 1.0) >= GROW_MIN:
        return "growing"
    return "static"


def track(frames: Sequence[Any], colour: str | None, shape: str | None,
          detections: list[list[DetectedObject]] | None = None) -> Track:
    """Follow the object a noun phrase names through ``frames``.

    The subject is found by shape and colour in the first frame where it appears; later
    frames keep the detection of that shape nearest its last position (so a shape that
    changes colour is still followed).
    """
    dets = detections if detections is not None else [detect(f) for f in frames]
    seen: list[DetectedObject | None] = []
    last: DetectedObject | None = None
    for objs in dets:
        cands = [o for o in objs if shape is None or o.shape == shape]
        if last is None:
            cands = [o for o in cands if colour is None or o.colour == colour]
        if not cands:
            seen.append(None)
            continue
        ref = last
        pick = min(cands, key=lambda o: (o.x - ref.x) ** 2 + (o.y - ref.y) ** 2) if ref else cands[0]
        seen.append(pick)
        last = pick
    found = [d for d in seen if d is not None]
    return Track(tuple(seen), classify(seen), found[-1].colour if found else None)


# --------------------------------------------------------------------------- frame-set VQA


class ShapesVideoVQA:
    """Answers yes/no questions about ShapesWorld clips (frame lists) from detections over time.

    ``takes_frames = True``: ``answer(frame_sets, questions)`` pairs ``frame_sets[i]`` (a
    list of frames, or one image = a one-frame clip) with ``questions[i]``. Questions
    about the objects ("Is there a red circle?") hold when the object is in at least
    ``PRESENT_MIN`` of the frames, or at all for a flickering one; motion questions ("Is
    the red circle moving to the left?", "... turning yellow?", "... standing still?")
    hold when the tracked subject did that. Anything else is "unanswerable" (p_yes 0.5).

    >>> ShapesVideoVQA().answer([render_clip(VideoSpec("red", "circle", "static"), 0)],
    ...                         ["Is the red circle flickering?"])[0].answer
    'no'
    """

    takes_frames = True
    config_version = 1  # bump when the tracker or the thresholds change what they answer

    def __init__(self, name: str = "shapes-video") -> None:
        self.name = name

    def config(self) -> dict:
        return {"component": "mmopt.shapesworld.video.ShapesVideoVQA", "version": self.config_version,
                "thresholds": [MOVE_MIN, GROW_MIN, PRESENT_MIN]}

    def answer(self, frame_sets: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]:
        """Answer ``questions[i]`` about ``frame_sets[i]``; detections are made once per clip."""
        # 1. check inputs
        if isinstance(questions, str) or len(frame_sets) != len(questions):
            raise ValueError(f"frame_sets and questions must be sequences of equal length, got "
                             f"{len(frame_sets)} and {'a string' if isinstance(questions, str) else len(questions)}")
        cache: dict[int, list[list[DetectedObject]]] = {}
        out = []
        for clip, question in zip(frame_sets, questions):
            frames = list(clip) if isinstance(clip, (list, tuple)) else [clip]
            if not frames:
                raise ValueError("a frame set is empty; expected at least one frame")
            # 2. what is asked: a motion of a subject, or the subject alone
            found = _find_motion(question) if isinstance(question, str) else None
            query = parse_question(f"is there {found[2]}" if found else question)
            if query is None or query.kind != "exists" or len(query.phrases) != 1:
                out.append(VQAAnswer("unanswerable", 0.5, raw="question outside the ShapesWorld video vocabulary"))
                continue
            np_ = query.phrases[0]
            # 3. detect once per clip, track the subject, judge
            if id(clip) not in cache:
                cache[id(clip)] = [detect(f) for f in frames]
            tr = track(frames, np_.colour, np_.shape, cache[id(clip)])
            if found is None:
                yes = tr.motion is not None and (tr.present >= PRESENT_MIN or tr.motion == "flickering")
            else:
                motion, to, _ = found
                yes = tr.motion == motion and (to is None or tr.last_colour == to)
            out.append(VQAAnswer("yes" if yes else "no", 1.0 if yes else 0.0, raw=str(tr.motion)))
        return out


def vqa_from_name(rest: str = "", **kwargs: Any) -> ShapesVideoVQA:
    """Registry factory: ``create("vqa", "shapes-video")``."""
    if rest not in ("", "detector"):
        raise ValueError(f"unknown ShapesWorld video VQA {rest!r}; expected 'shapes-video'")
    if kwargs:
        raise TypeError(f"shapes-video VQA takes no options, got {sorted(kwargs)}")
    return ShapesVideoVQA()
