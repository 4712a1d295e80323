"""Shared test fixtures: tiny offline models built once per test session.

Nothing downloads: ``HF_HUB_OFFLINE=1`` is set for the whole session, and the
tiny models are built from the configs in ``mmopt/assets/configs`` with the
real CLIP BPE tokenizer.

Fixtures (session-scoped, so every test file shares one build):
  tiny_sd_dir     Path of a tiny Stable Diffusion pipeline (64 px, 2 steps).
  tiny_sdxl_dir   Path of a tiny SDXL pipeline (two text encoders; 64 px, 2 steps).
  tiny_clip_dir   Path of a tiny open_clip model (open_clip_config.json + safetensors).
  clip_tok_dir    Path of transformers CLIPTokenizer files (real CLIP BPE).
  tiny_generator  DiffusersGenerator on tiny_sd_dir, loaded through the registry.
  tiny_clip       CLIPScoreScorer on tiny_clip_dir, loaded through the registry.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import mmopt` sets it; here before any test imports torch


def pytest_collection_modifyitems(config, items):
    """`pytest -m gpu` on a machine without CUDA skips the GPU tests, saying why."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (this machine has none)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_sd_dir(tiny_dir_root):
    from mmopt.pipelines.tiny import build_tiny_sd

    return build_tiny_sd(tiny_dir_root / "sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_dir_root):
    from mmopt.pipelines.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tiny_dir_root / "sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_dir_root):
    from mmopt.pipelines.tiny import build_tiny_clip

    return build_tiny_clip(tiny_dir_root / "clip", seed=0)


@pytest.fixture(scope="session")
def clip_tok_dir(tiny_dir_root):
    from mmopt.pipelines.tiny import clip_tokenizer_dir

    return clip_tokenizer_dir(tiny_dir_root / "clip-tokenizer")


@pytest.fixture(scope="session")
def tiny_generator(tiny_sd_dir):
    from mmopt.registry import create

    return create("generator", f"diffusers:{tiny_sd_dir}")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from mmopt.registry import create

    return create("scorer", f"clip:{tiny_clip_dir}")


# --------------------------------------------------------------------------- video (tests/test_video*.py)


@pytest.fixture(scope="session")
def tiny_animatediff_dir(tiny_dir_root):
    """A tiny AnimateDiff pipeline (the tiny SD plus a tiny motion adapter; 8 frames of 32 px)."""
    from mmopt.pipelines.tiny_video import build_video_pipeline

    return build_video_pipeline("tiny_animatediff", tiny_dir_root / "animatediff", seed=0)


@pytest.fixture(scope="session")
def tiny_video_generator(tiny_animatediff_dir):
    from mmopt.registry import create

    return create("generator", f"diffusers-video:{tiny_animatediff_dir}")
