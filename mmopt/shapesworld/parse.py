"""Caption -> DSG questions without an LLM.

``parse_caption`` reads a ShapesWorld caption with the grammar's vocabulary
(and a few extra phrasings an LLM or a user might write), returns the groups
and relations it states, the Davidsonian Scene Graph questions that check
them (``mmopt.types.DSGQuestion``, with DSG-style parents), and the words it
could not use. The token scanner here is shared with ``vqa.py``, which reads
yes/no questions with the same vocabulary.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..types import DSGQuestion
from . import grammar as G

# ---------------------------------------------------------------------------
# Lexicon (built from the grammar's word lists, plus reading-only extras)
# ---------------------------------------------------------------------------

COLOUR_WORD: dict[str, str] = {w: c for c, ws in G.COLOUR_SYNONYMS.items() for w in ws}
COLOUR_WORD.update({"violet": "purple", "magenta": "purple", "aqua": "cyan", "teal": "cyan"})
SIZE_WORD: dict[str, str] = {w: s for s, ws in G.SIZE_SYNONYMS.items() for w in ws}
SIZE_WORD.update({"smaller": "small", "larger": "large", "bigger": "large", "huge": "large"})
SHAPE_WORD: dict[str, str] = {w: s for s, ws in G.SHAPE_SYNONYMS.items() for w in ws}
SHAPE_PLURAL_WORD: dict[str, str] = {G.SHAPE_PLURALS[w]: s for w, s in SHAPE_WORD.items()}
SHAPE_PLURAL_WORD["rhombuses"] = "diamond"
#: Nouns that name any object ("a red object").
WILDCARD_NOUNS = {"object": False, "objects": True, "shape": False, "shapes": True,
                  "thing": False, "things": True, "item": False, "items": True}
NUMBER_WORD: dict[str, int] = {w: i for i, w in enumerate(G.NUMBER_WORDS)}
NUMBER_WORD.update({str(i): i for i in range(0, 21)})

#: Relation phrases, longest first so "to the left of" beats "left of".
RELATION_PHRASE: dict[tuple[str, ...], str] = {}
for _rel, _phrases in G.RELATION_PHRASES.items():
    for _p in _phrases:
        RELATION_PHRASE[tuple(_p.split())] = _rel
for _p, _rel in {
    "on the left side of": "left of", "to the left side of": "left of", "at the left of": "left of",
    "on the right side of": "right of", "to the right side of": "right of", "at the right of": "right of",
    "higher than": "above", "on top of": "above", "atop": "above",
    "lower than": "below", "underneath": "below", "beneath": "below", "under": "below",
}.items():
    RELATION_PHRASE[tuple(_p.split())] = _rel
_RELATION_KEYS = sorted(RELATION_PHRASE, key=len, reverse=True)

#: Caption openers that belong to the grammar and carry no content.
CAPTION_PREFIXES: tuple[tuple[str, ...], ...] = tuple(sorted(
    {tuple(p.split()) for p in G.CAPTION_PREFIXES} | {
        ("a", "photo", "of"), ("an", "illustration", "of"), ("an", "image", "with"),
        ("a", "picture", "with"), ("a", "scene", "with"), ("a", "scene", "of")},
    key=len, reverse=True))
#: Grammar words that only glue clauses together.
CAPTION_FILLERS = {"and", ",", ";", "is", "are", "there"}

#: Words that end a noun phrase rather than being skipped as unknown adjectives.
_NOT_ADJECTIVES = {"and", ",", ";", "of", "the", "a", "an", "is", "are", "there", "with", "to", "on", "in",
                   "at", "next", "near", "by", "or", "not", "no"}

_TOKEN_RE = re.compile(r"[a-z]+|\d+|[,;]")


def tokenize(text: str) -> list[str]:
    """Lower-case word/number tokens plus clause separators ("," ";").

    >>> tokenize("Two red circles, left of a box.")
    ['two', 'red', 'circles', ',', 'left', 'of', 'a', 'box']
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a caption or question string, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower().replace("-", " "))


# ---------------------------------------------------------------------------
# Scanner: tokens -> noun phrases, relation phrases, lone attributes, words
# ---------------------------------------------------------------------------

