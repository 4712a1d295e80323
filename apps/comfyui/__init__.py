"""mmopt as a ComfyUI custom node: optimize a prompt, get the best prompt and its images.

Install: link this folder into ComfyUI's ``custom_nodes`` (mmopt installed in ComfyUI's
Python)::

    ln -s "$(python -c 'import mmopt.apps.comfyui as m, os; print(os.path.dirname(m.__file__))')" \\
          ComfyUI/custom_nodes/mmopt

The node "mmopt: optimize prompt" takes a prompt and a preset (and the loop sizes),
runs :meth:`mmopt.optimizer.Optimizer.run` through :func:`mmopt.presets.build_optimizer`,
and returns the best prompt (STRING), its images (IMAGE: a float tensor
batch x height x width x 3 in [0, 1], ComfyUI's layout), the original prompt and the
gain. Runs are stored (and resumed) in ``out_dir`` (default ``$MMOPT_COMFY_OUT`` or
``~/.cache/mmopt/comfyui``); the models load once per ComfyUI process.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "MmoptOptimizePrompt"]


def _default_out() -> str:
    return os.environ.get("MMOPT_COMFY_OUT") or str(Path.home() / ".cache" / "mmopt" / "comfyui")


def images_to_tensor(paths):
    """PNG files -> ComfyUI IMAGE: torch.float32, (batch, height, width, 3), values in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    if not arrays:
        raise ValueError("the run produced no images")
    return torch.from_numpy(np.stack(arrays))


class MmoptOptimizePrompt:
    """ComfyUI node: prompt in, best prompt and its images out."""

    CATEGORY = "mmopt"
    FUNCTION = "optimize"
    RETURN_TYPES = ("STRING", "IMAGE", "STRING", "FLOAT")
    RETURN_NAMES = ("best_prompt", "images", "original_prompt", "gain")
    OUTPUT_NODE = False

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        from mmopt.presets import available_presets

        presets = available_presets()
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "a red circle to the left of a blue square"}),
                "preset": (presets, {"default": "offline" if "offline" in presets else presets[0]}),
                "iterations": ("INT", {"default": 3, "min": 1, "max": 50}),
                "candidates": ("INT", {"default": 4, "min": 1, "max": 16}),
                "seeds": ("INT", {"default": 4, "min": 1, "max": 16}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1}),
            },
            "optional": {
                "proposer": (["preset", "opt2i", "rules"], {"default": "preset"}),
                "out_dir": ("STRING", {"default": ""}),
            },
        }

    def optimize(self, prompt, preset, iterations, candidates, seeds, seed, proposer="preset", out_dir=""):
        from mmopt.presets import build_optimizer, load_preset
        from mmopt.store import Store

        # 1. check inputs (ComfyUI shows the message on the node)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("mmopt: the prompt is empty")
        # 2. the ordinary loop, in an ordinary store (a rerun resumes and recomputes nothing)
        store = Store(out_dir or _default_out())
        opt = build_optimizer(load_preset(preset), store=store, seed=int(seed), iterations=int(iterations),
                              candidates=int(candidates), seeds=int(seeds),
                              proposer=None if proposer in (None, "", "preset") else proposer)
        result = opt.run(prompt)
        # 3. the best prompt's images, in seed order: its search seeds and, when the preset confirms
        #    the winner on fresh seeds (honest selection), those too
        gens = store.load_generations(result.run_id, result.best.index)
        paths = [store.root / g["paths"][0] for g in gens if g["paths"]]
        return (result.best_prompt, images_to_tensor(paths), result.original.prompt, float(result.gain))


NODE_CLASS_MAPPINGS = {"MmoptOptimizePrompt": MmoptOptimizePrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"MmoptOptimizePrompt": "mmopt: optimize prompt"}
