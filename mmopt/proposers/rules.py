"""A rule-based proposer: no LLM, seeded edits from a style vocabulary.

In the spirit of NeuroPrompts (Rosenman et al. 2024), which adds modifiers
of known categories (lighting, detail, medium, camera, colour, quality) to
the user's prompt: each candidate applies one or more edits to the current
best prompt: *add* a modifier of a category the prompt lacks, *swap* one it
has for another of the same category, or *remove* one. Modifiers are written
as tags (``", soft lighting"``) for ``prompt_style == "tags"`` and as clauses
(``", in soft, diffused light"``) for ``"sentences"``.

The user's own words are never edited: only modifiers the proposer added can
be swapped or removed, so protected spans survive by construction. The
vocabulary is data: ``assets/styles/modifiers.json``.

Which prompts are edited is the strategy's call: by default the candidates
take the feasible trials of the history in turn, best first (a beam edits
its beam, top-k its k best), so the strategy changes what this proposer does.

>>> import random; from mmopt.types import SearchState
>>> p = RulesProposer()
>>> out = p.propose(SearchState("a red fox", 1, [], [], random.Random(0)), 2)
>>> len(out), all(o.startswith("a red fox, ") for o in out)
(2, True)
"""
from __future__ import annotations

import importlib.resources
import json
import os
import random
import re
from typing import Any

from mmopt import protect
from mmopt.component import Configurable
from mmopt.llm.parsing import normalize_for_dedup
from mmopt.types import SearchState

__all__ = ["RulesProposer", "from_name", "load_vocabulary"]


