"""Textual gradients (after ProTeGi and TextGrad): critique the worst images, then edit the prompt.

Each proposal takes the best prompt of the strategy's history and

1. collects what its *worst* images got wrong: the seeds with the lowest
   objective (``Trial.meta["per_seed"]``) and the questions that failed on
   them (the scorer's details), most frequent first;
2. asks the LLM for a critique: what in the prompt's wording causes each
   failure (the "gradient", ``assets/templates/textgrad_critique.txt``);
3. asks it to edit the prompt to answer each criticism (``textgrad_edit.txt``);
4. adds ``successors`` paraphrases of the first edit (ProTeGi's Monte Carlo
   successors, ``paraphrase.txt``), which explore around a promising step.

That is two LLM calls per proposal (three with successors). When the best
prompt's images failed nothing, there is nothing to critique and the
edit step is asked for paraphrases of it instead.

>>> TextGradProposer(create("llm", "smollm2")).propose(state, 4)   # doctest: +SKIP
"""
from __future__ import annotations

import importlib.resources
from collections import Counter
from typing import Any

from mmopt.llm.parsing import parse_prompts
from mmopt.proposers.rewriting import STYLE_TEXT, SYSTEM_MESSAGE, Rewriter, protected_block, resolve_llm
from mmopt.types import Candidate, SearchState, Trial

__all__ = ["TextGradProposer", "worst_failures", "from_name"]


def _template(name: str) -> str:
    return (importlib.resources.files("mmopt.assets") / "templates" / name).read_text("utf-8")


def worst_failures(trial: Trial, worst: int = 2, k: int = 4) -> list[tuple[str, int]]:
    """``(question, on how many of the worst images it failed)`` for ``trial``'s ``worst`` lowest
    seeds, at most ``k``, most frequent first.

    >>> t = Trial(1, 1, "p", 0.5, {}, meta={"per_seed": [1.0, 0.0]}, details={"dsg": [
    ...     {"questions": [{"question": "Is there a cat?", "score": 1.0}]},
    ...     {"questions": [{"question": "Is there a cat?", "score": 0.0}]}]})
    >>> worst_failures(t, worst=1)
    [('Is there a cat?', 1)]
    """
    per_seed = trial.meta.get("per_seed") or []
    seeds = sorted(range(len(per_seed)), key=lambda i: per_seed[i])[:worst] if per_seed else None
    counts: Counter = Counter()
    for rows in (trial.details or {}).values():
        for i, d in enumerate(rows or []):
            if seeds is not None and i not in seeds or not isinstance(d, dict):
                continue
            for q in d.get("questions") or []:
                if q.get("question") and float(q.get("score", 1.0)) < 1.0:
                    counts[q["question"]] += 1
    return counts.most_common(k)


class TextGradProposer(Rewriter):
    """Critique-then-edit rewrites of the best prompt, plus paraphrase successors.

    ``worst``: how many of the lowest-scoring images to critique; ``critiques``: at most
    this many reasons asked for; ``successors``: paraphrases of the first edit added.
    """

    name = "textgrad"

    def __init__(self, llm: Any, *, temperature: float = 0.7, worst: int = 2, critiques: int = 3,
                 successors: int = 1, **kwargs: Any):
        super().__init__(llm, temperature=temperature, **kwargs)
        for key, value, low in (("worst", worst, 1), ("critiques", critiques, 1), ("successors", successors, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        self.worst, self.critiques, self.successors = worst, critiques, successors
        self.templates = {k: _template(f"{k}.txt") for k in ("textgrad_critique", "textgrad_edit", "paraphrase")}

    def config(self) -> dict:
        return {"component": "mmopt.proposers.textgrad.TextGradProposer", **self.base_config(), "worst": self.worst,
                "critiques": self.critiques, "successors": self.successors, "templates": self.templates}

    def _user(self, text: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": text}]

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        """Up to ``n`` edits of the best prompt that answer the critique of its worst images."""
        # 1. the prompt to improve and what its worst images got wrong
        self.check(state, n)
        stats = self.new_stats()
        intent = self.intent_text(state)
        best = state.best
        prompt = best.prompt if best is not None and best.feasible else intent
        failures = worst_failures(best, self.worst) if best is not None else []
        common = dict(intent=intent, prompt=prompt, style=STYLE_TEXT.get(state.prompt_style, state.prompt_style),
                      max_tokens=state.max_prompt_tokens, protected_block=protected_block(self.protected(state)))
        # 2. the critique (the textual gradient)
        critique = "- (nothing failed: write clearer variants of the prompt)"
        if failures:
            lines = "\n".join(f"- {q} (failed on {c} of the {self.worst} worst images)" for q, c in failures)
            text = self.fill(self.templates["textgrad_critique"], failures=lines, k=self.critiques, **common)
            reply = self.complete(self._user(text), state, stats, max_tokens=24 * self.critiques + 16)
            reasons = [r for r in parse_prompts(reply or "", max_items=self.critiques)] if reply else []
            critique = "\n".join(f"- {r}" for r in reasons) if reasons else lines
            stats["critique"] = critique
        # 3. the edit step: prompts that answer each criticism
        n_edit = max(1, n - self.successors)
        text = self.fill(self.templates["textgrad_edit"], critique=critique, n=n_edit, **common)
        accepted = self.ask_list(self._user(text), state, stats, n_edit)
        # 4. successors: paraphrases of the first edit
        if self.successors and accepted and len(accepted) < n:
            want = n - len(accepted)
            text = self.fill(self.templates["paraphrase"], prompt=accepted[0].text, n=want)
            reply = self.complete(self._user(text), state, stats, max_tokens=want * self.item_tokens(state) + 16,
                                  stop=[f"\n{want + 1}.", f"\n{want + 1})"])
            if reply:
                self.accept(parse_prompts(reply, max_items=4 * want), state, stats, n, accepted)
        return accepted[:n]


def from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kw: Any) -> TextGradProposer:
    """Registry factory: ``"textgrad"`` (the run's LLM, else the embedded SmolLM2) or ``"textgrad:<llm>"``."""
    return TextGradProposer(resolve_llm(rest, context, llm, "textgrad"), **kw)
