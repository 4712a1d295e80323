"""PEZ: hard prompts from images by projected gradient descent (Wen et al., "Hard Prompts Made
Easy: Gradient-Based Discrete Optimization for Prompt Tuning and Discovery", NeurIPS 2023).

A prompt of ``length`` free token embeddings is optimised so that CLIP's text
feature of ``[SOT] p_1 .. p_L [EOT]`` matches the target images' features.
Every step projects the embeddings to their nearest vocabulary tokens (cosine),
runs the forward pass on the *projected* tokens, and applies the gradient to the
continuous embeddings (straight-through). The best projected prompt seen is
kept and decoded to text. Paper defaults: length 16, 3000 steps, AdamW lr 0.1,
weight decay 0.1.

Uses of the inverted prompt: ``mmopt invert IMAGE...`` prints and stores it;
:func:`invert_and_optimize` hands it to the one optimization loop as the intent
(the first candidate), scored by :class:`ImageSimilarityScorer` against the
target image, so the LLM refines it (image -> prompt -> refine).

>>> PEZ("offline:clip", steps=300).invert([image])["prompt"]        # doctest: +SKIP
'red disc circles drawing'
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmopt.component import Configurable, describe
from mmopt.types import Generation, Score


def project(embeds: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor | None = None, *,
            normalized: torch.Tensor | None = None) -> torch.Tensor:
    """Ids (L,) of the vocabulary tokens nearest (cosine) to each row of ``embeds`` (L, W),
    among ``allowed`` token ids when given. ``normalized``: the allowed rows of ``table``
    already L2-normalised (computed once per inversion instead of once per step)."""
    if normalized is None:
        normalized = F.normalize(table if allowed is None else table[allowed], dim=-1)
    best = (F.normalize(embeds, dim=-1) @ normalized.T).argmax(dim=-1)
    return best if allowed is None else allowed[best]


class PEZ(Configurable):
    """Invert images into a hard prompt of ``length`` vocabulary tokens.

    Args:
        clip: a :class:`~mmopt.prompt_learning.adapter.CLIPPromptAdapter` or an open_clip name.
        length: prompt tokens (16).
        steps, lr, weight_decay: AdamW on the continuous embeddings (3000, 0.1, 0.1).
        vocabulary: None for the whole vocabulary (minus start/end tokens), or words whose
            tokens alone may appear (e.g. a domain's words).
        seed: seeds the random starting tokens.
    """

    name = "pez"

    def __init__(self, clip: Any = "offline:clip", *, length: int = 16, steps: int = 3000, lr: float = 0.1,
                 weight_decay: float = 0.1, vocabulary: Sequence[str] | None = None, seed: int = 0):
        from mmopt.prompt_learning.adapter import as_adapter

        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.adapter = as_adapter(clip)
        if length > self.adapter.context_length - 2:
            raise ValueError(f"length {length} does not fit the {self.adapter.context_length}-token window "
                             f"(at most {self.adapter.context_length - 2})")
        self.length, self.steps, self.lr, self.weight_decay, self.seed = length, steps, float(lr), float(weight_decay), seed
        self.vocabulary = None if vocabulary is None else sorted({str(w).strip() for w in vocabulary if str(w).strip()})
        self.allowed = self._allowed_ids()
        self.register_config(clip=describe(self.adapter), length=length, steps=steps, lr=self.lr,
                             weight_decay=self.weight_decay, vocabulary=self.vocabulary, seed=seed,
                             projection="cosine nearest token, straight-through")

    def _allowed_ids(self) -> torch.Tensor:
        """Token ids the prompt may use: every token but start/end (and padding), or the vocabulary's."""
        if self.vocabulary is None:
            ids = [i for i in range(self.adapter.vocab_size) if i not in (self.adapter.sot, self.adapter.eot, 0)]
        else:
            ids = sorted({t for w in self.vocabulary for t in self.adapter.tokenize(w)})
            if not ids:
                raise ValueError(f"the vocabulary {self.vocabulary[:5]} has no tokens")
        return torch.tensor(ids, device=self.adapter.device)

    def _layout(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Start/end token embeddings around ``length`` slots, and the end position."""
        a = self.adapter
        ids = torch.tensor([[a.sot] + [0] * self.length + [a.eot]], device=a.device).repeat(n, 1)
        with torch.no_grad():
            base = a.text.token_embedding(ids).float()
        return base, torch.full((n,), self.length + 1, device=a.device)

    def similarity_of_ids(self, ids: torch.Tensor, target: torch.Tensor) -> float:
        """Mean cosine of the prompt made of token ``ids`` to the target features (N, D)."""
        base, eot = self._layout()
        x = base.clone()
        with torch.no_grad():
            x[0, 1:1 + self.length] = self.adapter.text.token_embedding(ids).float()
            feat = self.adapter.encode_token_embeddings(x, eot)[0]
        return float((target @ feat).mean())

    def similarity_of_text(self, text: str, target: torch.Tensor) -> float:
        """Mean cosine of a written prompt to the target features (what a user of the text gets)."""
        return float((target @ self.adapter.encode_texts([text], truncate=True)[0]).mean())

    def invert(self, images: Sequence[Any], progress: Callable[[int, int, float], None] | None = None) -> dict:
        """The hard prompt for ``images`` (PIL images; several are matched on average).

        Returns ``{"prompt", "similarity" (of the written prompt, re-tokenised),
        "projected_similarity" (of the best token ids), "token_ids", "best_step", "seconds"}``.
        """
        # 1. targets, and the starting tokens drawn from the allowed ones
        if isinstance(images, (str, os.PathLike)) or not len(images):
            raise ValueError("images must be a non-empty list of images")
        t0 = time.perf_counter()
        target = self.adapter.image_features(list(images))
        gen = torch.Generator().manual_seed(self.seed)
        table = self.adapter.token_embedding_matrix.float()
        start = self.allowed[torch.randint(len(self.allowed), (self.length,), generator=gen).to(self.allowed.device)]
        embeds = torch.nn.Parameter(table[start].clone())
        opt = torch.optim.AdamW([embeds], lr=self.lr, weight_decay=self.weight_decay)
        base, eot = self._layout()
        normalized = F.normalize(table[self.allowed], dim=-1)
        best = (-2.0, start, 0)
        # 2. project, forward on the projection, straight-through gradient to the continuous embeddings
        for step in range(self.steps):
            ids = project(embeds.detach(), table, self.allowed, normalized=normalized)
            hard = table[ids]
            x_slots = embeds + (hard - embeds).detach()  # value: the tokens; gradient: to embeds
            x = torch.cat([base[:, :1], x_slots[None], base[:, 1 + self.length:]], dim=1)
            feat = self.adapter.encode_token_embeddings(x, eot)[0]
            sim = (target @ feat).mean()
            if float(sim.detach()) > best[0]:
                best = (float(sim.detach()), ids.clone(), step)
            loss = 1 - sim
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, self.steps, best[0])
        # 3. decode the best tokens; the written text is what users get, so score it as text
        prompt = self.adapter.decode(best[1].tolist())
        return {"prompt": prompt, "similarity": self.similarity_of_text(prompt, target),
                "projected_similarity": best[0], "token_ids": best[1].tolist(), "best_step": best[2],
                "seconds": time.perf_counter() - t0}

    def random_prompt(self, seed: int) -> str:
        """A prompt of ``length`` random allowed tokens (the baseline PEZ must beat)."""
        gen = torch.Generator().manual_seed(seed)
        ids = self.allowed[torch.randint(len(self.allowed), (self.length,), generator=gen).to(self.allowed.device)]
        return self.adapter.decode(ids.tolist())


class ImageSimilarityScorer(Configurable):
    """Scores generations by CLIP image-image cosine to target images (mean over targets).

    The target is fixed at construction (its files' fingerprints are the
    config), so it is the same for every candidate: the intent text is not used.
    ``value_range`` is (-1, 1).
    """

    value_range = (-1.0, 1.0)

    def __init__(self, clip: Any = "offline:clip", targets: Sequence[Any] = (), *, name: str | None = None):
        from mmopt.fingerprint import file_fingerprint
        from mmopt.prompt_learning.adapter import as_adapter
        from mmopt.store import encode_png

        if isinstance(targets, (str, os.PathLike)) or not len(targets):
            raise ValueError("ImageSimilarityScorer needs target images (paths or PIL images)")
        self.adapter = as_adapter(clip)
        images, ident = [], []
        for t in targets:
            if isinstance(t, (str, os.PathLike)):
                from mmopt.prompt_learning.data import _open

                ok, value = _open(t)
                if not ok:
                    raise ValueError(f"cannot read target image {str(t)!r}: {value}")
                images.append(value)
                ident.append(file_fingerprint(t))
            else:
                images.append(t.convert("RGB"))
                ident.append("png-" + hashlib.sha256(encode_png(images[-1])).hexdigest()[:16])
        self.targets = self.adapter.image_features(images)
        self.name = name or f"imagesim:{self.adapter.clip_name}"
        self.register_config(clip=describe(self.adapter), targets=ident)

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        images = [g.media[0] if isinstance(g.media, (list, tuple)) else g.media for g in generations]
        if any(im is None for im in images):
            raise ValueError("ImageSimilarityScorer needs generations with images")
        if not images:
            return []
        sims = self.adapter.image_features(images) @ self.targets.T
        return [Score(self.name, float(s.mean()), {"cosine": [float(v) for v in s]}) for s in sims]


def image_similarity_from_name(rest: str = "", *, targets: Sequence[Any] = (), **kwargs: Any) -> ImageSimilarityScorer:
    """Registry factory: ``{"name": "imagesim:<clip>", "kwargs": {"targets": ["target.png"]}}``
    (``imagesim`` alone uses ``offline:clip``)."""
    return ImageSimilarityScorer(rest or "offline:clip", targets, **kwargs)


def invert_and_optimize(images: Sequence[Any], *, pez: PEZ | None = None, generator: Any = "offline:t2i",
                        llm: Any = "smollm2", proposer: Any = "opt2i", iterations: int = 3, candidates: int = 3,
                        seeds: int = 2, store: Any = None, callbacks: Sequence = (),
                        inverted: dict | None = None) -> tuple[dict, Any]:
    """Image -> prompt -> refine: invert ``images`` with PEZ, then optimise the prompt in the one loop.

    The inverted prompt is the intent (trial 0); every candidate's images are scored
    by CLIP image similarity to the targets. ``inverted``: a result of ``pez.invert(images)``
    already computed. Returns ``(pez_result, optimizer_result)``.
    """
    from mmopt.optimizer import Budget, Optimizer

    pez = pez or PEZ()
    inverted = inverted or pez.invert(images)
    if not inverted["prompt"].strip():
        raise ValueError("the inverted prompt is empty (every token decoded to nothing); try another seed")
    scorer = ImageSimilarityScorer(pez.adapter, images)
    opt = Optimizer(generator, [scorer], proposer, llm=llm, budget=Budget(iterations=iterations),
                    candidates=candidates, seeds=seeds, store=store, callbacks=callbacks)
    return inverted, opt.run(inverted["prompt"])


__all__ = ["PEZ", "project", "ImageSimilarityScorer", "image_similarity_from_name", "invert_and_optimize"]
