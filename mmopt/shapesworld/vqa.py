"""DetectorVQA: answer yes/no questions about ShapesWorld images with the detector.

Implements ``mmopt.types.VQAModel``. Questions are read with the caption
parser's vocabulary (``parse.scan``): existence and counts ("Is there a red
circle?", "Are there 3 squares?"), attributes ("Is the circle red?", "Is the
square small?"), relations ("Is the triangle above the square?", "Is the
circle on the left side of the diamond?"). Semantics: a singular subject needs
some matching object; a plural one ("Are the circles red?") needs every
matching object (and at least one). Anything else (unknown words, "how many",
negations) is answered ``"unanswerable"`` with p_yes 0.5, never an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..types import VQAAnswer
from . import grammar as G
from .detect import DetectedObject, detect
from .parse import NounPhrase, scan, tokenize

#: Words a yes/no question may contain besides noun phrases, attributes and relations.
QUESTION_FILLERS = {
    "is", "are", "there", "does", "do", "the", "a", "an", "any", "in", "on", "this", "that", "image",
    "picture", "photo", "scene", "drawing", "visible", "present", "shown", "depicted", "contain",
    "contains", "show", "shows", "have", "has", "exist", "exists", "of", "at", "least", "exactly",
    "some", "see", "you", "can", "we", "and", "it", "they", "both", "located", "positioned", "placed",
    "coloured", "colored", "color", "colour", "in", "size", "its", "with",
}
#: Words that make a question one we must not answer yes/no.
REFUSE = {"how", "what", "which", "where", "who", "why", "when", "not", "no", "nor", "or", "neither"}


@dataclass
class Query:
    """A parsed yes/no question."""

    kind: str                              # "exists" | "attribute" | "relation"
    phrases: tuple[NounPhrase, ...]
    attributes: tuple[tuple[str, str], ...] = ()
    relation: str | None = None


def parse_question(text: str) -> Query | None:
    """Read a yes/no question; None when it is outside what the detector can judge.

    >>> parse_question("Is the circle on the left side of the red square?").relation
    'left of'
    """
    if not isinstance(text, str):
        return None
    tokens = tokenize(text)
    if not tokens or any(t in REFUSE for t in tokens):
        return None
    items = scan(tokens)
    nps = [it for it in items if it.kind == "np"]
    rels = [it for it in items if it.kind == "rel"]
    attrs = [it for it in items if it.kind == "attr"]
    words = [it.word for it in items if it.kind == "word"]
    if not nps or any(w not in QUESTION_FILLERS for w in words) or any(it.np.skipped for it in nps):
        return None
    if rels:
        # "Is the A REL the B?": one relation between exactly two phrases, no loose attributes
        if len(rels) != 1 or len(nps) != 2 or attrs:
            return None
        if not nps[0].start < rels[0].start < nps[1].start:
            return None
        return Query("relation", (nps[0].np, nps[1].np), relation=rels[0].relation)
    if attrs:
        # "Is the circle red (and small)?": attributes after one phrase
        if len(nps) != 1 or any(a.start < nps[0].start for a in attrs):
            return None
        return Query("attribute", (nps[0].np,), attributes=tuple(a.attr for a in attrs))
    return Query("exists", tuple(it.np for it in nps))


def _matches(np_: NounPhrase, objs: Sequence[DetectedObject]) -> list[DetectedObject]:
    return [o for o in objs if (np_.shape is None or o.shape == np_.shape)
            and (np_.colour is None or o.colour == np_.colour)
            and (np_.size is None or o.size == np_.size)]


def evaluate(query: Query, objs: Sequence[DetectedObject]) -> bool:
    """The truth of ``query`` given detections ``objs`` (relations use ``grammar.relation_holds``)."""
    if query.kind == "exists":
        for np_ in query.phrases:
            found = len(_matches(np_, objs))
            if np_.count is None or (np_.indefinite_article and np_.count == 1 and not np_.plural):
                need_ok = found >= 1          # "a circle", "circles", "the circle"
            elif np_.at_least:
                need_ok = found >= np_.count  # "at least two circles"
            else:
                need_ok = found == np_.count  # "two circles", "exactly 3 squares"
            if not need_ok:
                return False
        return True
    if query.kind == "attribute":
        np_ = query.phrases[0]
        subjects = _matches(np_, objs)
        if not subjects:
            return False

        def has(o: DetectedObject) -> bool:
            return all((o.colour if kind == "colour" else o.size) == value for kind, value in query.attributes)

        return all(has(o) for o in subjects) if np_.plural else any(has(o) for o in subjects)
    # relation
    a_np, b_np = query.phrases
    subj, obj = _matches(a_np, objs), _matches(b_np, objs)
    if not subj or not obj:
        return False
    pairs = [[G.relation_holds(a.centre, b.centre, query.relation) for b in obj if b is not a] for a in subj]
    if a_np.plural:
        return all(all(row) and row for row in pairs)
    return any(any(row) for row in pairs)


class DetectorVQA:
    """VQA backend over the ShapesWorld detector (``mmopt.types.VQAModel``).

    >>> from .render import render_caption
    >>> DetectorVQA().answer([render_caption("a red circle", 0)], ["Is the circle red?"])[0].answer
    'yes'
    """

    # bump when the detector or the question parser changes what they answer
    config_version = 1

    def __init__(self, name: str = "shapes:detector") -> None:
        self.name = name

    def config(self) -> dict:
        return {"component": "mmopt.shapesworld.vqa.DetectorVQA", "version": self.config_version}

    def answer(self, images: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]:
        """Answer ``questions[i]`` about ``images[i]``; p_yes is 1.0/0.0, or 0.5 when unanswerable."""
        # 1. check inputs
        if isinstance(questions, str) or len(images) != len(questions):
            raise ValueError(f"images and questions must be sequences of equal length, got "
                             f"{len(images)} images and "
                             f"{'a single string' if isinstance(questions, str) else len(questions)} questions")
        # 2. detect once per distinct image (DSG asks many questions per image)
        cache: dict[int, list[DetectedObject]] = {}
        out = []
        for image, question in zip(images, questions):
            query = parse_question(question)
            if query is None:
                out.append(VQAAnswer("unanswerable", 0.5, raw="question outside the ShapesWorld vocabulary"))
                continue
            if id(image) not in cache:
                cache[id(image)] = detect(image)
            yes = evaluate(query, cache[id(image)])
            out.append(VQAAnswer("yes" if yes else "no", 1.0 if yes else 0.0, raw=query.kind))
        return out


def from_name(rest: str = "", **kwargs: Any) -> DetectorVQA:
    """Registry factory: ``create("vqa", "shapes")`` or ``"shapes:detector"``."""
    if rest not in ("", "detector"):
        raise ValueError(f"unknown ShapesWorld VQA {rest!r}; expected 'shapes' or 'shapes:detector'")
    if kwargs:
        raise TypeError(f"shapes VQA takes no options, got {sorted(kwargs)}")
    return DetectorVQA()
