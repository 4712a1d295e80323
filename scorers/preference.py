"""Human-preference reward models: PickScore, HPSv2.1 and ImageReward.

Each model was fine-tuned on human choices between generated images, so its
score of (intent, image) predicts which image people prefer for that prompt.
All three are optional; each says how to get what it needs.

* ``PickScoreScorer`` ("pickscore"): a transformers ``CLIPModel``
  (``yuvalkirstain/PickScore_v1``) with the processor of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; score = ``logit_scale.exp() * cos``
  (about 18..24 for real images, bound ``±logit_scale.exp()``).
* ``HPSScorer`` ("hps:v2.1"): open_clip ViT-H-14 with the HPS v2.1 checkpoint
  (``hf-hub:xswu/HPSv2/HPS_v2.1_compressed.pt``); score = cosine of the
  normalised embeddings (about 0.2..0.35 for real images, bound ±1).
* ``ImageRewardScorer`` ("imagereward"): the ``image-reward`` package's model;
  its reward is standardised (mean 0, std 1 on its training data), so about
  -3..3.

All of them batch every image of a call, score against the *intent* (encoded
once), and average over frames for video generations.

>>> create("scorer", "pickscore").score(generations, intent)   # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from mmopt.errors import MissingExtraError, ModelLoadError
from mmopt.types import Generation, Score

from .media import check_intent, flatten_media, mean_per_generation
from .weights import fetch_weights, load_state_dict, verify_sha256

__all__ = ["PickScoreScorer", "HPSScorer", "ImageRewardScorer",
           "pickscore_from_name", "hps_from_name", "imagereward_from_name"]

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_CHECKPOINTS = {
    "v2.1": "hf-hub:xswu/HPSv2/HPS_v2.1_compressed.pt",
    "v2": "hf-hub:xswu/HPSv2/HPS_v2_compressed.pt",
}
HPS_ARCH = "ViT-H-14"


def _pick_device(device: Any) -> torch.device:
    from mmopt.device import pick_device

    return torch.device(pick_device(device))


def _features(out: Any) -> torch.Tensor:
    # transformers returns a tensor from get_*_features in v4 and may return a
    # model output with ``pooler_output`` in later versions.
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected feature output {type(out).__name__}")


# ---------------------------------------------------------------------------
# PickScore
# ---------------------------------------------------------------------------


class PickScoreScorer:
    """PickScore (Kirstain et al. 2023): ``logit_scale.exp() * cos(image, intent)``.

    Args:
        model: hub id or local directory of a transformers ``CLIPModel``.
        processor: hub id or local directory of its ``CLIPProcessor`` (PickScore
            ships none; it uses the LAION ViT-H-14 processor).
        device, dtype: torch device and dtype (default: CUDA bf16 when available, else CPU fp32).
        batch_size: images per forward pass.
    """

    def __init__(self, model: str = PICKSCORE_MODEL, *, processor: str | None = None,
                 device: Any = None, dtype: Any = None, batch_size: int = 16, name: str | None = None):
        from transformers import AutoProcessor, CLIPModel

        from mmopt.device import pick_dtype

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if processor is None:
            processor = PICKSCORE_PROCESSOR if model == PICKSCORE_MODEL else model
        self.model_id, self.processor_id = str(model), str(processor)
        self.device = _pick_device(device)
        self.dtype = pick_dtype(self.device.type, dtype)
        self.batch_size = batch_size
        try:
            self.processor = AutoProcessor.from_pretrained(self.processor_id)
            model = CLIPModel.from_pretrained(self.model_id)
        except Exception as e:  # OSError: unreachable hub / missing files
            raise ModelLoadError(
                f"could not load PickScore (model {self.model_id!r}, processor {self.processor_id!r}): "
                f"{e}. Pass local directories or make the hub reachable") from e
        # the scale is read in fp32, before a cast to bf16 would round it
        self.scale = float(model.logit_scale.detach().float().exp())
        self.model = model.to(self.device, self.dtype).eval()
        self.value_range = (-self.scale, self.scale)
        self.name = name or ("pickscore" if self.model_id == PICKSCORE_MODEL else f"pickscore:{self.model_id}")

    def config(self) -> dict:
        from mmopt.device import dtype_name
        from mmopt.fingerprint import weights_record

        return {"component": "mmopt.scorers.preference.PickScoreScorer", **weights_record(self.model_id),
                "processor": weights_record(self.processor_id),
                "dtype": dtype_name(self.dtype)}

    @torch.no_grad()
    def _text(self, intent: str) -> torch.Tensor:
        tok = self.processor(text=[intent], padding=True, truncation=True, max_length=77,
                             return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(_features(self.model.get_text_features(**tok)).float(), dim=-1)

    @torch.no_grad()
    def _images(self, images: list) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pix = self.processor(images=images[start:start + self.batch_size], return_tensors="pt")
            pix = pix["pixel_values"].to(self.device, self.model.dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=pix)).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One PickScore per generation, against ``intent``."""
        intent = check_intent(intent)
        images, owner = flatten_media(generations)
        if not images:
            return []
        cos = (self._images(images) @ self._text(intent).T).squeeze(-1)
        values = mean_per_generation((self.scale * cos).cpu().tolist(), owner, len(generations))
        return [Score(self.name, v, {"pickscore": v}) for v in values]


