"""Distilling the loop: export (intent -> best prompt) pairs from a store, LoRA-tune the embedded
SmolLM2 into a one-pass rewriter, and use it as a proposer.

The pairs come from real runs on the shipped ShapesWorld generator (a known-better paraphrase
offered by a FixedProposer, confirmed on fresh seeds). The LoRA test trains the real 135M
model for a few steps on the CPU (about a minute): it is marked slow,
``python -m pytest -m slow tests/test_distill.py``.
"""
from __future__ import annotations

import json

import pytest

from mmopt import registry
from mmopt.cli import main
from mmopt.distill import ONEPASS_TEMPLATE, export_pairs, read_pairs, training_prompts
from mmopt.objective import Constraint, Objective
from mmopt.optimizer import Budget, Optimizer
from mmopt.proposers.fixed import FixedProposer
from mmopt.store import Store
from mmopt.strategies import TopKHistory

from test_search import BETTER, SHAPES_INTENT, WORSE


@pytest.fixture(scope="module")
def store_with_runs(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pairs-store")
    gen = registry.create("generator", "offline:t2i", max_batch=64)
    dsg, intent = registry.create("scorer", "offline:dsg"), registry.create("scorer", "intent:shapes")
    objective = Objective({dsg.name: 1.0, intent.name: 0.0}, ranges={dsg.name: (0, 1), intent.name: (0, 1)},
                          constraints=[Constraint(intent.name, min=1.0)])

    def run(schedule):
        return Optimizer(gen, [dsg, intent], FixedProposer(schedule), objective=objective,
                         strategy=TopKHistory(10, confirm=1, confirm_seeds=4), seeds=4, candidates=2,
                         budget=Budget(iterations=2), prescreen=True, store=root).run(SHAPES_INTENT)

    won = run([[WORSE, BETTER]])
    lost = run([["What is a violet triangle?"]])  # screened out: nothing to win with
    return root, won, lost


def test_export_writes_the_runs_whose_winner_beat_the_original(store_with_runs, tmp_path):
    root, won, lost = store_with_runs
    assert won.best.prompt == BETTER and lost.best.index == 0
    info = export_pairs(Store(root, readonly=True), tmp_path / "pairs.jsonl")
    assert info == {"runs": 2, "written": 1, "skipped": 1}
    [row] = read_pairs(tmp_path / "pairs.jsonl")
    assert row["intent"] == SHAPES_INTENT and row["chosen"] == BETTER and row["rejected"] == SHAPES_INTENT
    assert row["gain"] == pytest.approx(won.estimate - won.original.objective) and row["run_id"] == won.run_id
    # the CLI command does the same; a bad pairs file is one clear error
    assert main(["export-pairs", str(tmp_path / "cli.jsonl"), "--out", str(root), "--no-progress"]) == 0
    assert read_pairs(tmp_path / "cli.jsonl") == [row]
    (tmp_path / "bad.jsonl").write_text('{"intent": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: a pair needs 'intent' and 'chosen'"):
        read_pairs(tmp_path / "bad.jsonl")
    assert main(["distill", str(tmp_path / "bad.jsonl"), str(tmp_path / "adapter")]) == 2


def test_training_prompts_never_paraphrase_a_benchmark_prompt():
    from mmopt.shapesworld.parse import is_held_out

    prompts = training_prompts(30)
    assert len(set(prompts)) == 30 and not any(is_held_out(p) for p in prompts)
    assert training_prompts(30) == prompts


@pytest.mark.slow
def test_lora_distillation_trains_a_one_pass_rewriter(tmp_path):
    from mmopt.distill import OnePassProposer, adapted_llm, train_lora

    pairs = [{"intent": "a red circle left of a blue square",
              "chosen": "a red circle, a blue square and the red circle to the left of the blue square"},
             {"intent": "two green triangles above a yellow disc",
              "chosen": "two green triangles, a yellow circle and the green triangles above the yellow circle"}]
    report = train_lora(pairs, tmp_path / "adapter", steps=12, batch=2, lr=3e-3, seed=0)
    assert report["loss_last"] < report["loss_first"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter" / "mmopt_distill.json").read_text())["examples"] == 2
    rewriter = OnePassProposer(adapted_llm(str(tmp_path / "adapter")))
    [out] = rewriter.rewrite("a red circle left of a blue square")
    assert out.startswith("a red circle, a blue square")  # it learned the pairs' form
    assert "onepass" in registry.BUILTINS["proposer"] and ONEPASS_TEMPLATE.format(intent="x").endswith("x")
