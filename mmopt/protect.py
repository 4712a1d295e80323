"""Protected spans: text that must pass through every rewrite unchanged.

Users mark text that a rewriter must not touch:
  - LoRA / LyCORIS / hypernetwork tags: ``<lora:filmgrain:0.8>``
  - weighting syntax: ``(word:1.2)`` and ``[word]`` (de-emphasis)
  - any span wrapped in ``<keep>...</keep>``
  - trigger words passed explicitly (``extra=("sks dog",)``)

``find_protected`` lists them, ``strip_keep_tags`` gives the text a generator
receives (wrap tags removed, content kept), ``check`` names the spans a
candidate lost and ``repair`` puts them back (or returns ``None``).

>>> spans = find_protected("<keep>a sks dog</keep> on a beach, (sunset:1.3)")
>>> spans
['a sks dog', '(sunset:1.3)']
>>> repair("a dog on a beach at sunset", spans)
'a dog on a beach at (sunset:1.3), a sks dog'
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = ["find_protected", "strip_keep_tags", "check", "repair", "KEEP_OPEN", "KEEP_CLOSE"]

KEEP_OPEN, KEEP_CLOSE = "<keep>", "</keep>"

_KEEP = re.compile(r"<keep>(.*?)</keep>", re.IGNORECASE | re.DOTALL)
_KEEP_TAG = re.compile(r"</?keep>", re.IGNORECASE)
# <lora:name:0.8>, <lyco:name>, <hypernet:name:1>, <embedding:name>
_NETWORK_TAG = re.compile(r"<(?:lora|lyco|locon|loha|hypernet|embedding|ti):[^<>\s]+>", re.IGNORECASE)
# (word:1.2), (two words:0.8): attention weighting of A1111 / compel prompts
_WEIGHTED = re.compile(r"\((?P<text>[^()\[\]:]+):\s*(?P<w>-?\d+(?:\.\d+)?)\)")
# [word]: de-emphasis (no colon/pipe inside: [a:b:0.5] scheduling is kept too but as a whole)
_BRACKETED = re.compile(r"\[(?P<text>[^\[\]]+)\]")


def _check_prompt(prompt: object, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{what} must be a str, got {type(prompt).__name__}")
    return prompt


def strip_keep_tags(prompt: str) -> str:
    """The text a generator receives: ``<keep>`` wrappers removed, their content kept.

    >>> strip_keep_tags("<keep>a red car</keep>, studio light")
    'a red car, studio light'
    """
    return _KEEP_TAG.sub("", _check_prompt(prompt))


def find_protected(prompt: str, extra: Iterable[str] = ()) -> list[str]:
    """Every span of ``prompt`` a rewrite must keep verbatim, in order of appearance.

    Takes the user's prompt and optional trigger words/phrases ``extra`` (which
    must occur in the prompt only if the caller wants them added by ``repair``).
    Returns distinct spans: ``<keep>`` contents (without the tags), network tags,
    ``(word:w)`` and ``[word]`` spans found outside keep blocks, then ``extra``.

    >>> find_protected("<lora:film:0.8> a [blurry] cat", extra=["sks"])
    ['<lora:film:0.8>', '[blurry]', 'sks']
    """
    # 1. check inputs
    _check_prompt(prompt)
    if isinstance(extra, str):
        extra = (extra,)  # a single trigger word, not its characters
    extras = []
    for word in extra:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"protected trigger words must be non-empty strings, got {word!r}")
        extras.append(word.strip())
    if prompt.lower().count(KEEP_OPEN) != prompt.lower().count(KEEP_CLOSE):
        raise ValueError(
            f"unbalanced <keep> tags in prompt {prompt!r}: every <keep> needs a matching </keep>"
        )

    # 2. keep blocks first; their content is protected as a whole, so patterns
    #    inside them are not listed separately.
    found: list[tuple[int, str]] = []
    for m in _KEEP.finditer(prompt):
        if m.group(1).strip():
            found.append((m.start(), m.group(1).strip()))
    outside = _KEEP.sub(lambda m: " " * len(m.group(0)), prompt)

    # 3. syntax spans outside keep blocks
    for pattern in (_NETWORK_TAG, _WEIGHTED, _BRACKETED):
        for m in pattern.finditer(outside):
            found.append((m.start(), m.group(0)))

    # 4. order of appearance, then explicit trigger words; no duplicates
    out: list[str] = []
    for _, span in sorted(found, key=lambda x: x[0]):
        if span not in out:
            out.append(span)
    for word in extras:
        if word not in out:
            out.append(word)
    return out


def check(candidate: str, protected: Sequence[str]) -> list[str]:
    """The protected spans missing from ``candidate`` (compared verbatim, keep tags ignored).

    >>> check("a cat, (sunset:1.1)", ["(sunset:1.3)", "cat"])
    ['(sunset:1.3)']
    """
    text = strip_keep_tags(_check_prompt(candidate, "candidate"))
    return [span for span in protected if span not in text]


def enforce(candidate: str, protected: Sequence[str]) -> tuple[str | None, list[str]]:
    """``candidate`` with every protected span in it, and the spans that had to be put back.

    The text comes back unchanged when nothing was missing, repaired when spans were
    missing (:func:`repair`), and as None when repair is impossible.

    >>> enforce("a cat on a mat", ["(mat:1.2)"])
    ('a cat on a (mat:1.2)', ['(mat:1.2)'])
    """
    missing = check(candidate, protected) if protected else []
    if not missing:
        return candidate, []
    return repair(candidate, protected), missing


def _bare_text(span: str) -> str | None:
    """The plain words inside a syntax span: ``(sunset:1.3)`` -> ``sunset``, ``[fog]`` -> ``fog``."""
    m = _WEIGHTED.fullmatch(span) or _BRACKETED.fullmatch(span)
    return m.group("text").strip() if m else None


def _replace_once(text: str, target: str, replacement: str) -> str | None:
    """Replace the first whole-word, case-insensitive occurrence of ``target``; None if absent."""
    pattern = re.compile(r"(?<![\w(\[])" + re.escape(target) + r"(?![\w)\]])", re.IGNORECASE)
    m = pattern.search(text)
    if m is None:
        return None
    return text[: m.start()] + replacement + text[m.end():]


def repair(candidate: str, protected: Sequence[str], *, max_chars: int | None = None) -> str | None:
    """Put every missing protected span back into ``candidate``.

    For each missing span, in order: a case/spacing variant of it is replaced by
    the verbatim span; a weighted span whose words appear unweighted, or with
    another weight, gets its syntax back in place; otherwise the span is
    appended (network tags in front, as users write them; words at the end).
    Returns the repaired prompt, the candidate itself when nothing was missing,
    or ``None`` when repair is impossible (empty candidate, or the result would
    exceed ``max_chars``).

    >>> repair("a cat on a mat", ["<lora:film:0.8>", "(mat:1.2)"])
    '<lora:film:0.8> a cat on a (mat:1.2)'
    """
    # 1. check inputs
    _check_prompt(candidate, "candidate")
    if isinstance(protected, str):
        raise TypeError("protected must be a sequence of spans, got a single str; wrap it in a list")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    text = re.sub(r"\s+", " ", strip_keep_tags(candidate)).strip()
    if not text:
        return None
    missing = check(text, protected)
    if not missing:
        return candidate if len(candidate) <= (max_chars or len(candidate)) else None

    # 2. fix each missing span in place when its words are still there
    for span in missing:
        if span in text:
            continue  # an earlier repair inserted it already
        fixed = None
        # a variant spelled differently ("Sks Dog" for "sks dog", spacing)
        loose = re.compile(r"\s+".join(re.escape(w) for w in span.split()), re.IGNORECASE)
        m = loose.search(text)
        if m is not None:
            fixed = text[: m.start()] + span + text[m.end():]
        bare = _bare_text(span)
        if fixed is None and bare:
            # the same words with another weight, "(sunset:1.1)" for "(sunset:1.3)"
            other = re.compile(r"[(\[]\s*" + re.escape(bare) + r"\s*(?::\s*-?\d+(?:\.\d+)?)?\s*[)\]]",
                               re.IGNORECASE)
            m = other.search(text)
            if m is not None:
                fixed = text[: m.start()] + span + text[m.end():]
            else:
                fixed = _replace_once(text, bare, span)  # the words without syntax
        if fixed is None:
            # 3. append: network tags lead, as users write them; words trail
            if _NETWORK_TAG.fullmatch(span):
                fixed = f"{span} {text}"
            else:
                fixed = f"{text.rstrip(' ,.;')}, {span}"
        text = fixed

    # 4. verify; a repair that still misses a span, or is too long, is impossible
    if check(text, protected):
        return None
    if max_chars is not None and len(text) > max_chars:
        return None
    return text
