"""Turn an LLM's free-form reply into a clean list of candidate prompts.

LLMs answer a "give me N revised prompts" request in many shapes: numbered
lists, bullets, JSON (bare or in ```json fences), quoted strings, with
preambles ("Sure! Here are 5 revised prompts:"), reasoning blocks
(``<think>...</think>``), stray special tokens (``<|im_end|>``, ``</s>``),
labels ("Prompt 1:", "**Revised:**") and trailing explanations ("This prompt
emphasises the lighting."). ``parse_prompts`` handles them all and returns
distinct, non-trivial prompts in the order the model gave them.

Prompt syntax users care about survives: ``(word:1.2)``, ``[word]``,
``<lora:name:0.8>`` and ``<keep>...</keep>`` are never stripped.
"""
from __future__ import annotations

import json
import re

__all__ = ["parse_prompts", "normalize_for_dedup", "clean_item", "ListStop"]

# 1. Reasoning blocks. An unclosed opening tag means the reply was cut inside
#    the reasoning, so nothing after it is usable; a lone closing tag means the
#    chat template already opened the block, so drop everything before it.
_THINK_TAGS = ("think", "thinking", "reasoning", "thought", "analysis")
_THINK_BLOCK = re.compile(
    r"<(%s)>.*?</\1>" % "|".join(_THINK_TAGS), re.IGNORECASE | re.DOTALL
)
_THINK_OPEN = re.compile(r"<(?:%s)>.*\Z" % "|".join(_THINK_TAGS), re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"\A.*</(?:%s)>" % "|".join(_THINK_TAGS), re.IGNORECASE | re.DOTALL)

# 2. Special tokens of common chat templates. Only known shapes are removed so
#    that prompt syntax such as <lora:x:0.8> or <keep> stays.
_SPECIAL_TOKENS = re.compile(
    r"<\|[^|<>\n]{0,40}\|>"                        # <|im_end|>, <|endoftext|>, <|eot_id|>
    r"|</?s>|<eos>|<bos>|<pad>|<unk>|<mask>"       # sentencepiece / generic
    r"|</?(?:start|end)_of_turn>"                  # gemma
    r"|\[/?INST\]|<<SYS>>|<</SYS>>"                # llama-2
    r"|<\｜[^｜<>\n]{0,40}\｜>",                   # deepseek's full-width bars
    re.IGNORECASE,
)
# Role headers that leak when a template is applied twice ("assistant\n...").
_ROLE_LINE = re.compile(r"^\s*(?:assistant|user|system)\s*:?\s*$", re.IGNORECASE)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)

# 3. List markers: "1." "1)" "(1)" "1:" "#1" "1 -" and bullets "-", "*", "•", "·", "+".
_NUMBERED = re.compile(r"^\s*(?:\(\d{1,3}\)|#\d{1,3}[.):\]]?|\d{1,3}[.):\]]|\d{1,3}\s+-)\s*(?=\S)")
_BULLET = re.compile(r"^\s*(?:[-*•·‣▪+–—]\s+(?=\S)|\*(?=[^\s*][^*]*$))")  # "*A cat": a bullet missing its space
# "Prompt 1:", "Revised prompt 2 -", "**Option 3:**", "Revision #4."
_LABEL_WORDS = (
    r"(?:revised|improved|new|rewritten|refined|final|alternative|enhanced|updated|optimi[sz]ed)?\s*"
    r"(?:prompts?|revisions?|rewrites?|versions?|options?|candidates?|variations?|variants?|"
    r"suggestions?|outputs?|answers?|results?)"
)
_LABEL = re.compile(
    r"^\s*(?:\*\*|__)?\s*(?:%s|revised|improved|rewritten|refined)\s*#?\s*\d{0,3}\s*(?:\*\*|__)?\s*[:.)\-–—]\s*(?:\*\*|__)?\s*"
    % _LABEL_WORDS,
    re.IGNORECASE,
)
# A bold/italic label of any words, "**Cinematic:** ..." (short, ends with a colon).
# Chat-transcript residue of small models: "A: ...", "Answer: ...", "Assistant: ...".
_ANSWER_LABEL = re.compile(r"^\s*(?:a|answer|assistant|output|response|sentence|description)\s*:\s*(?=\S)",
                           re.IGNORECASE)
_BOLD_LABEL = re.compile(r"^\s*(\*\*|__)([^*_\n]{1,40}?):?\s*\1\s*:?\s*(?=\S)")

