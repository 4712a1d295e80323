"""Presets are data: JSON files in ``mmopt.assets/presets``.

A preset names the generator, scorers, objective weights and constraints,
LLM, proposer, strategy and loop sizes. Any component may be a registry name
or ``{"name": ..., "kwargs": {...}}``::

    {"generator": {"name": "diffusers:stabilityai/sdxl-turbo", "kwargs": {"steps": 1}},
     "scorers": ["dsg:qwen2.5-vl-3b", "clip:ViT-L-14/openai", "drift:minilm"],
     "constraints": [{"scorer": "drift:minilm", "min": 0.7}], "llm": "hf:Qwen/Qwen2.5-3B-Instruct"}

Two steps, so that bad input fails before anything loads:

1. :func:`resolve` merges a preset with overrides and checks every value
   (types, ranges, registry prefixes, scorer names in weights and
   constraints) without importing a model;
2. :func:`build_optimizer` loads the components of a resolved spec, once per
   process (the registry memoises), and returns an ``Optimizer``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PRESET_KEYS = {"description", "generator", "scorers", "weights", "constraints", "proposer", "llm",
               "strategy", "iterations", "candidates", "seeds", "patience", "max_images", "lookahead",
               "prescreen", "fallback",
               "heldout_seeds", "final_rescore"}


def available_presets() -> list[str]:
    root = resources.files("mmopt.assets") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str) -> dict:
    """A preset by name (``"turbo"``, ``"offline"``, ``"quality"``) or path to a JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("mmopt.assets") / "presets" / f"{name_or_path}.json"
        if not res.is_file():
            raise ValueError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets())} "
                             "(or give a path to a .json file)")
        text = res.read_text()
    try:
        preset = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"preset {name_or_path!r} is not valid JSON: {e}") from e
    if not isinstance(preset, dict):
        raise ValueError(f"preset {name_or_path!r} must be a JSON object, got {type(preset).__name__}")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"preset {name_or_path!r} has unknown keys {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    return preset


@dataclass
class RunSpec:
    """A preset with its overrides applied and checked; nothing is loaded yet."""

    generator: Any
    scorers: list
    scorer_names: list[str]
    proposer: Any
    strategy: Any
    llm: Any
    weights: dict | None
    constraints: list
    budget: Any
    candidates: int
    seeds: int | list[int]
    heldout_seeds: int | list[int] | None = None
    lookahead: bool = False
    prescreen: bool = False
    fallback: Any = None
    final_rescore: bool = False
    extra: dict = field(default_factory=dict)


