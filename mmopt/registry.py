"""One registry: names -> factories, imported lazily, memoised on identity.

A name is ``"prefix:rest"`` (``"diffusers:stabilityai/sd-turbo"``,
``"clip:ViT-B-32/openai"``, ``"dsg:blip-vqa"``); a *spec* is a name or
``{"name": ..., "kwargs": {...}}`` (what presets hold). Factories are
``"module:function"`` strings, so registering costs no import; a factory
receives ``rest`` and the keyword arguments, and, when its signature asks for
``context``, the run's :class:`RunContext` (the run's LLM, cache, device,
store): that is how ``dsg:<vqa>`` writes its questions with the run's LLM.

``create`` memoises on (kind, name, the identity of the kwargs, and of the
context's LLM for factories that take one): every model is loaded once per
process and reused (DESIGN.md, data-flow rules).

Plugins register through the ``mmopt.plugins`` entry-point group: the entry
point loads either a dict ``{kind: {prefix: "module:function"}}`` or a
function called with this module (so it can call :func:`register`). A plugin
that fails to import is skipped with a warning naming it.
"""
from __future__ import annotations

import importlib
import inspect
import json
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("generator", "scorer", "llm", "proposer", "strategy", "vqa")

# The built-in table: kind -> prefix -> "module:function" (configs as data).
BUILTINS: dict[str, dict[str, str]] = {
    "generator": {
        "diffusers": "mmopt.pipelines.diffusers_t2i:from_name",
        "diffusers-video": "mmopt.pipelines.diffusers_video:from_name",
        "offline": "mmopt.pipelines.offline:t2i_from_name",
        "fewshot": "mmopt.prompt_learning.glov:generator_from_name",
    },
    "scorer": {
        "clip": "mmopt.scorers.clip:from_name",
        "dsg": "mmopt.scorers.dsg:from_name",
        "vqascore": "mmopt.scorers.vqascore:from_name",
        "drift": "mmopt.scorers.drift:from_name",
        "dcs": "mmopt.scorers.dcs:from_name",
        "concepts": "mmopt.scorers.concepts:from_name",
        "aesthetic": "mmopt.scorers.aesthetic:from_name",
        "pickscore": "mmopt.scorers.preference:pickscore_from_name",
        "hps": "mmopt.scorers.preference:hps_from_name",
        "imagereward": "mmopt.scorers.preference:imagereward_from_name",
        "offline": "mmopt.scorers.offline:from_name",
        "frames": "mmopt.scorers.video:frames_from_name",
        "temporal": "mmopt.scorers.video:temporal_from_name",
        "motion": "mmopt.scorers.video:motion_from_name",
        "accuracy": "mmopt.prompt_learning.glov:accuracy_from_name",
        "imagesim": "mmopt.prompt_learning.pez:image_similarity_from_name",
        "human": "mmopt.scorers.human:from_name",
        "terms": "mmopt.scorers.terms:from_name",
        "intent": "mmopt.scorers.intent:from_name",
    },
    "vqa": {
        "blip": "mmopt.scorers.vqa:blip_from_name",
        "hf-vlm": "mmopt.scorers.vqa:hf_vlm_from_name",
        "hf-video": "mmopt.scorers.vqa:hf_video_from_name",
        "shapes": "mmopt.shapesworld.vqa:from_name",
        "shapes-video": "mmopt.shapesworld.video:vqa_from_name",
    },
    "llm": {
        "gguf": "mmopt.llm.gguf:from_name",
        "smollm2": "mmopt.llm.gguf:embedded_smollm2",
        "hf": "mmopt.llm.hf:from_name",
        "openai": "mmopt.llm.openai_http:from_name",
        "adapted": "mmopt.distill:adapted_llm",
    },
    "proposer": {
        "opt2i": "mmopt.proposers.opt2i:from_name",
        "rules": "mmopt.proposers.rules:from_name",
        "fixed": "mmopt.proposers.fixed:from_name",
        "queue": "mmopt.proposers.queue:from_name",
        "edits": "mmopt.proposers.edits:from_name",
        "concepts": "mmopt.proposers.concepts:from_name",
        "textgrad": "mmopt.proposers.textgrad:from_name",
        "expand": "mmopt.proposers.expand:from_name",
        "negative": "mmopt.proposers.negative:from_name",
        "raw": "mmopt.proposers.negative:raw_from_name",
        "mix": "mmopt.proposers.negative:mix_from_name",
        "seeded": "mmopt.proposers.seeded:from_name",
        "slots": "mmopt.proposers.slots:from_name",
        "onepass": "mmopt.distill:onepass_from_name",
    },
    "strategy": {
        "topk": "mmopt.strategies:topk",
        "append": "mmopt.strategies:append",
        "beam": "mmopt.strategies:beam",
        "greedy": "mmopt.strategies:greedy",
        "halving": "mmopt.strategies:halving",
        "ucb": "mmopt.strategies:ucb",
        "evolve": "mmopt.strategies:evolve",
        "tpe": "mmopt.strategies:tpe",
    },
}

