"""Core types of mmopt: what flows through the optimization loop.

Everything here is plain data or a ``typing.Protocol``; nothing imports torch,
so ``import mmopt`` stays light. Implementations live in ``mmopt.pipelines``,
``mmopt.scorers``, ``mmopt.llm`` and ``mmopt.proposers``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


def _canonical_payload(payload: Any) -> str:
    """A canonical JSON text of a candidate's payload (its identity in cache keys)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Candidate.payload must be JSON data (dicts, lists, strings, finite numbers); got "
            f"{type(payload).__name__}: {e}. Store large arrays as a file and put its hash in the payload"
        ) from e


@dataclass(frozen=True)
class Candidate:
    """What a proposer proposes, a generator renders and the store keeps.

    ``text`` is the prompt; ``negative`` an optional negative prompt (None: the
    generator's own default); ``payload`` optional JSON data that also changes
    the result (learned vectors as lists, generation settings, a shot list).
    Two candidates are the same when all three are equal.

    >>> Candidate("a red fox") == Candidate.of("a red fox")
    True
    >>> Candidate("a fox", negative="blurry").key()["negative"]
    'blurry'
    """

    text: str
    negative: str | None = None
    payload: dict | None = field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError(f"Candidate.text must be a string, got {type(self.text).__name__}")
        if self.negative is not None and not isinstance(self.negative, str):
            raise TypeError(f"Candidate.negative must be a string or None, got {type(self.negative).__name__}")
        if self.payload is not None:
            if not isinstance(self.payload, dict):
                raise TypeError(f"Candidate.payload must be a dict or None, got {type(self.payload).__name__}")
            _canonical_payload(self.payload)

    # payload is a dict (unhashable), so equality and hashing go through its canonical text
    def _ident(self) -> tuple:
        return (self.text, self.negative, None if self.payload is None else _canonical_payload(self.payload))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and self._ident() == other._ident()

    def __hash__(self) -> int:
        return hash(self._ident())

    @classmethod
    def of(cls, value: Any) -> "Candidate":
        """A Candidate from a Candidate, a prompt string, or a ``{"text", "negative", "payload"}`` dict."""
        if isinstance(value, Candidate):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            unknown = set(value) - {"text", "negative", "payload"}
            if unknown:
                raise ValueError(f"a candidate dict has the keys text, negative, payload; got also {sorted(unknown)}")
            return cls(value["text"], value.get("negative"), value.get("payload"))
        raise TypeError(f"a candidate must be a prompt string, a Candidate or a dict with 'text'; "
                        f"got {type(value).__name__}")

    def key(self) -> dict:
        """The JSON record of this candidate (cache keys, the store)."""
        out: dict = {"text": self.text}
        if self.negative is not None:
            out["negative"] = self.negative
        if self.payload is not None:
            out["payload"] = self.payload
        return out

    def replace(self, **changes: Any) -> "Candidate":
        """A copy with ``changes`` (text, negative, payload)."""
        return Candidate(**{"text": self.text, "negative": self.negative, "payload": self.payload, **changes})

    @property
    def is_plain(self) -> bool:
        """Only text: no negative prompt and no payload."""
        return self.negative is None and self.payload is None


@dataclass(frozen=True)
class Generation:
    """One rendered sample of one candidate with one seed.

    ``media`` is a ``PIL.Image.Image`` for images, a list of them (frames) for
    video (``meta["fps"]`` then says how fast), or None for a result with no
    picture (a classifier's predictions, in ``meta``). ``meta`` records how it was
    made: model id, steps, size, latency. ``candidate`` may be given as a plain
    prompt string; it is stored as a :class:`Candidate`.

    ``pixels`` optionally carries the same image as a ``uint8`` tensor of shape
    ``(3, H, W)`` on the device that rendered it. A scorer on that device can
    read it instead of ``media`` and skip the trip through host memory; the
    values are exactly ``media``'s. It is never stored or cached, and is not
    part of equality.
    """

    candidate: Candidate
    seed: int
    media: Any
    meta: dict = field(default_factory=dict)
    pixels: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.candidate, Candidate):
            object.__setattr__(self, "candidate", Candidate.of(self.candidate))

    @property
    def prompt(self) -> str:
        """The candidate's prompt text."""
        return self.candidate.text

    @property
    def is_video(self) -> bool:
        return isinstance(self.media, (list, tuple))


