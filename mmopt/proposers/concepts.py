"""Concept-level refinement (after "No Concept Left Behind"): raise the weakest concepts, keep the strong.

The intent is decomposed into the concepts its scorer checks (the DSG
questions: objects, attributes, counts, relations; :mod:`mmopt.proposers.feedback`).
The meta-prompt shows each concept with its pass rate on the best prompt's
images, the strategy's history (use ``greedy`` for the paper's best 20), and
asks the LLM for rewrites that make the weakest concepts clearer and leave the
strong ones as they are. Paper defaults: temperature 0.5 and rewrites capped at
the text encoder's window (the loop cuts longer ones). The paper's top-p 0.9 is
not part of mmopt's LLM protocol (``chat`` takes temperature only), so the
backend's own nucleus setting applies. The template is data:
``assets/templates/concepts.txt``.

>>> ConceptProposer(create("llm", "smollm2")).propose(state, 4)   # doctest: +SKIP
"""
from __future__ import annotations

import importlib.resources
from typing import Any

from mmopt.proposers.feedback import concepts, weakest
from mmopt.proposers.rewriting import STYLE_TEXT, SYSTEM_MESSAGE, Rewriter, history_lines, protected_block, resolve_llm
from mmopt.types import Candidate, SearchState

__all__ = ["ConceptProposer", "from_name"]


def _template(name: str) -> str:
    return (importlib.resources.files("mmopt.assets") / "templates" / name).read_text("utf-8")


class ConceptProposer(Rewriter):
    """Rewrites that target the concepts the best prompt's images missed.

    ``weak``: how many of the weakest concepts to name; ``template``: the meta-prompt text
    (``$intent``, ``$concepts``, ``$weakest``, ``$history``, ``$n``, ``$style``,
    ``$max_tokens``, ``$protected_block``), None for the shipped one.
    """

    name = "concepts"

    def __init__(self, llm: Any, *, temperature: float = 0.5, weak: int = 2, template: str | None = None,
                 **kwargs: Any):
        super().__init__(llm, temperature=temperature, **kwargs)
        if isinstance(weak, bool) or not isinstance(weak, int) or weak < 1:
            raise ValueError(f"weak must be an int >= 1, got {weak!r}")
        self.weak = weak
        self.template = template if template is not None else _template("concepts.txt")
        if "$intent" not in self.template or "$n" not in self.template:
            raise ValueError("the concepts template must use $intent and $n")

    def config(self) -> dict:
        return {"component": "mmopt.proposers.concepts.ConceptProposer", **self.base_config(), "weak": self.weak,
                "template": self.template}

    def concept_block(self, state: SearchState) -> tuple[str, str]:
        """The concept lines (pass rate on the best prompt's images) and the weakest ones' names."""
        best = state.best
        if best is None or not concepts(best):
            return "(not scored yet)", "none known yet"
        lines = [f"- {c.label}: {c.rate:.0%} of images" for c in concepts(best)]
        weak = [c.label for c in weakest(best, self.weak)]
        return "\n".join(lines), (", ".join(weak) if weak else "none: every part was shown; keep them all")

    def build_messages(self, state: SearchState, n: int) -> list[dict]:
        intent = self.intent_text(state)
        block, weak = self.concept_block(state)
        history = history_lines(state.history, state.pending) or [f"{intent} | not scored yet"]
        text = self.fill(self.template, intent=intent, concepts=block, weakest=weak, history="\n".join(history), n=n,
                         style=STYLE_TEXT.get(state.prompt_style, state.prompt_style),
                         max_tokens=state.max_prompt_tokens, protected_block=protected_block(self.protected(state)))
        return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": text}]

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        """Up to ``n`` new prompts aimed at the weakest concepts."""
        self.check(state, n)
        stats = self.new_stats()
        return self.ask_list(self.build_messages(state, n), state, stats, n)


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kw: Any) -> ConceptProposer:
    """Registry factory: ``"concepts"`` (the run's LLM, else the embedded SmolLM2) or ``"concepts:<llm>"``."""
    return ConceptProposer(resolve_llm(rest, context, llm, "concepts"), **kw)

