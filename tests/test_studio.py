"""The studio without a browser: its logic (runs, stop/continue, picks, edits, exports), the
Gradio API through gradio_client (the README's example), REST, file serving and input checks.

The 8-session concurrency check is slow (`pytest -m slow tests/test_studio.py`); the
measured wall times are benchmarks/studio_sessions.py.
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from mmopt.apps.studio import (RunOptions, Session, Studio, check_image_upload, check_no_paths,  # noqa: E402
                               check_preset_upload)

PROMPT = "a red circle to the left of a blue square"
SMALL = dict(iterations=2, candidates=2, seeds=1, proposer="rules")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(tmp_path_factory.mktemp("studio"))


@pytest.fixture(scope="module")
def server(studio):
    import uvicorn

    from mmopt.apps.app import build_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_server(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "the studio server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


def optimize_with_client(url: str, prompt: str, **kw) -> dict:
    """The README's gradio_client example."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    o = {**SMALL, **kw}
    return client.predict(prompt, "offline", o["iterations"], o["candidates"], o["seeds"], o["proposer"],
                          api_name="/optimize")


def test_gradio_client_example(server, studio):
    r = optimize_with_client(server, PROMPT)
    assert r["intent"] == PROMPT and r["best_prompt"] and r["trials"] == len(studio.store.load_trials(r["run_id"])) >= 2
    run_dir = f"runs/{r['run_id']}/"
    assert r["images"] and all(p.startswith(run_dir) for p in r["images"])
    assert studio.store.get_run(r["run_id"])["status"] == "finished"


def test_sessions_see_only_their_own_runs(server, studio):
    prompts = ["two green triangles", "a blue square above a red circle"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: optimize_with_client(server, p, iterations=1), prompts))
    for p, r in zip(prompts, results):
        assert r["intent"] == p
        assert all(x.startswith(f"runs/{r['run_id']}/") for x in r["images"])
        assert [row["run_id"] for row in studio.runs_of(r["workspace"])] == [r["run_id"]]
    assert results[0]["workspace"] != results[1]["workspace"]
    with pytest.raises(ValueError, match="not in this workspace"):
        studio.check_access(Session(token=results[0]["workspace"]), results[1]["run_id"])


def test_only_run_folders_are_served(server, studio):
    import httpx

    r = optimize_with_client(server, "three yellow circles", iterations=1)
    ok = httpx.get(f"{server}gradio_api/file={studio.out}/{r['images'][0]}")
    assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"
    for bad in ("/etc/passwd", f"{studio.out}/mmopt.sqlite", f"{studio.out}/cache.sqlite",
                f"{studio.out}/runs/../mmopt.sqlite", f"{studio.out}/runs/%2e%2e/mmopt.sqlite"):
        assert httpx.get(f"{server}gradio_api/file={bad}").status_code in (403, 404), bad


def test_rest_endpoint(server):
    import httpx

    r = httpx.post(f"{server}api/v1/optimize", json={"prompt": "a red circle", "iterations": 1, "seeds": 1},
                   timeout=300)
    assert r.status_code == 200 and r.json()["best_prompt"] == "a red circle"
    assert httpx.get(f"{server}api/v1/runs/{r.json()['run_id']}").json()["status"] == "finished"
    bad = httpx.post(f"{server}api/v1/optimize", json={"prompt": "x", "iterations": 0})
    assert bad.status_code == 422 and "iterations must be a whole number from 1 to 50, got 0" in bad.text
    assert httpx.get(f"{server}api/v1/runs/..%2Fetc").status_code == 404


def test_stop_then_continue_resumes_the_same_run(studio, tmp_path):
    uninterrupted = list(Studio(tmp_path).run(Session(), RunOptions(PROMPT, iterations=3, candidates=2, seeds=1,
                                                                   proposer="rules")))[-1]["result"]
    s = Session()
    opts = RunOptions(PROMPT, iterations=3, candidates=2, seeds=1, proposer="rules")
    events = []
    for ev in studio.run(s, opts):
        events.append(ev["event"])
        if ev["event"] == "trial":
            studio.stop(s)
    assert events[-1] == "stopped"
    run_id = s.current
    assert studio.store.get_run(run_id)["status"] == "interrupted"
    before = len(studio.store.load_trials(run_id))
    last = list(studio.run(s, RunOptions(PROMPT, iterations=3, candidates=2, seeds=1, proposer="rules")))[-1]
    assert last["event"] == "done" and last["run_id"] == run_id  # the same run, resumed
    # the resumed run ends with the trials an uninterrupted one has
    assert [t.prompt for t in last["result"].trials] == [t.prompt for t in uninterrupted.trials] and before >= 1


