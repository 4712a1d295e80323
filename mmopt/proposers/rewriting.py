"""What every LLM proposer shares: ask, parse, filter, and the modes that lock the subject.

The concept-level, textual-gradient and constrained-expansion proposers
differ in what they ask the LLM; how a reply becomes candidates is the same,
so it lives here (``Rewriter``): the reply is parsed as a numbered list
(``mmopt.llm.parsing.parse_prompts``), ``<keep>`` tags are removed, protected
spans repaired or the item dropped, over-long items dropped, repeats of tried
prompts dropped, and, when the loop checks constraints on the text
(``SearchState.screen``), items that would break one are dropped before
they cost a render. Every step is counted in ``last_stats``.

Modes (``mode=``):
  * ``"free"``: the LLM rewrites the whole prompt;
  * ``"subject"``: subject, counts and relations are locked: the LLM writes
    only style and detail, which is appended to the user's prompt verbatim
    (a candidate that does not start with the intent cannot occur), and the
    loop's drift guard / intent check still judge the result.

A raw mode (no rewriting at all, only the negative prompt searched) is the
``raw`` proposer (:mod:`mmopt.proposers.negative`).

>>> Rewriter.item_tokens(SearchState("a red circle left of a blue square", 1, [], [], None))
40
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import re
import string
from typing import Any, Sequence

from mmopt import protect
from mmopt.cache import content_key
from mmopt.errors import LLMError, LLMUnavailableError
from mmopt.llm.base import chat
from mmopt.llm.parsing import ListStop, normalize_for_dedup, parse_prompts
from mmopt.types import Candidate, SearchState, Trial

__all__ = ["Rewriter", "MODES", "STYLE_TEXT", "history_lines", "protected_block", "resolve_llm", "SYSTEM_MESSAGE"]

log = logging.getLogger(__name__)

MODES = ("free", "subject")
SYSTEM_MESSAGE = "You are an expert prompt engineer for text-to-image models."
STYLE_TEXT = {
    "tags": "comma-separated keywords and short phrases",
    "sentences": "one or two plain descriptive sentences in natural language",
}
_WORDS = re.compile(r"[a-z]{3,}")


def history_lines(history: Sequence[Trial], pending: Sequence[str] = ()) -> list[str]:
    """The strategy's history as it is (worst to best), one ``prompt | score`` line each;
    rejected trials are labelled, prompts still rendering come first, unscored."""
    lines = [f"{p} | not scored yet" for p in pending]
    for t in history:
        line = f"{t.prompt} | {t.objective:.3f}"
        if not t.feasible:
            line += " | rejected: " + "; ".join(t.meta.get("violations") or ["broke a constraint"])
        lines.append(line)
    return lines


def resolve_llm(rest: str, context: Any, llm: Any, who: str) -> Any:
    """The LLM a proposer factory was given: in the name (``"who:<llm>"``), as ``llm=`` (an LLM or a
    registry name), the run's (``--llm``), else the embedded SmolLM2."""
    from mmopt import registry
    from mmopt.llm import DEFAULT_LLM

    if llm is not None and rest:
        raise ValueError(f"give the LLM either in the name ('{who}:{rest}') or as llm=, not both")
    if llm is None and not rest and context is not None and context.llm is not None:
        llm = context.get_llm(who)
    if llm is None or isinstance(llm, (str, dict)):
        llm = registry.create("llm", llm or rest or DEFAULT_LLM)
    return llm


def protected_block(protected: Sequence[str]) -> str:
    if not protected:
        return ""
    return "\nCopy these exact spans unchanged into every prompt: " + ", ".join(f'"{s}"' for s in protected) + ".\n"


