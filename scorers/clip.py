"""CLIPScore (Hessel et al., 2021) with any open_clip model.

``CLIPScore(image, text) = w * max(cos(E_image, E_text), 0)`` with ``w = 2.5``,
so ``Score.value`` lies in ``[0, 2.5]`` (``value_range``). Each generation is
scored against the user's *intent*, never against the prompt that produced it,
so a rewrite that drifts from the request cannot win. For a video (a list of
frames) the cosine is averaged over frames.

Model names (one code path, open_clip's own loaders):

* ``"ViT-B-32/openai"``: an open_clip architecture and pretrained tag
  (``open_clip.list_pretrained()``); ``"ViT-B/32/openai"`` works too.
* ``"hf-hub:org/repo"``: an open_clip repo on the Hugging Face hub.
* a local directory with the hub-repo layout::

      my_clip/
        open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}}
        open_clip_model.safetensors  the state dict (or open_clip_pytorch_model.bin)

  (``mmopt.pipelines.tiny.build_tiny_clip`` writes one.)

The encoders are public so that other scorers (decomposed CLIPScore, concept
scores) and soft-prompt tuning reuse one loaded model:
:meth:`CLIPScoreScorer.encode_texts`, :meth:`CLIPScoreScorer.encode_images`,
:meth:`CLIPScoreScorer.text_image_similarity`.

>>> from mmopt.registry import create
>>> scorer = create("scorer", "clip:ViT-B-32/openai")              # doctest: +SKIP
>>> scorer.score(generations, "a red cube on a table")[0].value      # doctest: +SKIP
0.78
"""
from __future__ import annotations

import os
import socket
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from mmopt.device import check_compile_mode, compile_in_place, dtype_name, pick_device, pick_dtype
from mmopt.errors import ModelLoadError
from mmopt.fingerprint import dir_fingerprint
from mmopt.hub import check_hub_repo, is_offline
from mmopt.types import Generation, Score

from .media import check_intent

W = 2.5  # Hessel et al.'s rescaling weight
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                      "open_clip_pytorch_model.bin")
_TEXT_CACHE_MAX = 20_000

# Loaded models, keyed by (model, dtype, device): loaded once per process.
_MODELS: dict[tuple, tuple] = {}
_MODELS_LOCK = threading.Lock()


# --------------------------------------------------------------------------- loading


def parse_model_name(model: str) -> tuple[str, str | None, str]:
    """Split a model name into (open_clip name, pretrained tag, kind).

    kind is ``"local"``, ``"hf-hub"`` or ``"tag"``.

    >>> parse_model_name("ViT-B-32/openai")
    ('ViT-B-32', 'openai', 'tag')
    >>> parse_model_name("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    ('hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K', None, 'hf-hub')
    """
    import open_clip

    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ValueError(f"model must be 'ARCH/TAG', 'hf-hub:org/repo' or a local directory, got {model!r}")
    model = str(model).strip()
    if model.startswith("hf-hub:"):
        return model, None, "hf-hub"
    if model.startswith("local-dir:"):
        model = model[len("local-dir:"):]
    path = Path(model).expanduser()
    if path.exists():
        return f"local-dir:{path.resolve()}", None, "local"
    known = set(open_clip.list_models())
    arch, _, tag = model.rpartition("/")
    if arch and arch.replace("/", "-") in known:
        return arch.replace("/", "-"), tag, "tag"
    if model.replace("/", "-") in known:
        tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
        raise ValueError(
            f"open_clip model {model!r} needs a pretrained tag, e.g. '{model}/{tags[0] if tags else 'openai'}'; "
            f"known tags: {tags}"
        )
    raise ModelLoadError(
        f"unknown CLIP model {model!r}: not a local directory, not 'hf-hub:org/repo', and "
        f"{arch or model!r} is not an open_clip architecture (see open_clip.list_models())"
    )


