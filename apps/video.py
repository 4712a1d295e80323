"""Clips out: animated GIF and MP4 files of stored frame lists.

The store and the cache keep a clip once, as one PNG per frame keyed by
content (``OUT/runs/<run_id>/media/t0003_s1_f000.png`` ...). GIF and MP4 are
exports written beside those frames (``t0003_s1.gif``, ``t0003_s1.mp4``):

* GIF through Pillow (always available);
* MP4 (H.264, yuv420p) through imageio with its bundled ffmpeg binary
  (``imageio-ffmpeg``), the ``video`` extra; without it a
  :class:`~mmopt.errors.MissingExtraError` names the extra.

>>> write_gif(frames, "clip.gif", fps=8)                     # doctest: +SKIP
>>> export_run(Store("runs"), run_id, formats=("gif", "mp4"))  # doctest: +SKIP
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmopt.errors import MissingExtraError

FORMATS = ("gif", "mp4")
_FRAME = re.compile(r"_f\d{3}\.png$")


def _check_frames(frames: Sequence[Any], fps: Any) -> list:
    from PIL import Image

    frames = list(frames)
    if not frames or not all(isinstance(f, Image.Image) for f in frames):
        raise ValueError(f"expected a non-empty list of PIL frames, got {len(frames)} items")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"fps must be a number > 0, got {fps!r}")
    return [f.convert("RGB") for f in frames]


def write_gif(frames: Sequence[Any], path: str | Path, fps: float = 8) -> Path:
    """An animated, looping GIF of ``frames`` at ``fps`` (Pillow; 256 colours a frame)."""
    frames = _check_frames(frames, fps)
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(20, round(1000 / fps)),
                   loop=0, optimize=False, disposal=1)
    return path


def write_mp4(frames: Sequence[Any], path: str | Path, fps: float = 8, quality: int = 8) -> Path:
    """An H.264 MP4 of ``frames`` at ``fps`` (imageio + its bundled ffmpeg: the ``video`` extra).

    Odd sizes are padded to even ones (yuv420p needs them); ``quality`` is imageio's 0-10.
    """
    import numpy as np

    frames = _check_frames(frames, fps)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the bundled ffmpeg binary)
    except ImportError as e:
        raise MissingExtraError("imageio-ffmpeg", "video", "MP4 export") from e
    path = Path(path)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                            pixelformat="yuv420p", macro_block_size=2) as writer:
        for f in frames:
            a = np.asarray(f)
            h, w = a.shape[0] + a.shape[0] % 2, a.shape[1] + a.shape[1] % 2
            if (h, w) != a.shape[:2]:
                a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1]), (0, 0)), mode="edge")
            writer.append_data(a)
    return path


def export_clip(frames: Sequence[Any], stem: str | Path, fps: float = 8,
                formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """``{format: path}`` of ``frames`` written as ``<stem>.gif`` / ``<stem>.mp4``."""
    formats = list(formats)
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"formats must be among {FORMATS}, got {bad}")
    writers = {"gif": write_gif, "mp4": write_mp4}
    return {fmt: writers[fmt](frames, Path(f"{stem}.{fmt}"), fps) for fmt in formats}


def clip_stem(frame_path: str | Path) -> str:
    """``runs/r/media/t0001_s0_f000.png`` -> ``runs/r/media/t0001_s0`` (where a clip's exports go)."""
    return _FRAME.sub("", str(frame_path))


def ensure_exports(root: str | Path, frame_paths: Sequence[str], fps: float,
                   formats: Iterable[str] = ("gif",), strict: bool = False) -> dict[str, str]:
    """The exports of one stored clip (paths relative to ``root``), written when missing.

    An MP4 that cannot be written (no ``video`` extra) is left out, or with ``strict``
    raises MissingExtraError; the GIF always works.
    """
    from PIL import Image

    root = Path(root)
    stem = clip_stem(frame_paths[0])
    out, frames = {}, None
    for fmt in formats:
        rel = f"{stem}.{fmt}"
        if not (root / rel).is_file():
            if frames is None:
                frames = [Image.open(root / p) for p in frame_paths]
            try:
                export_clip(frames, root / stem, fps, [fmt])
            except MissingExtraError:
                if strict:
                    raise
                continue
        out[fmt] = rel
    return out


def export_run(store: Any, run_id: str, formats: Iterable[str] = FORMATS, progress: Any = None) -> list[Path]:
    """Write the exports of every clip of a stored run beside its frames; return their paths.

    ``progress``: a callable given the number of clips done after each (a progress bar's update).
    """
    formats = list(formats)
    written = []
    for t in store.load_trials(run_id):
        for g in store.load_generations(run_id, t.index):
            if len(g["paths"]) < 2 and "fps" not in g["meta"]:
                continue  # a still image
            if g["missing"]:
                raise FileNotFoundError(f"run {run_id}: frames of trial {t.index}, seed {g['seed']} are missing "
                                        f"({g['missing'][0]}); resume the run to restore them")
            paths = ensure_exports(store.root, g["paths"], g["meta"].get("fps", 8), formats, strict=True)
            written += [store.root / p for p in paths.values()]
            if progress is not None:
                progress(1)
    return written
