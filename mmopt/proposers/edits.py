"""Feedback-driven rule edits: no LLM, prompts that still say what the user asked.

Each candidate is a parent prompt from the strategy's history with one or two
edits that keep its meaning, chosen by what its images got wrong (the failed
DSG questions, :mod:`mmopt.proposers.feedback`):

* ``split``: state the objects first, then each relation between them
  ("a red circle, a blue square and the red circle to the left of the blue
  square"); for a failed object or relation;
* ``flip``: state a relation from the other side ("a blue square to the right
  of a red circle"); ``restate``: add it from the other side as well; for a
  failed relation;
* ``front``: move the clause or object that failed most to the front;
* ``counts``: spell a count as a digit or a word ("2" / "two"); for a failed count;
* ``plain``: use the plain word of a group of synonyms, the one the scorer's
  question uses ("disc" -> "circle", "scarlet" -> "red"); ``synonym``: the
  reverse, for exploration;
* ``attribute``: put back an attribute the failed question asks about that
  the prompt lacks;
* ``opener``: drop a caption opener ("a picture of"), or add one;
* ``weight``: prompt-weighting syntax ``(red circle:1.2)``, only with
  ``weighting=True`` (for pipelines that parse it, e.g. with compel).

Every edit is text surgery on a light phrase model (clauses of noun phrases
and relation phrases from ``assets/rules/edits.json``): it always parses,
needs no model, and is deterministic for a seed. When the loop checks
constraints on the text (``SearchState.screen``) an edit that would break one
is dropped before it is returned.

>>> import random; from mmopt.types import SearchState
>>> out = EditsProposer().propose(SearchState("a red disc left of a blue box", 1, [], [], random.Random(0)), 3)
>>> len(out)
3
"""
from __future__ import annotations

import importlib.resources
import json
import os
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from mmopt import protect
from mmopt.component import Configurable
from mmopt.llm.parsing import normalize_for_dedup
from mmopt.proposers.feedback import Concept, weakest
from mmopt.clauses import clauses as split_clauses
from mmopt.types import Candidate, SearchState, Trial

__all__ = ["EditsProposer", "Lexicon", "load_lexicon", "parse_prompt", "Phrase", "EDITS", "from_name"]

EDITS = ("split", "flip", "restate", "front", "counts", "plain", "synonym", "attribute", "opener", "weight")
#: Which edits answer which failed concept (the rest are drawn for exploration).
FOR_KIND = {"relation": ("flip", "restate", "split"), "entity": ("split", "front", "plain"),
            "attribute": ("attribute", "plain", "front"), "count": ("counts", "plain", "split")}
_DETERMINERS = {"a", "an", "one", "the", "these", "those", "some", "any"}
_COPULAS = {"is", "are"}


