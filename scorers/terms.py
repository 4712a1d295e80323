"""Must-include / must-exclude terms as a scorer: 1 when the prompt obeys them, else 0.

Used as a hard constraint (``{"scorer": "terms", "min": 1}``, weight 0): a
rewrite that drops a term the user requires, or brings in one they banned, is
kept in the history (the rewriter learns from it) but can never be the best.
Unlike every other scorer it reads the *candidate* prompt, not the image: the
terms are a rule about the prompt itself. Matching is by whole words,
case-insensitive.
"""
from __future__ import annotations

import re
from typing import Sequence

from mmopt.component import Configurable
from mmopt.types import Generation, Score


def _clean(terms: Sequence[str], what: str) -> list[str]:
    if isinstance(terms, str):
        terms = [terms]
    out = []
    for t in terms:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what} terms must be non-empty strings, got {t!r}")
        out.append(" ".join(t.lower().split()))
    return sorted(set(out))


def _has(text: str, term: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", " ".join(text.lower().split())) is not None


class TermsScorer(Configurable):
    """>>> from mmopt.types import Generation
    >>> TermsScorer(include=["red"], exclude=["blurry"]).score([Generation("a red cube", 0, None, {})], "x")[0].value
    1.0
    """

    value_range = (0.0, 1.0)

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (), *, name: str = "terms"):
        self.include = _clean(include, "must-include")
        self.exclude = _clean(exclude, "must-exclude")
        if not self.include and not self.exclude:
            raise ValueError("terms needs include=[...] or exclude=[...] terms")
        clash = set(self.include) & set(self.exclude)
        if clash:
            raise ValueError(f"terms {sorted(clash)} are both required and excluded")
        self.name = name
        self.register_config(include=self.include, exclude=self.exclude)

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        out = []
        for g in generations:
            text = g.candidate.text
            missing = [t for t in self.include if not _has(text, t)]
            banned = [t for t in self.exclude if _has(text, t)]
            fb = "; ".join(([f"must include: {', '.join(missing)}"] if missing else [])
                           + ([f"must not include: {', '.join(banned)}"] if banned else []))
            out.append(Score(self.name, 0.0 if (missing or banned) else 1.0,
                             {"missing": missing, "banned": banned, "feedback": fb}))
        return out


def from_name(rest: str = "", *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> TermsScorer:
    """Registry factory: ``{"name": "terms", "kwargs": {"include": [...], "exclude": [...]}}``."""
    return TermsScorer(include, exclude, name="terms" if not rest else f"terms:{rest}")