class Rewriter:
    """Base of the LLM proposers: the LLM, the decoding settings, the mode, and ``accept``.

    ``llm``: anything with ``chat`` (the LLM protocol); ``temperature``; ``max_retries``:
    extra attempts after one that gave nothing usable; ``mode``: ``"free"`` or ``"subject"``;
    ``stop_early``: end a list reply once it holds what ``accept`` keeps (False decodes every
    reply to its end: the same candidates, more tokens; see :meth:`stop_rule`).
    """

    name = "rewriter"

    def __init__(self, llm: Any, *, temperature: float = 0.8, max_retries: int = 1, mode: str = "free",
                 stop_early: bool = True):
        if not callable(getattr(llm, "chat", None)):
            raise TypeError(f"llm must have a chat(messages, ...) method (the LLM protocol), got {type(llm).__name__}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5:
            raise ValueError(f"temperature must be a number in [0, 5], got {temperature!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(stop_early, bool):
            raise TypeError(f"stop_early must be True or False, got {stop_early!r}")
        self.llm = llm
        self.stop_early = stop_early
        self.temperature = float(temperature)
        self.max_retries = max_retries
        self.mode = mode
        self.last_stats: dict = {}

    def base_config(self) -> dict:
        return {"llm": self.llm, "temperature": self.temperature, "max_retries": self.max_retries, "mode": self.mode,
                "stop_early": self.stop_early}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def check(state: Any, n: Any) -> None:
        if not isinstance(state, SearchState):
            raise TypeError(f"state must be a SearchState, got {type(state).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")

    @staticmethod
    def intent_text(state: SearchState) -> str:
        return " ".join(protect.strip_keep_tags(state.intent).split())

    @staticmethod
    def protected(state: SearchState) -> list[str]:
        spans = list(dict.fromkeys(state.protected))
        try:
            spans += [s for s in protect.find_protected(state.intent) if s not in spans]
        except ValueError:
            pass  # malformed <keep> tags in the intent: rely on state.protected
        return spans

    @staticmethod
    def item_tokens(state: SearchState) -> int:
        """Tokens one revision may take: about twice the intent, within the encoder's window."""
        words = len(state.intent.split())
        return max(24, min(int(state.max_prompt_tokens) + 8, 4 * words // 2 + 24))

    @staticmethod
    def fill(template: str, **values: Any) -> str:
        return string.Template(template).safe_substitute(**values)

    def new_stats(self) -> dict:
        stats = {"attempts": 0, "llm_calls": 0, "parsed": 0, "repaired": 0, "rejected_seen": 0,
                 "rejected_protected": 0, "rejected_length": 0, "rejected_screen": 0, "rejected_subject": 0,
                 "errors": []}
        self.last_stats = stats
        return stats

    def complete(self, messages: list[dict], state: SearchState, stats: dict, *, max_tokens: int,
                 stop: list[str] | None = None, temperature: float | None = None, stop_rule: Any = None) -> str | None:
        """One LLM reply (counted); None when the LLM failed (recorded). An unreachable LLM raises."""
        seed = state.rng.randrange(2**31)  # the run's RNG, never the global one
        stats["llm_calls"] += 1
        try:
            return chat(self.llm, messages, n=1, temperature=self.temperature if temperature is None else temperature,
                        max_tokens=max_tokens, seed=seed, stop=stop, stop_rule=stop_rule)[0]
        except LLMUnavailableError:
            raise  # the LLM is down: the run stops (resumable), it is not an empty iteration
        except LLMError as e:
            log.warning("%s: LLM failed: %s", self.name, e)
            stats["errors"].append(str(e))
            return None

    def accept(self, items: Sequence[str], state: SearchState, stats: dict, n: int,
               accepted: list[Candidate] | None = None, negative: str | None = None) -> list[Candidate]:
        """``items`` (texts) as new candidates, filtered; appended to ``accepted`` (up to ``n``)."""
        accepted = [] if accepted is None else accepted
        protected = self.protected(state)
        intent = self.intent_text(state)
        seen = {normalize_for_dedup(protect.strip_keep_tags(p)) for p in state.seen_prompts()}
        seen |= {normalize_for_dedup(intent)} | {normalize_for_dedup(c.text) for c in accepted}
        max_words = max(20, 2 * int(state.max_prompt_tokens))
        for item in items:
            if len(accepted) >= n:
                break
            stats["parsed"] += 1
            text = " ".join(protect.strip_keep_tags(item).split())
            if self.mode == "subject":
                text = self.lock_subject(intent, text)
                if text is None:
                    stats["rejected_subject"] += 1
                    continue
            text, missing = protect.enforce(text, protected)
            if text is None:
                stats["rejected_protected"] += 1
                continue
            stats["repaired"] += bool(missing)
            if len(text.split()) > max_words:
                stats["rejected_length"] += 1
                continue
            key = normalize_for_dedup(text)
            if key in seen:
                stats["rejected_seen"] += 1
                continue
            seen.add(key)
            cand = Candidate(text, negative)
            if state.screen is not None and state.screen(cand):
                stats["rejected_screen"] += 1
                continue
            accepted.append(cand)
        return accepted

    @staticmethod
    def lock_subject(intent: str, text: str) -> str | None:
        """Subject mode: the intent verbatim, then the LLM's style and detail.

        A reply that starts with the intent keeps what it adds after it; a reply that
        shares a word with the intent otherwise rewrites the subject: None (dropped).

        >>> Rewriter.lock_subject("a red fox", "soft light, film grain")
        'a red fox, soft light, film grain'
        >>> Rewriter.lock_subject("a red fox", "A red fox, in snow at dusk.")
        'a red fox, in snow at dusk'
        >>> Rewriter.lock_subject("a red fox", "a crimson fox in snow") is None
        True
        """
        head = intent.rstrip(" .")
        low = text.lower()
        if low.startswith(head.lower()):
            extra = text[len(head):].strip(" ,.;:-")
        else:
            if set(_WORDS.findall(head.lower())) & set(_WORDS.findall(low)):
                return None  # it rewrites the subject: not allowed in this mode
            extra = text.strip(" ,.;:-")
        return f"{head}, {extra}" if extra else None

    def stop_rule(self, state: SearchState, n: int, accepted: list[Candidate], negative: str | None) -> ListStop:
        """A rule that ends a list reply once its finished items hold the ``n - len(accepted)``
        candidates :meth:`accept` would add: the same candidates as from the whole reply."""
        before = list(accepted)
        screen, verdicts = state.screen, {}
        if screen is not None:  # the rule re-reads a reply as it grows: screen each candidate once
            def screen_once(cand):
                if cand not in verdicts:
                    verdicts[cand] = screen(cand)
                return verdicts[cand]
            state = dataclasses.replace(state, screen=screen_once)

        def usable(items: list[str]) -> list[Candidate]:
            return self.accept(items, state, collections.defaultdict(int), n, list(before), negative)[len(before):]

        key = content_key("rewriter-accept", sorted(state.seen_prompts()), state.intent, state.protected,
                          self.mode, int(state.max_prompt_tokens), negative, [c.key() for c in before],
                          None if screen is None else getattr(screen, "key", repr(screen)))
        return ListStop(n - len(before), usable, key=key, max_items=4 * (n - len(before)))

    def ask_list(self, messages: list[dict], state: SearchState, stats: dict, n: int, *,
                 accepted: list[Candidate] | None = None, negative: str | None = None) -> list[Candidate]:
        """Ask for a numbered list of ``n`` prompts (retrying while nothing usable came back)."""
        accepted = [] if accepted is None else accepted
        start = len(accepted)
        for _ in range(1 + self.max_retries):
            want = n - len(accepted)
            if want <= 0:
                break
            stats["attempts"] += 1
            # the reply ends where item want+1 would begin, or once its finished items hold the
            # `want` prompts accept() keeps (the rest of a small LLM's reply is mostly rambling)
            reply = self.complete(messages, state, stats, max_tokens=want * self.item_tokens(state) + 16,
                                  stop=[f"\n{want + 1}.", f"\n{want + 1})"],
                                  stop_rule=self.stop_rule(state, n, accepted, negative) if self.stop_early else None)
            if reply is None:
                continue
            self.accept(parse_prompts(reply, max_items=4 * want), state, stats, n, accepted, negative)
            if len(accepted) > start:
                break
        return accepted
