"""Core types of mmopt: what flows through the optimization loop.

Everything here is plain data or a ``typing.Protocol``; nothing imports torch,
so ``import mmopt`` stays light. Implementations live in ``mmopt.pipelines``,
``mmopt.scorers``, ``mmopt.llm`` and ``mmopt.proposers``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Generation:
    """One rendered sample.

    ``media`` is a ``PIL.Image.Image`` for images, a list of them (frames) for
    video. ``meta`` records how it was made: model id, steps, size, latency.

    ``pixels`` optionally carries the same image as a ``uint8`` tensor of shape
    ``(3, H, W)`` on the device that rendered it. A scorer on that device can
    read it instead of ``media`` and skip the trip through host memory; the
    values are exactly ``media``'s. It is never stored or cached, and is not
    part of equality.
    """

    prompt: str
    seed: int
    media: Any
    meta: dict = field(default_factory=dict)
    pixels: Any = field(default=None, compare=False, repr=False)


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
class Generator(Protocol):
    """Renders prompts. Called once per iteration with every (prompt, seed) pair.

    Attributes a generator exposes to the loop:
      name: registry-style id used in cache keys ("diffusers:stabilityai/sd-turbo").
      prompt_style: "tags" (comma-separated, CLIP-era models) or "sentences" (T5 encoders).
      max_prompt_tokens: the text encoder's budget (77 for CLIP).
    """

    name: str
    prompt_style: str
    max_prompt_tokens: int

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Generation]: ...

    def count_tokens(self, prompt: str) -> int: ...

    def cache_key(self) -> dict: ...


@runtime_checkable
class Scorer(Protocol):
    """Judges generations against the user's *intent* (never the candidate prompt).

    ``value_range`` documents the (low, high) of ``Score.value`` so the
    objective can normalise scorers to a common range.
    """

    name: str
    value_range: tuple[float, float]

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]: ...


@runtime_checkable
class LLM(Protocol):
    """A chat model. Returns ``n`` completions of the conversation ``messages``."""

    name: str

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0,
             max_tokens: int = 256, seed: int | None = None) -> list[str]: ...


@runtime_checkable
class VQAModel(Protocol):
    """Answers yes/no questions about images; ``images[i]`` pairs with ``questions[i]``."""

    name: str

    def answer(self, images: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]: ...


@dataclass
class Trial:
    """One candidate prompt evaluated on every search seed.

    ``scores`` holds the per-scorer mean over seeds; ``objective`` the single
    number the strategy ranks by; ``feasible`` whether every hard constraint
    held; ``feedback`` the text a rewriter sees.
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


@dataclass
class SearchState:
    """What a proposer sees: the intent, the history, a seeded RNG.

    ``history`` is chosen by the strategy (for OPT2I: the top-k trials);
    ``trials`` is every trial so far in the order they were evaluated;
    ``pending`` the prompts being rendered while this proposal is made
    (``Optimizer(lookahead=True)``): already tried, scores not known yet.
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

    @property
    def best(self) -> Trial | None:
        feasible = [t for t in self.trials if t.feasible]
        pool = feasible or self.trials
        return max(pool, key=lambda t: (t.objective, -t.index)) if pool else None

    def seen_prompts(self) -> set[str]:
        return {t.prompt for t in self.trials} | set(self.pending)


@runtime_checkable
class Proposer(Protocol):
    """Suggests up to ``n`` new candidate prompts given the search state."""

    name: str

    def propose(self, state: SearchState, n: int) -> list[str]: ...


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
