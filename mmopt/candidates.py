"""Admission: what a proposer's raw output must pass before it is rendered.

Every candidate, whoever proposed it, goes through :func:`admit`: it must be
a prompt (a string, a ``Candidate`` or a candidate dict), keep every
protected span (repaired when possible, else dropped), fit the text
encoder's window (cut to it, recorded), and be new (not tried, not pending,
not proposed twice in one reply).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

from mmopt import protect
from mmopt.types import Candidate


def admit(raw: Iterable[Any], n: int, *, seen: Iterable[Candidate], protected: Sequence[str] = (),
          generator: Any = None, is_original: bool = False) -> list[tuple[Candidate, dict]]:
    """Up to ``n`` admitted ``(candidate, meta)`` pairs from ``raw``, in order.

    ``meta`` records what was done: ``repaired`` (protected spans put back),
    ``tokens``/``token_limit``/``truncated`` (the encoder window).

    >>> [c.text for c, _ in admit(["a  cat", "a cat", 3, "a dog"], 5, seen=[])]
    ['a cat', 'a dog']
    """
    seen_set = set(seen)
    out: list[tuple[Candidate, dict]] = []
    count = getattr(generator, "count_tokens", None)
    limit = getattr(generator, "max_prompt_tokens", None)
    for item in raw:
        try:
            cand = Candidate.of(item)
        except (TypeError, ValueError):
            continue  # not a prompt: a proposer bug or a parse leftover, never rendered
        text = " ".join(protect.strip_keep_tags(cand.text).split())
        meta: dict = {}
        if not text:
            continue
        if protected and not is_original:
            text, missing = protect.enforce(text, protected)
            if text is None:
                continue
            if missing:
                meta["repaired"] = missing
        # the token budget: warn and record; rewrites are cut to what the encoder sees
        if count is not None and limit:
            tokens = count(text)
            if tokens > limit:
                meta["tokens"], meta["token_limit"] = tokens, limit
                if is_original:
                    warnings.warn(f"the prompt has {tokens} tokens; the text encoder reads only {limit}: "
                                  "the rest is ignored by the generator", stacklevel=3)
                    meta["truncated"] = True
                elif hasattr(generator, "truncate"):
                    text = generator.truncate(text)
                    meta["truncated"] = True
        cand = cand.replace(text=text)
        if cand in seen_set:
            continue
        seen_set.add(cand)
        out.append((cand, meta))
        if len(out) >= n:
            break
    return out
