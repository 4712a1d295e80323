"""The offline text-to-image model: mmopt's own ShapesWorld pipeline, shipped with the package.

``"offline:t2i"`` loads ``mmopt/assets/shapesworld/t2i`` (a Stable-Diffusion-shaped
diffusers folder trained by ``python -m mmopt.shapesworld.train``) through the
normal ``"diffusers:<dir>"`` path, so it exercises exactly the code that loads
a hub model.

>>> from mmopt.registry import create
>>> gen = create("generator", "offline:t2i")                        # doctest: +SKIP
>>> gen.generate(["a red circle left of a blue square"], [0])[0].media.size  # doctest: +SKIP
(64, 64)
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

#: Shipped ShapesWorld models, by the ``rest`` of their registry name.
OFFLINE_MODELS = {"t2i": "t2i", "clip": "clip"}
#: Images per pipeline call for the shipped text-to-image model (see ``t2i_from_name``).
OFFLINE_BATCH = 32


def shipped_model_dir(part: str) -> Path:
    """Directory of a shipped ShapesWorld model (``"t2i"`` or ``"clip"``).

    >>> shipped_model_dir("clip").name
    'clip'
    """
    if part not in OFFLINE_MODELS:
        raise ValueError(f"unknown offline model {part!r}; expected one of {sorted(OFFLINE_MODELS)}")
    path = Path(str(resources.files("mmopt.assets") / "shapesworld" / OFFLINE_MODELS[part]))
    if not path.is_dir():
        raise FileNotFoundError(
            f"the shipped ShapesWorld model {part!r} is missing at {path}; rebuild it with "
            f"`python -m mmopt.shapesworld.train --out <dir>` and copy <dir>/{part} there")
    return path


def t2i_from_name(rest: str = "", **kwargs: Any):
    """Registry factory for ``"offline:t2i"``: the shipped ShapesWorld text-to-image model.

    Keyword arguments go to :class:`~mmopt.pipelines.diffusers_t2i.DiffusersGenerator`
    (``steps``, ``guidance``, ``device``, ...).
    """
    from mmopt.pipelines.diffusers_t2i import from_name

    if rest not in ("", "t2i"):
        raise ValueError(f"offline generator is 'offline:t2i', got 'offline:{rest}'")
    # 64 px images on an 8x8 latent: a call's fixed cost (about 25 ms a step on 2 cores) is
    # as large as four images' work, so up to 32 images share one call (the per-image seeded
    # generators give the same images at any batch size, up to float rounding: checked in
    # tests/test_shapesworld_models.py)
    kwargs.setdefault("max_batch", OFFLINE_BATCH)
    return from_name(str(shipped_model_dir("t2i")), **kwargs)
