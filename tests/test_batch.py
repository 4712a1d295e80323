"""`mmopt batch` on the offline preset: accounting, resume after kill -9, the lock, sharding.

Small inputs (a handful of prompts, one iteration, one seed) keep these fast; the full
PartiPrompts runs are ``benchmarks/batch_resume.py`` (results in benchmarks/results/).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmopt.apps.batch import (BatchBusyError, comparable, flock, read_records, repair_tail, run_batch)

PROMPTS = ["a red circle to the left of a blue square", "bond", "two green triangles", "a photo of a cat",
           "a blue square above a red circle", "three yellow circles"]
FAST = {"iterations": 1, "seeds": 1}


@pytest.fixture(scope="module")
def parti_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch-input")
    rows = ["Prompt\tCategory\tChallenge\tNote"]
    for i, p in enumerate(PROMPTS):
        rows.append(f"{p}\t{'Shapes' if i % 2 == 0 else 'Other'}\tBasic\t")
    rows.insert(3, "broken")  # a bad row (line 4)
    f = d / "prompts.tsv"
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def uninterrupted(parti_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch-a")
    result = run_batch(parti_file, out=out, overrides=FAST, drop_heldout=True, progress=False, threads=1)
    return out, result


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "mmopt.cli", "batch", *map(str, args)], env=env, **kw)


def test_every_row_is_accounted_for(uninterrupted):
    out, result = uninterrupted
    s = result.summary
    assert (s["rows_read"], s["bad_rows"], s["selected"], s["done"], s["failed"], s["not_finished"]) == (7, 1, 6, 6, 0, 0)
    assert s["bad_row_list"] == [{"line": 4, "reason": "expected 4 tab-separated columns, got 1"}]
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["prompt"] for r in recs] == PROMPTS  # input order, one line per prompt
    assert set(s["per_category"]) == {"Shapes", "Other"}
    for r in recs:
        assert (out / "prompts" / f"{r['key']}.txt").read_text().strip() == r["best_prompt"]
        png = out / r["image_files"][0]
        from PIL import Image

        with Image.open(png) as im:  # prompt and scores travel in the PNG's metadata
            assert im.text["prompt"] == r["best_prompt"] and "offline:dsg" in im.text["scores"]
    assert (out / "results.csv").read_text().count("\n") == 7 and "mean gain" in (out / "summary.txt").read_text()


def test_rerun_skips_finished_and_a_different_config_is_refused(parti_file, uninterrupted):
    out, first = uninterrupted
    again = run_batch(parti_file, out=out, overrides=FAST, drop_heldout=True, progress=False, threads=1)
    assert (again.ran, again.skipped) == (0, 6)
    assert comparable(again.results) == comparable(first.results)
    with pytest.raises(ValueError, match="different configuration"):
        run_batch(parti_file, out=out, overrides={"iterations": 2, "seeds": 1}, drop_heldout=True, progress=False)


def test_a_second_batch_on_the_same_folder_is_refused(parti_file, tmp_path):
    with flock(tmp_path / ".batch.lock", wait=False):
        with pytest.raises(BatchBusyError, match="another mmopt batch .* is writing"):
            run_batch(parti_file, out=tmp_path, overrides=FAST, progress=False)
        p = _cli([parti_file, "--out", tmp_path, "--iterations", "1", "--seeds", "1"], stdout=subprocess.PIPE,
                 text=True)
        out, _ = p.communicate(timeout=120)
    assert p.returncode == 1 and f"another mmopt batch (pid {os.getpid()}) is writing {tmp_path}" in out


def test_torn_last_line_is_cut_and_ignored(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    f = parts / "rank-0.jsonl"
    f.write_text('{"key": "a", "status": "done"}\n{"key": "b", "sta', encoding="utf-8")
    assert set(read_records(parts)) == {"a"}
    assert repair_tail(f) > 0 and f.read_text().endswith("\n") and set(read_records(parts)) == {"a"}


def test_killed_twice_with_sigkill_resumes_to_the_same_results(parti_file, uninterrupted, tmp_path):
    out_a, first = uninterrupted
    args = [parti_file, "--out", tmp_path, "--iterations", "1", "--seeds", "1", "--heldout-seeds", "0",
            "--threads", "1", "--no-progress"]
    part = tmp_path / "parts" / "rank-0.jsonl"
    for target in (1, 3):  # kill -9 once the batch has finished `target` prompts
        p = _cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            if part.is_file() and part.read_text().count("\n") >= target:
                break
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    done_before = part.read_text().count("\n")
    assert 1 <= done_before < len(PROMPTS)
    rc = _cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(timeout=300)
    assert rc == 0
    resumed = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert comparable(resumed) == comparable(first.results)


def test_geneval_questions_are_asked(tmp_path):
    f = tmp_path / "meta.jsonl"
    f.write_text(json.dumps({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
                             "prompt": "a photo of a red circle"}) + "\n", encoding="utf-8")
    r = run_batch(f, out=tmp_path / "out", overrides=FAST, drop_heldout=True, progress=False, threads=1)
    rec = r.results[0]
    assert rec["questions"] == 2 and r.summary["per_category"]["colors"]["n"] == 1
    from mmopt.store import Store

    trial = Store(tmp_path / "out" / "store").load_trials(rec["run_id"])[0]
    asked = [q["question"] for q in trial.details["offline:dsg"][0]["questions"]]
    assert asked == ["Is there a circle?", "Is the circle red?"]


def test_cli_bad_filter_is_one_line(parti_file, tmp_path):
    p = _cli([parti_file, "--out", tmp_path / "x", "--category", "Nope"], stdout=subprocess.PIPE,
             stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines() == ["mmopt: error: unknown category ['Nope']; valid category values in this "
                                        "file: Other, Shapes"]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_processes_merge_to_the_same_result(parti_file, uninterrupted, tmp_path):
    """2 processes on CPU with torchrun (run with `pytest -m slow tests/test_batch.py`)."""
    out_a, first = uninterrupted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmopt.cli",
                          "batch", str(parti_file), "--out", str(tmp_path), "--iterations", "1", "--seeds", "1",
                          "--heldout-seeds", "0", "--no-progress"], env=env, stdout=subprocess.DEVNULL)
    assert rc == 0
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in recs} == {0, 1}
    assert comparable(recs) == comparable(first.results)