def load_vocabulary(vocabulary: str | os.PathLike | dict | None = None) -> dict[str, list[dict]]:
    """``{category: [{"tag": ..., "sentence": ...}, ...]}`` from the shipped file, a path, or a dict."""
    if vocabulary is None:
        data = json.loads((importlib.resources.files("mmopt.assets") / "styles" / "modifiers.json").read_text("utf-8"))
    elif isinstance(vocabulary, dict):
        data = vocabulary
    elif isinstance(vocabulary, (str, os.PathLike)):
        path = os.path.expanduser(str(vocabulary))
        if not os.path.isfile(path):
            raise ValueError(f"vocabulary file not found: {path!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    else:
        raise TypeError(f"vocabulary must be None, a path or a dict, got {type(vocabulary).__name__}")
    cats = data.get("categories", data)
    if not isinstance(cats, dict) or not cats:
        raise ValueError("vocabulary must map categories to lists of {'tag', 'sentence'} entries")
    for cat, entries in cats.items():
        if not isinstance(entries, list) or len(entries) < 1 or not all(
                isinstance(e, dict) and isinstance(e.get("tag"), str) and isinstance(e.get("sentence"), str)
                for e in entries):
            raise ValueError(f"vocabulary category {cat!r} must be a list of {{'tag': str, 'sentence': str}} entries")
    return {cat: list(entries) for cat, entries in cats.items()}


def _approx_tokens(text: str) -> int:
    """A rough CLIP-token count (words and punctuation); the loop enforces the exact budget."""
    return len(re.findall(r"\w+|[^\w\s]", text))


BASES = ("history", "best", "intent")


class RulesProposer(Configurable):
    """Seeded modifier edits (add / swap / remove) of prompts from the history.

    ``vocabulary``: None (shipped), a JSON path, or a dict; ``max_edits``: the
    most edits per candidate (each candidate gets 1..max_edits); ``base``:
    ``"history"`` (candidate i edits the i-th best feasible trial of the
    strategy's history, in turn), ``"best"`` (every candidate edits the best
    one: hill-climbing) or ``"intent"`` (the user's prompt).
    """

    name = "rules"

    def __init__(self, vocabulary: str | os.PathLike | dict | None = None, *, max_edits: int = 2,
                 base: str = "history"):
        if isinstance(max_edits, bool) or not isinstance(max_edits, int) or max_edits < 1:
            raise ValueError(f"max_edits must be an int >= 1, got {max_edits!r}")
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        self.vocabulary = load_vocabulary(vocabulary)
        self.max_edits = max_edits
        self.base = base
        self.register_config(vocabulary=self.vocabulary, max_edits=max_edits, base=base)

    # A modifier in a prompt: (category, entry index, the text form used).
    def _present(self, prompt: str, form: str, frozen: str) -> list[tuple[str, int, str]]:
        found = []
        low, frozen_low = prompt.lower(), frozen.lower()
        for cat, entries in self.vocabulary.items():
            for i, entry in enumerate(entries):
                text = entry[form]
                if text.lower() in frozen_low:
                    continue  # the user's own words: never edited
                if re.search(r",\s*" + re.escape(text.lower()) + r"(?=\s*(?:,|\.|$))", low):
                    found.append((cat, i, text))
        return found

    def _user_categories(self, frozen: str) -> set[str]:
        """Categories the user already chose ("a watercolor of ..."): nothing is added to them."""
        low = frozen.lower()
        return {cat for cat, entries in self.vocabulary.items()
                if any(re.search(r"\b" + re.escape(e["tag"].lower()) + r"\b", low) for e in entries)}

    def _edit_once(self, prompt: str, rng: random.Random, form: str, frozen: str, budget: int) -> str:
        present = self._present(prompt, form, frozen)
        used = {cat for cat, _, _ in present} | self._user_categories(frozen)
        free = [c for c in self.vocabulary if c not in used and self.vocabulary[c]]
        ops = (["add"] * 6 if free else []) + (["swap"] * 3 + ["remove"] if present else [])
        if not ops:
            return prompt
        op = rng.choice(ops)
        if op == "add":
            cat = rng.choice(free)
            text = rng.choice(self.vocabulary[cat])[form]
            end = "." if prompt.rstrip().endswith(".") and form == "sentence" else ""
            body = prompt.rstrip().rstrip(".,;").rstrip() if end else prompt.rstrip().rstrip(",;").rstrip()
            new = f"{body}, {text}{end}"
            if _approx_tokens(new) <= budget:
                return new
            if not present:
                return prompt  # full: nothing to add, nothing to swap
            op = rng.choice(["swap", "remove"])
        cat, i, text = rng.choice(present)
        pattern = re.compile(r",\s*" + re.escape(text) + r"(?=\s*(?:,|\.|$))", re.IGNORECASE)
        others = [e for j, e in enumerate(self.vocabulary[cat]) if j != i]
        if op == "remove" or not others:
            return pattern.sub("", prompt, count=1)
        new = pattern.sub(", " + rng.choice(others)[form], prompt, count=1)
        return new if _approx_tokens(new) <= budget else pattern.sub("", prompt, count=1)

    def propose(self, state: SearchState, n: int) -> list[str]:
        """Up to ``n`` edited prompts, distinct from each other and from every tried prompt."""
        # 1. check inputs
        if not isinstance(state, SearchState):
            raise TypeError(f"state must be a SearchState, got {type(state).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        rng = random.Random(state.rng.randrange(2**31))  # local RNG seeded from the run's
        form = "sentence" if state.prompt_style == "sentences" else "tag"
        intent = " ".join(protect.strip_keep_tags(state.intent).split())
        # 2. the prompts to edit: the strategy's history (its order, best last), feasible ones only
        feasible = [t.prompt for t in reversed(state.history) if t.feasible]
        if self.base == "intent" or not feasible:
            parents = [intent]
        elif self.base == "best":
            parents = feasible[:1]
        else:
            parents = feasible
        budget = max(1, int(state.max_prompt_tokens) - 2)  # room for the start/end tokens
        seen = {normalize_for_dedup(p) for p in state.seen_prompts()} | {normalize_for_dedup(p) for p in parents}
        seen.add(normalize_for_dedup(intent))
        protected = list(state.protected)

        # 3. random edit chains until n new prompts (bounded tries), parents in turn
        out: list[str] = []
        for attempt in range(20 * n):
            if len(out) >= n:
                break
            cand = parents[(len(out) + attempt // n) % len(parents)]
            for _ in range(rng.randint(1, self.max_edits)):
                cand = self._edit_once(cand, rng, form, intent, budget)
            key = normalize_for_dedup(cand)
            if key in seen or (protected and protect.check(cand, protected)):
                continue
            seen.add(key)
            out.append(cand)
        return out


def from_name(rest: str = "", **kw: Any) -> RulesProposer:
    """Registry factory: ``"rules"`` (shipped vocabulary) or ``"rules:/path/vocabulary.json"``."""
    if rest:
        kw.setdefault("vocabulary", rest)
    return RulesProposer(**kw)
