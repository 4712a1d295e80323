"""Video scorers: image scorers on sampled frames, temporal consistency, motion magnitude.

* :class:`FrameSampledScorer` (``"frames:<image scorer>"``): any image scorer applied
  to ``k`` frames sampled uniformly from each clip; the value is their mean
  (``reduce="mean"``) or their minimum (``"min"``: the worst frame decides). An
  image counts as a one-frame clip.
* :class:`TemporalConsistencyScorer` (``"temporal:<clip model>"``): the mean CLIP
  cosine similarity of consecutive frames, so a clip that flickers or jumps
  scores low. It does not read the intent.
* :class:`MotionScorer` (``"motion"``): mean optical-flow magnitude between
  consecutive frames (OpenCV's Farneback; the ``video`` extra), in percent of
  the frame diagonal per frame, so a static clip is caught (its feedback says so).

A clip with fewer frames than a scorer samples is scored on the frames it has;
``details["frames_scored"]`` and ``details["short"]`` record it.

>>> from mmopt.registry import create
>>> create("scorer", "frames:clip:ViT-B-32/openai", k=8, reduce="min")   # doctest: +SKIP
>>> create("scorer", "motion")                                           # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmopt.errors import MissingExtraError
from mmopt.types import Generation, Score

from .media import as_rgb, check_generations, check_intent

REDUCE = ("mean", "min")


def frames_of(g: Generation, where: str) -> list:
    """The frames of a generation (an image is one frame); ValueError when there are none."""
    media = g.media
    frames = list(media) if isinstance(media, (list, tuple)) else ([] if media is None else [media])
    if not frames:
        raise ValueError(f"{where} has no frames (media {type(media).__name__}); expected an image or a clip")
    return frames


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` frame indices spread uniformly over ``n`` frames (the centre of each of k equal
    spans); all ``n`` when ``n <= k``.

    >>> sample_indices(16, 4), sample_indices(3, 8)
    ([2, 6, 10, 14], [0, 1, 2])
    """
    if n <= k:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]


def _k(k: Any, name: str = "k", low: int = 1) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < low:
        raise ValueError(f"{name} must be an int >= {low}, got {k!r}")
    return k


# --------------------------------------------------------------------------- frame-sampled


class FrameSampledScorer:
    """An image scorer applied to ``k`` uniformly sampled frames of each clip.

    ``Score.value`` is the mean (or, with ``reduce="min"``, the minimum) of the frame
    scores; ``details`` holds ``per_frame``, ``mean``, ``min``, the sampled ``frames``,
    ``frames_scored``, ``short`` (the clip had fewer than ``k`` frames) and the inner
    scorer's details of the worst frame (``worst``), whose ``feedback`` is passed on.
    All sampled frames of all clips go to the inner scorer in one call.

    >>> FrameSampledScorer(create("scorer", "clip:ViT-B-32/openai"), k=4).score(clips, "a dog running")  # doctest: +SKIP
    """

    def __init__(self, inner: Any, *, k: int = 8, reduce: str = "mean", name: str | None = None):
        if not callable(getattr(inner, "score", None)) or not hasattr(inner, "value_range"):
            raise TypeError(f"inner must be a Scorer (score() and value_range), got {type(inner).__name__}")
        if reduce not in REDUCE:
            raise ValueError(f"reduce must be one of {REDUCE}, got {reduce!r}")
        self.inner = inner
        self.k = _k(k)
        self.reduce = reduce
        self.name = name or f"frames:{inner.name}"
        self.value_range = tuple(inner.value_range)

    def config(self) -> dict:
        return {"component": "mmopt.scorers.video.FrameSampledScorer", "inner": self.inner, "k": self.k,
                "reduce": self.reduce}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        # 1. check inputs; sample each clip's frames
        check_intent(intent)
        generations = check_generations(generations)
        picked, owner, per_clip = [], [], []
        for i, g in enumerate(generations):
            frames = frames_of(g, f"generations[{i}]")
            idx = sample_indices(len(frames), self.k)
            per_clip.append((idx, len(frames)))
            picked += [Generation(g.candidate, g.seed, frames[j], g.meta) for j in idx]
            owner += [i] * len(idx)
        if not picked:
            return []
        # 2. one call of the image scorer for every sampled frame
        scores = list(self.inner.score(picked, intent))
        if len(scores) != len(picked):
            raise RuntimeError(f"{self.inner.name} returned {len(scores)} scores for {len(picked)} frames")
        # 3. reduce per clip
        out = []
        for i, (idx, n) in enumerate(per_clip):
            mine = [s for s, o in zip(scores, owner) if o == i]
            values = [float(s.value) for s in mine]
            worst = int(np.argmin(values))
            details = {"per_frame": values, "mean": float(np.mean(values)), "min": float(np.min(values)),
                       "frames": idx, "frames_scored": len(idx), "frames_total": n, "short": n < self.k,
                       "worst": mine[worst].details}
            if isinstance(mine[worst].details, dict):
                for key in ("feedback", "questions"):  # what a rewriter reads, from the worst frame
                    if key in mine[worst].details:
                        details[key] = mine[worst].details[key]
            out.append(Score(self.name, details[self.reduce], details))
        return out


