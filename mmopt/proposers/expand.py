"""Style-constrained expansion (after NeuroPrompts): the user's prompt plus terms from fixed vocabularies.

NeuroPrompts expands a prompt with modifiers of known categories while the
user's required terms must appear and forbidden ones must not. Here the
categories (style, medium, perspective, lighting, quality, mood; our own,
artist-free lists in ``assets/styles/expansion.json``) are shown to the LLM,
which picks terms for ``n`` expansions; its reply is then *mapped onto the
vocabularies*: only terms from the lists survive, at most one per category,
and each candidate is built as ``<the user's prompt>, <term>, <term>``. So
every candidate uses only vocabulary terms by construction, required terms
are put in, forbidden ones never appear. The LLM protocol has no decoding
constraint (no grammar hook in ``chat``), so this is verify-and-repair, not
constrained decoding: an expansion whose reply names no vocabulary term gets
terms drawn from the lists with the run's RNG (counted as ``repaired``).

The user's prompt is kept verbatim (the subject is never rewritten), so the
loop's constraints judge only what was added.

>>> ExpandProposer(create("llm", "smollm2"), require=["watercolor"]).propose(state, 4)   # doctest: +SKIP
"""
from __future__ import annotations

import importlib.resources
import json
import os
import random
import re
from typing import Any, Sequence

from mmopt.llm.parsing import parse_prompts
from mmopt.proposers.rewriting import SYSTEM_MESSAGE, Rewriter, resolve_llm
from mmopt.types import Candidate, SearchState

__all__ = ["ExpandProposer", "load_expansion", "from_name"]

TEMPLATE = (
    "Task: add style keywords to a prompt for a text-to-image model. Choose only from these lists, "
    "at most one keyword per list:\n$vocab\n$rules\nThe prompt: \"$intent\"\n"
    "Write $n different keyword choices, one per line, each a comma-separated list of keywords. "
    "Reply with a numbered list only.")


def load_expansion(vocabulary: str | os.PathLike | dict | None = None) -> dict[str, list[str]]:
    """``{category: [terms]}`` from the shipped file, a JSON path, or a dict."""
    if vocabulary is None:
        data = json.loads((importlib.resources.files("mmopt.assets") / "styles" / "expansion.json").read_text("utf-8"))
    elif isinstance(vocabulary, dict):
        data = vocabulary
    elif isinstance(vocabulary, (str, os.PathLike)):
        path = os.path.expanduser(str(vocabulary))
        if not os.path.isfile(path):
            raise ValueError(f"expansion vocabulary not found: {path!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    else:
        raise TypeError(f"vocabulary must be None, a path or a dict, got {type(vocabulary).__name__}")
    cats = data.get("categories", data)
    if not isinstance(cats, dict) or not cats or not all(
            isinstance(v, list) and v and all(isinstance(t, str) and t.strip() for t in v) for v in cats.values()):
        raise ValueError("an expansion vocabulary maps categories to non-empty lists of terms")
    return {c: [t.strip().lower() for t in v] for c, v in cats.items()}


class ExpandProposer(Rewriter):
    """The prompt plus vocabulary terms the LLM picks (at most one per category).

    ``vocabulary``: None (shipped), a path or a dict; ``require``: terms every candidate
    carries; ``forbid``: terms (or words) no candidate may carry; ``terms``: most terms added.
    """

    name = "expand"

    def __init__(self, llm: Any, *, vocabulary: str | os.PathLike | dict | None = None,
                 require: Sequence[str] = (), forbid: Sequence[str] = (), terms: int = 3,
                 temperature: float = 0.8, **kwargs: Any):
        super().__init__(llm, temperature=temperature, **kwargs)
        self.vocab = load_expansion(vocabulary)
        for key, value in (("require", require), ("forbid", forbid)):
            if isinstance(value, str) or not all(isinstance(t, str) and t.strip() for t in value):
                raise TypeError(f"{key} must be a list of terms, got {value!r}")
        self.require = [t.strip().lower() for t in require]
        self.forbid = [t.strip().lower() for t in forbid]
        clash = set(self.require) & set(self.forbid)
        if clash:
            raise ValueError(f"terms both required and forbidden: {sorted(clash)}")
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
            raise ValueError(f"terms must be an int >= 1, got {terms!r}")
        self.max_terms = terms

    def config(self) -> dict:
        return {"component": "mmopt.proposers.expand.ExpandProposer", **self.base_config(), "vocabulary": self.vocab,
                "require": self.require, "forbid": self.forbid, "terms": self.max_terms, "template": TEMPLATE}

    def _allowed(self, term: str) -> bool:
        return not any(re.search(rf"\b{re.escape(f)}\b", term) for f in self.forbid)

    def terms_in(self, text: str) -> list[str]:
        """The vocabulary terms named in ``text``: at most one per category (the first named), in
        category order, forbidden ones left out."""
        low = " ".join(text.lower().split())
        out = []
        for terms in self.vocab.values():
            hits = sorted((low.find(t), t) for t in terms if t in low and self._allowed(t))
            if hits:
                out.append(hits[0][1])
        return out[: self.max_terms]

    def expand(self, intent: str, terms: Sequence[str]) -> str:
        """``intent, term, term``: required terms first, no repeats, nothing forbidden."""
        chosen = list(dict.fromkeys([*self.require, *terms]))
        chosen = [t for t in chosen if t not in intent.lower() and self._allowed(t)]
        return ", ".join([intent.rstrip(" .,")] + chosen)

    def _random_terms(self, rng: random.Random) -> list[str]:
        cats = list(self.vocab)
        rng.shuffle(cats)
        picks = [rng.choice([t for t in self.vocab[c] if self._allowed(t)] or [""]) for c in cats[: self.max_terms]]
        return [t for t in picks if t]

    def build_messages(self, state: SearchState, n: int) -> list[dict]:
        vocab = "\n".join(f"- {c}: {', '.join(t for t in terms if self._allowed(t))}" for c, terms in self.vocab.items())
        rules = []
        if self.require:
            rules.append("Always include: " + ", ".join(self.require) + ".")
        if self.forbid:
            rules.append("Never use: " + ", ".join(self.forbid) + ".")
        text = self.fill(TEMPLATE, vocab=vocab, rules="\n".join(rules), intent=self.intent_text(state), n=n)
        return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": text}]

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        """Up to ``n`` expansions of the intent with vocabulary terms only."""
        self.check(state, n)
        stats = self.new_stats()
        intent = self.intent_text(state)
        rng = random.Random(state.rng.randrange(2**31))
        reply = self.complete(self.build_messages(state, n), state, stats, max_tokens=n * 24 + 16,
                              stop=[f"\n{n + 1}.", f"\n{n + 1})"])
        items = parse_prompts(reply or "", max_items=4 * n)
        texts = []
        for item in items:
            terms = self.terms_in(item)
            if not terms:
                continue
            texts.append(self.expand(intent, terms))
        # repair: expansions the reply did not give are drawn from the vocabularies
        for _ in range(4 * n):
            if len(texts) >= 2 * n:
                break
            texts.append(self.expand(intent, self._random_terms(rng)))
            stats["repaired"] += 1
        before = stats["repaired"]
        out = self.accept(texts, state, stats, n)
        stats["repaired"] = before
        return out


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kw: Any) -> ExpandProposer:
    """Registry factory: ``"expand"`` (the run's LLM, else the embedded SmolLM2) or ``"expand:<llm>"``."""
    return ExpandProposer(resolve_llm(rest, context, llm, "expand"), **kw)