@dataclass(frozen=True)
class Score:
    """One scorer's judgement of one generation against the intent.

    ``value`` has the range the scorer documents (``Scorer.value_range``);
    ``details`` carries what a rewriter can act on: per-question answers,
    per-concept scores, and an optional human-readable ``"feedback"`` string.
    """

    scorer: str
    value: float
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VQAAnswer:
    """A yes/no answer with its probability.

    ``answer`` is ``"yes"``, ``"no"`` or ``"unanswerable"`` (a backend that
    cannot judge the question, e.g. the ShapesWorld detector about an object
    it does not know); ``p_yes`` is P(yes) normalised over {yes, no}.
    """

    answer: str
    p_yes: float
    raw: str = ""


@runtime_checkable
class Component(Protocol):
    """Every generator, scorer, VQA model, LLM, proposer and strategy.

    ``config()`` returns the JSON record of every argument that changes its
    results (model id, revision or file hash, dtype, thresholds, templates,
    temperatures); cache keys, the run id and the registry's memo derive from
    it (see :mod:`mmopt.component`). Two components with the same config give
    the same results.
    """

    def config(self) -> dict: ...


@runtime_checkable
class Generator(Protocol):
    """Renders candidates. Called once per iteration with every (candidate, seed) pair.

    ``generate(candidates, seeds)`` renders ``candidates[i]`` with ``seeds[i]``;
    a candidate may be a plain prompt string. Attributes the loop reads:
      name: registry-style label ("diffusers:stabilityai/sd-turbo").
      prompt_style: "tags" (comma-separated, CLIP-era models) or "sentences" (T5 encoders).
      max_prompt_tokens: the text encoder's budget (77 for CLIP).
    Optional: ``count_tokens(text)``, ``truncate(text)``, ``generate_chunks``,
    ``full_quality()`` (the sibling for the final re-score).
    """

    name: str
    prompt_style: str
    max_prompt_tokens: int

    def generate(self, candidates: Sequence["Candidate | str"], seeds: Sequence[int]) -> list[Generation]: ...

    def config(self) -> dict: ...


@runtime_checkable
class Scorer(Protocol):
    """Judges generations against the user's *intent* (never the candidate prompt).

    ``value_range`` documents the (low, high) of ``Score.value`` so the
    objective can normalise scorers to a common range. ``name`` labels its
    scores (objective weights and constraints refer to it); identity is
    ``config()``.
    """

    name: str
    value_range: tuple[float, float]

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]: ...


@runtime_checkable
class LLM(Protocol):
    """A chat model. Returns ``n`` completions of the conversation ``messages``.

    ``stop`` (optional in implementations): strings that end a completion.
    """

    name: str

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0,
             max_tokens: int = 256, seed: int | None = None, stop: list[str] | None = None) -> list[str]: ...


@runtime_checkable
class VQAModel(Protocol):
    """Answers yes/no questions about images; ``images[i]`` pairs with ``questions[i]``."""

    name: str

    def answer(self, images: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]: ...


@dataclass
class Trial:
    """One candidate evaluated on every search seed.

    ``prompt`` (with ``negative`` and ``payload``) is the candidate; ``scores``
    holds the per-scorer mean over seeds; ``objective`` the single number the
    strategy ranks by; ``feasible`` whether every hard constraint held
    (``meta["violations"]`` says which broke); ``feedback`` the text a
    rewriter sees; ``details`` each scorer's per-seed details.
    """

    index: int
    iteration: int
    prompt: str
    objective: float
    scores: dict[str, float]
    feasible: bool = True
    feedback: str = ""
    meta: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    negative: str | None = None
    payload: dict | None = None

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.prompt, self.negative, self.payload)

    @property
    def status(self) -> str:
        """``"feasible"``, or ``"infeasible: <the constraints it broke>"``: the label a proposer shows."""
        if self.feasible:
            return "feasible"
        return "infeasible: " + ("; ".join(self.meta.get("violations") or []) or "a constraint broke")

    def failed_questions(self) -> list[tuple[str, float]]:
        """(question, fraction of seeds where it failed), worst first, from every scorer's
        per-question details (DSG-style ``details["questions"]``)."""
        failed: dict[str, list[int]] = {}
        for per_seed in self.details.values():
            for d in per_seed or []:
                for q in (d or {}).get("questions", []) if isinstance(d, dict) else []:
                    text = q.get("question")
                    if not text:
                        continue
                    row = failed.setdefault(text, [0, 0])
                    row[1] += 1
                    row[0] += int(q.get("answer") != "yes")
        out = [(q, bad / total) for q, (bad, total) in failed.items() if bad]
        return sorted(out, key=lambda x: -x[1])