# --------------------------------------------------------------------------- temporal consistency


class TemporalConsistencyScorer:
    """Mean CLIP cosine similarity of consecutive frames; ``value_range = (0, 1)``.

    Reuses a loaded :class:`~mmopt.scorers.clip.CLIPScoreScorer`'s image tower. Cosines are
    clamped at 0. ``details``: ``pairs`` (each consecutive pair's cosine), ``min`` (the
    worst cut), ``frames_scored``. A one-frame clip scores 1 (nothing can flicker) and
    is recorded as ``short``.

    >>> TemporalConsistencyScorer(create("scorer", "clip:ViT-B-32/openai")).score(clips, "any")  # doctest: +SKIP
    """

    value_range = (0.0, 1.0)

    def __init__(self, clip: Any, *, max_frames: int = 32, name: str | None = None):
        if not callable(getattr(clip, "encode_images", None)):
            raise TypeError(f"clip must be a CLIPScoreScorer (encode_images), got {type(clip).__name__}")
        self.clip = clip
        self.max_frames = _k(max_frames, "max_frames", 2)
        self.name = name or f"temporal:{getattr(clip, 'model_name', clip.name)}"

    def config(self) -> dict:
        return {"component": "mmopt.scorers.video.TemporalConsistencyScorer", "clip": self.clip,
                "max_frames": self.max_frames}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        check_intent(intent)
        generations = check_generations(generations)
        # 1. consecutive frames (evenly subsampled for long clips) of every clip, one batch
        spans, frames = [], []
        for i, g in enumerate(generations):
            clip = frames_of(g, f"generations[{i}]")
            chosen = [clip[j] for j in sample_indices(len(clip), self.max_frames)]
            spans.append((len(frames), len(chosen)))
            frames += [as_rgb(f, f"generations[{i}] frame") for f in chosen]
        feats = self.clip.encode_images(frames) if frames else None
        # 2. cosine of each consecutive pair
        out = []
        for start, n in spans:
            if n < 2:
                out.append(Score(self.name, 1.0, {"pairs": [], "min": 1.0, "frames_scored": n, "short": True}))
                continue
            f = feats[start:start + n]
            pairs = [max(0.0, float(c)) for c in (f[1:] * f[:-1]).sum(-1)]
            out.append(Score(self.name, float(np.mean(pairs)),
                             {"pairs": pairs, "min": min(pairs), "frames_scored": n, "short": False}))
        return out


# --------------------------------------------------------------------------- motion


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise MissingExtraError("opencv-python-headless", "video", "optical-flow motion scores") from e
    return cv2