# ---------------------------------------------------------------------------
# HPS v2 / v2.1
# ---------------------------------------------------------------------------


def _open_clip_name(model: str) -> str:
    """A local dir becomes open_clip's ``local-dir:`` schema; arch names and hf-hub ids pass."""
    if Path(model).expanduser().is_dir():
        return f"local-dir:{Path(model).expanduser()}"
    return model


class HPSScorer:
    """Human Preference Score v2/v2.1 (Wu et al. 2023): cosine of open_clip embeddings.

    Args:
        checkpoint: ``"v2.1"``/``"v2"`` (the published checkpoints on the hub), a local
            file, URL or ``hf-hub:org/repo/file``; a state dict, optionally wrapped in
            ``{"state_dict": ...}``, loaded with ``weights_only=True`` or safetensors.
        model: the open_clip architecture the checkpoint fits (``"ViT-H-14"``), or a
            local open_clip directory / ``hf-hub:`` id giving config and tokenizer.
        sha256: expected digest of the checkpoint (the first load of a remote source
            records it otherwise).
        device, dtype: torch device and dtype (default: CUDA bf16 when available, else CPU fp32).
    """

    value_range = (-1.0, 1.0)

    def __init__(self, checkpoint: str | os.PathLike = "v2.1", *, model: str = HPS_ARCH,
                 sha256: str | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, name: str | None = None):
        import open_clip

        from mmopt.device import pick_dtype

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = _pick_device(device)
        self.dtype = pick_dtype(self.device.type, dtype)
        self.batch_size = batch_size
        spec = HPS_CHECKPOINTS.get(str(checkpoint), checkpoint)

        # 1. the architecture (random init: the checkpoint carries every weight)
        oc_name = _open_clip_name(str(model))
        self.arch = oc_name
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(oc_name, pretrained=None)
            self.tokenizer = open_clip.get_tokenizer(oc_name)
        except Exception as e:
            raise ModelLoadError(f"could not build the open_clip model {model!r} for HPS: {e}") from e

        # 2. the checkpoint: fetched, verified, loaded without unpickling
        path = fetch_weights(spec)
        remote = not Path(os.fspath(spec)).expanduser().is_file()
        self.sha256 = verify_sha256(path, sha256, source=str(spec) if remote else None)
        state = load_state_dict(path)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ModelLoadError(f"HPS checkpoint {str(spec)!r} does not fit open_clip {model!r}: {e}") from e
        missing = [k for k in missing if not k.endswith("attn_mask")]
        if missing or unexpected:
            raise ModelLoadError(
                f"HPS checkpoint {str(spec)!r} does not fit open_clip {model!r}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        self.model = net.to(self.device, self.dtype).eval()
        self.preprocess = preprocess
        label = str(checkpoint) if str(checkpoint) in HPS_CHECKPOINTS else Path(os.fspath(checkpoint)).name
        self.name = name or f"hps:{label}"

    @torch.no_grad()
    def config(self) -> dict:
        from mmopt.device import dtype_name

        return {"component": "mmopt.scorers.preference.HPSScorer", "weights_sha256": self.sha256,
                "arch": self.arch, "dtype": dtype_name(self.dtype)}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One HPS per generation, against ``intent``."""
        intent = check_intent(intent)
        images, owner = flatten_media(generations)
        if not images:
            return []
        text = self.model.encode_text(self.tokenizer([intent]).to(self.device))
        text = torch.nn.functional.normalize(text.float(), dim=-1)
        feats = []
        for start in range(0, len(images), self.batch_size):
            pix = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            feats.append(self.model.encode_image(pix.to(self.device, self.dtype)).float())
        img = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
        cos = (img @ text.T).squeeze(-1).cpu().tolist()
        values = mean_per_generation(cos, owner, len(generations))
        return [Score(self.name, v, {"hps": v}) for v in values]


# ---------------------------------------------------------------------------
# ImageReward
# ---------------------------------------------------------------------------


class ImageRewardScorer:
    """ImageReward (Xu et al. 2023) through its own package ``image-reward``.

    Raises ``MissingExtraError`` naming the install command when the package is
    missing. ``model`` is the package's model name (``"ImageReward-v1.0"``) or a
    local checkpoint path it accepts.
    """

    value_range = (-3.0, 3.0)

    def __init__(self, model: str = "ImageReward-v1.0", *, device: Any = None,
                 name: str | None = None):
        if importlib.util.find_spec("ImageReward") is None:
            raise MissingExtraError("image-reward", "imagereward", "the ImageReward scorer "
                                    "(or: pip install image-reward)")
        import ImageReward as reward_lib

        self.device = _pick_device(device)
        self.model_id = str(model)
        try:
            self.model = reward_lib.load(model, device=str(self.device))
        except Exception as e:
            raise ModelLoadError(f"could not load ImageReward {model!r}: {e}") from e
        self.name = name or ("imagereward" if model == "ImageReward-v1.0" else f"imagereward:{model}")

    @torch.no_grad()
    def config(self) -> dict:
        return {"component": "mmopt.scorers.preference.ImageRewardScorer", "model": self.model_id}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One ImageReward per generation, against ``intent``."""
        intent = check_intent(intent)
        images, owner = flatten_media(generations)
        if not images:
            return []
        rewards = self.model.score(intent, images)
        rewards = [float(rewards)] if not isinstance(rewards, (list, tuple)) else [float(r) for r in rewards]
        values = mean_per_generation(rewards, owner, len(generations))
        return [Score(self.name, v, {"imagereward": v}) for v in values]


# ---------------------------------------------------------------------------
# Registry factories
# ---------------------------------------------------------------------------


def pickscore_from_name(rest: str = "", **kwargs) -> PickScoreScorer:
    """``"pickscore"`` -> PickScore_v1; ``"pickscore:/local/dir"`` or ``"pickscore:org/model"``."""
    return PickScoreScorer(rest or PICKSCORE_MODEL, **kwargs)


def hps_from_name(rest: str = "", **kwargs) -> HPSScorer:
    """``"hps:v2.1"`` (default), ``"hps:v2"``, or ``"hps:/path/checkpoint.pt"`` (+ ``model=``)."""
    return HPSScorer(rest or "v2.1", **kwargs)


def imagereward_from_name(rest: str = "", **kwargs) -> ImageRewardScorer:
    """``"imagereward"`` -> ImageReward-v1.0 (needs ``pip install image-reward``)."""
    return ImageRewardScorer(rest or "ImageReward-v1.0", **kwargs)