def rank_key(trial: Trial) -> tuple:
    """The one ordering of trials: feasible first, then higher objective, then earlier.

    ``max(trials, key=rank_key)`` is the best trial; every part of mmopt that
    needs "best" uses it (:func:`best_trial`).
    """
    return (bool(trial.feasible), trial.objective, -trial.index)


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The best feasible trial; when none is feasible, the best of all. None for no trials.

    >>> best_trial([Trial(0, 0, "a", 0.9, {}, feasible=False), Trial(1, 1, "b", 0.5, {})]).prompt
    'b'
    """
    return max(trials, key=rank_key) if trials else None


@dataclass
class SearchState:
    """What a proposer sees: the intent, the labelled history, a seeded RNG.

    ``history`` is chosen and ordered by the strategy, in the order to show:
    infeasible trials first, then feasible ones by ascending objective, so
    the last entry is the best feasible trial (OPT2I's convention). Each
    trial carries its label (``Trial.status``) and feedback
    (``Trial.feedback``, ``Trial.failed_questions()``). Proposers read it as it
    is: they never re-sort or re-filter it.
    ``trials`` is every trial so far in the order they were evaluated;
    ``pending`` the candidates being rendered while this proposal is made
    (``Optimizer(lookahead=True)``): already tried, scores not known yet.
    ``layout`` is how the strategy wants the history laid out in a text prompt:
    ``"ranked"`` (as ordered) or ``"appended"`` (the same trials by ``Trial.index``,
    so that the text only grows between iterations and a local LLM reuses its cache).
    ``media_kind`` is what the generator renders (its ``media_kind``: ``"image"`` or
    ``"video"``), so a rewriter can write for it.
    ``screen`` (when the loop checks constraints on the text before rendering,
    ``Optimizer(prescreen=True)``) returns the violations a candidate would
    have (empty: it passes), so a proposer can repair or replace it first;
    ``rejected`` holds ``(prompt, violations)`` of candidates screened out
    earlier in the run (never rendered, never to be proposed again).
    """

    intent: str
    iteration: int
    trials: list[Trial]
    history: list[Trial]
    rng: random.Random
    prompt_style: str = "tags"
    max_prompt_tokens: int = 77
    protected: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    media_kind: str = "image"
    screen: Any = None
    rejected: tuple[tuple[str, tuple[str, ...]], ...] = ()
    layout: str = "ranked"

    @property
    def best(self) -> Trial | None:
        """The best trial of the history (its last entry); None before anything is scored."""
        return self.history[-1] if self.history else best_trial(self.trials)

    def seen_prompts(self) -> set[str]:
        return {t.prompt for t in self.trials} | set(self.pending) | {p for p, _ in self.rejected}


@runtime_checkable
class Proposer(Protocol):
    """Suggests up to ``n`` new candidates (``Candidate`` objects or prompt strings)."""

    name: str

    def propose(self, state: SearchState, n: int) -> list["Candidate | str"]: ...

    def config(self) -> dict: ...


@dataclass(frozen=True)
class DSGQuestion:
    """One Davidsonian Scene Graph question (Cho et al., ICLR 2024).

    ``id`` is 1-based (DSG-1k's proposition_id); ``tuple`` is the semantic
    tuple in DSG-1k's text form, e.g. ``"entity - whole (cat)"`` or
    ``"attribute - color (cat, red)"``; ``dependencies`` lists the ids of the
    parent questions (empty for a root).
    """

    id: int
    tuple: str
    question: str
    dependencies: tuple[int, ...] = ()
