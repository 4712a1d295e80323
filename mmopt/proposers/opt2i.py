"""OPT2I: an LLM rewrites the prompt from the history of scored prompts.

After Manas et al. 2024 ("Improving Text-to-Image Consistency via Automatic
Prompt Optimization"): the LLM sees the user's intent, the scored history the
strategy chose (worst to best, the strategy's order, never re-sorted here;
a trial that broke a constraint is labelled as such, so it is never shown as
the best; a strategy whose ``layout`` is ``"appended"`` has it shown in trial
order instead, so the meta-prompt only grows and a local LLM re-reads only its
end), and the scorer's feedback, and is asked for N distinct revisions. Here the meta-prompt also states the
generator's prompt style (tags or sentences), its token budget, and the
protected spans that must appear verbatim. The template is data:
``assets/templates/opt2i.txt`` with ``$placeholders``.

Every reply goes through ``mmopt.llm.parsing.parse_prompts``; candidates
already tried are dropped, candidates that lost a protected span are
repaired or rejected, and an attempt that yields nothing usable is retried
with a new seed drawn from ``state.rng``. After the retries the proposer
returns what it has, possibly ``[]``: the loop records the failure and keeps
the current best.

>>> from mmopt.llm import load_llm                         # doctest: +SKIP
>>> OPT2IProposer(load_llm("smollm2")).propose(state, 5)   # doctest: +SKIP
"""
from __future__ import annotations

import collections
import importlib.resources
import logging
import os
import re
import string
from typing import Any

from mmopt import protect
from mmopt.cache import content_key
from mmopt.errors import LLMError, LLMUnavailableError
from mmopt.llm.base import chat
from mmopt.llm.parsing import ListStop, normalize_for_dedup, parse_prompts
from mmopt.types import SearchState, Trial

__all__ = ["OPT2IProposer", "from_name", "load_template", "cut_to_words", "SYSTEM_MESSAGE"]

log = logging.getLogger(__name__)

SYSTEM_MESSAGE = "You are an expert prompt engineer for text-to-image models."
PLACEHOLDERS = ("intent", "style", "max_tokens", "max_words", "protected_block", "history", "feedback_block",
                "n", "s", "order")
#: ``$order``: how the history lines are ordered, by the strategy's layout
_ORDER_TEXT = {"ranked": "worst to best", "appended": "in the order they were tried"}
MODES = ("list", "parallel")
#: The video template's word cap (RAPO++ and Prompt-A-Video rewrite to about 120 words).
VIDEO_MAX_WORDS = 120
_STYLE_TEXT = {
    "tags": "comma-separated keywords and short phrases",
    "sentences": "one or two plain descriptive sentences in natural language",
}


_STOPWORDS = frozenset(
    "a an the and or of in on at to with by for from into onto over under near next its it is are be "
    "this that these those some very".split())


# Feedback that says nothing is wrong, or only announces the list that follows (a DSG
# count header), with or without the seed count assemble_feedback adds
_NOTHING_WRONG = re.compile(r"(all \d+ .*answered yes\.?|\d+ of \d+ .*failed:)(\s*\(\d+/\d+( seeds)?\))?$", re.I)


def _shorten_for_history(text: str, max_words: int) -> str:
    """A history line's prompt: its first ``max_words`` words and " ..." when longer (the
    LLM sees that it was cut; :func:`cut_to_words` instead trims a candidate itself)."""
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def _content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters, minus stopwords, with a plural 's' dropped."""
    words = re.findall(r"[a-z]{3,}", text.lower())
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words if w not in _STOPWORDS}


def cut_to_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` words: at the last sentence end that fits when
    it keeps at least half of them, else at the word limit.

    >>> cut_to_words("A fox runs. It jumps over a log and lands softly.", 6)
    'A fox runs.'
    """
    words = text.split()
    if len(words) <= max_words:
        return text
    head = " ".join(words[:max_words])
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if head.endswith((".", "!", "?")):
        return head
    if end >= 0 and len(head[:end + 1].split()) >= max_words // 2:
        return head[:end + 1]
    return head.rstrip(" ,;:")