# 4. Lines that talk *about* the prompts rather than being one.
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|great|alright|here(?:'s| is| are)|"
    r"below (?:is|are)|i(?:'ve| have)? (?:created|generated|written|revised|rewritten|made)|"
    r"the following|these (?:are|prompts)|i hope|let me know|feel free|"
    r"hope (?:this|these)|happy to help|in (?:these|each|this) (?:revisions?|prompts?|versions?))\b",
    re.IGNORECASE,
)
# Commentary lines are dropped whole ("Note: ...", "Explanation: ...").
_COMMENTARY = re.compile(r"^\s*(?:\*\*)?(?:note|explanation|reason|rationale|changes?|why)\s*:", re.IGNORECASE)
# A trailing explanation glued to a prompt: "... - This prompt emphasises ...".
_EXPLANATION_START = (
    r"(?:this|the|these|it|each|that)\s+(?:revised\s+|new\s+|rewritten\s+)?"
    r"(?:prompt|revision|version|rewrite|variation|variant|one|change|edit|adds?|emphasi[sz]es|"
    r"focuses|highlights|keeps|captures|ensures|maintains|makes|uses|describes)\b"
    r"|(?:explanation|reason|rationale|why|note|changes?)\s*:"
    r"|(?:emphasi[sz]es|emphasi[sz]ing|focuses on|focusing on|highlights|highlighting|adds|adding)\s"
)
_TRAILING_EXPL = re.compile(
    r"(?:\s+[-–—:]\s+|\s*\n\s*|(?<=[.!?\"”])\s+|\s*[(\[])\s*(?:%s).*\Z" % _EXPLANATION_START,
    re.IGNORECASE | re.DOTALL,
)
# Scores copied from the history of the meta-prompt: "score: 0.61", "(score 0.7)".
_SCORE_RESIDUE = re.compile(
    r"[\s,;-]*[(\[]?\bscore\s*[:=]?\s*-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?[)\]]?"
    r"|\s*\|\s*(?:score\s*)?-?\d+(?:\.\d+)?\s*$",            # "prompt | 0.61"
    re.IGNORECASE)
# A small LLM that echoes the history runs entries together on one line:
# "a red cat | 0.61 a red cat at dusk | not scored yet". Such a score marks the
# end of one prompt, so the item is split there.
_SCORE_SEPARATOR = re.compile(
    r"\s*\|\s*(?:(?:score\s*[:=]?\s*)?-?\d+(?:\.\d+)?|not scored yet)(?:\s+|\s*$)", re.IGNORECASE)
