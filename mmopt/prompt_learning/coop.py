"""CoOp: learned context vectors for CLIP's class prompts (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022).

The prompt of class ``c`` is ``[SOT] v_1 .. v_M CLASS_c . [EOT]``; the M context
vectors ``v`` (default 16) are learned from a few labelled images by
cross-entropy over CLIP's cosine logits, with CLIP frozen. They start as
N(0, 0.02) noise or as the embeddings of a phrase (``init="a photo of a"``, M is
then its token count); one context for all classes (unified) or one per class
(``csc=True``); the class name at the end, in the middle or at the front.
Training follows the paper's recipe: SGD (momentum 0.9, weight decay 5e-4),
lr 0.002 with a cosine schedule, one warm-up epoch at 1e-5, batch 32, and 50 /
100 / 200 epochs for 1-2 / 4-8 / 16 shots when ``epochs`` is not given.

One deviation, for speed, stated in ``config()``: CLIP's image tower is frozen,
so image features are computed once and reused every epoch; the paper's random
crops and flips are not applied unless asked for with ``augment_views > 0``
(that many augmented copies per image, encoded once).

CoCoOp (``cocoop.py``) and KgCoOp (``kgcoop.py``) are this class with another
context or another loss (the hooks ``_context`` and ``_loss``).

>>> coop = CoOp("offline:clip")                                    # doctest: +SKIP
>>> coop.fit(train).accuracy(test)                                  # doctest: +SKIP
0.87
>>> coop.save("ctx.safetensors"); CoOp.load("ctx.safetensors")     # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmopt.component import Configurable, describe
from mmopt.prompt_learning.adapter import POSITIONS, CLIPPromptAdapter, PromptBatch, as_adapter
from mmopt.prompt_learning.data import ImageSet

#: The learners whose contexts :meth:`CoOp.load` reads back (``mmopt.prompt_learning.METHODS``).
METHOD_NAMES = ("coop", "cocoop", "kgcoop")
#: Progress callback: ``progress(epoch, epochs, loss)`` after every epoch.
Progress = Callable[[int, int, float], None]


def coop_epochs(shots: int) -> int:
    """CoOp's epochs for ``shots`` images per class: 50 (1-2), 100 (4-8), 200 (16 and more)."""
    return 50 if shots <= 2 else 100 if shots <= 8 else 200


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_float(name: str, value: Any, low: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


class CoOp(Configurable):
    """Context Optimization. See the module docstring for the method and its defaults.

    Args:
        clip: a :class:`CLIPPromptAdapter` or an open_clip name (``"offline:clip"``, ``"ViT-B-16/openai"``).
        n_ctx: context vectors M (default 16, or the token count of ``init``).
        init: None (N(0, ``init_std``)) or a phrase whose embeddings start the context.
        position: where the class name goes: "end", "middle" or "front".
        csc: class-specific context (one M x W block per class) instead of one shared.
        epochs: training epochs; None for CoOp's schedule by shots (:func:`coop_epochs`).
        lr, batch_size, warmup_epochs, warmup_lr, momentum, weight_decay: the SGD recipe.
        seed: seeds the initialisation and the batch order (a local ``torch.Generator``).
        augment_views: augmented copies per training image (random crop, flip when ``flip``),
            encoded once; 0 uses the images as they are.
        flip: allow horizontal flips in the augmented copies (off where a flip changes the label).
        suffix: text after the class name (CoOp's ".").
    """

    name = "coop"

    def __init__(self, clip: Any = "offline:clip", *, n_ctx: int | None = None, init: str | None = None,
                 position: str = "end", csc: bool = False, epochs: int | None = None, lr: float = 0.002,
                 batch_size: int = 32, warmup_epochs: int = 1, warmup_lr: float = 1e-5, momentum: float = 0.9,
                 weight_decay: float = 5e-4, seed: int = 0, init_std: float = 0.02, augment_views: int = 0,
                 flip: bool = True, suffix: str = "."):
        # 1. check every argument before a model loads
        if init is not None and (not isinstance(init, str) or not init.strip()):
            raise ValueError(f"init must be None or a non-empty phrase such as 'a photo of a', got {init!r}")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if epochs is not None:
            _check_int("epochs", epochs, 1)
        _check_float("lr", lr)
        _check_int("batch_size", batch_size, 1)
        _check_int("warmup_epochs", warmup_epochs, 0)
        _check_float("warmup_lr", warmup_lr)
        _check_float("momentum", momentum, 0.0, strict=False)
        _check_float("weight_decay", weight_decay, 0.0, strict=False)
        _check_float("init_std", init_std)
        _check_int("augment_views", augment_views, 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        # 2. the model, and the context length the phrase implies
        self.adapter = as_adapter(clip)
        if init is not None:
            n_init = len(self.adapter.tokenize(init))
            if n_ctx is not None and n_ctx != n_init:
                raise ValueError(f"init {init!r} has {n_init} tokens but n_ctx={n_ctx}; leave n_ctx out "
                                 "(it follows the phrase) or give a phrase of that length")
            n_ctx = n_init
        n_ctx = 16 if n_ctx is None else _check_int("n_ctx", n_ctx, 1)
        self.n_ctx, self.init, self.position, self.csc = n_ctx, init, position, bool(csc)
        self.epochs, self.lr, self.batch_size = epochs, float(lr), batch_size
        self.warmup_epochs, self.warmup_lr = warmup_epochs, float(warmup_lr)
        self.momentum, self.weight_decay, self.seed = float(momentum), float(weight_decay), seed
        self.init_std, self.augment_views, self.flip, self.suffix = float(init_std), augment_views, bool(flip), suffix
        self.register_config(**self._settings())
        # 3. what fit() learns
        self.ctx: torch.Tensor | None = None
        self.classnames: tuple[str, ...] | None = None
        self.history: list[dict] = []
        self.fit_info: dict = {}

    def _settings(self) -> dict:
        """The arguments that change what is learned (the config; subclasses add theirs)."""
        return {"clip": describe(self.adapter), "n_ctx": self.n_ctx, "init": self.init, "position": self.position,
                "csc": self.csc, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "warmup_epochs": self.warmup_epochs, "warmup_lr": self.warmup_lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "seed": self.seed, "init_std": self.init_std,
                "augment_views": self.augment_views, "flip": self.flip, "suffix": self.suffix,
                "image_features": "frozen tower, computed once"}

    # ------------------------------------------------------------------ hooks for CoCoOp / KgCoOp

    def _init_extra(self, gen: torch.Generator, prompts: PromptBatch) -> list[torch.nn.Parameter]:
        """Extra trainable parameters (CoCoOp's meta-network); none for CoOp."""
        return []

    def _logits(self, feats: torch.Tensor, prompts: PromptBatch, ctx: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) of normalised image features against the prompts with context ``ctx``."""
        text = self.adapter.text_features(prompts, ctx)
        return self.adapter.logit_scale * feats @ text.T

    def _loss(self, feats: torch.Tensor, labels: torch.Tensor, prompts: PromptBatch, ctx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._logits(feats, prompts, ctx), labels)

    # ------------------------------------------------------------------ training

    def _lr_at(self, epoch: int, epochs: int) -> float:
        """Constant warm-up at ``warmup_lr``, then the cosine schedule over all epochs (Dassl's)."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * epoch / epochs))

    def initial_context(self, n_classes: int, gen: torch.Generator) -> torch.Tensor:
        """The starting context: the phrase's embeddings or N(0, init_std), (M, W) or (C, M, W)."""
        w = self.adapter.width
        if self.init is not None:
            ctx = self.adapter.phrase_embeddings(self.init)
        else:
            shape = (n_classes, self.n_ctx, w) if self.csc else (self.n_ctx, w)
            return (torch.randn(shape, generator=gen) * self.init_std).to(self.adapter.device)
        return ctx[None].repeat(n_classes, 1, 1) if self.csc else ctx

    def _train_features(self, train: ImageSet, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image features of the training images (and of augmented copies), with labels."""
        from mmopt.prompt_learning.views import augment_views

        pixels = self.adapter.pixels(train.load().images)
        feats = [self.adapter.image_features(pixels)]
        labels = [torch.tensor(train.labels)]
        for _ in range(self.augment_views):
            views = torch.stack([augment_views(p, 1, gen, flip=self.flip, keep_original=False)[0] for p in pixels])
            feats.append(self.adapter.image_features(views))
            labels.append(torch.tensor(train.labels))
        return torch.cat(feats), torch.cat(labels).to(self.adapter.device)

    def fit(self, train: ImageSet, progress: Progress | None = None) -> "CoOp":
        """Learn the context from ``train`` (every class needs at least one image); returns self."""
        # 1. check the data
        if not isinstance(train, ImageSet):
            raise TypeError(f"train must be an ImageSet, got {type(train).__name__}")
        counts = train.per_class()
        empty = [train.classnames[c] for c, n in counts.items() if n == 0]
        if empty:
            raise ValueError(f"classes without training images: {empty[:5]}; every class needs at least one")
        shots = min(counts.values())
        epochs = self.epochs or coop_epochs(shots)
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        # 2. prompts, initial context, extra parameters (seeded), image features once
        prompts = self.adapter.prompts(train.classnames, self.n_ctx, self.position, self.suffix)
        ctx = torch.nn.Parameter(self.initial_context(len(train.classnames), gen).clone())
        extra = self._init_extra(gen, prompts)
        feats, labels = self._train_features(train, gen)
        opt = torch.optim.SGD([ctx, *extra], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        # 3. epochs of shuffled mini-batches
        self.history = []
        n = len(labels)
        for epoch in range(epochs):
            for g in opt.param_groups:
                g["lr"] = self._lr_at(epoch, epochs)
            order = torch.randperm(n, generator=gen).to(labels.device)
            total, seen = 0.0, 0
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = self._loss(feats[idx], labels[idx], prompts, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            self.history.append({"epoch": epoch, "loss": total / seen, "lr": opt.param_groups[0]["lr"]})
            if progress is not None:
                progress(epoch + 1, epochs, total / seen)
        self.ctx = ctx.detach()
        self.classnames = tuple(train.classnames)
        self.fit_info = {"epochs": epochs, "shots": shots, "images": len(train), "steps": epochs * math.ceil(n / self.batch_size),
                         "seconds": round(time.perf_counter() - t0, 3), "final_loss": self.history[-1]["loss"]}
        return self

    # ------------------------------------------------------------------ inference

    def _require_fit(self) -> None:
        if self.ctx is None:
            raise ValueError(f"{type(self).__name__} has no learned context yet: call fit() or load() first")

    def _eval_prompts(self, classnames: Sequence[str] | None) -> PromptBatch:
        self._require_fit()
        classnames = tuple(classnames or self.classnames)
        if self.csc and classnames != self.classnames:
            raise ValueError("a class-specific context (csc=True) only classifies the classes it was trained on; "
                             f"trained on {len(self.classnames)} classes, asked about {len(classnames)} others")
        return self.adapter.prompts(classnames, self.n_ctx, self.position, self.suffix)

    @torch.no_grad()
    def logits(self, images: Sequence[Any] | torch.Tensor, classnames: Sequence[str] | None = None, *,
               features: bool = False) -> torch.Tensor:
        """Logits (N, C) of images (PIL images, pixels, or normalised features with ``features=True``)
        over ``classnames`` (default: the training classes; new classes work with a unified context)."""
        prompts = self._eval_prompts(classnames)
        feats = images if features else self.adapter.image_features(images)
        out = [self._logits(feats[i:i + 256], prompts, self.ctx) for i in range(0, len(feats), 256)]
        return torch.cat(out)

    def accuracy(self, data: ImageSet) -> float:
        """Top-1 accuracy on ``data`` among its own classes."""
        if not len(data):
            raise ValueError("no images to evaluate")
        pred = self.logits(data.load().images, data.classnames).argmax(dim=1).cpu()
        return float((pred == torch.tensor(data.labels)).float().mean())

    # ------------------------------------------------------------------ files

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx}

    def save(self, path: str | os.PathLike) -> str:
        """Write the learned context (safetensors) with the config and class names as metadata."""
        from safetensors.torch import save_file

        self._require_fit()
        meta = {"method": self.name, "clip_name": self.adapter.clip_name, "config": json.dumps(self.config()),
                "classnames": json.dumps(list(self.classnames)), "fit": json.dumps(self.fit_info)}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self._tensors().items()}
        save_file(tensors, str(path), metadata=meta)
        return str(path)

    @classmethod
    def load(cls, path: str | os.PathLike, clip: Any = None) -> "CoOp":
        """A learner with the context saved by :meth:`save` (``clip`` overrides the saved model name)."""
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise ValueError(f"no learned context file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a file that is not safetensors
            raise ValueError(f"{str(path)!r} is not a safetensors context file: {e}") from e
        if "config" not in meta or "ctx" not in tensors:
            raise ValueError(f"{str(path)!r} holds no mmopt learned context (no config / ctx)")
        import inspect

        from mmopt.prompt_learning import method_class

        method = meta.get("method")
        learner_cls = method_class(method) if method in METHOD_NAMES else None
        if learner_cls is None or not issubclass(learner_cls, cls):
            raise ValueError(f"{str(path)!r} holds a {method!r} context, not a {cls.name!r} one")
        cfg = json.loads(meta["config"])
        # every keyword any __init__ of the class's line takes (CoCoOp passes CoOp's on as **kwargs)
        params = {p for k in learner_cls.__mro__ if "__init__" in vars(k) and k is not object
                  for p in inspect.signature(k.__init__).parameters}
        args = {k: v for k, v in cfg.items() if k in params and k not in ("clip", "self", "kwargs")}
        learner = learner_cls(clip or meta.get("clip_name") or "offline:clip", **args)
        if tensors["ctx"].shape[-1] != learner.adapter.width:
            raise ValueError(f"the context in {str(path)!r} has width {tensors['ctx'].shape[-1]}, but the text "
                             f"width of {learner.adapter.model_name!r} is {learner.adapter.width}: another CLIP")
        learner._load_tensors({k: v.to(learner.adapter.device) for k, v in tensors.items()})
        learner.classnames = tuple(json.loads(meta.get("classnames", "[]")))
        learner.fit_info = json.loads(meta.get("fit", "{}"))
        return learner

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ctx = tensors["ctx"]


def zero_shot_accuracy(adapter: CLIPPromptAdapter, template: str, data: ImageSet,
                       features: torch.Tensor | None = None) -> float:
    """Top-1 accuracy of the hand-written ``template`` on ``data`` (CLIP zero-shot)."""
    text = adapter.template_features(template, data.classnames)
    feats = adapter.image_features(data.load().images) if features is None else features
    pred = (feats @ text.T).argmax(dim=1).cpu()
    return float((pred == torch.tensor(data.labels)).float().mean())


__all__ = ["CoOp", "coop_epochs", "zero_shot_accuracy"]
