"""`mmopt report` pages (run and batch) and the loop's StopRequested (a callback stops a run)."""
from __future__ import annotations

import json
import re

import pytest

from mmopt.errors import StopRequested
from mmopt.optimizer import Budget, Optimizer
from mmopt.proposers.fixed import FixedProposer
from mmopt.store import Store

EVIL = "<b>a red circle</b> & a blue square"


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-run")
    opt = Optimizer("offline:t2i", ["offline:dsg", "offline:clip"],
                    FixedProposer([["a red circle to the left of a blue square", EVIL]]),
                    budget=Budget(iterations=2), seeds=2, store=out)
    return out, opt.run("a red circle to the left of a blue square")


def test_a_callback_raising_stop_leaves_an_interrupted_run_that_resumes(tmp_path):
    def stop_after_first_trial(event, **info):
        if event == "trial" and info["trial"].index == 0:
            raise StopRequested("enough")

    kw = dict(budget=Budget(iterations=2), seeds=1, store=tmp_path)
    proposer = FixedProposer([["two red circles"]])
    opt = Optimizer("offline:t2i", ["offline:dsg"], proposer, callbacks=[stop_after_first_trial], **kw)
    with pytest.raises(StopRequested):
        opt.run("a red circle")
    store = Store(tmp_path)
    (row,) = store.list_runs()
    assert row["status"] == "interrupted" and row["trials"] == 1
    result = Optimizer("offline:t2i", ["offline:dsg"], proposer, **kw).run("a red circle")
    assert result.run_id == row["run_id"] and len(result.trials) == 2


def test_run_report_has_side_by_side_plot_diff_and_failed_questions(stored_run):
    from mmopt.cli import main

    out, result = stored_run
    assert main(["report", result.run_id, "--out", str(out)]) == 0
    page = (out / "runs" / result.run_id / "report.html").read_text()
    assert "Original and best on the same seeds" in page
    # the trajectory is inline SVG (no plotting library): a dot per trial, the best-so-far line never falls
    svg = page[page.index("<svg class='plot'"):page.index("</svg>")]
    assert svg.count("<circle") == len(result.trials)
    points = re.search(r"<polyline points='([^']+)'", svg).group(1).split()
    assert len(points) == len({t.iteration for t in result.trials})
    heights = [float(p.split(",")[1]) for p in points]
    assert heights == sorted(heights, reverse=True)  # SVG y grows downwards: a rising score has falling y
    assert "Failed questions per candidate" in page and "Best prompt against the original" in page
    assert "<b>a red circle</b>" not in page and "&lt;b&gt;a red circle&lt;/b&gt; &amp; a blue square" in page


def test_batch_report_tables_plots_and_escaping(tmp_path):
    from mmopt.apps.batch import run_batch
    from mmopt.cli import main

    f = tmp_path / "p.txt"
    f.write_text(f"{EVIL}\ntwo green triangles\n", encoding="utf-8")
    run_batch(f, out=tmp_path / "b", overrides={"iterations": 1, "seeds": 1}, drop_heldout=True, progress=False)
    assert main(["report", str(tmp_path / "b")]) == 0
    page = (tmp_path / "b" / "report.html").read_text()
    assert "Per category" in page and "Gain distribution" in page and "Worst" in page and "Best" in page
    assert "<b>a red circle" not in page and "&lt;b&gt;a red circle" in page
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["done"] == 2


def test_report_of_nothing_is_one_line(tmp_path, capsys):
    from mmopt.cli import main

    assert main(["report", "nope", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("mmopt: error: 'nope' is neither a batch folder")