def load_template(template: str | os.PathLike | None = None, *, default: str = "opt2i.txt") -> str:
    """The meta-prompt text: the shipped ``default`` (``opt2i.txt``; ``opt2i_video.txt`` for
    video), a file path, or template text itself.

    Text is recognised by containing ``$intent``; it must use ``$intent``,
    ``$history`` and ``$n`` and no placeholder outside ``PLACEHOLDERS``.
    """
    if template is None:
        text = (importlib.resources.files("mmopt.assets") / "templates" / default).read_text("utf-8")
    elif isinstance(template, (str, os.PathLike)) and "$intent" not in str(template):
        path = os.path.expanduser(str(template))
        if not os.path.isfile(path):
            raise ValueError(f"template must be template text containing $intent or a path to a file; "
                             f"got {str(template)[:80]!r}, which is neither")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif isinstance(template, str):
        text = template
    else:
        raise TypeError(f"template must be None, a str or a path, got {type(template).__name__}")
    names = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)
             if m.group("named") or m.group("braced")}
    unknown = names - set(PLACEHOLDERS)
    missing = {"intent", "history", "n"} - names
    if unknown or missing:
        raise ValueError(f"OPT2I template: unknown placeholders {sorted(unknown)}, missing {sorted(missing)}; "
                         f"allowed: {', '.join('$' + p for p in PLACEHOLDERS)}")
    return text


