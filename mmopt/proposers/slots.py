"""Slot edits: the best prompt's one-word neighbours inside a sentence template (no LLM).

For prompts written from templates with word slots (PEZ's ``invert_templates``
writes them: ``"a {colour} {shape} above a {colour} {shape}"``), the useful
moves are small: change one slot's word (another colour, another shape, another
count) or reverse the relation (``"above"`` <-> ``"below"``, from the template
set's ``"opposites"``). This proposer reads the best trial so far, finds the
template it was written from, and proposes every such neighbour that has not
been tried, in a seeded random order. Run in the loop with an image-similarity
scorer it is a hill climb judged by what the generator draws, where PEZ's own
choice is judged by CLIP's reading of the text alone.

A best prompt that fits no template gets no proposals (the loop falls back to
rule edits, recorded).

>>> p = SlotEdits({"slots": {"c": ["red", "blue"]}, "templates": ["a {c} cube"]})
>>> import random; from mmopt.types import SearchState
>>> [c.text for c in p.propose(SearchState("a red cube", 1, [], [], random.Random(0)), 4)]
['a blue cube']
"""
from __future__ import annotations

import re
from typing import Any

from mmopt.component import Configurable
from mmopt.types import Candidate, SearchState

__all__ = ["SlotEdits", "from_name"]


class SlotEdits(Configurable):
    """One-word neighbours of the best prompt within ``templates`` (a shipped set's name,
    a JSON path, or the loaded dict ``{"slots", "templates", "opposites"}``)."""

    name = "slots"

    def __init__(self, templates: Any = "shapesworld"):
        from mmopt.prompt_learning.templates import _template_pieces, check_templates, load_templates

        # the same checks for a loaded dict as for a file: slots, templates that name only those, opposites
        data = check_templates(templates) if isinstance(templates, dict) else load_templates(templates)
        self.slots = {k: list(dict.fromkeys(v)) for k, v in data["slots"].items()}
        self.opposites = dict(data.get("opposites", {}))
        # each template as (pieces, a regex whose groups are its slots' words, longest words first)
        self._compiled = []
        for t in data["templates"]:
            pieces = _template_pieces(t)
            parts = [re.escape(v) if kind == "text" else
                     "(" + "|".join(re.escape(w) for w in sorted(self.slots[v], key=len, reverse=True)) + ")"
                     for kind, v in pieces]
            self._compiled.append((pieces, re.compile(r"\s+".join(parts) + r"\Z")))
        self.register_config(templates=templates if isinstance(templates, str) else "inline",
                             slots=self.slots, template_list=list(data["templates"]), opposites=self.opposites)

    def neighbours(self, prompt: str) -> list[str]:
        """Every sentence one slot word (or one reversal of the relations) away from ``prompt``,
        from the first template that ``prompt`` fits; ``[]`` if it fits none."""
        from mmopt.prompt_learning.templates import reverse_relations

        text = " ".join(prompt.split())
        for pieces, pattern in self._compiled:
            m = pattern.match(text)
            if not m:
                continue
            words, names = list(m.groups()), [v for kind, v in pieces if kind == "slot"]

            def write(fill: list[str]) -> str:
                it = iter(fill)
                return " ".join(v if kind == "text" else next(it) for kind, v in pieces)

            out = [write(words[:j] + [w] + words[j + 1:])
                   for j, name in enumerate(names) for w in self.slots[name] if w != words[j]]
            out.append(reverse_relations(text, self.opposites))
            return [s for s in dict.fromkeys(out) if s != text]
        return []

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        base = state.best.prompt if state.best is not None else state.intent
        seen = {t.prompt for t in state.trials} | set(state.pending)
        fresh = [s for s in self.neighbours(base) if s not in seen]
        state.rng.shuffle(fresh)
        return [Candidate(s) for s in fresh[:n]]


def from_name(rest: str = "", **kwargs: Any) -> SlotEdits:
    """Registry factory: ``slots`` (the ShapesWorld templates) or ``slots:<set or .json>``."""
    return SlotEdits(rest or kwargs.pop("templates", "shapesworld"), **kwargs)
