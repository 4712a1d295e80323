"""The intent check: does the rewrite itself still say what the user asked for?

A rewriter rewarded by image scores can win by exploiting the generator's
blind spots: text it ignores ("What is a green triangle above a yellow
circle?", a sentence about dice appended), or a reordering that changes what
is asked. The drift guard (``drift:minilm``) compares meanings loosely; on
ShapesWorld the caption parser can read a rewrite exactly, so
``intent:shapes`` checks that the rewrite states the same objects, colours,
sizes, counts and relations as the intent, and counts the words the parser
cannot read.

``Score.value`` (range 0..1) is 1.0 when the rewrite reads as the intent and
has no unreadable word beyond the intent's own (at most ``max_unreadable``
more), 0.5 when it reads as the intent but carries unreadable words, and 0.0
when it states something else. It judges the prompt text only
(``text_only``), so the loop can check it before rendering
(``Optimizer(prescreen=True)``); as a hard constraint (``min: 1.0``) a rewrite
that fails it can never win.

>>> from mmopt.types import Generation
>>> check = ShapesIntent()
>>> [s.value for s in check.score([Generation("a blue square to the right of a red disc", 0, None),
...                                 Generation("a red circle left of a green square", 0, None),
...                                 Generation("What is a red circle left of a blue square?", 0, None)],
...                                "a red circle to the left of a blue square")]
[1.0, 0.0, 0.5]
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from mmopt.component import Configurable
from mmopt.types import Generation, Score

from .media import check_generations, check_intent

__all__ = ["ShapesIntent", "reading", "compare_readings", "from_name"]

_FLIP = {"right of": "left of", "below": "above"}


def reading(text: str) -> dict:
    """What the ShapesWorld parser reads in ``text``: groups, relations (canonical: "right of"
    and "below" written as "left of"/"above" with the ends swapped) and unreadable words."""
    from mmopt.shapesworld.parse import parse_caption

    parsed = parse_caption(text)
    keys = [(g.count, g.colour, g.shape, g.size) for g in parsed.objects]
    relations = set()
    for r in parsed.relations:
        s, rel, o = keys[r.subject], r.relation, keys[r.object]
        if rel in _FLIP:
            s, rel, o = o, _FLIP[rel], s
        relations.add((s, rel, o))
    return {"groups": Counter(keys), "relations": relations, "unreadable": list(parsed.ignored_words)}


def _np(key: tuple) -> str:
    count, colour, shape, size = key
    words = [str(count)] + [w for w in (size, colour, shape or "object") if w]
    return " ".join(words)


def compare_readings(intent: dict, rewrite: dict) -> dict:
    """How ``rewrite``'s reading differs from ``intent``'s: missing/extra objects and relations,
    and the unreadable words it adds (beyond those the intent has)."""
    missing = [_np(k) for k in (intent["groups"] - rewrite["groups"]).elements()]
    extra = [_np(k) for k in (rewrite["groups"] - intent["groups"]).elements()]
    rel_missing = [f"{_np(s)} {r} {_np(o)}" for s, r, o in sorted(intent["relations"] - rewrite["relations"],
                                                                  key=str)]
    rel_extra = [f"{_np(s)} {r} {_np(o)}" for s, r, o in sorted(rewrite["relations"] - intent["relations"],
                                                                key=str)]
    unreadable = list((Counter(rewrite["unreadable"]) - Counter(intent["unreadable"])).elements())
    return {"same_reading": not (missing or extra or rel_missing or rel_extra), "missing": missing, "extra": extra,
            "relations_missing": rel_missing, "relations_extra": rel_extra, "unreadable": unreadable}


class ShapesIntent(Configurable):
    """``intent:shapes``: the ShapesWorld parser's reading of the rewrite must be the intent's.

    ``max_unreadable``: unreadable words (beyond the intent's own) a rewrite may carry and
    still score 1.0 (default 0: every word must mean something to the parser).
    """

    value_range = (0.0, 1.0)
    #: judges the prompt text only: the loop may check its constraint before rendering
    text_only = True

    def __init__(self, *, max_unreadable: int = 0, name: str = "intent:shapes"):
        if isinstance(max_unreadable, bool) or not isinstance(max_unreadable, int) or max_unreadable < 0:
            raise ValueError(f"max_unreadable must be an int >= 0, got {max_unreadable!r}")
        self.max_unreadable = max_unreadable
        self.name = name
        self._memo: dict[str, dict] = {}
        self.register_config(max_unreadable=max_unreadable)

    def _read(self, text: str) -> dict:
        if text not in self._memo:
            self._memo[text] = reading(text)
        return self._memo[text]

    def check(self, prompt: str, intent: str) -> dict:
        """The comparison of ``prompt`` with ``intent`` plus its ``value`` and ``feedback``."""
        diff = compare_readings(self._read(intent), self._read(prompt))
        if not diff["same_reading"]:
            value = 0.0
        else:
            value = 1.0 if len(diff["unreadable"]) <= self.max_unreadable else 0.5
        notes = []
        if diff["missing"] or diff["relations_missing"]:
            notes.append("the prompt no longer states: " + "; ".join(diff["missing"] + diff["relations_missing"]))
        if diff["extra"] or diff["relations_extra"]:
            notes.append("the prompt adds: " + "; ".join(diff["extra"] + diff["relations_extra"]))
        if value < 1.0 and diff["unreadable"]:
            notes.append("words the generator cannot use: " + ", ".join(diff["unreadable"][:8]))
        return {**diff, "value": value, "ok": value >= 1.0, "feedback": "; ".join(notes)}

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        check_intent(intent)
        out = []
        for g in check_generations(generations):
            d = self.check(g.prompt, intent)
            out.append(Score(self.name, d.pop("value"), d))
        return out


def from_name(rest: str = "", **kwargs: Any) -> ShapesIntent:
    """Registry factory: ``"intent:shapes"`` (the ShapesWorld caption parser)."""
    if rest not in ("", "shapes"):
        raise ValueError(f"the intent check reads ShapesWorld captions: 'intent:shapes', got 'intent:{rest}'")
    return ShapesIntent(**kwargs)