class MotionScorer:
    """Motion magnitude: mean Farneback optical flow between consecutive frames.

    ``Score.value`` is the mean flow magnitude in percent of the frame's diagonal per
    frame (resolution-independent), capped at ``value_range[1]`` (10 %/frame). A clip
    under ``static_below`` is flagged ``details["static"]`` and its feedback asks for
    motion. ``details``: ``pairs`` (per pair), ``max``, ``frames_scored``, ``short``.
    Frames are compared in grey at ``size`` px on the long side (default 128).

    >>> MotionScorer().score(clips, "a dog running")[0].details["static"]   # doctest: +SKIP
    False
    """

    value_range = (0.0, 10.0)

    def __init__(self, *, size: int = 128, max_frames: int = 32, static_below: float = 0.2,
                 name: str = "motion"):
        _cv2()  # fail here, with the extra to install, not in the first iteration
        self.size = _k(size, "size", 16)
        self.max_frames = _k(max_frames, "max_frames", 2)
        if isinstance(static_below, bool) or not isinstance(static_below, (int, float)) or static_below < 0:
            raise ValueError(f"static_below must be a number >= 0, got {static_below!r}")
        self.static_below = float(static_below)
        self.name = name
        # Farneback's parameters (pyramid 0.5, 3 levels, window 15, 3 iterations, poly 5 / 1.2)
        self.flow_args = (0.5, 3, 15, 3, 5, 1.2, 0)

    def config(self) -> dict:
        import cv2

        return {"component": "mmopt.scorers.video.MotionScorer", "size": self.size, "max_frames": self.max_frames,
                "static_below": self.static_below, "flow": list(self.flow_args), "opencv": cv2.__version__}

    def _grey(self, frame) -> np.ndarray:
        im = as_rgb(frame).convert("L")
        scale = self.size / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        return np.asarray(im, dtype=np.uint8)

    def magnitudes(self, frames: Sequence[Any]) -> list[float]:
        """Mean flow magnitude (percent of the diagonal) of each consecutive pair of ``frames``."""
        cv2 = _cv2()
        grey = [self._grey(f) for f in frames]
        diag = float(np.hypot(*grey[0].shape)) if grey else 1.0
        out = []
        for a, b in zip(grey, grey[1:]):
            if a.shape != b.shape:
                raise ValueError(f"frames of one clip must share a size, got {a.shape} and {b.shape}")
            flow = cv2.calcOpticalFlowFarneback(a, b, None, *self.flow_args)
            out.append(float(np.linalg.norm(flow, axis=-1).mean()) / diag * 100.0)
        return out

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        check_intent(intent)
        out = []
        for i, g in enumerate(check_generations(generations)):
            clip = frames_of(g, f"generations[{i}]")
            chosen = [clip[j] for j in sample_indices(len(clip), self.max_frames)]
            pairs = self.magnitudes(chosen)
            value = float(np.mean(pairs)) if pairs else 0.0
            static = value < self.static_below
            details = {"pairs": pairs, "max": max(pairs, default=0.0), "frames_scored": len(chosen),
                       "short": len(chosen) < 2, "static": static}
            if static:
                details["feedback"] = ("The clip is nearly static: describe the motion explicitly "
                                       "(what moves, in which direction, how fast; any camera movement).")
            out.append(Score(self.name, min(value, self.value_range[1]), details))
        return out


# --------------------------------------------------------------------------- registry


def frames_from_name(rest: str, *, context: Any = None, k: int = 8, reduce: str = "mean", name: str | None = None,
                     **inner_kwargs: Any) -> FrameSampledScorer:
    """``"frames:<image scorer name>"``, e.g. ``frames:clip:ViT-B-32/openai``; the options
    ``k`` and ``reduce`` are the sampler's, the others go to the image scorer."""
    from mmopt import registry

    if not rest:
        raise ValueError("frames needs an image scorer: 'frames:<scorer>', e.g. 'frames:clip:ViT-B-32/openai'")
    inner = registry.create("scorer", rest, context=context, **inner_kwargs)
    return FrameSampledScorer(inner, k=k, reduce=reduce, name=name or f"frames:{rest}")


def temporal_from_name(rest: str, *, max_frames: int = 32, **clip_kwargs: Any) -> TemporalConsistencyScorer:
    """``"temporal:<clip model>"`` (``temporal`` alone: ViT-B-32/openai); ``temporal:offline``
    uses the shipped ShapesWorld CLIP."""
    from mmopt import registry

    clip_name = "offline:clip" if rest == "offline" else f"clip:{rest or 'ViT-B-32/openai'}"
    clip = registry.create("scorer", clip_name, **clip_kwargs)
    return TemporalConsistencyScorer(clip, max_frames=max_frames, name=f"temporal:{rest}" if rest else "temporal")


def motion_from_name(rest: str = "", **kwargs: Any) -> MotionScorer:
    """``"motion"`` or ``"motion:farneback"``."""
    if rest not in ("", "farneback"):
        raise ValueError(f"motion scorer is 'motion' or 'motion:farneback', got 'motion:{rest}'")
    return MotionScorer(name=f"motion:{rest}" if rest else "motion", **kwargs)
