"""Splitting an intent into the noun phrases (concepts) an image must show.

Decomposed CLIPScore (``dcs``) and concept-level scores (``concepts``) both
score an image against each part of the intent, so a rewriter learns *which*
part is missing. The parts come from:

1. an LLM, with the template ``assets/templates/noun_phrases.txt`` (temperature
   0, seed 0); its reply is parsed robustly and every phrase must share a
   content word with the intent (small models invent objects);
2. otherwise (no LLM, the LLM failed, or nothing usable came back) a rule-based
   splitter: cut at commas, "and", "with", prepositions ("on", "next to", ...)
   and at "-ing" verbs followed by a determiner ("riding a horse");
3. if even that yields nothing, the whole intent as a single phrase.

``Decomposition.source`` records which of ``"llm"``, ``"rules"`` or ``"whole"``
produced the phrases, and ``note`` why a fallback was taken. Results are cached
per intent in memory and, when a ``Cache`` is given, on disk.

>>> Decomposer().decompose("a red cat on a blue mat and two apples").phrases
('a red cat', 'a blue mat', 'two apples')
"""
from __future__ import annotations

import importlib.resources
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from mmopt.cache import Cache, content_key

log = logging.getLogger(__name__)

__all__ = ["Decomposition", "Decomposer", "rule_phrases", "load_template"]

MAX_PHRASES = 8

# Words that carry no concept of their own: a phrase made only of them is dropped,
# and they do not count as overlap with the intent.
_STOP = frozenset("""
a an the this that these those some any each every of to in on at by for from with without
and or but is are was were be been being it its their his her there here very
picture image photo photograph showing shows depicting depicts of
""".split())
_DETERMINERS = r"(?:a|an|the|one|two|three|four|five|six|seven|eight|nine|ten|some|many|several|his|her|their|its|my|our)"
_SEPARATORS = re.compile(
    r"\s*(?:[,;:!?()\[\]]|\.(?:\s|$)|\s-\s|"
    r"\b(?:and|with|without|on top of|in front of|next to|close to|on|in|inside|into|onto|at|"
    r"under|underneath|below|beneath|above|over|behind|beside|besides|near|by|between|"
    r"among|around|across|through|along|against|toward|towards|from|while|who|which|that)\b)\s*",
    re.IGNORECASE,
)
# "an astronaut riding a horse" -> cut before "riding" and before "a horse".
_VERB_ING = re.compile(rf"\s+\b[a-z]+ing\b\s+(?={_DETERMINERS}\b)", re.IGNORECASE)
_LEADING_JUNK = re.compile(
    r"^(?:(?:is|are|was|were|being|sitting|standing|lying|of)\s+|"
    r"(?:an?\s+)?(?:close-up\s+)?(?:photo|photograph|picture|image|shot)\s+of\s+)", re.IGNORECASE)
_TRAILING_VERB = re.compile(r"\s+\b(?:is|are|[a-z]+ing)\b$", re.IGNORECASE)
# Nouns ending in -ing that must not be cut as a trailing verb ("oil painting").
_ING_NOUNS = frozenset("""painting drawing building clothing ring king wing string thing ceiling
evening morning wedding pudding swing spring sibling railing lightning icing frosting stuffing
dumpling sling sailing carving engraving sketching rendering""".split())


@dataclass(frozen=True)
class Decomposition:
    """The concepts of one intent: ``phrases``, which ``source`` made them, and a ``note``."""

    intent: str
    phrases: tuple[str, ...]
    source: str  # "llm", "rules" or "whole"
    note: str = ""


def load_template(name: str = "noun_phrases.txt") -> str:
    """The decomposition prompt template shipped in ``mmopt/assets/templates``."""
    return (importlib.resources.files("mmopt.assets") / "templates" / name).read_text(encoding="utf-8")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _stem(word: str) -> str:
    # Plural-insensitive overlap: "apples" matches "apple", "boxes" matches "box".
    for suffix in ("es", "s"):
        if len(word) > 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if w not in _STOP}


def rule_phrases(intent: str) -> list[str]:
    """Noun phrases of ``intent`` by rules (no model); ``[]`` when none is found.

    >>> rule_phrases("an astronaut riding a horse on the moon, oil painting")
    ['an astronaut', 'a horse', 'the moon', 'oil painting']
    """
    if not isinstance(intent, str):
        raise TypeError(f"intent must be a str, got {type(intent).__name__}")
    text = _VERB_ING.sub(" , ", intent)
    out: list[str] = []
    seen: set[str] = set()
    for piece in _SEPARATORS.split(text):
        piece = piece.strip(" .'\"")
        piece = _LEADING_JUNK.sub("", piece)
        last = _words(piece)[-1:] or [""]
        if last[0] not in _ING_NOUNS:
            piece = _TRAILING_VERB.sub("", piece).strip()
        if not piece or not _content(piece):
            continue
        key = piece.lower()
        if key not in seen:
            seen.add(key)
            out.append(piece)
    return out[:MAX_PHRASES]