def _positive_int(cfg: dict, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
    return value


def resolve(preset: dict, **overrides: Any) -> RunSpec:
    """Merge ``overrides`` (non-None) over ``preset`` and validate everything, loading nothing."""
    from mmopt import registry
    from mmopt.objective import Constraint
    from mmopt.optimizer import Budget

    cfg = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("generator", "scorers"):
        if not cfg.get(key):
            raise ValueError(f"the preset names no {key}; give one (e.g. --{key.rstrip('s')} ...)")
    # 1. component specs: registered prefixes (no import of any model)
    generator = cfg["generator"]
    registry.parse_spec("generator", generator)
    scorers = cfg["scorers"]
    if isinstance(scorers, (str, dict)):
        scorers = [scorers]
    if not isinstance(scorers, list):
        raise ValueError(f"scorers must be a list of scorer names or specs, got {scorers!r}")
    scorer_names = [registry.parse_spec("scorer", s)[0] for s in scorers]
    if len(set(scorer_names)) != len(scorer_names):
        raise ValueError(f"scorer names must be unique, got {scorer_names}")
    proposer = cfg.get("proposer") or "opt2i"
    registry.parse_spec("proposer", proposer)
    strategy = cfg.get("strategy") or "topk:10"
    registry.parse_spec("strategy", strategy)
    llm = cfg.get("llm")
    if llm is not None:
        registry.parse_spec("llm", llm)
    fallback = cfg.get("fallback")
    if fallback is not None:
        registry.parse_spec("proposer", fallback)
    prescreen = cfg.get("prescreen", False)
    if not isinstance(prescreen, bool):
        raise ValueError(f"prescreen must be true or false, got {prescreen!r}")
    # 2. objective: weights and constraints name scorers that are in use
    weights = cfg.get("weights")
    if weights is not None:
        if not isinstance(weights, dict):
            raise ValueError(f"weights must map scorer names to numbers, got {weights!r}")
        unknown = sorted(set(weights) - set(scorer_names))
        if unknown:
            raise ValueError(f"weights name scorers {unknown} that are not in use; scorers: {scorer_names}")
        for k, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"the weight of {k!r} must be a number >= 0, got {w!r}")
    constraints = []
    for c in cfg.get("constraints") or []:
        if not isinstance(c, dict) or "scorer" not in c:
            raise ValueError(f"a constraint must be {{'scorer': ..., 'min': ... or 'max_drop': ...}}, got {c!r}")
        if c["scorer"] not in scorer_names:
            raise ValueError(f"constraint on {c['scorer']!r}, which is not among the scorers {scorer_names}")
        try:
            constraints.append(Constraint(**c))
        except TypeError as e:
            raise ValueError(f"bad constraint {c!r}: {e}") from e
    # 3. loop sizes and the budget
    seeds = cfg.get("seeds", 4)
    if not isinstance(seeds, list):
        seeds = _positive_int(cfg, "seeds", 4)
    budget = Budget(iterations=_positive_int(cfg, "iterations", 5), images=_positive_int(cfg, "max_images"),
                    patience=_positive_int(cfg, "patience"))
    budget.check_affordable(len(seeds) if isinstance(seeds, list) else seeds)
    heldout = cfg.get("heldout_seeds")
    if heldout is not None and not isinstance(heldout, list):
        heldout = _positive_int(cfg, "heldout_seeds")
    return RunSpec(generator=generator, scorers=scorers, scorer_names=scorer_names, proposer=proposer,
                   strategy=strategy, llm=llm, weights=weights, constraints=constraints, budget=budget,
                   candidates=_positive_int(cfg, "candidates", 5), seeds=seeds, heldout_seeds=heldout,
                   lookahead=bool(cfg.get("lookahead")), final_rescore=bool(cfg.get("final_rescore")),
                   prescreen=prescreen, fallback=fallback)


def build_optimizer(preset: dict | RunSpec, *, store=None, seed: int = 0, callbacks=(), protected=(),
                    cache=None, **overrides: Any):
    """An ``Optimizer`` from a preset dict (or a resolved ``RunSpec``); ``overrides`` (non-None)
    replace preset values. Everything is validated before the first model loads.
    ``cache``: a ``Cache`` to use instead of ``<store>/cache.sqlite`` (e.g. one per process
    when several processes share a store)."""
    from mmopt import registry
    from mmopt.cache import Cache
    from mmopt.objective import Objective
    from mmopt.optimizer import Optimizer

    spec = preset if isinstance(preset, RunSpec) else resolve(preset, **overrides)
    if cache is None:
        cache = Cache(store.root / "cache.sqlite") if store is not None else None
    context = registry.RunContext(llm=spec.llm, cache=cache, store=store)
    generator = registry.create("generator", spec.generator, context=context)
    scorers = [registry.create("scorer", s, context=context) for s in spec.scorers]
    for s, name in zip(scorers, spec.scorer_names):
        if s.name != name:  # objective weights and constraints refer to scorers by the name they were given
            raise ValueError(f"scorer {name!r} calls itself {s.name!r}; name it the same in the preset")
    proposer = registry.create("proposer", spec.proposer, context=context, reuse=False)
    strategy = registry.create("strategy", spec.strategy, reuse=False)
    objective = Objective.for_scorers(scorers, spec.weights, spec.constraints)
    return Optimizer(generator, scorers, proposer, objective=objective, strategy=strategy, budget=spec.budget,
                     candidates=spec.candidates, seeds=spec.seeds, seed=seed, store=store, cache=cache,
                     llm=context.llm, protected=protected, callbacks=callbacks, lookahead=spec.lookahead,
                     prescreen=spec.prescreen,
                     fallback=registry.create("proposer", spec.fallback, context=context, reuse=False)
                     if spec.fallback is not None else None,
                     heldout_seeds=spec.heldout_seeds, final_rescore=spec.final_rescore)
