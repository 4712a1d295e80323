"""A component is its config.

Every generator, scorer, VQA model, LLM, proposer and strategy records the
arguments that change its results (as diffusers' ``register_to_config``).
From that record come:

* ``describe(obj)``: the canonical JSON record (nested components expanded),
* ``identity(obj)``: its sha256, the key under which its outputs are cached
  and its share of the run id.

Change anything that changes results and the identity changes, so exactly the
affected cache entries are recomputed; change nothing and a resumed run
recomputes nothing.

A component says what matters in one of two ways:

1. subclass :class:`Configurable` and call ``self.register_config(...)`` in
   ``__init__`` with the values that matter (models add a file fingerprint or
   hub revision, not the path alone);
2. or define ``config() -> dict`` itself.

An object with neither (a user's quick class) is described by its class and
``name``; that is enough to cache within a process but the identity then
cannot see its settings, so :func:`describe` warns once per class.

>>> class Blur(Configurable):
...     def __init__(self, radius=2.0):
...         self.register_config(radius=radius)
>>> describe(Blur(3.0))["radius"], identity(Blur(3.0)) == identity(Blur(3.0)) != identity(Blur(2.0))
(3.0, True)
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

__all__ = ["Configurable", "describe", "identity", "short_identity"]

# Bump a component class's ``config_version`` when its code changes what it computes
# for the same arguments: its identity changes and its cached outputs are recomputed.
_warned: set[str] = set()


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class Configurable:
    """Mixin: ``register_config(**values)`` records the values; ``config()`` returns them.

    The record also holds the class (``"component"``) and its
    ``config_version``, so two classes with the same arguments differ.
    """

    config_version: int = 1

    def register_config(self, **values: Any) -> None:
        self._mmopt_config = {"component": _qualname(self), "version": type(self).config_version, **values}

    def config(self) -> dict:
        cfg = getattr(self, "_mmopt_config", None)
        if cfg is None:
            raise TypeError(f"{type(self).__name__} never called register_config() in __init__; "
                            "its identity is unknown")
        return dict(cfg)


def describe(obj: Any) -> Any:
    """The canonical JSON-able record of ``obj``: components by their config, recursively.

    Plain data is returned as it is (tuples become lists, paths strings,
    dtypes their names); a function is named by module and qualified name.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(obj, Path):
        return str(obj)
    config = getattr(obj, "config", None)
    if callable(config) and not isinstance(obj, type):
        cfg = config()
        if isinstance(cfg, dict):
            cfg = dict(cfg)
            cfg.setdefault("component", _qualname(obj))
            return describe(cfg)
    key = getattr(obj, "key", None)  # Candidate and other records with a JSON key()
    if callable(key) and hasattr(obj, "__dataclass_fields__"):
        return describe(key())
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return {"component": _qualname(obj),
                **{f: describe(getattr(obj, f)) for f in obj.__dataclass_fields__}}
    if callable(obj) and hasattr(obj, "__qualname__"):  # a function or a class: by name
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    mod = type(obj).__module__
    if mod == "torch" or mod.startswith("torch."):  # dtypes, devices
        return str(obj)
    # An object that says nothing about itself: its class and name.
    qn = _qualname(obj)
    if qn not in _warned:
        _warned.add(qn)
        warnings.warn(f"{qn} has no config(); it is identified by its class and name only, so a changed "
                      "setting will not invalidate its cached results (see mmopt.component)", stacklevel=3)
    return {"component": qn, "name": getattr(obj, "name", None)}


def identity(obj: Any) -> str:
    """sha256 (hex) of ``describe(obj)``: the key of everything ``obj`` computes."""
    blob = json.dumps(describe(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def short_identity(obj: Any) -> str:
    """The first 12 hex digits of :func:`identity` (for labels and logs)."""
    return identity(obj)[:12]