def test_picks_edits_pins_and_terms_enter_the_search(studio):
    s = Session()
    list(studio.run(s, RunOptions(PROMPT, **SMALL)))
    trials = studio.store.load_trials(s.current)
    studio.add_pick(s, trials[0].prompt, trials[1].prompt)  # the original preferred over candidate 1
    assert (studio.store.run_dir(s.current) / "human_picks.jsonl").read_text().count("\n") == 1
    studio.add_candidate(s, f"{PROMPT}, flat colors")
    studio.pin(s, f"{PROMPT}, pinned")
    opts = RunOptions(PROMPT, **{**SMALL, "candidates": 4}, human_weight=0.5, must_exclude=("watercolor",))
    last = list(studio.run(s, opts, carry_over=True))[-1]
    result = last["result"]
    texts = [t.prompt for t in result.trials]
    assert f"{PROMPT}, flat colors" in texts and f"{PROMPT}, pinned" in texts
    human = {t.prompt: t.scores["human"] for t in result.trials}
    assert human[trials[0].prompt] > 0.5 > human[trials[1].prompt]
    for t in result.trials:  # the must-exclude term is a hard constraint
        assert t.scores["terms"] == (0.0 if "watercolor" in t.prompt else 1.0)
        assert not (t.feasible and "watercolor" in t.prompt)


def test_rewrite_only_renders_nothing(studio):
    n_before = len(studio.store.list_runs())
    out = studio.rewrite_only(RunOptions(PROMPT, proposer="rules"), 3)
    assert len(out) == 3 and all(PROMPT.split(",")[0] in x for x in out)
    assert len(studio.store.list_runs()) == n_before


def test_exports_carry_prompt_and_scores(studio):
    import json

    from PIL import Image

    s = Session()
    list(studio.run(s, RunOptions(PROMPT, **SMALL)))
    files = studio.export(s.current)
    best = Path(files[0]).read_text().strip()
    with Image.open(files[1]) as im:
        assert im.text["prompt"] == best and "offline:dsg" in im.text["scores"]
    doc = json.loads(Path(files[-1]).read_text())
    assert doc["best"]["prompt"] == best and len(doc["trials"]) == len(studio.store.load_trials(s.current))
    # the score curve marks the exported winner at its fresh-seed score, not its search-seed one
    from mmopt.apps.studio import winner_point

    summary = studio.store.get_run(s.current)["summary"]
    row = next(r for r in summary["selection"] if r["winner"])
    winner = next(t for t in studio.store.load_trials(s.current) if t.prompt == best)
    assert winner_point(studio.store.load_trials(s.current), summary) == (winner.iteration, row["fresh"])
    assert Path(studio.trajectory_image(s.current)).is_file()


def test_uploads_are_checked_by_content_and_size(tmp_path):
    from PIL import Image

    fake = tmp_path / "evil.png"
    fake.write_text("<?php system($_GET['c']); ?>")
    with pytest.raises(ValueError, match="not an image"):
        check_image_upload(fake)
    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 64).convert("RGB").save(big)
    with pytest.raises(ValueError, match="at most"):
        check_image_upload(big, max_bytes=100)
    gif = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="GIF image; accepted: PNG, JPEG, WEBP"):
        check_image_upload(gif)
    assert check_image_upload(big).size == (64, 64)
    preset = tmp_path / "p.json"
    preset.write_text('{"generator": "diffusers:/etc", "scorers": ["offline:clip"]}')
    with pytest.raises(ValueError, match="may not name files on the server"):
        check_preset_upload(preset)
    preset.write_text('{"seeds": 2, "nonsense": 1}')
    with pytest.raises(ValueError, match="unknown keys"):
        check_preset_upload(preset)


def test_typed_values_never_name_server_paths():
    check_no_paths({"generator": "diffusers:stabilityai/sd-turbo", "scorers": ["clip:ViT-B-32/openai"]})
    for bad in ("diffusers:/etc/x", "clip:~/models", "../../x", {"kwargs": {"questions": "/data/a.csv"}},
                "dsg:./local", "openai:m@http://10.0.0.1:8000/v1"):
        with pytest.raises(ValueError):
            check_no_paths(bad)


def test_prompts_are_escaped_in_html():
    from mmopt.apps.app import candidates_html, runs_html
    from mmopt.apps.report import word_diff_html
    from mmopt.types import Trial

    evil = "<script>alert(1)</script> a cube"
    page = candidates_html([Trial(0, 0, evil, 0.5, {"offline:dsg": 0.5})])
    page += runs_html([{"run_id": "r", "status": "finished", "trials": 1, "summary": None, "intent": evil}])
    page += word_diff_html("a cube", evil)
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.slow
def test_eight_concurrent_sessions_without_cross_talk(server, studio):
    """8 gradio_client sessions at once (run with `pytest -m slow tests/test_studio.py`)."""
    prompts = [f"{n} {c} circles" for n, c in zip(["two", "three", "four", "two", "three", "four", "two", "three"],
                                                     ["red", "blue", "green", "yellow", "green", "red", "blue",
                                                      "yellow"])]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: optimize_with_client(server, p), prompts))
    assert len({r["workspace"] for r in results}) == 8
    for p, r in zip(prompts, results):
        assert r["intent"] == p and all(x.startswith(f"runs/{r['run_id']}/") for x in r["images"])
        assert [row["run_id"] for row in studio.runs_of(r["workspace"])] == [r["run_id"]]