# Bold/italic markup inside a prompt: "a **red** cat" -> "a red cat" (not A1111 syntax).
_INLINE_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`", "«": "»", "„": "“"}


def _strip_reasoning(text: str) -> str:
    text = _THINK_BLOCK.sub("\n", text)
    text = _THINK_CLOSE.sub("", text)
    return _THINK_OPEN.sub("", text)


def _strip_special(text: str) -> str:
    text = _SPECIAL_TOKENS.sub("\n", text)
    return "\n".join(line for line in text.splitlines() if not _ROLE_LINE.match(line))


def _json_candidates(text: str):
    """Yield JSON-looking substrings: fenced blocks first, then bracketed spans."""
    for m in _FENCE.finditer(text):
        body = m.group(2).strip()
        if body[:1] in "[{":
            yield body
    for opener, closer in (("[", "]"), ("{", "}")):
        start = text.find(opener)
        end = text.rfind(closer)
        if 0 <= start < end:
            yield text[start : end + 1]


def _strings_from_json(obj) -> list[str] | None:
    """A list of prompt strings found in a parsed JSON value, or None."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        out: list[str] = []
        for item in obj:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                found = _strings_from_json(item)
                if found:
                    out.extend(found[:1])  # one prompt per object
        return out or None
    if isinstance(obj, dict):
        # Preferred keys first, then any value that is a string list.
        for key in ("prompts", "revised_prompts", "revisions", "rewrites", "candidates",
                    "prompt", "revised_prompt", "revision", "rewrite", "text", "output"):
            for k, v in obj.items():
                if k.lower() == key:
                    found = _strings_from_json(v)
                    if found:
                        return found
        for v in obj.values():
            if isinstance(v, list):
                found = _strings_from_json(v)
                if found:
                    return found
    return None


def _try_json(text: str) -> list[str] | None:
    for chunk in _json_candidates(text):
        try:
            obj = json.loads(chunk)
        except (ValueError, RecursionError):
            continue
        found = _strings_from_json(obj)
        if found:
            return found
    return None


_JSON_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"(\s*:)?')


def _salvage_json(text: str) -> list[str] | None:
    """Strings of a JSON reply cut off before its end (no keys): ``["a", "b",`` -> a, b."""
    body = _unfence(text).strip()
    if body[:1] not in "[{":
        return None
    found = []
    for m in _JSON_STRING.finditer(body):
        if m.group(2):  # an object key, not a value
            continue
        try:
            found.append(json.loads('"' + m.group(1) + '"'))
        except ValueError:
            continue
    return found or None


def _unfence(text: str) -> str:
    return _FENCE.sub(lambda m: "\n" + m.group(2) + "\n", text)


def _is_list_line(line: str) -> bool:
    return bool(_NUMBERED.match(line) or _BULLET.match(line) or _LABEL.match(line))


def _split_items(text: str) -> list[str]:
    """Split a reply into raw items: list entries if there are any, else lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    if any(_is_list_line(line) for line in lines):
        items: list[str] = []
        current: list[str] | None = None
        for line in lines:
            if not line.strip():
                current = None  # a blank line ends an item
                continue
            if _is_list_line(line):
                current = [line]
                items.append(current)  # type: ignore[arg-type]
            elif (current is not None and line[:1].isspace() and not _PREAMBLE.match(line)
                  and not _COMMENTARY.match(line)):
                current.append(line.strip())  # an indented continuation of the item
            else:
                current = None  # a non-item line (preamble, explanation) between items
        return [" ".join(parts) for parts in items]  # type: ignore[arg-type]
    # No list structure: every non-empty line is a candidate (models do not
    # hard-wrap prompts; joining lines would merge separate tag-style prompts).
    return [ln.strip() for ln in lines if ln.strip()]


def _strip_quotes(item: str) -> str:
    item = item.strip()
    if len(item) >= 2 and item[0] in _QUOTES:
        close = _QUOTES[item[0]]
        end = item.find(close, 1)
        # A quoted prompt, possibly followed by an explanation: keep the quote.
        if end > 1 and (end == len(item) - 1 or not item[end + 1 :].strip()[:1].isalnum()
                        or _TRAILING_EXPL.match(" - " + item[end + 1 :].lstrip(" -–—:,.")) is not None):
            return item[1:end].strip()
        if end == len(item) - 1:
            return item[1:end].strip()
        if end == -1 and item[0] != "'":  # an opening quote never closed
            return item[1:].strip()
    if len(item) >= 2 and item[-1] in '"”»' and not any(q in item[:-1] for q in '"“«'):
        return item[:-1].strip()  # a closing quote never opened
    return item


def _strip_emphasis(item: str) -> str:
    for mark in ("**", "__", "*", "_"):
        if item.startswith(mark) and item.endswith(mark) and len(item) > 2 * len(mark):
            inner = item[len(mark) : -len(mark)]
            if mark not in inner:
                return inner.strip()
    return item


def clean_item(item: str) -> str:
    """Strip list markers, labels, quotes, emphasis and trailing explanations from one item.

    >>> clean_item('2) **Prompt 2:** "a red fox in snow" - This prompt emphasises colour.')
    'a red fox in snow'
    """
    s = item.strip()
    if _COMMENTARY.match(s):
        return ""
    if _PREAMBLE.match(s) and ":" in s:
        s = s.split(":", 1)[1].strip()  # "Here is the revised prompt: a fox ..." -> "a fox ..."
    for _ in range(3):  # markers and labels can stack: "1. **Prompt 1:** ..."
        before = s
        s = _NUMBERED.sub("", s, count=1)
        s = _BULLET.sub("", s, count=1)
        s = _LABEL.sub("", s, count=1)
        s = _ANSWER_LABEL.sub("", s, count=1)
        m = _BOLD_LABEL.match(s)
        if m and len(s) > m.end() + 3:
            s = s[m.end():]
        s = s.strip()
        if s == before:
            break
    s = _strip_emphasis(s)
    s = _strip_quotes(s)
    s = _TRAILING_EXPL.sub("", s).strip()
    s = _strip_emphasis(_strip_quotes(s))
    s = _SCORE_RESIDUE.sub("", s)
    s = _INLINE_EMPHASIS.sub(r"\2", s)
    if s.startswith("*") and s.count("*") == 1:
        s = s[1:]  # a bullet written without its space: "*A red cat"
    s = re.sub(r"\s+", " ", s).strip()
    # Commas/semicolons/colons at the end are list residue; a final period is kept.
    s = s.rstrip(",;:").strip()
    return s


def normalize_for_dedup(prompt: str) -> str:
    """The key under which two prompts count as the same: case, spacing and end punctuation ignored.

    >>> normalize_for_dedup("  A Red  Cat. ") == normalize_for_dedup("a red cat")
    True
    """
    s = re.sub(r"\s+", " ", prompt).strip().casefold()
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    return s.rstrip(" .,;:!?")


def _usable(item: str, min_chars: int) -> bool:
    if len(item) < min_chars or sum(ch.isalpha() for ch in item) < 2:
        return False
    if _PREAMBLE.match(item) or _COMMENTARY.match(item) or item.endswith(":"):
        return False
    return True


def parse_prompts(text: str, max_items: int | None = None, *, min_chars: int = 5) -> list[str]:
    """Extract the candidate prompts from an LLM reply.

    Takes the raw reply ``text``; returns distinct prompts (case/whitespace-
    insensitive de-duplication, first occurrence kept), at most ``max_items``,
    each at least ``min_chars`` long. Returns ``[]`` when nothing usable is found.

    >>> parse_prompts("Sure! Here are 2 prompts:\\n1. a red cat, studio light\\n2) \\"a red cat at dusk\\"")
    ['a red cat, studio light', 'a red cat at dusk']
    """
    # 1. check inputs
    if text is None:
        return []
    if not isinstance(text, str):
        raise TypeError(f"parse_prompts expects the reply as a str, got {type(text).__name__}")
    if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
        raise ValueError(f"max_items must be a non-negative int or None, got {max_items!r}")
    if not isinstance(min_chars, int) or min_chars < 1:
        raise ValueError(f"min_chars must be a positive int, got {min_chars!r}")

    # 2. remove what is never a prompt: reasoning, special tokens
    body = _strip_special(_strip_reasoning(text)).strip()
    if not body or max_items == 0:
        return []

    # 3. JSON (fenced or bare) wins when it parses to strings; else split into items
    raw = _try_json(body)
    if raw is None:
        raw = _salvage_json(body)
    if raw is None:
        raw = _split_items(_unfence(body))

    # 4. clean, filter, de-duplicate
    out: list[str] = []
    seen: set[str] = set()
    pieces = [piece for item in raw for piece in _SCORE_SEPARATOR.split(item)]
    for item in pieces:
        cleaned = clean_item(_strip_special(item))
        if not _usable(cleaned, min_chars):
            continue
        key = normalize_for_dedup(cleaned)
        if key in seen:
            continue
        seen.add(key)
        out.append(cleaned)
        if max_items is not None and len(out) >= max_items:
            break
    return out


def _finished_part(text: str) -> int | None:
    """Where the finished lines of a reply being decoded end, or None if no line is finished.

    A line is finished once the next line has begun with something other than a space or a tab:
    only an indented line continues an item (see ``_split_items``), and a blank line ends one.
    """
    end = len(text)
    while True:
        end = text.rfind("\n", 0, end)
        if end < 0:
            return None
        if end + 1 < len(text) and text[end + 1] not in " \t":
            return end


class ListStop:
    """A stop rule that ends a list reply as soon as its finished items hold what the caller needs.

    A small LLM asked for four prompts often writes them in 50 tokens and then rambles until
    ``max_tokens``; what it writes after the caller has its four is parsed and thrown away.
    ``ListStop(need, usable, key=..., max_items=...)`` is called by the decoder with a reply's
    text so far: once the reply's finished lines contain a list item and
    ``usable(parse_prompts(finished, max_items))`` (the caller's own filter: the candidates it
    would keep) counts at least ``need``, it returns the length of the finished part, and the
    decoder ends that reply there.

    The caller then reads the same first ``need`` prompts from the shorter reply as it would
    have read from the whole one: finished list items never change as a reply grows. A reply
    whose rest would have changed how the whole of it parses (a JSON block of strings, a closing
    reasoning tag) is the exception, and is why a rule that cannot see a list item never stops.
    ``key`` names everything ``usable`` depends on: it enters the LLM request's cache key.
    """

    def __init__(self, need: int, usable, *, key: str, max_items: int | None = None):
        if isinstance(need, bool) or not isinstance(need, int) or need < 1:
            raise ValueError(f"need must be an int >= 1, got {need!r}")
        if not callable(usable):
            raise TypeError(f"usable must be a callable (parsed items -> those kept), got {type(usable).__name__}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str naming what usable depends on, got {key!r}")
        self.need, self.usable, self.max_items = need, usable, max_items
        self.key = f"list-stop:{need}:{max_items}:{key}"
        self._checked: dict[str, bool] = {}  # finished parts already judged (a line is judged once)

    def __call__(self, text: str) -> int | None:
        end = _finished_part(text)
        if end is None:
            return None
        finished = text[:end]
        done = self._checked.get(finished)
        if done is None:
            lines = _strip_special(_strip_reasoning(finished)).splitlines()
            done = (any(_is_list_line(line) for line in lines)
                    and len(self.usable(parse_prompts(finished, self.max_items))) >= self.need)
            self._checked[finished] = done
        return end if done else None
