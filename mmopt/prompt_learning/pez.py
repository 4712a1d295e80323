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
from mmopt.prompt_learning.templates import _template_pieces, check_opposites, load_templates, reverse_relations
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

    def invert_template(self, images: Sequence[Any], template: str, slots: dict[str, Sequence[str]],
                        steps: int | None = None,
                        progress: Callable[[int, int, float], None] | None = None, keep: int = 2) -> dict:
        """PEZ inside a sentence: ``template``'s ``{slot}`` places are optimised, its other words kept.

        Each place holds one word of ``slots[name]`` (a word may be several tokens). As in
        :meth:`invert`, every step projects each place's continuous vector to its nearest
        word (cosine to the mean of the word's token embeddings), runs the forward pass on
        the chosen words' tokens and applies their gradient to the vector (straight-through).
        So the written prompt is always a sentence of the template, which a generator with
        its own text encoder can read, where free tokens are only read by this CLIP.
        ``"runners_up"``: the ``keep`` next-best sentences the projection visited.

        >>> PEZ(steps=200).invert_template([img], "a {colour} {shape}", {"colour": ["red", "blue"],
        ...     "shape": ["circle", "square"]})["prompt"]                 # doctest: +SKIP
        'a red circle'
        """
        # 1. the template's pieces: fixed token runs and slot places with their words
        if isinstance(images, (str, os.PathLike)) or not len(images):
            raise ValueError("images must be a non-empty list of images")
        pieces = _template_pieces(template)
        for kind, name in pieces:
            if kind == "slot" and not slots.get(name):
                raise ValueError(f"the template {template!r} names the slot {{{name}}}, which has no words; "
                                 f"slots given: {sorted(slots)}")
        t0 = time.perf_counter()
        a = self.adapter
        table = a.token_embedding_matrix.float()
        # each slot's words that have tokens, tokenised once
        tokens = {name: {w: a.tokenize(w) for w in dict.fromkeys(slots[name])} for kind, name in pieces
                  if kind == "slot"}
        words = {name: [w for w, ids in ws.items() if ids] for name, ws in tokens.items()}
        word_ids = {name: [torch.tensor(tokens[name][w], device=a.device) for w in ws] for name, ws in words.items()}
        word_vecs = {name: F.normalize(torch.stack([table[ids].mean(0) for ids in idss]), dim=-1)
                     for name, idss in word_ids.items()}
        places = [name for kind, name in pieces if kind == "slot"]
        gen = torch.Generator().manual_seed(self.seed)
        start = [int(torch.randint(len(words[n]), (1,), generator=gen)) for n in places]
        vecs = torch.nn.Parameter(torch.stack([table[word_ids[n][k]].mean(0) for n, k in zip(places, start)]))
        opt = torch.optim.AdamW([vecs], lr=self.lr, weight_decay=self.weight_decay)
        target = a.image_features(list(images))
        fixed = {i: torch.tensor(a.tokenize(v), device=a.device, dtype=torch.long)
                 for i, (kind, v) in enumerate(pieces) if kind == "text"}
        sot, eot = table[a.sot][None], table[a.eot][None]
        best = (-2.0, start, 0)
        seen: dict[tuple, float] = {}  # every sentence the projection visited, with its best similarity
        steps = self.steps if steps is None else steps
        # 2. project each place to a word, forward on the words' tokens, straight-through to the vectors
        for step in range(steps):
            with torch.no_grad():
                choice = [int((word_vecs[n] @ F.normalize(vecs[j], dim=-1)).argmax()) for j, n in enumerate(places)]
            rows, j = [sot], 0
            for i, (kind, name) in enumerate(pieces):
                if kind == "text":
                    rows.append(table[fixed[i]])
                    continue
                hard = table[word_ids[name][choice[j]]]
                rows.append(hard + (vecs[j] - vecs[j].detach())[None])  # value: the word; gradient: to vecs[j]
                j += 1
            x = torch.cat([*rows, eot])[None]
            feat = a.encode_token_embeddings(x, torch.tensor([x.shape[1] - 1], device=a.device))[0]
            sim = (target @ feat).mean()
            if float(sim.detach()) > best[0]:
                best = (float(sim.detach()), choice, step)
            seen[tuple(choice)] = max(seen.get(tuple(choice), -2.0), float(sim.detach()))
            opt.zero_grad(set_to_none=True)
            (1 - sim).backward()
            opt.step()
            if progress is not None:
                progress(step + 1, steps, best[0])
        # 3. the best sentence, scored as written text; the runners-up kept for a choice by rendering
        def sentence(choice) -> str:
            fill = iter(words[n][k] for n, k in zip(places, choice))
            return " ".join(" ".join(v if kind == "text" else next(fill) for kind, v in pieces).split())

        prompt = sentence(best[1])
        runners = [(sentence(c), v) for c, v in sorted(seen.items(), key=lambda kv: -kv[1])[:keep + 1]]
        return {"prompt": prompt, "similarity": self.similarity_of_text(prompt, target),
                "projected_similarity": best[0], "best_step": best[2], "template": template,
                "runners_up": [{"prompt": text, "projected_similarity": v} for text, v in runners
                               if text != prompt][:keep],
                "seconds": time.perf_counter() - t0}

    def invert_templates(self, images: Sequence[Any], templates: Sequence[str], slots: dict[str, Sequence[str]],
                         steps: int | None = None,
                         progress: Callable[[int, int, float], None] | None = None, keep: int = 2,
                         opposites: dict[str, str] | None = None) -> dict:
        """:meth:`invert_template` for each of ``templates`` (``steps`` each); the one whose sentence
        matches the images best (CLIP cosine of the written text) wins. Adds ``"tried"``: every
        template's sentence, then each template's ``keep`` runners-up, with their text similarity
        (what ``invert_and_optimize(proposer="tried")`` chooses among by rendering them).
        ``opposites`` (word -> reverse, e.g. ``{"above": "below"}``, a template set's
        ``"opposites"``): each tried sentence with its relation words reversed is tried too,
        because CLIP's text encoder reads a sentence nearly as a bag of words and barely
        tells "a above b" from "a below b"; the generator, which draws the relation, can.
        ``progress(step, total, best)`` counts steps over all templates."""
        if isinstance(templates, str) or not templates:
            raise ValueError(f"templates must be a non-empty list of template strings, got {templates!r}")
        if opposites is not None:
            check_opposites(opposites)
        each = self.steps if steps is None else steps
        total, tried, best_so_far = each * len(templates), [], -2.0
        for k, t in enumerate(templates):
            def step_done(step, _steps, best, k=k):
                if progress is not None:
                    progress(k * each + step, total, max(best, best_so_far))
            tried.append(self.invert_template(images, t, slots, each, progress=step_done, keep=keep))
            best_so_far = max(best_so_far, tried[-1]["projected_similarity"])
        best = max(tried, key=lambda r: r["similarity"])
        target = self.adapter.image_features(list(images))
        runners = [{"template": r["template"], "prompt": u["prompt"],
                    "similarity": self.similarity_of_text(u["prompt"], target)}
                   for r in tried for u in r["runners_up"]]
        written = [{k: r[k] for k in ("template", "prompt", "similarity")} for r in tried] + runners
        seen = {r["prompt"] for r in written}
        for r in list(written) if opposites else []:
            flipped = reverse_relations(r["prompt"], opposites)
            if flipped not in seen:
                seen.add(flipped)
                written.append({"template": r["template"], "prompt": flipped,
                                "similarity": self.similarity_of_text(flipped, target), "reversed": True})
        return {**best, "tried": written, "seconds": sum(r["seconds"] for r in tried)}

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
                        inverted: dict | None = None, templates: Any = "shapesworld") -> tuple[dict, Any]:
    """Image -> prompt -> refine: invert ``images`` with PEZ, then optimise the prompt in the one loop.

    The inverted prompt is the intent (trial 0); every candidate's images are scored
    by CLIP image similarity to the targets. ``inverted``: a result of ``pez.invert(images)``
    (or ``pez.invert_templates``) already computed. Returns ``(pez_result, optimizer_result)``.

    ``proposer="tried"`` needs no LLM: the candidates are the other sentences that
    ``invert_templates`` wrote (each template's, their runners-up and reversals), all in
    one iteration, so the generator decides which of them it renders closest to the
    targets. CLIP's text-image match picks PEZ's own answer, and a sentence CLIP reads
    well is not always one the generator draws well. ``proposer="slots"`` (no LLM either)
    starts the same way (the first iteration filled up to ``candidates`` with the inverted
    sentence's neighbours), then for ``iterations`` more iterations proposes the best
    sentence's one-word neighbours in its template
    (:class:`~mmopt.proposers.slots.SlotEdits` over ``templates``, default the ShapesWorld
    set), up to ``candidates`` per iteration. ``seeds`` may be a list (keep them apart from
    the seeds you judge the result on).
    """
    from mmopt.optimizer import Budget, Optimizer

    pez = pez or PEZ()
    inverted = inverted or pez.invert(images)
    if not inverted["prompt"].strip():
        raise ValueError("the inverted prompt is empty (every token decoded to nothing); try another seed")
    if proposer in ("tried", "slots"):
        if not inverted.get("tried"):
            raise ValueError(f"proposer={proposer!r} needs the result of PEZ.invert_templates (its 'tried' "
                             "sentences); got a result without them")
        from mmopt.proposers.fixed import FixedProposer
        from mmopt.proposers.queue import QueueProposer

        ranked = sorted(inverted["tried"], key=lambda r: -r["similarity"])
        others = list(dict.fromkeys(r["prompt"] for r in ranked if r["prompt"] != inverted["prompt"]))
        if not others:
            raise ValueError("every template wrote the same sentence: nothing to choose from")
        if proposer == "tried":
            proposer, llm, iterations, candidates = FixedProposer([others]), None, 2, len(others)
        else:
            # iteration 1: every tried sentence at once (queued); after it, the best one's neighbours
            from mmopt.proposers.slots import SlotEdits

            proposer, llm = QueueProposer(SlotEdits(templates), queued=others), None
            candidates, iterations = max(candidates, len(others)), 2 + iterations
    scorer = ImageSimilarityScorer(pez.adapter, images)
    opt = Optimizer(generator, [scorer], proposer, llm=llm, budget=Budget(iterations=iterations),
                    candidates=candidates, seeds=seeds, store=store, callbacks=callbacks)
    return inverted, opt.run(inverted["prompt"])


__all__ = ["PEZ", "project", "load_templates", "reverse_relations", "ImageSimilarityScorer", "image_similarity_from_name", "invert_and_optimize"]