@dataclass
class NounPhrase:
    """A noun phrase such as "the two small red circles" (canonical values; None = open)."""

    colour: str | None
    shape: str | None
    size: str | None
    count: int | None        # an explicit number ("two", "2", "one"); None otherwise
    plural: bool
    definite: bool
    indefinite_article: bool  # "a"/"an"
    at_least: bool = False    # "at least two"
    skipped: tuple[int, ...] = ()  # positions of unknown words inside the phrase ("a shiny red circle")
    start: int = 0
    end: int = 0              # token span [start, end)


@dataclass
class Item:
    kind: str                 # "np" | "rel" | "attr" | "word"
    start: int
    end: int
    np: NounPhrase | None = None
    relation: str | None = None
    attr: tuple[str, str] | None = None   # ("colour", "red") or ("size", "small")
    word: str | None = None


def _match_phrase(tokens: list[str], i: int, phrases) -> tuple[str, ...] | None:
    for p in phrases:
        if tuple(tokens[i:i + len(p)]) == p:
            return p
    return None


def _noun_phrase_at(tokens: list[str], i: int) -> NounPhrase | None:
    """Read a noun phrase starting at token ``i``, or None when there is none."""
    j = i
    n = len(tokens)
    count = None
    definite = article = at_least = False
    # 1. determiner / number
    if j < n and tokens[j] in ("the", "these", "those"):
        definite = True
        j += 1
    elif j < n and tokens[j] in ("a", "an"):
        article = True
        j += 1
        if j < n and tokens[j] == "single":
            count = 1
            j += 1
    elif j < n and tokens[j] in ("any", "some"):
        j += 1
    if j + 1 < n and tokens[j] == "at" and tokens[j + 1] == "least":
        at_least = True
        j += 2
    elif j < n and tokens[j] == "exactly":
        j += 1
    if j < n and tokens[j] in NUMBER_WORD:
        count = NUMBER_WORD[tokens[j]]
        j += 1
    # 2. adjectives in any order; up to two unknown words are skipped (and
    #    reported) when a shape noun follows: "a shiny red circle"
    colour = size = None
    skipped: list[int] = []
    while j < n:
        if tokens[j] not in COLOUR_WORD and tokens[j] not in SIZE_WORD and tokens[j] != "coloured":
            if (len(skipped) < 2 and tokens[j] not in _NOT_ADJECTIVES and tokens[j] not in NUMBER_WORD
                    and tokens[j] not in SHAPE_WORD and tokens[j] not in SHAPE_PLURAL_WORD
                    and tokens[j] not in WILDCARD_NOUNS and _match_phrase(tokens, j, _RELATION_KEYS) is None
                    and _noun_phrase_at(tokens, j + 1) is not None):
                skipped.append(j)
                j += 1
                continue
            break
        if tokens[j] in COLOUR_WORD:
            if colour is not None:
                return None  # "red blue circle": not a phrase we can read
            colour = COLOUR_WORD[tokens[j]]
        elif tokens[j] in SIZE_WORD:
            if size is not None:
                return None
            size = SIZE_WORD[tokens[j]]
        j += 1
    # 3. the noun
    if j >= n:
        return None
    w = tokens[j]
    if w in SHAPE_WORD:
        shape, plural = SHAPE_WORD[w], False
    elif w in SHAPE_PLURAL_WORD:
        shape, plural = SHAPE_PLURAL_WORD[w], True
    elif w in WILDCARD_NOUNS:
        shape, plural = None, WILDCARD_NOUNS[w]
    else:
        return None
    return NounPhrase(colour, shape, size, count, plural, definite, article, at_least, tuple(skipped), i, j + 1)