def load_lexicon(lexicon: str | os.PathLike | dict | None = None) -> dict:
    """The edit vocabulary: the shipped ``assets/rules/edits.json``, a JSON path, or a dict."""
    if lexicon is None:
        data = json.loads((importlib.resources.files("mmopt.assets") / "rules" / "edits.json").read_text("utf-8"))
    elif isinstance(lexicon, dict):
        data = lexicon
    elif isinstance(lexicon, (str, os.PathLike)):
        path = os.path.expanduser(str(lexicon))
        if not os.path.isfile(path):
            raise ValueError(f"edit lexicon file not found: {path!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    else:
        raise TypeError(f"lexicon must be None, a path or a dict, got {type(lexicon).__name__}")
    for key, kind in (("relations", dict), ("numbers", list), ("prefixes", list), ("synonyms", list),
                      ("plurals", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"the edit lexicon needs {key!r} as a {kind.__name__}; got {type(data.get(key)).__name__}")
    return {k: data[k] for k in ("relations", "numbers", "prefixes", "synonyms", "plurals")}


class Lexicon:
    """Look-ups over a loaded lexicon: relation phrases (longest first), synonyms both ways, plurals."""

    def __init__(self, data: dict):
        self.inverse = {k.lower(): v.lower() for k, v in data["relations"].items()}
        self.relations = sorted(self.inverse, key=len, reverse=True)
        self.numbers = [w.lower() for w in data["numbers"]]
        self.prefixes = sorted((p.lower() for p in data["prefixes"]), key=len, reverse=True)
        plurals = {k.lower(): v.lower() for k, v in data["plurals"].items()}
        self.plain: dict[str, str] = {}      # synonym (any number) -> plain word (same number)
        self.groups: dict[str, list[str]] = {}  # plain word (any number) -> its group (same number)
        for group in data["synonyms"]:
            group = [w.lower() for w in group]
            for forms in (group, [plurals.get(w, w + "s") for w in group]):
                for w in forms:
                    self.plain[w] = forms[0]
                    self.groups[w] = forms
        self._rel_re = re.compile(r"(?<![\w])(" + "|".join(re.escape(r) for r in self.relations) + r")(?![\w])")

    def find_relation(self, text: str) -> re.Match | None:
        return self._rel_re.search(text.lower())


@dataclass(frozen=True)
class Phrase:
    """One clause: a noun phrase, or ``subject relation object`` (``copula``: "is"/"are" or "")."""

    subject: str
    relation: str = ""
    object: str = ""
    copula: str = ""

    def text(self) -> str:
        if not self.relation:
            return self.subject
        mid = f" {self.copula}" if self.copula else ""
        return f"{self.subject}{mid} {self.relation} {self.object}"


@dataclass(frozen=True)
class Prompt:
    opener: str
    phrases: tuple[Phrase, ...]
    period: bool

    def text(self) -> str:
        body = _join([p.text() for p in self.phrases])
        out = f"{self.opener} {body}" if self.opener else body
        return out + ("." if self.period else "")


def _join(parts: Sequence[str]) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def parse_prompt(text: str, lex: Lexicon) -> Prompt:
    """``text`` as an opener, clauses and a final period (lower-cased, whitespace normalised)."""
    body = " ".join(text.split()).strip()
    period = body.endswith(".")
    body = body.rstrip(".").strip()
    low = body.lower()
    opener = next((p for p in lex.prefixes if low.startswith(p + " ")), "")
    body = low[len(opener):].strip() if opener else low
    phrases = []
    for clause in split_clauses(body):
        m = lex.find_relation(clause)
        if m is None:
            phrases.append(Phrase(clause))
            continue
        subject, obj = clause[:m.start()].strip(), clause[m.end():].strip()
        copula = ""
        words = subject.split()
        if words and words[-1] in _COPULAS:
            copula, subject = words[-1], " ".join(words[:-1])
        if not subject or not obj:
            phrases.append(Phrase(clause))
            continue
        phrases.append(Phrase(subject, m.group(1), obj, copula))
    return Prompt(opener, tuple(phrases), period)


def _definite(np_: str) -> str:
    """"two small red circles" -> "the small red circles"; "the circle" stays."""
    words = np_.split()
    while words and (words[0] in _DETERMINERS or words[0].isdigit()):
        words = words[1:]
    return "the " + " ".join(words) if words else np_


def _is_definite(np_: str) -> bool:
    return np_.split()[:1] == ["the"]


def _head(np_: str) -> str:
    return np_.split()[-1] if np_.split() else ""


class EditsProposer(Configurable):
    """Meaning-keeping rule edits of the history's prompts, chosen by the failed concepts.

    ``lexicon``: None (shipped), a JSON path or a dict; ``max_edits``: edits per candidate
    (1..max_edits); ``edits``: the edits allowed (default: all but ``weight``);
    ``weighting``: allow ``(phrase:1.2)`` weighting (only for pipelines that parse it);
    ``focus``: the probability that an edit answers a failed concept rather than explores.
    Parents are the strategy's feasible history, best first, in turn.
    """

    name = "edits"

    def __init__(self, lexicon: str | os.PathLike | dict | None = None, *, max_edits: int = 2,
                 edits: Sequence[str] | None = None, weighting: bool = False, focus: float = 0.7):
        if isinstance(max_edits, bool) or not isinstance(max_edits, int) or max_edits < 1:
            raise ValueError(f"max_edits must be an int >= 1, got {max_edits!r}")
        allowed = [e for e in EDITS if e != "weight" or weighting] if edits is None else list(edits)
        bad = [e for e in allowed if e not in EDITS]
        if bad or not allowed:
            raise ValueError(f"edits must be a non-empty subset of {EDITS}, got {list(edits or [])}")
        if "weight" in allowed and not weighting:
            raise ValueError("the 'weight' edit writes (phrase:1.2) syntax: pass weighting=True for a pipeline "
                             "that parses it")
        if not isinstance(focus, (int, float)) or not 0 <= focus <= 1:
            raise ValueError(f"focus must be a probability in [0, 1], got {focus!r}")
        self.data = load_lexicon(lexicon)
        self.lex = Lexicon(self.data)
        self.max_edits, self.edits, self.weighting, self.focus = max_edits, tuple(allowed), bool(weighting), float(focus)
        self.register_config(lexicon=self.data, max_edits=max_edits, edits=list(self.edits),
                             weighting=self.weighting, focus=self.focus)
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ the edits
    def apply(self, edit: str, text: str, rng: random.Random, weak: Sequence[Concept] = ()) -> str | None:
        """``text`` with one ``edit`` applied, or None when it does not apply."""
        p = parse_prompt(text, self.lex)
        if not p.phrases:
            return None
        fn = getattr(self, f"_edit_{edit}")
        out = fn(p, rng, list(weak))
        if out is None:
            return None
        out = out if isinstance(out, str) else out.text()
        return None if normalize_for_dedup(out) == normalize_for_dedup(text) else out

    def _weak_words(self, weak: list[Concept]) -> list[str]:
        """Words of the failed concepts (their arguments' words, plain forms), worst first."""
        words = []
        for c in weak:
            for a in c.args:
                for w in a.lower().split():
                    w = self.lex.plain.get(w, w)
                    if w.strip("=").isdigit() or w in words:
                        continue
                    words.append(w)
        return words

    def _mentions(self, np_: str, words: list[str]) -> int:
        plain = {self.lex.plain.get(w, w) for w in np_.split()}
        # a plural head matches its singular concept word
        plain |= {self.lex.plain.get(w[:-1], w[:-1]) for w in np_.split() if w.endswith("s")}
        return sum(w in plain for w in words)

    def _edit_split(self, p: Prompt, rng, weak) -> Prompt | None:
        """Objects first (each introduced once, as written), then every relation between them."""
        rels = [ph for ph in p.phrases if ph.relation]
        if not rels:
            return None
        objects, relations = [], []
        for ph in p.phrases:
            for np_ in (ph.subject, ph.object) if ph.relation else (ph.subject,):
                if np_ and not _is_definite(np_) and np_ not in objects:
                    objects.append(np_)
            if ph.relation:
                relations.append(Phrase(_definite(ph.subject), ph.relation, _definite(ph.object)))
        if not objects:
            return None
        if weak:  # the objects that failed most go first
            words = self._weak_words(weak)
            objects.sort(key=lambda np_: -self._mentions(np_, words))
        return replace(p, phrases=tuple(Phrase(o) for o in objects) + tuple(relations))

    def _pick_relation(self, p: Prompt, rng, weak) -> int | None:
        idx = [i for i, ph in enumerate(p.phrases) if ph.relation and ph.relation in self.lex.inverse]
        if not idx:
            return None
        words = self._weak_words([c for c in weak if c.kind == "relation"])
        if words:
            scored = sorted(idx, key=lambda i: -(self._mentions(p.phrases[i].subject, words)
                                                 + self._mentions(p.phrases[i].object, words)))
            return scored[0]
        return rng.choice(idx)

    def _edit_flip(self, p: Prompt, rng, weak) -> Prompt | None:
        i = self._pick_relation(p, rng, weak)
        if i is None:
            return None
        ph = p.phrases[i]
        # an object introduced here must not turn into a reference to nothing: keep the articles
        flipped = Phrase(ph.object, self.lex.inverse[ph.relation], ph.subject)
        return replace(p, phrases=p.phrases[:i] + (flipped,) + p.phrases[i + 1:])

    def _edit_restate(self, p: Prompt, rng, weak) -> Prompt | None:
        i = self._pick_relation(p, rng, weak)
        if i is None:
            return None
        ph = p.phrases[i]
        extra = Phrase(_definite(ph.object), self.lex.inverse[ph.relation], _definite(ph.subject))
        if any(x.text() == extra.text() for x in p.phrases):
            return None
        return replace(p, phrases=p.phrases + (extra,))

    def _edit_front(self, p: Prompt, rng, weak) -> Prompt | None:
        """Move the clause about the weakest concept first (only clauses that introduce their objects)."""
        movable = [i for i, ph in enumerate(p.phrases) if i > 0 and not _is_definite(ph.subject)
                   and not (ph.relation and _is_definite(ph.object))]
        if not movable:
            return None
        words = self._weak_words(weak)
        if words:
            i = max(movable, key=lambda j: (self._mentions(p.phrases[j].subject, words)
                                            + self._mentions(p.phrases[j].object, words), -j))
        else:
            i = rng.choice(movable)
        # the clause that moves must not depend on one it jumps over (a "the ..." it refers to)
        return replace(p, phrases=(p.phrases[i],) + p.phrases[:i] + p.phrases[i + 1:])

    def _edit_counts(self, p: Prompt, rng, weak) -> str | None:
        text = p.text()
        nums = self.lex.numbers
        pat = re.compile(r"\b(" + "|".join(nums[2:]) + r"|[2-9]|10)\b")
        found = list(pat.finditer(text))
        if not found:
            return None
        m = rng.choice(found)
        w = m.group(1)
        new = str(nums.index(w)) if w in nums else nums[int(w)]
        return text[:m.start()] + new + text[m.end():]

    def _edit_plain(self, p: Prompt, rng, weak) -> str | None:
        text = p.text()
        words = re.findall(r"[a-z]+", text)
        syn = [w for w in words if w in self.lex.plain and self.lex.plain[w] != w]
        if not syn:
            return None
        wanted = set(self._weak_words(weak))
        targets = [w for w in syn if self.lex.plain[w] in wanted] or syn
        w = rng.choice(targets)
        return re.sub(rf"\b{w}\b", self.lex.plain[w], text)

    def _edit_synonym(self, p: Prompt, rng, weak) -> str | None:
        text = p.text()
        words = [w for w in re.findall(r"[a-z]+", text) if len(self.lex.groups.get(w, ())) > 1]
        if not words:
            return None
        w = rng.choice(words)
        options = [x for x in self.lex.groups[w] if x != w]
        return re.sub(rf"\b{w}\b", rng.choice(options), text, count=1)

    def _edit_attribute(self, p: Prompt, rng, weak) -> str | None:
        """Put back "red" in "the circle" when the failed question is "Is the circle red?"."""
        text = p.text()
        for c in weak:
            if c.kind != "attribute" or len(c.args) < 2:
                continue
            noun, value = c.args[0].split()[-1].lower(), c.args[1].lower()
            value_forms = set(self.lex.groups.get(value, [value]))
            noun_forms = set(self.lex.groups.get(noun, [noun]))
            for m in re.finditer(r"\b[a-z]+\b", text):
                if m.group(0) in noun_forms:
                    before = text[:m.start()].split()[-3:]
                    if not value_forms & set(before):
                        return text[:m.start()] + value + " " + text[m.start():]
        return None

    def _edit_opener(self, p: Prompt, rng, weak) -> Prompt | None:
        if p.opener:
            return replace(p, opener="")
        options = [o for o in self.lex.prefixes if not o.startswith("there")]
        return replace(p, opener=rng.choice(options)) if options else None

    def _edit_weight(self, p: Prompt, rng, weak) -> str | None:
        text = p.text()
        words = self._weak_words(weak)
        nps = [ph.subject for ph in p.phrases] + [ph.object for ph in p.phrases if ph.object]
        nps = [n for n in nps if "(" not in n]
        if not nps:
            return None
        target = max(nps, key=lambda n: self._mentions(n, words)) if words else rng.choice(nps)
        body = " ".join(w for w in target.split() if w not in _DETERMINERS)
        return text.replace(body, f"({body}:1.2)", 1) if body else None

    # ------------------------------------------------------------------ proposing
    def _choose(self, rng: random.Random, weak: list[Concept]) -> str:
        if weak and rng.random() < self.focus:
            options = [e for e in FOR_KIND.get(weak[0].kind, ()) if e in self.edits]
            if options:
                return rng.choice(options)
        return rng.choice(self.edits)

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        """Up to ``n`` edited prompts, distinct from each other and from every tried prompt."""
        # 1. check inputs
        if not isinstance(state, SearchState):
            raise TypeError(f"state must be a SearchState, got {type(state).__name__}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        rng = random.Random(state.rng.randrange(2**31))  # local RNG seeded from the run's
        intent = " ".join(protect.strip_keep_tags(state.intent).split())
        # 2. parents: the strategy's feasible history, best first (the intent when there is none)
        parents: list[Trial | None] = [t for t in reversed(state.history) if t.feasible] or [None]
        seen = {normalize_for_dedup(p) for p in state.seen_prompts()} | {normalize_for_dedup(intent)}
        stats = {"llm_calls": 0, "tries": 0, "screened": 0, "by_edit": {}}
        self.last_stats = stats
        # 3. edit chains until n new prompts (bounded tries), parents in turn
        out: list[Candidate] = []
        for attempt in range(30 * n):
            if len(out) >= n:
                break
            parent = parents[(len(out) + attempt // max(1, n)) % len(parents)]
            text = parent.prompt if parent is not None else intent
            weak = weakest(parent, 3) if parent is not None else []
            applied = []
            for _ in range(rng.randint(1, self.max_edits)):
                edit = self._choose(rng, weak)
                new = self.apply(edit, text, rng, weak)
                if new is not None:
                    text = new
                    applied.append(edit)
            stats["tries"] += 1
            key = normalize_for_dedup(text)
            if not applied or key in seen:
                continue
            if state.protected and protect.check(text, list(state.protected)):
                continue
            cand = Candidate(text, parent.negative if parent is not None else None)
            if state.screen is not None and state.screen(cand):
                stats["screened"] += 1
                seen.add(key)
                continue
            seen.add(key)
            for e in applied:
                stats["by_edit"][e] = stats["by_edit"].get(e, 0) + 1
            out.append(cand)
        return out


def from_name(rest: str = "", **kw: Any) -> EditsProposer:
    """Registry factory: ``"edits"`` (shipped lexicon) or ``"edits:/path/lexicon.json"``."""
    if rest:
        kw.setdefault("lexicon", rest)
    return EditsProposer(**kw)
