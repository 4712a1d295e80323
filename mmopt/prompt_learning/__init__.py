"""CLIP prompt learning on open_clip: CoOp, CoCoOp, KgCoOp, TPT, PEZ and LLM-proposed class prompts.

One file per method, all on one adapter (``adapter.py``) that runs CLIP's
frozen text encoder on token embeddings with learned vectors in them:

* ``coop.CoOp``        learned context vectors (Zhou et al., IJCV 2022)
* ``cocoop.CoCoOp``    context conditioned on the image by a meta-network (CVPR 2022)
* ``kgcoop.KgCoOp``    CoOp kept close to the hand-written prompt (CVPR 2023)
* ``tpt.TPT``          test-time prompt tuning by confident-view entropy (NeurIPS 2022)
* ``pez.PEZ``          hard prompts from images by projected gradients (NeurIPS 2023)
* ``glov``             class-prompt templates proposed by an LLM inside the one optimization loop
* ``data``             few-shot sampling, image folders, class-name files, base/new splits

Nothing here is imported by ``import mmopt`` (torch loads on first use).
"""

from __future__ import annotations

import importlib

#: Learner classes by name, imported on first use (``import mmopt`` must not import torch).
METHODS = {
    "coop": "mmopt.prompt_learning.coop:CoOp",
    "cocoop": "mmopt.prompt_learning.cocoop:CoCoOp",
    "kgcoop": "mmopt.prompt_learning.kgcoop:KgCoOp",
}


def method_class(name: str):
    """The learner class registered as ``name`` (``"coop"``, ``"cocoop"``, ``"kgcoop"``)."""
    if name not in METHODS:
        raise ValueError(f"unknown prompt-learning method {name!r}; expected one of {sorted(METHODS)}")
    module, _, attr = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
