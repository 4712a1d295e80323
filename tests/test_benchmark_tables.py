"""The sample-efficiency benchmark's summary: means, paired differences, wins/ties/losses.

Runs on hand-made records (the benchmark itself takes hours); the run is
``python benchmarks/sample_efficiency.py --quick --out DIR``.
"""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sample_efficiency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rec(prompt, method, held):
    return {"prompt": prompt, "method": method,
            "rows": [{"budget": b, "heldout": h, "search": 0.9, "best_image": 1.0} for b, h in zip((8, 16), held)]}


def test_paired_difference_uses_only_prompts_both_methods_ran(bench):
    records = [_rec("p1", "best-of-N", (0.5, 0.5)), _rec("p2", "best-of-N", (0.8, 0.8)),
               _rec("p3", "best-of-N", (0.2, 0.2)),
               _rec("p1", "rules/topk", (0.75, 0.5)), _rec("p2", "rules/topk", (0.7, 0.6)),
               _rec("p9", "rules/topk", (1.0, 1.0))]  # p9 has no baseline: left out of the pairing
    table, curves = bench.summarise(records, [8, 16], ["best-of-N", "rules/topk"])
    assert curves["best-of-N"][0][0] == pytest.approx(0.5)
    assert curves["rules/topk"][1][0] == pytest.approx((0.5 + 0.6 + 1.0) / 3)
    paired = next(line for line in table.splitlines() if line.startswith("| rules/topk") and "/" in line.split("|")[-3])
    # differences at 8: +0.25, -0.10 -> mean +0.075; at 16: 0.0, -0.2 -> mean -0.100; 0 wins, 1 tie, 1 loss
    assert "+0.075" in paired and "-0.100" in paired
    assert "0 / 1 / 1" in paired and paired.rstrip(" |").endswith("2")
    # optimism: search 0.9 minus held-out, averaged over all three rules/topk prompts
    optimism = table.split("Optimism")[1]
    assert f"{0.9 - (0.75 + 0.7 + 1.0) / 3:+.3f}" in optimism and f"{0.9 - 0.7:+.3f}" in optimism


def test_methods_are_validated(bench):
    with pytest.raises(ValueError, match="unknown methods"):
        bench._parse_args(["--methods", "best-of-N,magic/topk"])
    with pytest.raises(ValueError, match="budget must be >="):
        bench._parse_args(["--budgets", "2", "--seeds", "4"])


def test_rescore_keeps_the_recorded_choices_and_scores_them_on_the_new_heldout_seeds(bench):
    """``--rescore``: the recorded search stands, only its held-out scores are taken again (real
    ShapesWorld generator and DSG), and a repeated search that chose otherwise stops the run."""
    from argparse import Namespace

    from mmopt import registry
    from mmopt.cache import Cache

    intent, better = "a red circle to the left of a blue square", "a red circle left of a blue square"
    components = {"generator": registry.create("generator", "offline:t2i"),
                  "dsg": registry.create("scorer", "offline:dsg"), "cache": Cache(":memory:")}
    old = {"prompt": intent, "method": "edits/halving", "seconds": 9.0,
           "rows": [{"budget": 8, "best_prompt": intent, "heldout": -1.0, "original_heldout": -1.0, "search": 0.5},
                    {"budget": 16, "best_prompt": better, "heldout": -1.0, "original_heldout": -1.0, "search": 0.7}]}
    args = Namespace(heldout=2, seeds=2)
    new = bench.rescore_record(old, args, components)
    held = bench.heldout_judge(intent, args, components)
    assert [r["best_prompt"] for r in new["rows"]] == [intent, better] and new["seconds"] == 9.0
    assert new["rows"][0]["heldout"] == new["rows"][0]["original_heldout"] == new["rows"][1]["original_heldout"]
    assert new["rows"][1]["heldout"] == pytest.approx(held(better)) and new["rows"][1]["search"] == 0.7
    assert 0.0 <= new["rows"][0]["heldout"] <= 1.0
    with pytest.raises(SystemExit, match="do not reproduce"):
        bench._check_same_choices(new, {**old, "rows": [old["rows"][0], {**old["rows"][1], "best_prompt": intent}]})