class OPT2IProposer:
    """Proposer that asks an LLM for ``n`` distinct revisions of the prompt.

    Takes an ``LLM`` (anything with ``chat``); the history shown is the
    strategy's (``topk:10`` is OPT2I's); ``template`` is template text, a path, or None for the
    shipped one; ``temperature``/``max_tokens`` go to the LLM (``max_tokens``
    None: 60 per requested prompt + 40); ``max_retries`` extra attempts follow
    an attempt with no usable rewrite; ``max_feedback`` trials' feedback is shown;
    ``min_overlap`` content words of the intent a rewrite must share (default 0:
    no check, relevance is the scorers' job; 1 drops replies about something
    else, frequent with very small LLMs, at the price of more empty iterations).
    Echoes of the meta-prompt's own sentences are always dropped.

    ``mode`` says how the ``n`` revisions are asked for: ``"list"`` (OPT2I's
    way: one reply holding a numbered list of n) or ``"parallel"`` (n replies
    of one revision each, sampled with n seeds; a backend that decodes
    sequences together, as the llama.cpp one does, writes all n in about the
    time of one). ``spare`` (parallel mode) asks for that many replies more and
    keeps the first ``n`` usable ones: a small LLM's reply is often a repeat or off
    the request, and an iteration left short costs another whole request later.
    ``tokens_per_word`` caps one revision at that many tokens per word of the request
    (at least 24; None: 4 per content word + 24, roomier): a small LLM's replies mostly
    run to the cap, so the cap is most of its decoding time. ``feedback_chars`` caps each trial's feedback in the history
    (the meta-prompt's length is most of a small LLM's time on a CPU);
    ``inline_feedback`` puts the best trials' remarks (failed questions, weak
    concepts) on their own history lines instead of a separate block that
    repeats each prompt. ``show_pending`` lists the prompts still rendering
    (``Optimizer(lookahead=True)``) as unscored lines so the LLM does not repeat
    them; None (the default) shows them except in the appended layout, where each
    such line would change once scored and end the prefix the LLM reuses (a repeat
    of one is dropped as already seen either way).

    For a video generator (``SearchState.media_kind == "video"``) the meta-prompt is
    ``video_template`` (default ``assets/templates/opt2i_video.txt``: subject, action,
    camera motion, scene progression) and every rewrite is cut to ``video_max_words``
    words (about 120, as RAPO++ and Prompt-A-Video use), at the last sentence end
    that fits when there is one.

    A list reply ends as soon as its finished items hold the revisions this proposer
    will keep (``stop_early``, a :class:`mmopt.llm.parsing.ListStop`): a small LLM
    writes its list and then rambles until ``max_tokens``, and the rambling is decoded
    only to be thrown away. The kept revisions are the same either way (see ListStop
    for the rare reply whose rest would parse differently); ``stop_early=False``
    decodes every reply to its end.

    After each ``propose`` call, ``last_stats`` says what happened (attempts,
    LLM calls, candidates parsed/repaired/rejected/cut, errors, the LLM's usage).
    """

    def __init__(self, llm: Any, *, template: str | os.PathLike | None = None,
                 temperature: float = 0.8, max_tokens: int | None = None, max_retries: int = 2,
                 max_feedback: int = 3, min_overlap: int = 0, mode: str = "list", feedback_chars: int = 200,
                 inline_feedback: bool = True, video_template: str | os.PathLike | None = None,
                 video_max_words: int = VIDEO_MAX_WORDS, stop_early: bool = True,
                 show_pending: bool | None = None, spare: int = 0, tokens_per_word: float | None = None):
        # 1. check inputs
        if not callable(getattr(llm, "chat", None)):
            raise TypeError(f"llm must have a chat(messages, ...) method (the LLM protocol), got {type(llm).__name__}")
        if not isinstance(stop_early, bool):
            raise TypeError(f"stop_early must be True or False, got {stop_early!r}")
        if isinstance(spare, bool) or not isinstance(spare, int) or not 0 <= spare <= 16:
            raise ValueError(f"spare must be an int in [0, 16], got {spare!r}")
        if spare and mode != "parallel":
            raise ValueError(f"spare replies are decoded beside the others, so they need mode='parallel'; "
                             f"got spare={spare} with mode={mode!r}")
        if tokens_per_word is not None and (isinstance(tokens_per_word, bool) or not isinstance(
                tokens_per_word, (int, float)) or not 1 <= tokens_per_word <= 20):
            raise ValueError(f"tokens_per_word must be a number in [1, 20] or None, got {tokens_per_word!r}")
        if show_pending is not None and not isinstance(show_pending, bool):
            raise TypeError(f"show_pending must be True, False or None, got {show_pending!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5:
            raise ValueError(f"temperature must be a number in [0, 5], got {temperature!r}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 16):
            raise ValueError(f"max_tokens must be an int >= 16 or None, got {max_tokens!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not isinstance(max_feedback, int) or max_feedback < 0:
            raise ValueError(f"max_feedback must be an int >= 0, got {max_feedback!r}")
        if not isinstance(min_overlap, int) or min_overlap < 0:
            raise ValueError(f"min_overlap must be an int >= 0, got {min_overlap!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(feedback_chars, bool) or not isinstance(feedback_chars, int) or feedback_chars < 20:
            raise ValueError(f"feedback_chars must be an int >= 20, got {feedback_chars!r}")
        if isinstance(video_max_words, bool) or not isinstance(video_max_words, int) or video_max_words < 8:
            raise ValueError(f"video_max_words must be an int >= 8, got {video_max_words!r}")
        self.llm = llm
        self.template = load_template(template)
        self.video_template = load_template(video_template, default="opt2i_video.txt")
        self.video_max_words = video_max_words
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.max_feedback = max_feedback
        self.min_overlap = min_overlap
        self.mode = mode
        self.feedback_chars = feedback_chars
        self.inline_feedback = bool(inline_feedback)
        self.stop_early = stop_early
        self.show_pending = show_pending
        self.spare = spare
        self.tokens_per_word = None if tokens_per_word is None else float(tokens_per_word)
        # The template's own words, to spot a reply that echoes the instructions.
        texts = [t.replace("$order", order) for t in (self.template, self.video_template)
                 for order in _ORDER_TEXT.values()]
        self._static = " ".join(string.Template.pattern.sub(" ", " ".join(texts)).lower().split())
        self.name = f"opt2i({getattr(llm, 'name', type(llm).__name__)})"
        self.last_stats: dict = {}

    def config(self) -> dict:
        return {"component": "mmopt.proposers.opt2i.OPT2IProposer", "llm": self.llm, "template": self.template,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "max_retries": self.max_retries,
                "max_feedback": self.max_feedback, "min_overlap": self.min_overlap, "mode": self.mode,
                "feedback_chars": self.feedback_chars, "inline_feedback": self.inline_feedback,
                "video_template": self.video_template, "video_max_words": self.video_max_words,
                "stop_early": self.stop_early, "show_pending": self.show_pending, "spare": self.spare,
                "tokens_per_word": self.tokens_per_word}

    # ------------------------------------------------------------ meta-prompt
    @staticmethod
    def history_line(t: Trial, remarks: str = "", max_words: int = 0) -> str:
        """One history entry: the prompt, its score, the label of a trial that broke a
        constraint, and (for the best ones) what the scorers found wrong."""
        line = f"{t.prompt if not max_words else _shorten_for_history(t.prompt, max_words)} | {t.objective:.3f}"
        if not t.feasible:
            line += " | rejected: " + "; ".join(t.meta.get("violations") or ["broke a constraint"])
        if remarks:
            line += f" | wrong: {remarks}"
        return line

    def remarks(self, t: Trial) -> str:
        """The scorers' remarks in ``t.feedback`` without the per-scorer means, cut to ``feedback_chars``."""
        parts = []
        for line in (t.feedback or "").splitlines():
            head, sep, rest = line.partition(" | ")
            if sep:
                line = rest
            elif re.fullmatch(r"\s*\S+: -?\d+(\.\d+)?\s*", line):
                continue  # a scorer's bare mean: the history line already shows the objective
            # remarks of one scorer are joined by "; " (assemble_feedback), so a seed where
            # nothing failed can follow another seed's last failed question on the same line
            for part in line.split("; "):
                if _NOTHING_WRONG.match(part.strip()):
                    continue  # a count header or a seed where nothing failed: no remark, only tokens
                if part.strip():
                    parts.append(part.strip().replace(" seeds)", ")"))
        return "; ".join(parts)[: self.feedback_chars]

    def build_messages(self, state: SearchState, n: int, protected: list[str]) -> list[dict]:
        """The chat messages of the meta-prompt for ``state``, asking for ``n`` revisions."""
        history = list(state.history)  # the strategy's choice and order: shown as it is
        intent = " ".join(protect.strip_keep_tags(state.intent).split())
        appended = state.layout == "appended"
        # prompts still being rendered (lookahead): shown unscored, except by default in the
        # appended layout, where each would be re-read twice (unscored now, scored next time:
        # the line changes, so the reused prefix ends there); the proposer drops a repeat anyway
        show = self.show_pending if self.show_pending is not None else not appended
        pending = [f"{p} | not scored yet" for p in state.pending] if show else []
        if appended:
            # the strategy's "appended" layout: the same trials in the order they were tried, and
            # remarks on each trial that beat every line above it (fixed once written), so the
            # text only grows from one request to the next and the LLM re-reads only the new end
            history = sorted(history, key=lambda t: t.index)
            feedback, best = [], None
            for t in history:
                if t.feasible and (best is None or t.objective > best):
                    best = t.objective
                    if t.feedback and t.feedback.strip():
                        feedback.append(t)
            lines = []
        else:
            # prompts still being rendered (lookahead) come first, unscored, so the LLM neither
            # repeats them nor reads them as the best so far (the best is last)
            feedback = [t for t in reversed(history) if t.feedback and t.feedback.strip()][: self.max_feedback]
            lines, pending = pending, []
        inline = {t.index: self.remarks(t) for t in feedback} if self.inline_feedback else {}
        if history:
            # a long rewrite is shown cut (a small LLM's rambling would otherwise fill the prompt)
            cap = max(16, 3 * len(intent.split()))
            lines += [self.history_line(t, inline.get(t.index, ""), cap) for t in history]
        elif not lines and not pending:
            lines = [f"{intent} | not scored yet"]
        lines += pending  # appended: the prompts being rendered are the newest, so they come last
        feedback_block = ""
        if feedback and not self.inline_feedback:
            items = [f'- for "{t.prompt}": {" ".join(t.feedback.split())[:self.feedback_chars]}' for t in feedback]
            feedback_block = "\nWhat the scorer found wrong with the best images:\n" + "\n".join(items) + "\n"
        protected_block = ""
        if protected:
            spans = ", ".join(f'"{s}"' for s in protected)
            protected_block = f"\nCopy these exact spans unchanged into every prompt: {spans}.\n"
        style = _STYLE_TEXT.get(state.prompt_style, f"prompts in the style: {state.prompt_style}")
        template = self.video_template if state.media_kind == "video" else self.template
        text = string.Template(template).safe_substitute(
            intent=intent, style=style, max_tokens=state.max_prompt_tokens, n=n, s="" if n == 1 else "s",
            order=_ORDER_TEXT.get(state.layout, _ORDER_TEXT["ranked"]),
            max_words=self.video_max_words,
            protected_block=protected_block, history="\n".join(lines), feedback_block=feedback_block,
        )
        return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": text}]

    def _off_topic(self, cand: str, intent_words: set[str]) -> bool:
        """An echo of the instructions, or a text sharing fewer than ``min_overlap`` content words with the intent."""
        low = " ".join(cand.lower().split())
        if len(low.split()) >= 3 and low.rstrip(".") in self._static:
            return True
        if not self.min_overlap or not intent_words:
            return False
        need = min(self.min_overlap, len(intent_words))
        return len(intent_words & _content_words(cand)) < need

    # ------------------------------------------------------------ filtering
    def _keep(self, items: list[str], n: int, seen: set[str], stats: dict, *, protected: list[str],
              intent_words: set[str], video: bool, max_words: int) -> list[str]:
        """The first ``n`` of ``items`` that pass every check, in order; each kept one joins ``seen``."""
        kept: list[str] = []
        for cand in items:
            if len(kept) >= n:
                break
            stats["parsed"] += 1
            cand = " ".join(protect.strip_keep_tags(cand).split())
            if self._off_topic(cand, intent_words):
                stats["rejected_off_topic"] += 1
                continue
            cand, missing = protect.enforce(cand, protected)
            if cand is None:
                stats["rejected_protected"] += 1
                continue
            stats["repaired"] += bool(missing)
            if video and len(cand.split()) > self.video_max_words:
                cand = cut_to_words(cand, self.video_max_words)
                stats["cut_to_words"] += 1
                if protected and protect.check(cand, protected):  # the cut lost a protected span
                    stats["rejected_protected"] += 1
                    continue
            elif not video and len(cand.split()) > max_words:
                stats["rejected_length"] += 1
                continue
            key = normalize_for_dedup(cand)
            if key in seen:
                stats["rejected_seen"] += 1
                continue
            seen.add(key)
            kept.append(cand)
        return kept

    def _stop_rule(self, want: int, max_items: int, seen: set[str], checks: dict) -> ListStop:
        """A rule that ends the list reply once its finished items hold ``want`` prompts ``_keep`` keeps."""
        frozen = set(seen)  # the rule judges partial replies against the prompts seen before this request

        def usable(items: list[str]) -> list[str]:
            return self._keep(items, want, set(frozen), collections.defaultdict(int), **checks)

        key = content_key("opt2i-keep", sorted(frozen), checks["protected"], sorted(checks["intent_words"]),
                          checks["video"], checks["max_words"], self.min_overlap, self.video_max_words, self._static)
        return ListStop(want, usable, key=key, max_items=max_items)

    # ------------------------------------------------------------ proposing
    def propose(self, state: SearchState, n: int) -> list[str]:
        """Up to ``n`` new prompts, distinct from each other and from every tried prompt."""
        # 1. check inputs
        if not isinstance(state, SearchState):
            raise TypeError(f"state must be a SearchState, got {type(state).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        protected = list(dict.fromkeys(state.protected))
        try:
            protected += [s for s in protect.find_protected(state.intent) if s not in protected]
        except ValueError:
            pass  # malformed <keep> tags in the intent: rely on state.protected
        seen = {normalize_for_dedup(protect.strip_keep_tags(p)) for p in state.seen_prompts()}
        seen.add(normalize_for_dedup(protect.strip_keep_tags(state.intent)))
        stats = {"attempts": 0, "llm_calls": 0, "parsed": 0, "repaired": 0, "rejected_seen": 0,
                 "rejected_protected": 0, "rejected_length": 0, "rejected_off_topic": 0, "cut_to_words": 0,
                 "errors": []}
        video = state.media_kind == "video"
        intent_words = _content_words(protect.strip_keep_tags(state.intent))
        self.last_stats = stats
        # A rambling paragraph is no prompt: allow up to twice the encoder budget in words.
        max_words = max(20, 2 * int(state.max_prompt_tokens))

        # Tokens one revision may take, within the encoder's window (a reply is cut there, so a
        # small LLM that rambles does not decode a paragraph): 4 per content word of the intent
        # + 24, or tokens_per_word per word of it; a video prompt is meant to be long (up to
        # video_max_words words)
        window = int(state.max_prompt_tokens) + 8
        if video:
            item_tokens = 2 * self.video_max_words
        elif self.tokens_per_word:
            words = len(protect.strip_keep_tags(state.intent).split())
            item_tokens = max(24, min(window, round(self.tokens_per_word * words)))
        else:
            item_tokens = max(24, min(window, 2 * len(intent_words) * 2 + 24))

        # what a parsed candidate must pass to be kept (see _keep)
        checks = {"protected": protected, "intent_words": intent_words, "video": video, "max_words": max_words}

        # 2. ask, parse, filter; retry with a fresh seed while nothing usable came back
        accepted: list[str] = []
        usage: dict = {}
        for attempt in range(1 + self.max_retries):
            want = n - len(accepted)
            seed = state.rng.randrange(2**31)  # the run's RNG, never the global one
            if self.mode == "list":  # one reply, a numbered list; stop where item want+1 would begin
                messages = self.build_messages(state, want, protected)
                max_items = 4 * want
                request = {"n": 1, "max_tokens": self.max_tokens or want * item_tokens + 16,
                           "stop": [f"\n{want + 1}.", f"\n{want + 1})"],
                           # ... or as soon as its finished items hold the `want` prompts this
                           # proposer keeps: the rest of a small LLM's reply is mostly rambling
                           "stop_rule": self._stop_rule(want, max_items, seen, checks) if self.stop_early else None}
            else:  # want replies of one revision each, decoded together where the backend can
                messages = self.build_messages(state, 1, protected)
                # a reply ends at a blank line or where a second list item would begin (only
                # its first item is read)
                request = {"n": want + self.spare, "max_tokens": self.max_tokens or item_tokens,
                           "stop": ["\n\n", "\n2.", "\n2)"]}
                max_items = 1
            stats["attempts"] += 1
            stats["llm_calls"] += 1
            try:
                replies = chat(self.llm, messages, temperature=self.temperature, seed=seed, **request)
            except LLMUnavailableError:
                raise  # the LLM is down: the run stops (resumable), it is not an empty iteration
            except LLMError as e:
                log.warning("%s: LLM failed on attempt %d: %s", self.name, attempt + 1, e)
                stats["errors"].append(str(e))
                continue
            for k, v in (getattr(self.llm, "last_usage", None) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    usage[k] = usage.get(k, 0) + v
            items = [c for reply in replies for c in parse_prompts(reply, max_items=max_items)]
            accepted += self._keep(items, n - len(accepted), seen, stats, **checks)
            # Retries are for empty-handed attempts; a partial answer is kept as is
            # (asking again for the rest would double the LLM time per iteration).
            if accepted:
                break
        if not accepted:
            log.warning("%s: no usable rewrite after %d attempts", self.name, stats["attempts"])
        stats["llm_usage"] = usage
        return accepted[:n]


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kw) -> OPT2IProposer:
    """Registry factory: ``"opt2i"`` (the run's LLM, else the embedded SmolLM2), ``"opt2i:<llm name>"``,
    or ``llm=`` an LLM or LLM registry name.

    >>> from_name("openai:gpt-4o-mini@https://api.openai.com/v1")  # doctest: +SKIP
    """
    from mmopt import registry
    from mmopt.llm import DEFAULT_LLM

    if llm is not None and rest:
        raise ValueError(f"give the LLM either in the name ('opt2i:{rest}') or as llm=, not both")
    if llm is None and not rest and context is not None and context.llm is not None:
        llm = context.get_llm("opt2i")
    if llm is None or isinstance(llm, (str, dict)):
        llm = registry.create("llm", llm or rest or DEFAULT_LLM)
    return OPT2IProposer(llm, **kw)