class Decomposer:
    """Intent -> ``Decomposition``; an LLM when given, rules otherwise.

    Args:
        llm: an object with the LLM protocol's ``chat`` (or ``None`` for rules only).
        cache: optional ``mmopt.cache.Cache`` for LLM decompositions across runs.
        template: override of the prompt template (must contain ``{prompt}``).
        max_tokens: LLM reply budget.

    >>> Decomposer().decompose("a dog with a hat").phrases
    ('a dog', 'a hat')
    """

    def __init__(self, llm: Any = None, *, cache: Cache | None = None,
                 template: str | None = None, max_tokens: int = 96):
        if llm is not None and not callable(getattr(llm, "chat", None)):
            raise TypeError(f"llm must implement mmopt.types.LLM (a .chat method), got {type(llm).__name__}")
        template = load_template() if template is None else template
        if not isinstance(template, str) or "{prompt}" not in template:
            raise ValueError("template must be a string containing '{prompt}'")
        self.llm = llm
        self.cache = cache
        self.template = template
        self.max_tokens = max_tokens
        self._memo: dict[str, Decomposition] = {}
        self._lock = threading.Lock()

    def config(self) -> dict:
        return {"component": "mmopt.scorers.decompose.Decomposer", "llm": self.llm, "template": self.template,
                "max_tokens": self.max_tokens}

    def decompose(self, intent: str) -> Decomposition:
        """The noun phrases of ``intent`` (cached per intent)."""
        if not isinstance(intent, str) or not intent.strip():
            raise ValueError(f"intent must be a non-empty string, got {intent!r}")
        intent = intent.strip()
        with self._lock:
            if intent in self._memo:
                return self._memo[intent]
        result = self._decompose(intent)
        with self._lock:
            self._memo.setdefault(intent, result)
        return result

    # 1. LLM, 2. rules, 3. whole intent
    def _decompose(self, intent: str) -> Decomposition:
        note = "no LLM given"
        if self.llm is not None:
            phrases, note = self._from_llm(intent)
            if phrases:
                return Decomposition(intent, tuple(phrases), "llm")
            log.info("LLM decomposition of %r unusable (%s); using rules", intent, note)
        phrases = rule_phrases(intent)
        if phrases:
            return Decomposition(intent, tuple(phrases), "rules", note)
        return Decomposition(intent, (intent,), "whole",
                             f"{note}; no noun phrase found, the whole intent is one concept")

    def messages(self, intent: str) -> list[dict]:
        """The chat request for ``intent``: instruction, few-shot turns, then the intent.

        The template's first paragraph is the instruction; each later paragraph
        ``Prompt: ...`` followed by ``- phrase`` lines becomes a user/assistant
        pair (small models follow examples given as turns better than inline).
        """
        blocks = [b.strip() for b in re.split(r"\n\s*\n", self.template) if b.strip()]
        messages = [{"role": "system", "content": blocks[0]}] if "{prompt}" not in blocks[0] else []
        for block in blocks[1:] if messages else blocks:
            if "{prompt}" in block:
                messages.append({"role": "user", "content": block.replace("{prompt}", intent)})
                continue
            head, _, answer = block.partition("\n")
            messages.append({"role": "user", "content": head.strip()})
            messages.append({"role": "assistant", "content": answer.strip()})
        return messages

    def _from_llm(self, intent: str) -> tuple[list[str], str]:
        from mmopt.llm.parsing import parse_prompts

        llm_name = getattr(self.llm, "name", type(self.llm).__name__)
        key = content_key("noun-phrases", llm_name, self.template, intent, self.max_tokens)
        raw = self.cache.get_json(key) if self.cache is not None else None
        if raw is None:
            try:
                replies = self.llm.chat(self.messages(intent), n=1, temperature=0.0,
                                        max_tokens=self.max_tokens, seed=0)
            except Exception as e:  # any backend failure falls back to rules, recorded
                return [], f"LLM failed: {type(e).__name__}: {e}"
            raw = replies[0] if replies else ""
            if self.cache is not None:
                self.cache.put_json(key, raw)
        if not isinstance(raw, str) or not raw.strip():
            return [], "LLM returned an empty reply"
        # Small models continue the few-shot pattern with a new "Prompt:" block: cut it.
        raw = re.split(r"\n\s*prompt\s*:", raw, flags=re.IGNORECASE)[0]
        candidates = parse_prompts(raw, max_items=2 * MAX_PHRASES, min_chars=2)
        intent_words = _content(intent)
        kept, seen = [], set()
        for phrase in candidates:
            phrase = phrase.strip(" .")
            words = _content(phrase)
            # A phrase must be short and name only what the intent names: small
            # models copy the few-shot examples or invent objects ("a glass cat").
            if not words or not words <= intent_words or len(_words(phrase)) > 8:
                continue
            if phrase.lower() not in seen:
                seen.add(phrase.lower())
                kept.append(phrase)
        if not kept:
            return [], f"no usable phrase in the LLM reply {raw[:80]!r}"
        return kept[:MAX_PHRASES], ""
