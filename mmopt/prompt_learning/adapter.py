"""The CLIP prompt adapter: CLIP's frozen text encoder run on token embeddings, with gradients.

Every prompt-learning method (CoOp, CoCoOp, KgCoOp, TPT, PEZ) goes through
:class:`CLIPPromptAdapter`. It loads the model through the project's one CLIP
loader (``mmopt.scorers.clip``: ``parse_model_name``, ``_load``), so any open_clip
name works: ``"ViT-B-16/openai"``, ``"hf-hub:org/repo"``, a local open_clip
directory, or ``"offline:clip"`` (the shipped ShapesWorld CLIP).

A prompt is laid out as CoOp lays it out: ``[SOT] ctx_1 .. ctx_M CLASS . [EOT]``
with the class name at the ``"end"`` (CoOp's default), at the ``"front"``
(``[SOT] CLASS ctx .``) or in the ``"middle"`` (half the context on each side).
The context vectors replace placeholder token embeddings; everything else is
the model's own embedding, so when the context equals a phrase's own
embeddings the output is exactly ``encode_text`` of the written phrase (the
identity the tests check to 1e-5).

Two exact speed-ups: image features of a frozen tower are computed once by
the caller, and sequences are cut after the last end-of-text token. CLIP's
text attention is causal and pools at the end-of-text token, so positions after
it cannot change the output (the cut is skipped for towers that are not causal).

>>> adapter = CLIPPromptAdapter("offline:clip")                                # doctest: +SKIP
>>> batch = adapter.prompts(["red circle", "blue square"], n_ctx=4)            # doctest: +SKIP
>>> ctx = adapter.phrase_embeddings("a picture of a")                          # doctest: +SKIP
>>> adapter.text_features(batch, ctx).shape                                    # doctest: +SKIP
torch.Size([2, 64])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from mmopt.component import Configurable

POSITIONS = ("end", "middle", "front")
#: Token that marks a context slot before its embedding is replaced (CoOp's "X").
PLACEHOLDER = "X"


def resolve_clip_name(name: str) -> str:
    """The open_clip model name behind a user's ``--clip``: ``offline:clip`` (or ``offline``)
    is the shipped ShapesWorld CLIP folder, a ``clip:`` prefix is dropped, anything else
    (``ViT-B-16/openai``, ``hf-hub:org/repo``, a local folder) is kept.

    >>> resolve_clip_name("clip:ViT-B-16/openai")
    'ViT-B-16/openai'
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ValueError(f"clip must be an open_clip name ('ViT-B-16/openai', 'hf-hub:org/repo', a local "
                         f"folder or 'offline:clip'), got {name!r}")
    name = str(name).strip()
    if name in ("offline", "offline:clip"):
        from mmopt.pipelines.offline import shipped_model_dir

        return str(shipped_model_dir("clip"))
    if name.startswith("clip:"):
        return name[len("clip:"):]
    return name


@dataclass
class PromptBatch:
    """Prompts of ``classnames`` laid out with ``n_ctx`` context slots (from :meth:`CLIPPromptAdapter.prompts`).

    ``ids`` (C, L) token ids, placeholders at the slots; ``slots`` (C, M) slot
    positions per row; ``eot`` (C,) the end-of-text position; ``base`` (C, L, W)
    the frozen token embeddings the context is written into.
    """

    classnames: tuple[str, ...]
    n_ctx: int
    position: str
    ids: torch.Tensor
    slots: torch.Tensor
    eot: torch.Tensor
    base: torch.Tensor

    def __len__(self) -> int:
        return len(self.classnames)