def _check_local_dir(path: Path) -> None:
    if not path.is_dir() or not (path / "open_clip_config.json").is_file():
        raise ModelLoadError(
            f"{str(path)!r} is not an open_clip model directory: expected open_clip_config.json "
            f"and weights ({', '.join(_OPEN_CLIP_WEIGHTS)})"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.pth")):
        raise ModelLoadError(f"open_clip model directory {str(path)!r} has a config but no weights file")


def _check_url_reachable(url: str, timeout: float) -> None:
    """For tags whose weights live at a plain URL: fail fast when it cannot be fetched."""
    cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return
    if is_offline():
        raise ModelLoadError(f"CLIP weights {url} are not cached and HF_HUB_OFFLINE=1 (no network)")
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as e:
        raise ModelLoadError(f"cannot fetch CLIP weights from {host} (no network?): {e}") from e


def _check_reachable(oc_name: str, tag: str | None, kind: str, timeout: float) -> str | None:
    """Fail fast (ModelLoadError) when the weights cannot be had; return a revision if known."""
    import open_clip

    if kind == "local":
        path = Path(oc_name[len("local-dir:"):])
        _check_local_dir(path)
        return dir_fingerprint(path)
    if kind == "hf-hub":
        repo = oc_name[len("hf-hub:"):]
        return check_hub_repo(repo, what="open_clip model", probe_file=("open_clip_config.json",),
                              timeout=timeout).revision
    cfg = open_clip.get_pretrained_cfg(oc_name, tag)
    if not cfg:
        if tag and Path(tag).expanduser().is_file():  # a checkpoint file given as the tag
            return dir_fingerprint(Path(tag).expanduser().parent)
        raise ModelLoadError(
            f"open_clip model {oc_name!r} has no pretrained tag {tag!r}; known tags: "
            f"{open_clip.list_pretrained_tags_by_model(oc_name)}"
        )
    if cfg.get("hf_hub"):
        parts = cfg["hf_hub"].strip("/").split("/")
        repo = "/".join(parts[:2])
        probes = ("/".join(parts[2:]),) if len(parts) > 2 else _OPEN_CLIP_WEIGHTS
        return check_hub_repo(repo, what="open_clip weights", probe_file=probes, timeout=timeout).revision
    if cfg.get("url"):
        _check_url_reachable(cfg["url"], min(timeout, 3.0))
    return tag


def _load(oc_name: str, tag: str | None, device: str, dtype) -> tuple:
    key = (oc_name, tag, device, dtype_name(dtype))
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(oc_name, pretrained=tag, device=device)
        tokenizer = open_clip.get_tokenizer(oc_name)
    except Exception as e:
        raise ModelLoadError(f"cannot load open_clip model {oc_name!r} ({tag}): {type(e).__name__}: {e}") from e
    model = model.to(dtype=dtype).eval()
    with _MODELS_LOCK:
        return _MODELS.setdefault(key, (model, preprocess, tokenizer))


_PREPROCESS_POOL = None


def _preprocess_all(preprocess, images: list) -> list:
    """``[preprocess(im) for im in images]``, on a few threads for larger batches.

    PIL's resize and torch's tensor ops release the GIL, so resizing a batch of
    512 px images for the scorer runs in parallel; the results are identical.
    """
    global _PREPROCESS_POOL
    if len(images) < 4:
        return [preprocess(im) for im in images]
    if _PREPROCESS_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _PREPROCESS_POOL = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1)),
                                              thread_name_prefix="mmopt-clip-preprocess")
    return list(_PREPROCESS_POOL.map(preprocess, images))


