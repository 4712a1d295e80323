"""One registry: names -> factories, imported lazily.

A name is ``"prefix:rest"`` (``"diffusers:stabilityai/sd-turbo"``,
``"clip:ViT-B-32/openai"``, ``"llm:gguf:/path/model.gguf"`` is looked up as
kind ``llm``, prefix ``gguf``). Factories are given as ``"module:function"``
strings so that registering costs no import; the function receives ``rest``
and keyword arguments and returns the object.

``create`` memoises by (kind, name, kwargs): every model is loaded once per
process and reused (DESIGN.md, data-flow rules).
"""
from __future__ import annotations

import importlib
import json
import threading
from typing import Any, Callable

KINDS = ("generator", "scorer", "llm", "proposer", "strategy", "vqa")

# Plain dicts, configs as data: prefix -> "module:function".
_FACTORIES: dict[str, dict[str, str | Callable[..., Any]]] = {k: {} for k in KINDS}
_FACTORIES["generator"].update({
    "diffusers": "mmopt.pipelines.diffusers_t2i:from_name",
})
_FACTORIES["scorer"].update({
    "clip": "mmopt.scorers.clip:from_name",
})
_FACTORIES["scorer"].update({
    "dsg": "mmopt.scorers.dsg:from_name",
    "vqascore": "mmopt.scorers.vqascore:from_name",
})
_FACTORIES["scorer"].update({
    "drift": "mmopt.scorers.drift:from_name",
    "dcs": "mmopt.scorers.dcs:from_name",
    "concepts": "mmopt.scorers.concepts:from_name",
    "aesthetic": "mmopt.scorers.aesthetic:from_name",
    "pickscore": "mmopt.scorers.preference:pickscore_from_name",
    "hps": "mmopt.scorers.preference:hps_from_name",
    "imagereward": "mmopt.scorers.preference:imagereward_from_name",
})
_FACTORIES["vqa"].update({
    "blip": "mmopt.scorers.vqa:blip_from_name",
    "hf-vlm": "mmopt.scorers.vqa:hf_vlm_from_name",
    "shapes": "mmopt.shapesworld.vqa:from_name",
})
_FACTORIES["llm"].update({
    "gguf": "mmopt.llm.gguf:from_name",
    "smollm2": "mmopt.llm.gguf:embedded_smollm2",
    "hf": "mmopt.llm.hf:from_name",
    "openai": "mmopt.llm.openai_http:from_name",
})
_FACTORIES["generator"].update({
    "offline": "mmopt.pipelines.offline:t2i_from_name",
})
_FACTORIES["scorer"].update({
    "offline": "mmopt.scorers.offline:from_name",
})
_FACTORIES["strategy"].update({
    "topk": "mmopt.strategies:topk",
    "beam": "mmopt.strategies:beam",
})
_FACTORIES["proposer"].update({
    "opt2i": "mmopt.proposers.opt2i:from_name",
    "rules": "mmopt.proposers.rules:from_name",
})

_INSTANCES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def register(kind: str, prefix: str, factory: str | Callable[..., Any]) -> None:
    """Register ``factory`` (a callable or ``"module:function"``) for ``kind``/``prefix``.

    Example: ``register("scorer", "mine", "mypkg.scorers:make")`` makes
    ``create("scorer", "mine:large")`` call ``mypkg.scorers.make("large")``.
    """
    if kind not in _FACTORIES:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    if not prefix or ":" in prefix:
        raise ValueError(f"registry prefix must be non-empty and contain no ':', got {prefix!r}")
    _FACTORIES[kind][prefix] = factory


def names(kind: str) -> list[str]:
    """The prefixes registered for ``kind``."""
    if kind not in _FACTORIES:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    return sorted(_FACTORIES[kind])


def split_name(name: str) -> tuple[str, str]:
    """``"clip:ViT-B-32/openai"`` -> ``("clip", "ViT-B-32/openai")``; ``"pickscore"`` -> ``("pickscore", "")``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a registry name must be a non-empty string, got {name!r}")
    prefix, _, rest = name.strip().partition(":")
    return prefix, rest


def _resolve(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def create(kind: str, name: str, *, reuse: bool = True, **kwargs: Any) -> Any:
    """Build (or reuse) the object registered under ``name``.

    >>> create("scorer", "clip:ViT-B-32/openai")  # doctest: +SKIP
    """
    if kind not in _FACTORIES:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
    prefix, rest = split_name(name)
    table = _FACTORIES[kind]
    if prefix not in table:
        raise ValueError(
            f"unknown {kind} {name!r}: no factory for prefix {prefix!r}. "
            f"Known prefixes: {', '.join(sorted(table)) or '(none)'}"
        )
    key = (kind, name, json.dumps(kwargs, sort_keys=True, default=repr))
    if reuse:
        with _LOCK:
            if key in _INSTANCES:
                return _INSTANCES[key]
    obj = _resolve(table[prefix])(rest, **kwargs)
    if reuse:
        with _LOCK:
            _INSTANCES.setdefault(key, obj)
            obj = _INSTANCES[key]
    return obj


def clear_instances() -> None:
    """Forget every loaded model (frees memory; mainly for tests)."""
    with _LOCK:
        _INSTANCES.clear()