def scan(tokens: list[str], extra_phrases: tuple[tuple[str, ...], ...] = ()) -> list[Item]:
    """Split tokens into noun phrases, relation phrases, lone attribute words and other words.

    ``extra_phrases`` are multi-word fillers returned as one ``word`` item
    each (their text joined by spaces), e.g. caption prefixes.
    """
    items: list[Item] = []
    i = 0
    while i < len(tokens):
        rel = _match_phrase(tokens, i, _RELATION_KEYS)
        if rel is not None:
            items.append(Item("rel", i, i + len(rel), relation=RELATION_PHRASE[rel]))
            i += len(rel)
            continue
        np_ = _noun_phrase_at(tokens, i)
        if np_ is not None:
            items.append(Item("np", i, np_.end, np=np_))
            i = np_.end
            continue
        extra = _match_phrase(tokens, i, extra_phrases)
        if extra is not None:
            items.append(Item("word", i, i + len(extra), word=" ".join(extra)))
            i += len(extra)
            continue
        w = tokens[i]
        if w in COLOUR_WORD:
            items.append(Item("attr", i, i + 1, attr=("colour", COLOUR_WORD[w])))
        elif w in SIZE_WORD:
            items.append(Item("attr", i, i + 1, attr=("size", SIZE_WORD[w])))
        else:
            items.append(Item("word", i, i + 1, word=w))
        i += 1
    return items


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ParseResult:
    """What ``parse_caption`` found.

    ``questions``: DSG questions (ids from 1, parents in ``dependencies``);
    ``objects``: the groups the caption states, as ``grammar.Group``;
    ``ignored_words``: tokens outside the grammar, in order;
    ``relations``: relations between ``objects`` (indices), as ``grammar.Relation``.
    """

    questions: tuple[DSGQuestion, ...]
    objects: tuple[G.Group, ...]
    ignored_words: tuple[str, ...]
    relations: tuple[G.Relation, ...] = ()

    @property
    def description(self) -> G.Description:
        return G.Description(self.objects, self.relations)


def _compatible(g: G.Group, np_: NounPhrase) -> bool:
    return all(a is None or b is None or a == b for a, b in (
        (g.shape, np_.shape), (g.colour, np_.colour), (g.size, np_.size)))


def parse_description(text: str) -> tuple[G.Description, tuple[str, ...]]:
    """Caption -> (Description, ignored words). See ``parse_caption``."""
    tokens = tokenize(text)
    items = scan(tokens, CAPTION_PREFIXES)
    groups: list[G.Group] = []
    group_of_item: dict[int, int] = {}
    ignored: list[tuple[int, str]] = []  # (token position, word)
    # 1. noun phrases -> groups ("the ..." refers back to a compatible group)
    for k, it in enumerate(items):
        if it.kind != "np":
            continue
        np_ = it.np
        if np_.definite:
            ref = next((gi for gi in range(len(groups) - 1, -1, -1) if _compatible(groups[gi], np_)), None)
            if ref is not None:
                group_of_item[k] = ref
                continue
        count = np_.count if np_.count is not None else (2 if np_.plural else 1)
        if count < 1:
            ignored.extend(enumerate(tokens[it.start:it.end], it.start))
            continue
        new = G.Group(count, np_.colour, np_.shape, np_.size)
        same = next((gi for gi, g in enumerate(groups)
                     if (g.colour, g.shape, g.size) == (new.colour, new.shape, new.size)
                     and None not in (g.colour, g.shape)), None)
        if same is not None:  # "a red circle ... and a red circle": one group of two
            groups[same] = G.Group(groups[same].count + count, new.colour, new.shape, new.size)
            group_of_item[k] = same
        else:
            groups.append(new)
            group_of_item[k] = len(groups) - 1
    # 2. relations bind the nearest noun phrase before and after them
    relations: list[G.Relation] = []
    for k, it in enumerate(items):
        if it.kind != "rel":
            continue
        before = next((m for m in range(k - 1, -1, -1) if m in group_of_item), None)
        after = next((m for m in range(k + 1, len(items)) if m in group_of_item), None)
        if before is None or after is None or group_of_item[before] == group_of_item[after]:
            ignored.extend(enumerate(tokens[it.start:it.end], it.start))
            continue
        r = G.Relation(group_of_item[before], it.relation, group_of_item[after])
        if r not in relations:
            relations.append(r)
    # 3. everything else: grammar glue is silent, the rest is reported
    for it in items:
        if it.kind == "np":
            ignored.extend((p, tokens[p]) for p in it.np.skipped)
        if it.kind == "word" and it.word not in CAPTION_FILLERS and " " not in it.word:
            ignored.append((it.start, it.word))
        elif it.kind == "attr":  # a colour/size word with no shape after it
            ignored.append((it.start, tokens[it.start]))
    return G.Description(tuple(groups), tuple(relations)), tuple(w for _, w in sorted(ignored))


def _noun(g: G.Group, plural: bool) -> str:
    word = g.shape or "object"
    return G.SHAPE_PLURALS.get(word, word + "s") if plural else word


def _ref(g: G.Group, plural: bool) -> str:
    """"red circle(s)": colour + shape (the key groups are distinct by)."""
    return f"{g.colour} {_noun(g, plural)}" if g.colour else _noun(g, plural)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


