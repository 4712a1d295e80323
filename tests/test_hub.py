"""Fail-fast hub checks (mmopt.hub) against a local stand-in for the hub."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmopt.errors import ModelLoadError
from mmopt.hub import check_hub_repo, is_offline


class _Hub(BaseHTTPRequestHandler):
    """Answers every API call like the hub does for a repo that does not exist;
    repos named "slow/..." never answer in time."""

    def do_GET(self):  # noqa: N802 (http.server API)
        if "/slow/" in self.path:
            time.sleep(5)
        body = b'{"error": "Repository Not Found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at its import
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()
    server.server_close()


def test_offline_env_and_uncached_repo():
    assert is_offline()  # tests/conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        check_hub_repo("someone/not-cached", probe_file="model_index.json")


def test_unknown_repo_is_reported_as_not_found(fake_hub):
    with pytest.raises(ModelLoadError, match="'someone/no-such-model' was not found on the hub"):
        check_hub_repo("someone/no-such-model", what="diffusers pipeline", timeout=3)


def test_hub_that_does_not_answer_times_out(fake_hub):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="did not answer.*(Timeout|timed out)"):
        check_hub_repo("slow/model", timeout=1)
    assert time.perf_counter() - start < 4


def test_invalid_repo_id():
    with pytest.raises(ModelLoadError, match="not a valid hub id|neither"):
        check_hub_repo("a//b")
