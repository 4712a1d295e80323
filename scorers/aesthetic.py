"""The LAION improved aesthetic predictor: how much people like an image, 1..10.

An MLP reads the L2-normalised CLIP ViT-L/14 image embedding and predicts the
mean human rating (the AVA scale, 1 to 10; the linear head can step slightly
outside it, so ``value_range = (1, 10)`` is the nominal range). The published
network is five linear layers without activations,
768 -> 1024 -> 128 -> 64 -> 16 -> 1, with dropout (0.2, 0.2, 0.1) after the
first three; the state dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``.

Weights come from a preset name in ``assets/aesthetic_weights.json``
(``"laion-v2"``), a local file, an http(s) URL or ``hf-hub:org/repo/file``.
Every file is checked by sha256 (see ``mmopt.scorers.weights``) and loaded
without unpickling (safetensors or ``torch.load(weights_only=True)``).

The aesthetic score does not look at the intent; it is meant to be combined
with alignment scorers under a constraint that an aesthetic gain never buys an
alignment loss.

>>> scorer = create("scorer", "aesthetic:laion-v2")          # doctest: +SKIP
>>> scorer.score(generations, intent)[0].value                # doctest: +SKIP
6.1
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmopt.errors import ModelLoadError
from mmopt.types import Generation, Score

from .media import flatten_media, mean_per_generation
from .weights import fetch_weights, load_state_dict, verify_sha256

__all__ = ["AestheticMLP", "AestheticScorer", "load_presets", "from_name"]

HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)


class AestheticMLP(nn.Module):
    """The predictor's head: ``input_dim -> 1024 -> 128 -> 64 -> 16 -> 1``, no activations.

    The layer indices match the published state dict (dropouts sit at 1, 3, 5).

    >>> AestheticMLP(768)(torch.zeros(2, 768)).shape
    torch.Size([2, 1])
    """

    def __init__(self, input_dim: int = 768):
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, HIDDEN[0]), nn.Dropout(DROPOUT[0]),
            nn.Linear(HIDDEN[0], HIDDEN[1]), nn.Dropout(DROPOUT[1]),
            nn.Linear(HIDDEN[1], HIDDEN[2]), nn.Dropout(DROPOUT[2]),
            nn.Linear(HIDDEN[2], HIDDEN[3]),
            nn.Linear(HIDDEN[3], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "AestheticMLP":
        """Build the MLP with the input size the weights imply and load them (strict)."""
        first = state.get("layers.0.weight")
        if first is None or first.ndim != 2:
            raise ModelLoadError(
                "weights are not an aesthetic MLP: expected a 2-d 'layers.0.weight', found keys "
                f"{sorted(state)[:8]}")
        model = cls(int(first.shape[1]))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"weights do not fit the aesthetic MLP "
                                 f"({model.input_dim}-1024-128-64-16-1): {e}") from e
        return model.eval()


def load_presets() -> dict[str, dict]:
    """Known weight locations (``assets/aesthetic_weights.json``), keyed by preset name."""
    text = (resources.files("mmopt.assets") / "aesthetic_weights.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _resolve_clip(clip: Any):
    """A CLIP scorer object: given one, or built (and shared) through the registry."""
    if hasattr(clip, "encode_images"):
        return clip
    if isinstance(clip, str) and clip.strip():
        from mmopt import registry

        name = clip if clip.startswith("clip:") else f"clip:{clip}"
        return registry.create("scorer", name)
    raise TypeError(f"clip must be a CLIP registry name or an object with encode_images, got {clip!r}")


class AestheticScorer:
    """LAION aesthetic score of each generation (mean over frames for video).

    Args:
        weights: preset name (``"laion-v2"``), local path, URL or ``hf-hub:org/repo/file``.
        clip: CLIP registry name (``"ViT-L-14/openai"``, a local dir, ``hf-hub:...``) or
            a loaded CLIP scorer; defaults to the preset's CLIP.
        sha256: expected digest of the weights file; defaults to the preset's (when known).
            With none known, the first load of a source records its digest.
        device: where the MLP runs; defaults to the CLIP model's device.

    ``score`` returns ``Score(value=rating, details={"aesthetic": rating})``.
    """

    value_range = (1.0, 10.0)

    def __init__(self, weights: str | os.PathLike = "laion-v2", *, clip: Any = None,
                 sha256: str | None = None, device: str | torch.device | None = None,
                 name: str | None = None):
        # 1. resolve the weights spec: preset -> sources, digest, CLIP name
        presets = load_presets()
        preset = presets.get(str(weights)) if isinstance(weights, str) else None
        if preset is not None:
            sources = list(preset["sources"])
            sha256 = sha256 or preset.get("sha256")
            clip = clip if clip is not None else preset.get("clip")
        else:
            if not isinstance(weights, (str, os.PathLike)) or not str(weights).strip():
                raise ValueError(f"weights must be a preset ({', '.join(presets)}), a path, a URL "
                                 f"or 'hf-hub:org/repo/file', got {weights!r}")
            sources = [os.fspath(weights)]
        if clip is None:
            raise ValueError("clip is required when weights is not a preset: pass the CLIP registry "
                             "name whose image embeddings the MLP was trained on (e.g. 'ViT-L-14/openai')")

        # 2. fetch the first source that works, verify its digest, load safely
        errors = []
        for source in sources:
            try:
                path = fetch_weights(source)
            except ModelLoadError as e:
                errors.append(str(e))
                continue
            # Trust-on-first-use only for remote files: a local file is the user's own.
            remote = not Path(os.fspath(source)).expanduser().is_file()
            self.sha256 = verify_sha256(path, sha256, source=str(source) if remote else None)
            self.mlp = AestheticMLP.from_state_dict(load_state_dict(path))
            self.weights_path = Path(path)
            break
        else:
            raise ModelLoadError(f"could not obtain aesthetic weights {weights!r}: " + " | ".join(errors))

        # 3. the CLIP image encoder (shared through the registry) must match the MLP input
        self.clip = _resolve_clip(clip)
        self.name = name or f"aesthetic:{weights if preset is not None else Path(sources[0]).name}"
        self.device = torch.device(device) if device is not None else _module_device(self.clip)
        self.mlp.to(self.device)
        dim = _embed_dim(self.clip)
        if dim is not None and dim != self.mlp.input_dim:
            raise ValueError(
                f"the CLIP model gives {dim}-d image embeddings but the aesthetic MLP expects "
                f"{self.mlp.input_dim}-d; use the CLIP the weights were trained on")

    def config(self) -> dict:
        return {"component": "mmopt.scorers.aesthetic.AestheticScorer", "weights_sha256": self.sha256,
                "clip": self.clip}

    @torch.no_grad()
    def predict(self, images: Sequence[Any]) -> list[float]:
        """Aesthetic ratings of RGB PIL images (one float each)."""
        emb = self.clip.encode_images(list(images))
        emb = torch.as_tensor(emb).float()
        if emb.ndim != 2 or emb.shape[1] != self.mlp.input_dim:
            raise ValueError(f"image embeddings have shape {tuple(emb.shape)}; the aesthetic MLP "
                             f"expects (n, {self.mlp.input_dim})")
        emb = torch.nn.functional.normalize(emb, dim=-1).to(self.device)
        return [float(v) for v in self.mlp(emb).squeeze(-1).cpu()]

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One aesthetic ``Score`` per generation (``intent`` is accepted for the protocol)."""
        if not isinstance(intent, str):
            raise TypeError(f"intent must be a str, got {type(intent).__name__}")
        images, owner = flatten_media(generations)
        if not images:
            return []
        values = mean_per_generation(self.predict(images), owner, len(generations))
        return [Score(self.name, v, {"aesthetic": v}) for v in values]


def _module_device(obj: Any) -> torch.device:
    device = getattr(obj, "device", None)
    if device is not None:
        return torch.device(device)
    model = getattr(obj, "model", None)
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _embed_dim(clip: Any) -> int | None:
    """The CLIP image embedding size when the scorer exposes it (attribute or open_clip model)."""
    for attr in ("embed_dim", "image_embed_dim"):
        value = getattr(clip, attr, None)
        if isinstance(value, int):
            return value
    model = getattr(clip, "model", None)
    proj = getattr(getattr(model, "visual", None), "proj", None)
    if isinstance(proj, torch.Tensor) and proj.ndim == 2:
        return int(proj.shape[1])
    out = getattr(getattr(model, "visual", None), "output_dim", None)
    return out if isinstance(out, int) else None


def from_name(rest: str = "", **kwargs) -> AestheticScorer:
    """Registry factory: ``"aesthetic:laion-v2"``, ``"aesthetic:/path/mlp.safetensors"`` (+ ``clip=``)."""
    return AestheticScorer(rest or "laion-v2", **kwargs)