_FACTORIES: dict[str, dict[str, str | Callable[..., Any]]] = {k: dict(v) for k, v in BUILTINS.items()}
_INSTANCES: dict[str, Any] = {}
_LOCK = threading.RLock()
_PLUGINS_LOADED = False
PLUGIN_GROUP = "mmopt.plugins"


@dataclass
class RunContext:
    """What a factory may ask for about the run it builds a component for.

    ``llm``: the run's LLM (an LLM object or a registry name, built on first
    use by :meth:`get_llm`); ``cache``: the run's content cache
    (``mmopt.cache.Cache``); ``device``: where models should run (None: the
    automatic choice); ``store``: the run store.
    """

    llm: Any = None
    cache: Any = None
    device: str | None = None
    store: Any = None

    def get_llm(self, required_by: str = "") -> Any:
        """The run's LLM, built from its name once; a clear error when the run has none."""
        if self.llm is None:
            who = f"{required_by} " if required_by else ""
            raise ValueError(f"{who}needs the run's LLM, but none was given: pass --llm (e.g. --llm smollm2) "
                             "or set 'llm' in the preset")
        if isinstance(self.llm, (str, dict)):
            self.llm = create("llm", self.llm)
        return self.llm


# --------------------------------------------------------------------------- plugins

def _load_plugins() -> None:
    """Read the ``mmopt.plugins`` entry points once; a broken plugin only warns."""
    global _PLUGINS_LOADED
    with _LOCK:
        if _PLUGINS_LOADED:
            return
        _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    try:
        eps = list(entry_points(group=PLUGIN_GROUP))
    except Exception as e:  # a broken environment must not break the built-ins
        warnings.warn(f"could not list mmopt plugins: {e}", stacklevel=3)
        return
    for ep in eps:
        try:
            obj = ep.load()
            if callable(obj):
                obj(importlib.import_module(__name__))
            elif isinstance(obj, dict):
                for kind, table in obj.items():
                    for prefix, factory in table.items():
                        register(kind, prefix, factory)
            else:
                raise TypeError(f"expected a dict {{kind: {{prefix: factory}}}} or a function, got "
                                f"{type(obj).__name__}")
        except Exception as e:
            warnings.warn(f"mmopt plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                          f"{type(e).__name__}: {e}", stacklevel=3)


# --------------------------------------------------------------------------- table

def _check_kind(kind: str) -> None:
    if kind not in _FACTORIES:
        raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")


def register(kind: str, prefix: str, factory: str | Callable[..., Any]) -> None:
    """Register ``factory`` (a callable or ``"module:function"``) for ``kind``/``prefix``.

    Example: ``register("scorer", "mine", "mypkg.scorers:make")`` makes
    ``create("scorer", "mine:large")`` call ``mypkg.scorers.make("large")``.
    """
    _check_kind(kind)
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        raise ValueError(f"registry prefix must be non-empty and contain no ':', got {prefix!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"factory must be a callable or 'module:function', got {factory!r}")
    _FACTORIES[kind][prefix] = factory


def names(kind: str) -> list[str]:
    """The prefixes registered for ``kind`` (built-ins and plugins)."""
    _check_kind(kind)
    _load_plugins()
    return sorted(_FACTORIES[kind])


def split_name(name: str) -> tuple[str, str]:
    """``"clip:ViT-B-32/openai"`` -> ``("clip", "ViT-B-32/openai")``; ``"pickscore"`` -> ``("pickscore", "")``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a registry name must be a non-empty string, got {name!r}")
    prefix, _, rest = name.strip().partition(":")
    return prefix, rest


def parse_spec(kind: str, spec: Any) -> tuple[str, dict]:
    """``(name, kwargs)`` of a spec: a name, or ``{"name": ..., "kwargs": {...}}``.

    Checks that the prefix is registered, without importing or loading
    anything, so a preset can be validated before any model loads.

    >>> parse_spec("strategy", {"name": "topk", "kwargs": {"k": 5}})
    ('topk', {'k': 5})
    """
    _check_kind(kind)
    if isinstance(spec, dict):
        unknown = set(spec) - {"name", "kwargs"}
        if unknown or "name" not in spec:
            raise ValueError(f"a {kind} spec must be a name or {{\"name\": ..., \"kwargs\": {{...}}}}, got {spec!r}")
        name, kwargs = spec["name"], spec.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"the kwargs of {kind} {spec.get('name')!r} must be an object, got {kwargs!r}")
    elif isinstance(spec, str):
        name, kwargs = spec, {}
    else:
        raise ValueError(f"a {kind} must be given as a registry name or {{\"name\", \"kwargs\"}}, got {spec!r}")
    prefix, _ = split_name(name)
    _load_plugins()
    if prefix not in _FACTORIES[kind]:
        raise ValueError(f"unknown {kind} {name!r}: no factory for prefix {prefix!r}. "
                         f"Known prefixes: {', '.join(sorted(_FACTORIES[kind])) or '(none)'}")
    return name.strip(), dict(kwargs)


def _resolve(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _memo_key(kind: str, name: str, kwargs: dict, context: RunContext | None) -> str:
    from mmopt.component import describe

    part = None
    if context is not None:
        # only what changes a component's results: the run's LLM (a name or its config) and the device
        llm = context.llm
        part = {"llm": llm if isinstance(llm, (str, dict)) or llm is None else describe(llm),
                "device": context.device}
    return json.dumps([kind, name, describe(kwargs), part], sort_keys=True, default=repr)


def create(kind: str, spec: Any, *, context: RunContext | None = None, reuse: bool = True, **kwargs: Any) -> Any:
    """Build (or reuse) the component a spec names.

    ``spec`` is a registry name or ``{"name", "kwargs"}``; extra ``kwargs``
    are merged over the spec's. Factories that take ``context`` get
    ``context`` (an empty one when None).

    >>> create("strategy", "topk:5").k
    5
    """
    name, spec_kwargs = parse_spec(kind, spec)
    kwargs = {**spec_kwargs, **kwargs}
    prefix, rest = split_name(name)
    factory = _resolve(_FACTORIES[kind][prefix])
    takes_context = _takes_context(factory)
    key = _memo_key(kind, name, kwargs, context if takes_context else None)
    if reuse:
        with _LOCK:
            if key in _INSTANCES:
                return _INSTANCES[key]
    if takes_context:
        obj = factory(rest, context=context or RunContext(), **kwargs)
    else:
        obj = factory(rest, **kwargs)
    if reuse:
        with _LOCK:
            obj = _INSTANCES.setdefault(key, obj)
    return obj


def clear_instances() -> None:
    """Forget every loaded model (frees memory; mainly for tests)."""
    with _LOCK:
        _INSTANCES.clear()
