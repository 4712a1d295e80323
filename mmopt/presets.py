"""Presets are data: JSON files in ``mmopt.assets/presets``.

A preset names the generator, scorers, objective weights and constraints,
proposer, LLM and loop sizes. ``build_optimizer`` turns a preset plus
command-line overrides into an ``Optimizer``; nothing is loaded before then.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

PRESET_KEYS = {"description", "generator", "scorers", "weights", "constraints", "proposer", "llm",
               "iterations", "candidates", "seeds", "history_k", "strategy", "patience", "max_images",
               "generator_kwargs", "lookahead"}


def available_presets() -> list[str]:
    root = resources.files("mmopt.assets") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str) -> dict:
    """A preset by name (``"turbo"``, ``"offline"``) or path to a JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
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
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"preset {name_or_path!r} has unknown keys {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    return preset


def build_optimizer(preset: dict, *, store=None, seed: int = 0, callbacks=(), protected=(), **overrides: Any):
    """An ``Optimizer`` from a preset dict; ``overrides`` (non-None) replace preset values."""
    from mmopt import registry
    from mmopt.objective import Constraint, Objective
    from mmopt.optimizer import Budget, Optimizer

    cfg = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    generator = registry.create("generator", cfg["generator"], **cfg.get("generator_kwargs", {}) or {})
    scorers = [registry.create("scorer", s) for s in cfg["scorers"]]
    llm = registry.create("llm", cfg["llm"]) if cfg.get("llm") else None
    proposer_name = cfg.get("proposer", "opt2i")
    kwargs = {"llm": llm} if llm is not None and proposer_name.split(":")[0] == "opt2i" else {}
    if proposer_name.split(":")[0] == "opt2i" and cfg.get("history_k"):
        kwargs["history_k"] = cfg["history_k"]
    proposer = registry.create("proposer", proposer_name, reuse=False, **kwargs)
    weights = cfg.get("weights")
    constraints = [Constraint(**c) for c in cfg.get("constraints") or []]
    objective = Objective.for_scorers(scorers, weights, constraints)
    strategy = registry.create("strategy", cfg.get("strategy") or f"topk:{cfg.get('history_k') or 10}", reuse=False)
    budget = Budget(iterations=int(cfg.get("iterations", 5)), images=cfg.get("max_images"),
                    patience=cfg.get("patience"))
    return Optimizer(generator, scorers, proposer, objective=objective, strategy=strategy, budget=budget,
                     candidates=int(cfg.get("candidates", 5)), seeds=cfg.get("seeds", 4), seed=seed,
                     store=store, protected=protected, callbacks=callbacks, lookahead=bool(cfg.get("lookahead")))
