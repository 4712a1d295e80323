"""The ComfyUI node, called the way ComfyUI calls it (ComfyUI itself is not installed here)."""
from __future__ import annotations

import importlib


def test_node_package_as_comfyui_loads_it(tmp_path):
    pkg = importlib.import_module("mmopt.apps.comfyui")
    assert set(pkg.NODE_CLASS_MAPPINGS) == set(pkg.NODE_DISPLAY_NAME_MAPPINGS) == {"MmoptOptimizePrompt"}
    cls = pkg.NODE_CLASS_MAPPINGS["MmoptOptimizePrompt"]
    spec = cls.INPUT_TYPES()
    assert {"prompt", "preset", "iterations", "seeds"} <= set(spec["required"])
    assert "offline" in spec["required"]["preset"][0]
    # ComfyUI fills every input from the widgets' values, then calls FUNCTION on an instance
    inputs = {k: v[1].get("default") for k, v in spec["required"].items()}
    inputs.update(prompt="a red circle to the left of a blue square", iterations=2, candidates=1, seeds=2,
                  proposer="rules", out_dir=str(tmp_path))
    best, images, original, gain = getattr(cls(), cls.FUNCTION)(**inputs)
    assert len(cls.RETURN_TYPES) == 4 and cls.RETURN_TYPES[1] == "IMAGE"
    assert isinstance(best, str) and best and original == inputs["prompt"] and gain >= 0.0
    # IMAGE: batch x height x width x channels, float32 in [0, 1]
    # every seed the winner was rendered on: the run's own seeds, and the fresh seeds of honest selection
    assert images.shape[0] >= 2 and tuple(images.shape[1:]) == (64, 64, 3) and str(images.dtype) == "torch.float32"
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