def clear_model_cache() -> None:
    """Forget every loaded CLIP model (frees memory; mainly for tests)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def _as_rgb(image: Any, where: str) -> Image.Image:
    """A PIL RGB image from a PIL image, an HxW(x3/4) uint8 array or a (3, H, W) uint8
    tensor; reject empty ones."""
    if isinstance(image, torch.Tensor):
        image = _as_pixels(image, where).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{where}: cannot read an array of shape {image.shape} and dtype "
                            f"{image.dtype} as an image (expected HxWx3 uint8)") from e
    if not isinstance(image, Image.Image):
        raise TypeError(f"{where} must be a PIL.Image.Image (or a uint8 array), got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where} is empty ({image.width}x{image.height}); expected an image with pixels")
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------- preprocessing on the device

#: How images are resized and normalised for the tower:
#: "pil": open_clip's own transform on PIL images, on host threads (the reference);
#: "tensor": the same transform's steps as tensor ops on the scorer's device, reading
#: ``Generation.pixels`` when the generator left them there (no host round trip);
#: "auto": "tensor" on a GPU, "pil" on the CPU.
PREPROCESS_MODES = ("auto", "pil", "tensor")

# open_clip steps that only convert a PIL image; the tensor path starts from RGB pixels
_CONVERSIONS = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb", "PILToTensor"}


def tensor_preprocess(preprocess: Any):
    """``preprocess`` (open_clip's torchvision Compose for PIL images) as a function of a
    ``uint8`` batch ``(N, 3, H, W)`` on any device, or ``None`` when it holds a step that
    has no tensor form (e.g. open_clip's keep-ratio resize).

    PIL resizes the uint8 image and rounds back to uint8 before ``ToTensor`` divides by
    255; the tensor path does the same on a float copy, so the two differ only where
    torchvision's antialiased bicubic and PIL's disagree by a rounding step.
    """
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    if not steps:
        return None
    plan, quantised = [], False
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if isinstance(step, (T.Resize, T.CenterCrop)) and not quantised:
            plan.append(step)
        elif name in _CONVERSIONS:
            if not quantised:
                plan.append("to_unit")
                quantised = True
        elif isinstance(step, T.Normalize) and quantised:
            plan.append(step)
        else:
            return None
    if not quantised:
        return None

    def run(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float()
        for step in plan:
            x = x.round_().clamp_(0, 255).div_(255) if step == "to_unit" else step(x)
        return x

    return run


def _compile_tower(model: Any, mode: str) -> None:
    """``torch.compile`` the image tower of a loaded model in place, once."""
    done = getattr(model.visual, "_mmopt_compile", None)
    if done is None:
        compile_in_place(model.visual, mode)
        model.visual._mmopt_compile = mode
    elif done != mode:
        warnings.warn(f"the image tower is already compiled with mode {done!r}; keeping it (asked: {mode!r})",
                      stacklevel=3)


def _as_pixels(image: Any, where: str) -> torch.Tensor:
    """A ``uint8`` ``(3, H, W)`` tensor from a tensor of that form, a PIL image or an array."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3 or min(image.shape) == 0:
            raise TypeError(f"{where}: a tensor image must be uint8 of shape (3, H, W), got "
                            f"{image.dtype} {tuple(image.shape)}")
        return image
    return torch.from_numpy(np.array(_as_rgb(image, where))).permute(2, 0, 1)


# --------------------------------------------------------------------------- scorer


class CLIPScoreScorer:
    """CLIPScore of each generation against the intent; ``value_range = (0, 2.5)``.

    Args:
        model: ``"ARCH/TAG"``, ``"hf-hub:org/repo"`` or a local open_clip directory.
        device, dtype: override the automatic choice (cuda bf16/fp16, mps fp16, cpu fp32).
        batch_size: images (and texts) per forward pass.
        w: the rescaling weight (2.5 in the paper); ``value_range`` is ``(0, w)``.
        timeout: seconds to wait for the hub before failing with ModelLoadError.
        preprocess: "pil", "tensor" or "auto" (see ``PREPROCESS_MODES``): where images are
            resized and normalised. "tensor" scores can differ from "pil" ones in the third
            decimal (resampling), so the mode is part of ``config()``.
        compile: a ``torch.compile`` mode (``mmopt.device.COMPILE_MODES``) for the image
            tower, or None. Batches are then padded to ``batch_size`` so the compiled
            tower (or its CUDA graph) sees one shape. The tower is shared by every scorer
            of the same model, so it is compiled once, with the first mode asked for.

    ``Score.details`` holds ``{"cosine": c}`` (mean over frames for a video).

    >>> scorer = CLIPScoreScorer("ViT-B-32/openai")                                # doctest: +SKIP
    >>> scorer.score([Generation("a cat", 0, image)], "a cat on a sofa")[0].value  # doctest: +SKIP
    0.74
    """

    def __init__(self, model: str = "ViT-B-32/openai", *, device: str | None = None, dtype: Any = None,
                 batch_size: int = 32, w: float = W, timeout: float = 10.0, preprocess: str = "auto",
                 compile: str | bool | None = None):
        # 1. check arguments
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ValueError(f"w must be a positive number, got {w!r}")
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
        self.compile = check_compile_mode(compile)
        self.model_name = str(model).strip() if isinstance(model, (str, os.PathLike)) else model
        self.name = f"clip:{self.model_name}"
        self.w = float(w)
        self.value_range = (0.0, self.w)
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)

        # 2. resolve the name and fail fast when the weights cannot be had
        self._oc_name, self._tag, self._kind = parse_model_name(model)
        self.revision = _check_reachable(self._oc_name, self._tag, self._kind, timeout)

        # 3. load once per process
        self.model, self.preprocess, self.tokenizer = _load(self._oc_name, self._tag, self.device, self.dtype)

        # 4. where images are preprocessed: on the device when asked (or on a GPU, by default)
        self._tensor_preprocess = tensor_preprocess(self.preprocess)
        if preprocess == "tensor" and self._tensor_preprocess is None:
            raise ValueError(f"preprocess='tensor': the transform of {self.model_name!r} has a step with no "
                             f"tensor form ({self.preprocess}); use preprocess='pil'")
        on_accelerator = not self.device.startswith("cpu")
        use_tensor = preprocess == "tensor" or (preprocess == "auto" and on_accelerator)
        self.preprocess_mode = "tensor" if use_tensor and self._tensor_preprocess else "pil"
        if self.compile is not None:
            _compile_tower(self.model, self.compile)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"texts_encoded": 0, "images_encoded": 0, "text_cache_hits": 0}

    # ------------------------------------------------------------------ encoders

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, shape ``(len(texts), D)``, float32 on the cpu.

        Embeddings are cached by text, so a repeated intent is encoded once.
        Texts longer than the context (77 tokens) are truncated by the tokenizer.

        >>> scorer.encode_texts(["a cat", "a dog"]).shape          # doctest: +SKIP
        torch.Size([2, 512])
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(t).__name__}")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
            self.stats["text_cache_hits"] += sum(1 for t in texts if t in self._text_cache)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            tokens = self.tokenizer(chunk).to(self.device)
            feats = self.model.encode_text(tokens).float()
            feats = torch.nn.functional.normalize(feats, dim=-1).cpu()
            with self._lock:
                self.stats["texts_encoded"] += len(chunk)
                for t, f in zip(chunk, feats):
                    self._text_cache[t] = f
                while len(self._text_cache) > _TEXT_CACHE_MAX:
                    self._text_cache.popitem(last=False)
        with self._lock:
            if not texts:
                return torch.empty(0, self.embed_dim)
            return torch.stack([self._text_cache[t] for t in texts])

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised image embeddings, shape ``(len(images), D)``, float32 on the cpu.

        Accepts PIL images (any mode; converted to RGB), HxWx3 uint8 arrays or
        ``(3, H, W)`` uint8 tensors on any device; an empty (0-pixel) image raises
        ValueError.

        >>> scorer.encode_images([Image.new("RGB", (64, 64))]).shape   # doctest: +SKIP
        torch.Size([1, 512])
        """
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a sequence of images, got {type(images).__name__}")
        if self.preprocess_mode == "tensor":
            batches = self._tensor_batches([_as_pixels(im, f"images[{i}]") for i, im in enumerate(images)])
        else:
            rgb = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
            batches = (torch.stack(_preprocess_all(self.preprocess, rgb[start:start + self.batch_size]))
                       for start in range(0, len(rgb), self.batch_size))
        out = []
        for batch in batches:
            n = batch.shape[0]
            if self.compile is not None and n < self.batch_size:  # one shape for the compiled tower
                batch = torch.cat([batch, batch.new_zeros((self.batch_size - n, *batch.shape[1:]))])
            feats = self.model.encode_image(batch.to(self.device, self.dtype))[:n].float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
            self.stats["images_encoded"] += n
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def _tensor_batches(self, pixels: list[torch.Tensor]):
        """Preprocessed batches of ``batch_size`` on the device; images of one size are
        resized together (one kernel per batch, not per image)."""
        for start in range(0, len(pixels), self.batch_size):
            chunk = [p.to(self.device, non_blocking=True) for p in pixels[start:start + self.batch_size]]
            if all(p.shape == chunk[0].shape for p in chunk):
                yield self._tensor_preprocess(torch.stack(chunk))
            else:
                yield torch.cat([self._tensor_preprocess(p[None]) for p in chunk])

    def text_image_similarity(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities, shape ``(len(images), len(texts))``, in ``[-1, 1]``.

        >>> scorer.text_image_similarity([img], ["a cat", "a dog"]).shape   # doctest: +SKIP
        torch.Size([1, 2])
        """
        return self.encode_images(images) @ self.encode_texts(texts).T

    def clip_score_from_cosine(self, cosine: torch.Tensor | float) -> torch.Tensor | float:
        """``w * max(cos, 0)``: Hessel et al.'s CLIPScore from a cosine (tensor or float)."""
        if isinstance(cosine, torch.Tensor):
            return self.w * cosine.clamp(min=0)
        return self.w * max(float(cosine), 0.0)

    @property
    def embed_dim(self) -> int:
        """Size D of the joint embedding space."""
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        if isinstance(proj, torch.nn.Linear):
            return int(proj.out_features)
        return int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])

    # ------------------------------------------------------------------ scoring

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """CLIPScore of each generation's image against ``intent`` (one Score each, in order).

        >>> [s.value for s in scorer.score(gens, "a red cube")]            # doctest: +SKIP
        [0.71, 0.64]
        """
        # 1. check inputs
        check_intent(intent)
        if isinstance(generations, Generation) or not isinstance(generations, Sequence):
            raise TypeError(f"generations must be a sequence of Generation, got {type(generations).__name__}")
        # 2. flatten every frame into one batch; remember which generation owns it
        frames, owner = [], []
        for i, g in enumerate(generations):
            if not isinstance(g, Generation):
                raise TypeError(f"generations[{i}] must be a Generation, got {type(g).__name__}")
            media = g.media if isinstance(g.media, (list, tuple)) else [g.media]
            if self.preprocess_mode == "tensor" and g.pixels is not None:
                media = [g.pixels]  # the same pixels, already on the device
            if not media:
                raise ValueError(f"generations[{i}] has an empty frame list")
            frames.extend(media)
            owner.extend([i] * len(media))
        if not frames:
            return []
        # 3. encode and compare with the (cached) intent embedding
        text = self.encode_texts([intent])[0]
        cos = self.encode_images(frames) @ text
        index = torch.tensor(owner)
        n_frames = torch.zeros(len(generations)).index_add_(0, index, torch.ones(len(owner)))
        mean_cos = torch.zeros(len(generations)).index_add_(0, index, cos) / n_frames
        return [Score(scorer=self.name, value=self.clip_score_from_cosine(float(c)), details={"cosine": float(c)})
                for c in mean_cos]

    def config(self) -> dict:
        """Everything that determines a score besides (image, intent): this scorer's identity."""
        from mmopt.fingerprint import weights_record

        return {"component": "mmopt.scorers.clip.CLIPScoreScorer", **weights_record(str(self.model_name), self.revision),
                "w": self.w, "dtype": dtype_name(self.dtype),
                "device": self.device.split(":")[0], "preprocess": self.preprocess_mode}

    def __repr__(self) -> str:
        return f"CLIPScoreScorer({self.model_name!r}, device={self.device!r})"


def from_name(rest: str, **kwargs: Any) -> CLIPScoreScorer:
    """Registry factory for ``"clip:<ARCH/TAG | hf-hub:org/repo | local dir>"``.

    ``"clip"`` alone means ``"clip:ViT-B-32/openai"``.

    >>> create("scorer", "clip:ViT-L-14/openai", batch_size=16)   # doctest: +SKIP
    """
    rest = (rest or "").strip() or "ViT-B-32/openai"
    return CLIPScoreScorer(rest, **kwargs)