class _TextTower:
    """The parts of an open_clip text tower, read from ``CLIP`` or ``CustomTextCLIP.text``."""

    def __init__(self, model: Any, name: str):
        import open_clip

        text = getattr(model, "text", None)
        if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
            owner, pool, causal = model, getattr(model, "text_pool_type", "argmax"), model.attn_mask is not None
        elif isinstance(text, open_clip.transformer.TextTransformer):
            if text.cls_emb is not None or text.use_pad_mask:
                raise TypeError(f"the text tower of {name!r} appends a class token or masks padding (CoCa-style); "
                                "prompt learning supports CLIP-style text towers only")
            owner, pool, causal = text, text.pool_type, text.attn_mask is not None
        else:
            raise TypeError(f"prompt learning needs an open_clip CLIP text transformer; {name!r} has "
                            f"{type(text or model).__name__} (Hugging Face text towers are not supported)")
        if pool not in ("argmax", "eos", "first", "last"):
            raise TypeError(f"the text tower of {name!r} pools with {pool!r}; supported: argmax, eos, first, last")
        self.token_embedding = owner.token_embedding
        self.positional_embedding = owner.positional_embedding
        self.transformer = owner.transformer
        self.ln_final = owner.ln_final
        self.text_projection = owner.text_projection
        self.attn_mask = owner.attn_mask
        self.pool = pool
        # cut after the end-of-text token only where that is exact: causal attention, pooled at EOT
        self.can_cut = causal and pool in ("argmax", "eos")
        self.context_length = int(owner.positional_embedding.shape[0])
        self.width = int(owner.token_embedding.weight.shape[1])

    def __call__(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of token embeddings ``x`` (N, L, W) pooled at ``eot`` (N,)."""
        cast = self.transformer.get_cast_dtype()
        n, length, _ = x.shape
        x = x.to(cast) + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        if self.pool == "first":
            pooled = x[:, 0]
        elif self.pool == "last":
            pooled = x[:, -1]
        else:
            pooled = x[torch.arange(n, device=x.device), eot]
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, torch.nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


class CLIPPromptAdapter(Configurable):
    """A frozen open_clip model whose text encoder accepts learned token embeddings.

    Args:
        clip: an open_clip name (``"ViT-B-16/openai"``, ``"hf-hub:org/repo"``, a local folder)
            or ``"offline:clip"``; loaded once per process by ``mmopt.scorers.clip``.
        device: where to run (default: cuda, then mps, then cpu).
        dtype: the model's dtype (default float32 everywhere: learned vectors train in fp32).
        timeout: seconds to wait for the hub before failing with ModelLoadError.
        batch_size: images per forward pass of the image tower.

    The model's parameters are frozen (``requires_grad`` off): only the vectors a
    method passes in receive gradients.
    """

    def __init__(self, clip: str = "offline:clip", *, device: str | None = None, dtype: Any = "float32",
                 timeout: float = 10.0, batch_size: int = 64):
        from mmopt.device import dtype_name, pick_device, pick_dtype
        from mmopt.scorers.clip import _check_reachable, _load, parse_model_name

        # 1. check arguments and resolve the name through the project's CLIP loader
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.clip_name = str(clip)
        self.model_name = resolve_clip_name(clip)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        oc_name, tag, kind = parse_model_name(self.model_name)
        self.revision = _check_reachable(oc_name, tag, kind, timeout)

        # 2. load once per process (shared with CLIPScore scorers of the same model and dtype)
        self.model, self.preprocess, self.tokenizer = _load(oc_name, tag, self.device, self.dtype)
        self.model.requires_grad_(False)
        for attr in ("encode", "sot_token_id", "eot_token_id"):
            if not hasattr(self.tokenizer, attr):
                raise TypeError(f"prompt learning needs open_clip's CLIP BPE tokenizer; {self.model_name!r} uses "
                                f"{type(self.tokenizer).__name__}")
        self.text = _TextTower(self.model, self.model_name)
        self.context_length = self.text.context_length
        self.width = self.text.width
        self.sot, self.eot = int(self.tokenizer.sot_token_id), int(self.tokenizer.eot_token_id)
        self._placeholder = self.tokenize(PLACEHOLDER)
        if len(self._placeholder) != 1:
            raise RuntimeError(f"the placeholder {PLACEHOLDER!r} is not one token in this vocabulary")
        from mmopt.fingerprint import weights_record

        self.register_config(clip=weights_record(self.model_name, self.revision), dtype=dtype_name(self.dtype))

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens (the tokenizer's cleaning and lower-casing)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of BPE ids (special tokens dropped)."""
        keep = [int(i) for i in ids if int(i) not in (self.sot, self.eot, 0)]
        return " ".join(self.tokenizer.decode(keep).split())

    @property
    def vocab_size(self) -> int:
        return int(self.text.token_embedding.weight.shape[0])

    @property
    def token_embedding_matrix(self) -> torch.Tensor:
        """The (V, W) token embedding table (frozen)."""
        return self.text.token_embedding.weight

    def phrase_embeddings(self, phrase: str) -> torch.Tensor:
        """(M, W) token embeddings of ``phrase`` (a context initialisation such as "a photo of a")."""
        ids = self.tokenize(phrase)
        if not ids:
            raise ValueError(f"the phrase {phrase!r} has no tokens; give words such as 'a photo of a'")
        with torch.no_grad():
            return self.text.token_embedding(torch.tensor(ids, device=self.device)).float().clone()

    # ------------------------------------------------------------------ prompts

    def prompts(self, classnames: Sequence[str], n_ctx: int, position: str = "end",
                suffix: str = ".") -> PromptBatch:
        """Lay out ``[SOT] ctx CLASS suffix [EOT]`` for every class (see the module docstring).

        Raises ValueError for an empty class name, or one too long for the context
        window together with ``n_ctx`` slots (saying how many tokens it has and how
        many fit).
        """
        # 1. check inputs
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ValueError(f"n_ctx must be an int >= 0, got {n_ctx!r}")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if isinstance(classnames, str) or not classnames:
            raise ValueError(f"classnames must be a non-empty list of strings, got {classnames!r}")
        suffix_ids = self.tokenize(suffix) if suffix else []
        room = self.context_length - 2 - n_ctx - len(suffix_ids)
        # 2. token rows: class name ids placed around the slots
        rows, slot_rows = [], []
        for name in classnames:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class names must be non-empty strings, got {name!r}")
            ids = self.tokenize(name)
            if not ids:
                raise ValueError(f"class name {name!r} has no tokens in this vocabulary")
            if len(ids) > room:
                raise ValueError(f"class name {name!r} has {len(ids)} tokens; with {n_ctx} context vectors "
                                 f"only {max(room, 0)} fit the {self.context_length}-token window")
            half = n_ctx // 2
            ctx = [self._placeholder[0]]
            if position == "end":
                parts = [ctx * n_ctx, ids]
                first = 1
            elif position == "front":
                parts = [ids, ctx * n_ctx]
                first = 1 + len(ids)
            else:
                parts = [ctx * half, ids, ctx * (n_ctx - half)]
                first = 1
            row = [self.sot] + [t for p in parts for t in p] + suffix_ids + [self.eot]
            slots = list(range(first, first + n_ctx)) if position != "middle" else \
                list(range(1, 1 + half)) + list(range(1 + half + len(ids), 1 + n_ctx + len(ids)))
            rows.append(row)
            slot_rows.append(slots)
        # 3. pad to one length: the longest row when the cut is exact, else the full window
        length = max(map(len, rows)) if self.text.can_cut else self.context_length
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        eot = torch.tensor([len(r) - 1 for r in rows])
        ids, eot = ids.to(self.device), eot.to(self.device)
        with torch.no_grad():
            base = self.text.token_embedding(ids).float()
        return PromptBatch(tuple(classnames), n_ctx, position, ids, torch.tensor(slot_rows, dtype=torch.long,
                           device=self.device).view(len(rows), n_ctx), eot, base)

    def assemble(self, batch: PromptBatch, ctx: torch.Tensor, *, per_image: bool = False) -> torch.Tensor:
        """Token embeddings with ``ctx`` written into the slots.

        ``ctx``: (M, W) one context for every class; (C, M, W) class-specific; with
        ``per_image`` (B, M, W) one context per image (CoCoOp), giving (B*C, L, W) rows
        ordered image-major. Gradients flow into ``ctx``.
        """
        c, m, w = len(batch), batch.n_ctx, self.width
        if ctx.shape[-2:] != (m, w):
            raise ValueError(f"ctx must end in ({m}, {w}) (context vectors x text width), got {tuple(ctx.shape)}")
        if per_image:
            if ctx.dim() != 3:
                raise ValueError(f"per-image ctx must be (B, {m}, {w}), got {tuple(ctx.shape)}")
            b = ctx.shape[0]
            values = ctx[:, None].expand(b, c, m, w).reshape(b * c, m, w)
            base = batch.base.repeat(b, 1, 1)
            slots = batch.slots.repeat(b, 1)
        else:
            if ctx.dim() == 2:
                values = ctx[None].expand(c, m, w)
            elif ctx.dim() == 3 and ctx.shape[0] == c:
                values = ctx
            else:
                raise ValueError(f"ctx must be ({m}, {w}) or ({c}, {m}, {w}), got {tuple(ctx.shape)}")
            base, slots = batch.base, batch.slots
        if m == 0:
            return base
        rows = torch.arange(base.shape[0], device=base.device)[:, None].expand_as(slots)
        return base.index_put((rows, slots), values.to(base.dtype))

    def text_features(self, batch: PromptBatch, ctx: torch.Tensor, *, per_image: bool = False,
                      normalize: bool = True) -> torch.Tensor:
        """Text features of the prompts with context ``ctx``: (C, D), or (B, C, D) with ``per_image``."""
        x = self.assemble(batch, ctx, per_image=per_image)
        eot = batch.eot.repeat(x.shape[0] // len(batch))
        feats = self.text(x, eot).float()
        if normalize:
            feats = F.normalize(feats, dim=-1)
        return feats.view(-1, len(batch), feats.shape[-1]) if per_image else feats

    def encode_token_embeddings(self, x: torch.Tensor, eot: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Features of arbitrary token embeddings ``x`` (N, L, W) pooled at ``eot`` (N,) (PEZ)."""
        feats = self.text(x, eot).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], normalize: bool = True, *, truncate: bool = False) -> torch.Tensor:
        """Features (N, D) of written texts through the same path (hand-written prompts).

        A text longer than the context window is a ValueError (a class prompt cut short
        would classify silently wrong); ``truncate=True`` cuts it instead.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
        rows = []
        for t in texts:
            ids = self.tokenize(t)
            if len(ids) > self.context_length - 2:
                if not truncate:
                    raise ValueError(f"the prompt {t[:60]!r}... has {len(ids)} tokens; the "
                                     f"{self.context_length}-token window holds {self.context_length - 2}")
                ids = ids[: self.context_length - 2]
            rows.append([self.sot] + ids + [self.eot])
        length = max(map(len, rows)) if self.text.can_cut else self.context_length
        ids = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        eot = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        return self.encode_token_embeddings(self.text.token_embedding(ids).float(), eot, normalize)

    def template_features(self, template: str, classnames: Sequence[str]) -> torch.Tensor:
        """Normalised features (C, D) of a hand-written template (``"{}"`` is the class name)."""
        return self.encode_texts([fill_template(template, c) for c in classnames])

    # ------------------------------------------------------------------ images

    def pixels(self, images: Sequence[Any]) -> torch.Tensor:
        """The model's preprocessing of PIL images (or arrays) as one (N, 3, H, W) tensor on the device."""
        from mmopt.scorers.clip import _as_rgb, _preprocess_all

        if isinstance(images, torch.Tensor):
            return images.to(self.device, self.dtype)
        rgb = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        if not rgb:
            raise ValueError("no images given")
        return torch.stack(_preprocess_all(self.preprocess, rgb)).to(self.device, self.dtype)

    @torch.no_grad()
    def image_features(self, images: Sequence[Any] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features (N, D) of PIL images or preprocessed pixels, in batches of ``batch_size``."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self.pixels(images[start:start + self.batch_size])
            f = self.model.encode_image(x).float()
            out.append(F.normalize(f, dim=-1) if normalize else f)
        return torch.cat(out)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature ``exp(logit_scale)`` (100 for the OpenAI models)."""
        return float(self.model.logit_scale.exp())

    @property
    def embed_dim(self) -> int:
        """Size D of the joint embedding space."""
        if getattr(self, "_embed_dim", None) is None:
            self._embed_dim = int(self.encode_texts(["x"]).shape[-1])
        return self._embed_dim


def as_adapter(clip: Any) -> CLIPPromptAdapter:
    """A CLIPPromptAdapter from an adapter or an open_clip name."""
    return clip if isinstance(clip, CLIPPromptAdapter) else CLIPPromptAdapter(clip)


def fill_template(template: str, classname: str) -> str:
    """``template`` with ``"{}"`` replaced by the class name (appended when the template has none).

    >>> fill_template("a photo of a {}.", "red circle")
    'a photo of a red circle.'
    """
    if "{}" in template:
        return template.replace("{}", classname)
    return f"{template} {classname}".strip()


def check_template(template: str) -> str:
    """``template`` if it holds exactly one ``"{}"`` (the class name), else ValueError."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"a class-prompt template needs exactly one '{{}}' for the class name, "
                         f"e.g. 'a photo of a {{}}.'; got {template!r}")
    return template


__all__ = ["CLIPPromptAdapter", "PromptBatch", "POSITIONS", "resolve_clip_name", "as_adapter", "fill_template",
           "check_template"]