_REL_QUESTION_PHRASE = {"left of": "to the left of", "right of": "to the right of",
                        "above": "above", "below": "below"}


def questions_for(desc: G.Description) -> tuple[DSGQuestion, ...]:
    """DSG questions for a description, parents as in DSG.

    Per group: entity ("Is there a circle?"), colour ("Is the circle red?",
    parent: entity), size ("Is the red circle small?", parent: entity),
    count when two or more ("Are there two red circles?", parent: entity).
    Per relation: "Is the red circle to the left of the blue square?"
    (parents: both entities). When two groups share a shape, the entity
    question names the colour too ("Is there a red circle?") and no separate
    colour question is asked.

    >>> [q.question for q in questions_for(G.Description((G.Group(1, "red", "circle"),)))]
    ['Is there a circle?', 'Is the circle red?']
    """
    out: list[DSGQuestion] = []
    entity_id: dict[int, int] = {}

    def add(tup: str, question: str, deps: tuple[int, ...] = ()) -> int:
        out.append(DSGQuestion(len(out) + 1, tup, question, deps))
        return len(out)

    shapes = [g.shape for g in desc.groups]
    for gi, g in enumerate(desc.groups):
        plural = g.count > 1
        shared = g.shape is None or shapes.count(g.shape) > 1
        name = _ref(g, plural) if shared else _noun(g, plural)
        q = f"Are there {name}?" if plural else f"Is there {_a(name)}?"
        eid = add(f"entity - whole ({name})", q)
        entity_id[gi] = eid
        be = "Are" if plural else "Is"
        if g.colour and not shared:
            add(f"attribute - color ({_noun(g, plural)}, {g.colour})",
                f"{be} the {_noun(g, plural)} {g.colour}?", (eid,))
        if g.size:
            add(f"attribute - size ({_ref(g, plural)}, {g.size})",
                f"{be} the {_ref(g, plural)} {g.size}?", (eid,))
        if plural:
            n_word = G.NUMBER_WORDS[g.count] if g.count < len(G.NUMBER_WORDS) else str(g.count)
            add(f"other - count ({_ref(g, True)}, =={g.count})",
                f"Are there {n_word} {_ref(g, True)}?", (eid,))
    for r in desc.relations:
        s, o = desc.groups[r.subject], desc.groups[r.object]
        be = "Are" if s.count > 1 else "Is"
        add(f"relation - spatial ({_ref(s, s.count > 1)}, {_ref(o, o.count > 1)}, {r.relation})",
            f"{be} the {_ref(s, s.count > 1)} {_REL_QUESTION_PHRASE[r.relation]} the {_ref(o, o.count > 1)}?",
            (entity_id[r.subject], entity_id[r.object]))
    return tuple(out)


def parse_caption(text: str) -> ParseResult:
    """Parse a ShapesWorld caption into groups, relations, DSG questions and ignored words.

    Words outside the grammar never raise: they are listed in
    ``ignored_words`` and the rest of the caption is still used. A plural
    without a number ("red circles") counts as two.

    >>> r = parse_caption("two red circles to the left of a shiny blue square")
    >>> [q.question for q in r.questions][-1], r.ignored_words
    ('Are the red circles to the left of the blue square?', ('shiny',))
    """
    desc, ignored = parse_description(text)
    return ParseResult(questions_for(desc), desc.groups, ignored, desc.relations)


def dsg_questions(caption: str) -> list[DSGQuestion]:
    """Question source for ``DSGScorer(questions=dsg_questions)``: the parser's DSG questions."""
    return list(parse_caption(caption).questions)


def scene_from_caption(text: str, rng) -> G.Scene:
    """Lay out a scene that satisfies caption ``text`` (words outside the grammar are ignored).

    >>> import random
    >>> len(scene_from_caption("two red circles left of a blue square", random.Random(0)).objects)
    3
    """
    return G.layout(parse_caption(text).description, G._check_rng(rng))


def is_held_out(caption_or_desc) -> bool:
    """Whether a caption (or a Description) belongs to the held-out benchmark half
    (the rule: :func:`mmopt.shapesworld.grammar.is_held_out`)."""
    if isinstance(caption_or_desc, str):
        return G.is_held_out(parse_caption(caption_or_desc).description)
    return G.is_held_out(caption_or_desc)
