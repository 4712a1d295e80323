"""TPT: test-time prompt tuning (Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization
in Vision-Language Models", NeurIPS 2022).

For every test image, on its own and without labels:

1. make 63 augmented views (random resized crops, flips) plus the original: 64 images,
   encoded by the frozen image tower in ONE forward pass;
2. keep the 10% of views whose predictions have the lowest entropy (confidence selection);
3. minimise the entropy of their *averaged* prediction for one step (AdamW, lr 5e-3) with
   respect to the prompt's context (4 tokens from "a photo of a", or a CoOp context);
4. predict the original image with the tuned prompt, then reset the context.

The math is in three small functions the tests check directly:
:func:`select_confident`, :func:`avg_entropy` and :func:`augment_views`.

DiffTPT's option (Feng et al., ICCV 2023): some views come from a diffusion model
instead of crops. :class:`DiffusionViews` makes them with the project's own
pipelines (img2img from the test image, no text), keeping the generated images
most similar to the test image by CLIP cosine.

>>> tpt = TPT("offline:clip", init="a photo of a")              # doctest: +SKIP
>>> tpt.evaluate(test)["accuracy"]                              # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmopt.component import Configurable, describe
from mmopt.prompt_learning.adapter import POSITIONS, CLIPPromptAdapter
from mmopt.prompt_learning.data import ImageSet

# --------------------------------------------------------------------------- the math


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax of each row of ``logits`` (N, C) -> (N,)."""
    logp = logits.log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def select_confident(logits: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Indices of the ``int(N * fraction)`` rows with the lowest entropy (at least one), lowest first.

    >>> select_confident(torch.tensor([[0., 0.], [9., 0.], [3., 0.]]), 0.34).tolist()
    [1]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = max(1, int(logits.shape[0] * fraction))
    return torch.argsort(entropy(logits), descending=False, stable=True)[:k]


def avg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction over the rows of ``logits``: ``H(mean_i softmax(logits_i))``,
    computed in log space (log-mean-exp of the log-probabilities), as TPT does."""
    logp = logits.log_softmax(dim=-1)
    mean_logp = logp.logsumexp(dim=0) - math.log(logp.shape[0])
    mean_logp = mean_logp.clamp(min=torch.finfo(mean_logp.dtype).min)
    return -(mean_logp.exp() * mean_logp).sum(dim=-1)


def augment_views(pixels: torch.Tensor, n: int, gen: torch.Generator, *, scale: tuple[float, float] = (0.08, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                  keep_original: bool = True) -> torch.Tensor:
    """``n`` random resized crops (torchvision's sampling rule, drawn from ``gen``) of a preprocessed
    image ``pixels`` (3, H, W), each resized back to H x W and flipped with probability 1/2 when
    ``flip``; with ``keep_original`` the image itself comes first: (n + 1, 3, H, W).

    Cropping and resizing commute with the per-channel normalisation, so augmenting the
    normalised tensor equals augmenting the image and then normalising.
    """
    from torchvision.transforms.functional import InterpolationMode, resized_crop

    if pixels.dim() != 3:
        raise ValueError(f"pixels must be one (3, H, W) image, got shape {tuple(pixels.shape)}")
    _, h, w = pixels.shape
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    out = [pixels] if keep_original else []
    for _ in range(n):
        # six uniform draws per view, the first decides the flip (a fixed count: seeded views never change)
        flip_draw = torch.rand(6, generator=gen)[0].item()
        box = None
        for attempt in range(10):  # torchvision's RandomResizedCrop.get_params, on our generator
            target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item())
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                box = (top, left, ch, cw)
                break
        if box is None:  # fall back to the centre crop
            box = ((h - min(h, w)) // 2, (w - min(h, w)) // 2, min(h, w), min(h, w))
        view = resized_crop(pixels, *box, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        if flip and flip_draw < 0.5:
            view = view.flip(-1)
        out.append(view)
    return torch.stack(out)


# --------------------------------------------------------------------------- DiffTPT's views


class DiffusionViews(Configurable):
    """Views of a test image generated by a diffusion pipeline (DiffTPT), filtered by CLIP cosine.

    Each view is img2img from the test image with an empty prompt (no class
    information enters), ``strength`` of the way back from noise; ``generate``
    views are made and the ``keep`` most similar to the test image (cosine of
    CLIP image features) are kept.

    Args:
        generator: a ``DiffusersGenerator`` or its registry name (default the shipped ``offline:t2i``).
        generate, keep: how many views to generate, and keep.
        strength, steps, guidance: img2img settings (guidance 1: no classifier-free guidance).
        seed: seeds the noise (view ``k`` of image ``i`` has its own generator).
    """

    def __init__(self, generator: Any = "offline:t2i", *, generate: int = 16, keep: int = 8, strength: float = 0.5,
                 steps: int = 10, guidance: float = 1.0, seed: int = 0):
        from mmopt import registry

        if isinstance(generate, bool) or not isinstance(generate, int) or generate < 1:
            raise ValueError(f"generate must be an int >= 1, got {generate!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= generate:
            raise ValueError(f"keep must be an int in 1..generate ({generate}), got {keep!r}")
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        self.generator = registry.create("generator", generator) if isinstance(generator, (str, dict)) else generator
        pipe = getattr(self.generator, "pipe", None)
        if pipe is None or not hasattr(pipe, "vae") or not hasattr(pipe, "unet"):
            raise TypeError(f"DiffusionViews needs a Stable-Diffusion-style DiffusersGenerator, got "
                            f"{type(self.generator).__name__}")
        from diffusers import StableDiffusionImg2ImgPipeline

        parts = {k: v for k, v in pipe.components.items()
                 if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
        self.pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.generate, self.keep, self.strength = generate, keep, float(strength)
        self.steps, self.guidance, self.seed = steps, float(guidance), seed
        self.register_config(generator=describe(self.generator), generate=generate, keep=keep,
                             strength=self.strength, steps=steps, guidance=self.guidance, seed=seed)

    @torch.no_grad()
    def __call__(self, image: Any, index: int, adapter: CLIPPromptAdapter) -> torch.Tensor:
        """Preprocessed pixels (keep, 3, H, W) of the kept generated views of test image ``index``."""
        from mmopt.scorers.clip import _as_rgb

        image = _as_rgb(image, "the test image")
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        src = image.resize((size, size)) if image.size != (size, size) else image
        device = self.pipe.device
        gens = [torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + index * 1009 + k)
                for k in range(self.generate)]
        out = self.pipe(prompt=[""] * self.generate, image=[src] * self.generate, strength=self.strength,
                        num_inference_steps=self.steps, guidance_scale=self.guidance, generator=gens).images
        pixels = adapter.pixels(out)
        target = adapter.image_features([image])[0]
        sims = adapter.image_features(pixels) @ target
        return pixels[torch.argsort(sims, descending=True)[: self.keep]]


# --------------------------------------------------------------------------- TPT


def _context_fingerprint(ctx: torch.Tensor) -> str:
    return "ctx-" + hashlib.sha256(ctx.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class TPT(Configurable):
    """Test-time prompt tuning; see the module docstring.

    Args:
        clip: a :class:`CLIPPromptAdapter` or an open_clip name (default ``offline:clip``; with a
            saved ``context`` file, default the model it was learned with).
        init: the hand-written start: a phrase whose embeddings are the context ("a photo of a").
        context: instead of ``init``, a learned CoOp context: a fitted ``CoOp`` (or KgCoOp), or the
            path of its saved ``.safetensors`` file. Its layout (length, class position) is kept.
        views: views per test image including the original (64 in the paper).
        fraction: the share of lowest-entropy views kept (0.1).
        steps, lr: AdamW steps and learning rate per test image (1, 5e-3).
        flip, scale: the crops' flips and area range (torchvision's (0.08, 1)).
        diffusion: optional :class:`DiffusionViews`; its kept views replace as many crops.
        position, suffix: the prompt layout when starting from ``init``.
        seed: seeds the views (image ``i`` has its own generator, so results do not depend on order).
    """

    name = "tpt"

    def __init__(self, clip: Any = None, *, init: str | None = "a photo of a", context: Any = None,
                 views: int = 64, fraction: float = 0.1, steps: int = 1, lr: float = 5e-3, flip: bool = True,
                 scale: tuple[float, float] = (0.08, 1.0), diffusion: DiffusionViews | None = None,
                 position: str = "end", suffix: str = ".", seed: int = 0):
        from mmopt.prompt_learning.coop import CoOp, as_adapter

        # 1. check arguments
        if isinstance(views, bool) or not isinstance(views, int) or views < 2:
            raise ValueError(f"views must be an int >= 2 (the original plus augmented views), got {views!r}")
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if diffusion is not None and not isinstance(diffusion, DiffusionViews):
            raise TypeError(f"diffusion must be a DiffusionViews, got {type(diffusion).__name__}")
        if diffusion is not None and diffusion.keep >= views:
            raise ValueError(f"diffusion keeps {diffusion.keep} views but only {views - 1} are not the original")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        # 2. the starting context: a phrase or a learned CoOp context
        if context is not None:
            learner = CoOp.load(context, clip) if isinstance(context, (str, os.PathLike)) else context
            if not isinstance(learner, CoOp) or learner.ctx is None:
                raise TypeError("context must be a fitted CoOp/KgCoOp learner or the path of its saved context")
            if learner.name == "cocoop":
                raise ValueError("TPT starts from a CoOp or KgCoOp context; CoCoOp's depends on the image")
            self.adapter = learner.adapter
            self.ctx0 = learner.ctx.detach().clone()
            self.n_ctx, position, suffix = learner.n_ctx, learner.position, learner.suffix
            start = {"context": _context_fingerprint(self.ctx0), "from": learner.name}
            init = None
        else:
            if init is None:
                raise ValueError("give init (a phrase such as 'a photo of a') or context (a CoOp context)")
            self.adapter = as_adapter(clip or "offline:clip")
            self.ctx0 = self.adapter.phrase_embeddings(init)
            self.n_ctx = len(self.ctx0)
            start = {"init": init}
        self.init, self.views, self.fraction, self.steps, self.lr = init, views, float(fraction), steps, float(lr)
        self.flip, self.scale, self.diffusion = bool(flip), (float(lo), float(hi)), diffusion
        self.position, self.suffix, self.seed = position, suffix, seed
        self.register_config(clip=describe(self.adapter), **start, n_ctx=self.n_ctx, views=views,
                             fraction=self.fraction, steps=steps, lr=self.lr, optimizer="AdamW", flip=self.flip,
                             scale=list(self.scale), diffusion=describe(diffusion), position=position,
                             suffix=suffix, seed=seed)

    # ------------------------------------------------------------------ one image

    def make_views(self, pixels: torch.Tensor, index: int, image: Any = None) -> torch.Tensor:
        """The (views, 3, H, W) batch of test image ``index``: the original, diffusion views, crops."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        extra = []
        if self.diffusion is not None:
            extra = [self.diffusion(image, index, self.adapter)]
        n_crops = self.views - 1 - sum(len(e) for e in extra)
        crops = augment_views(pixels, n_crops, gen, scale=self.scale, flip=self.flip)
        return torch.cat([crops[:1], *extra, crops[1:]]) if extra else crops

    def tune(self, feats: torch.Tensor, prompts) -> torch.Tensor:
        """The context after ``steps`` entropy-minimisation steps on the view features ``feats``
        (normalised, (views, D)); the starting context is untouched (the reset is free)."""
        ctx = torch.nn.Parameter(self.ctx0.clone())
        opt = torch.optim.AdamW([ctx], lr=self.lr)  # a fresh optimizer per image: its state resets too
        scale = self.adapter.logit_scale
        for _ in range(self.steps):
            logits = scale * feats @ self.adapter.text_features(prompts, ctx).T
            loss = avg_entropy(logits[select_confident(logits.detach(), self.fraction)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return ctx.detach()

    def predict(self, images: Sequence[Any], classnames: Sequence[str],
                progress: Callable[[int], None] | None = None) -> dict:
        """Predictions for ``images`` among ``classnames``: ``{"pred", "pred_start", "seconds"}``
        (``pred_start``: the starting prompt's prediction, i.e. without tuning)."""
        # 1. prompts and the starting prompt's text features, once for all images
        prompts = self.adapter.prompts(list(classnames), self.n_ctx, self.position, self.suffix)
        with torch.no_grad():
            text0 = self.adapter.text_features(prompts, self.ctx0)
        scale = self.adapter.logit_scale
        pixels = self.adapter.pixels(list(images))
        preds, starts = [], []
        t0 = time.perf_counter()
        for i in range(len(pixels)):
            # 2. every view in one forward of the frozen image tower
            views = self.make_views(pixels[i], i, images[i] if self.diffusion is not None else None)
            with torch.no_grad():
                feats = F.normalize(self.adapter.model.encode_image(views).float(), dim=-1)
            starts.append(int((feats[0] @ text0.T).argmax()))
            # 3. tune on the confident views, predict the original, reset (ctx0 is never changed)
            ctx = self.tune(feats, prompts)
            with torch.no_grad():
                preds.append(int((scale * feats[0] @ self.adapter.text_features(prompts, ctx).T).argmax()))
            if progress is not None:
                progress(i + 1)
        return {"pred": preds, "pred_start": starts, "seconds": time.perf_counter() - t0}

    def evaluate(self, data: ImageSet, progress: Callable[[int], None] | None = None) -> dict:
        """Accuracy on ``data`` with and without tuning (``start_accuracy``), how many images tuning
        ``fixed`` and ``broken``, and the speed (images per second)."""
        if not len(data):
            raise ValueError("no images to evaluate")
        loaded = data.load()
        out = self.predict(loaded.images, data.classnames, progress)
        labels = torch.tensor(data.labels)
        right, right0 = torch.tensor(out["pred"]) == labels, torch.tensor(out["pred_start"]) == labels
        # the paired view: images tuning made right, and images it made wrong
        return {"accuracy": float(right.float().mean()), "start_accuracy": float(right0.float().mean()),
                "fixed": int((right & ~right0).sum()), "broken": int((~right & right0).sum()),
                "images": len(data), "seconds": out["seconds"], "images_per_s": len(data) / out["seconds"]}


__all__ = ["TPT", "DiffusionViews", "entropy", "select_confident", "avg_entropy", "augment_views"]
