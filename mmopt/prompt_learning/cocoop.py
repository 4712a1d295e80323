"""CoCoOp: context conditioned on the image (Zhou et al., "Conditional Prompt Learning for
Vision-Language Models", CVPR 2022).

A small meta-network (Linear -> ReLU -> Linear, hidden width D/16) turns the
normalised image feature into a bias ``pi(x)`` that is added to every context
token: ``v_m(x) = v_m + pi(x)``. Each image therefore gets its own prompts for
every class, which is what lets the context generalise to classes it was not
trained on. Paper defaults: 4 context tokens from "a photo of a", batch size 1,
SGD lr 0.002, 10 epochs, one warm-up epoch at 1e-5.

>>> cocoop = CoCoOp("offline:clip", init="a photo of a").fit(base_train)   # doctest: +SKIP
>>> cocoop.accuracy(new_test)                                              # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import torch

from mmopt.prompt_learning.adapter import PromptBatch
from mmopt.prompt_learning.coop import CoOp


class CoCoOp(CoOp):
    """CoOp with an image-conditioned context. Arguments as :class:`CoOp`, plus:

    Args:
        hidden_ratio: the meta-network's hidden width is ``embed_dim // hidden_ratio`` (16 in the paper).
        chunk: images whose prompts are encoded together at evaluation (memory: chunk x classes rows).

    Defaults differ from CoOp as in the paper: ``n_ctx=4`` (or ``init``'s length), ``batch_size=1``,
    ``epochs=10``. Class-specific contexts are not part of CoCoOp (``csc`` is refused).
    """

    name = "cocoop"

    def __init__(self, clip: Any = "offline:clip", *, n_ctx: int | None = None, init: str | None = "a photo of a",
                 batch_size: int = 1, epochs: int | None = 10, hidden_ratio: int = 16, chunk: int = 32,
                 **kwargs: Any):
        if kwargs.get("csc"):
            raise ValueError("CoCoOp learns one context shared by all classes (csc=True is CoOp's option)")
        if isinstance(hidden_ratio, bool) or not isinstance(hidden_ratio, int) or hidden_ratio < 1:
            raise ValueError(f"hidden_ratio must be an int >= 1, got {hidden_ratio!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        self.hidden_ratio = hidden_ratio
        self.chunk = chunk
        if init is None and n_ctx is None:
            n_ctx = 4
        super().__init__(clip, n_ctx=n_ctx, init=init, batch_size=batch_size, epochs=epochs, **kwargs)
        self.meta_net: torch.nn.Module | None = None

    def _settings(self) -> dict:
        return {**super()._settings(), "hidden_ratio": self.hidden_ratio}

    def _build_meta_net(self) -> torch.nn.Module:
        d = self.adapter.embed_dim
        hidden = max(1, d // self.hidden_ratio)
        return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(inplace=True),
                                   torch.nn.Linear(hidden, self.adapter.width)).to(self.adapter.device)

    def _init_extra(self, gen: torch.Generator, prompts: PromptBatch) -> list[torch.nn.Parameter]:
        # PyTorch's default Linear initialisation, drawn from the run's seed (the global RNG is
        # forked and restored, so nothing outside sees it)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            self.meta_net = self._build_meta_net()
        return list(self.meta_net.parameters())

    def _logits(self, feats: torch.Tensor, prompts: PromptBatch, ctx: torch.Tensor) -> torch.Tensor:
        # one context per image: (B, M, W) = shared context + the meta-network's bias of that image
        out = []
        for start in range(0, len(feats), self.chunk):
            f = feats[start:start + self.chunk]
            per_image = ctx[None] + self.meta_net(f)[:, None, :]
            text = self.adapter.text_features(prompts, per_image, per_image=True)  # (B, C, D)
            out.append(self.adapter.logit_scale * torch.einsum("bd,bcd->bc", f, text))
        return torch.cat(out)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx, **{f"meta_net.{k}": v for k, v in self.meta_net.state_dict().items()}}

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ctx = tensors["ctx"]
        self.meta_net = self._build_meta_net()
        self.meta_net.load_state_dict({k[len("meta_net."):]: v for k, v in tensors.items() if k.startswith("meta_net.")})

    def fit(self, train, progress=None) -> "CoCoOp":
        super().fit(train, progress)
        self.meta_net.eval().requires_grad_(False)
        return self


__all__ = ["CoCoOp"]
