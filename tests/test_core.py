"""Core pieces that need no model: objective, strategies, store, cache, registry, presets."""
import subprocess
import sys

import pytest

from mmopt import registry
from mmopt.cache import Cache, content_key
from mmopt.objective import Constraint, Objective, pareto_front
from mmopt.optimizer import Budget, derive_seed
from mmopt.presets import available_presets, load_preset
from mmopt.store import Store
from mmopt.strategies import BeamHistory, TopKHistory
from mmopt.types import Score, Trial


def test_import_mmopt_is_light():
    code = "import sys, mmopt, mmopt.optimizer, mmopt.cli; print(sorted(m for m in ('torch','diffusers','open_clip','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_objective_normalises_and_weights():
    obj = Objective({"clip": 1.0, "dsg": 3.0}, ranges={"clip": (0.0, 2.5), "dsg": (0.0, 1.0)})
    ev = obj.evaluate({"clip": [Score("clip", 2.5)], "dsg": [Score("dsg", 0.0), Score("dsg", 0.5)]})
    assert ev.means == {"clip": 2.5, "dsg": 0.25}
    assert ev.objective == pytest.approx((1.0 * 1.0 + 3.0 * 0.25) / 4.0)
    assert ev.feasible


def test_objective_constraints_min_and_max_drop():
    obj = Objective({"aes": 1.0, "clip": 0.0}, ranges={"aes": (0, 10), "clip": (0, 2.5)},
                    constraints=[Constraint("clip", max_drop=0.0), Constraint("aes", min=2.0)])
    ok = obj.evaluate({"aes": [Score("aes", 6)], "clip": [Score("clip", 1.0)]}, baseline={"clip": 1.0})
    assert ok.feasible
    # an aesthetic gain bought with an alignment loss is infeasible
    bad = obj.evaluate({"aes": [Score("aes", 9)], "clip": [Score("clip", 0.9)]}, baseline={"clip": 1.0})
    assert not bad.feasible and "fell below" in bad.violations[0]
    low = obj.evaluate({"aes": [Score("aes", 1)], "clip": [Score("clip", 1.2)]}, baseline={"clip": 1.0})
    assert not low.feasible and "min" in low.feedback


def test_objective_rejects_bad_config():
    with pytest.raises(ValueError, match="weight"):
        Objective({"clip": -1.0})
    with pytest.raises(ValueError, match="non-empty"):
        Objective({})
    with pytest.raises(ValueError, match="min= or max_drop="):
        Constraint("clip")
    obj = Objective({"clip": 1.0})
    with pytest.raises(ValueError, match="clip"):
        obj.evaluate({"other": [Score("other", 1.0)]})


def test_feedback_counts_repeated_remarks():
    obj = Objective({"dsg": 1.0})
    fb = obj.evaluate({"dsg": [Score("dsg", 0.5, {"feedback": ["Is the cat red?"]}),
                               Score("dsg", 0.5, {"feedback": ["Is the cat red?", "Is there a dog?"]})]}).feedback
    assert "Is the cat red? (2/2 seeds)" in fb and "Is there a dog?" in fb


def test_pareto_front():
    ts = [Trial(i, 0, f"p{i}", 0.0, {"a": a, "b": b}) for i, (a, b) in enumerate([(1, 0), (0, 1), (0.5, 0.5), (0.4, 0.4)])]
    assert [t.prompt for t in pareto_front(ts, ["a", "b"])] == ["p0", "p1", "p2"]


def test_strategies_rank_feasible_first():
    ts = [Trial(0, 0, "orig", 0.5, {}), Trial(1, 1, "good", 0.9, {}, feasible=False),
          Trial(2, 1, "ok", 0.6, {}), Trial(3, 2, "new", 0.55, {})]
    assert [t.prompt for t in TopKHistory(2).history(ts)] == ["new", "ok"]
    assert [t.prompt for t in BeamHistory(5).history(ts)] == ["good", "new", "ok"]  # infeasible last => shown first
    assert isinstance(registry.create("strategy", "topk:3", reuse=False), TopKHistory)
    with pytest.raises(ValueError):
        TopKHistory(0)


def test_budget_validation_and_seed_derivation():
    with pytest.raises(ValueError):
        Budget(iterations=0)
    with pytest.raises(ValueError):
        Budget(images=-4)
    assert derive_seed(0, "propose", 1) == derive_seed(0, "propose", 1) != derive_seed(0, "propose", 2)


def test_cache_roundtrip(tmp_path):
    c = Cache(tmp_path / "c.sqlite")
    k = content_key("generation", {"model": "x"}, "a cat", 0)
    assert c.get_json(k) is None
    c.put_json(k, {"v": 1})
    c.put_bytes(k + ":png", b"\x89PNG")
    c2 = Cache(tmp_path / "c.sqlite")  # persisted
    assert c2.get_json(k) == {"v": 1} and c2.get_bytes(k + ":png") == b"\x89PNG"


def test_store_trial_roundtrip_and_conflicts(tmp_path):
    from PIL import Image
    from mmopt.types import Generation

    s = Store(tmp_path)
    assert s.start_run("r", "a cat", {"seeds": [0, 1]}) == "new"
    assert s.start_run("r", "a cat", {"seeds": [0, 1]}) == "resume"
    with pytest.raises(ValueError, match="different intent"):
        s.start_run("r", "a dog", {"seeds": [0, 1]})
    gens = [Generation("a cat", seed, Image.new("RGB", (8, 8), (seed * 50, 0, 0)), {"model": "m"}) for seed in (0, 1)]
    t = Trial(0, 0, "a cat", 0.4, {"clip": 1.0}, feedback="fb", meta={"x": float("nan")})
    s.save_trial("r", t, gens, {"clip": [Score("clip", 0.9), Score("clip", 1.1)]})
    back = s.load_trials("r")[0]
    assert back.prompt == "a cat" and back.scores == {"clip": 1.0} and back.meta == {"x": None}
    g = s.load_generations("r", 0)
    assert [x["seed"] for x in g] == [0, 1] and g[1]["scores"] == {"clip": 1.1}
    assert (tmp_path / g[1]["paths"][0]).exists()
    s.set_status("r", "finished", {"gain": 0.1})
    assert s.start_run("r", "a cat", {"seeds": [0, 1]}) == "finished"
    assert s.list_runs()[0]["summary"] == {"gain": 0.1}


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown scorer"):
        registry.create("scorer", "nope:thing")
    with pytest.raises(ValueError, match="kind"):
        registry.create("widget", "x")
    with pytest.raises(ValueError, match="non-empty"):
        registry.create("scorer", "  ")


def test_presets_are_data():
    assert {"offline", "turbo"} <= set(available_presets())
    assert load_preset("turbo")["generator"] == "diffusers:stabilityai/sd-turbo"
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("no-such-preset")
