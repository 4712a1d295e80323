"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio).

Registry name: ``"llm:openai:<model>@<base URL>"``, for example
``"openai:gpt-4o-mini@https://api.openai.com/v1"`` or
``"openai:llama3@http://localhost:11434/v1"`` (Ollama). Without ``@URL`` the
base URL is ``$OPENAI_BASE_URL`` or ``https://api.openai.com/v1``.

The API key is read from the environment variable named by ``api_key_env``
(default ``OPENAI_API_KEY``) at each request; it is never stored in cache
keys, names or log messages. A missing key is fine for local servers that do
not check it. HTTP 429/5xx and timeouts raise ``TransientLLMError`` so that
``ChatLLM`` retries them with exponential backoff (honouring Retry-After).
``n`` completions are asked for in one request; when a server ignores ``n``
(Ollama, llama.cpp server) the rest are fetched one request each.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from mmopt.cache import Cache
from mmopt.errors import LLMError, LLMUnavailableError
from mmopt.llm.base import ChatLLM, TransientLLMError, sample_seed

__all__ = ["OpenAIBackend", "from_name", "load_openai"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBackend:
    """POSTs to ``{base_url}/chat/completions`` with the stdlib (no extra dependency).

    ``timeout`` is seconds per HTTP request; ``extra_body`` is merged into every
    request (e.g. ``{"top_p": 0.9}``), and is part of the cache identity.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, extra_body: dict | None = None):
        # 1. check inputs
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"a served model name is required, e.g. 'openai:gpt-4o-mini@https://api.openai.com/v1'; got {model!r}")
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base URL must be an http(s) URL such as 'http://localhost:11434/v1', got {base_url!r}")
        if parsed.username or parsed.password:
            raise ValueError("put credentials in the environment variable named by api_key_env, not in the URL")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise TypeError(f"extra_body must be a dict or None, got {type(extra_body).__name__}")
        self.served_model = model.strip()
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.extra_body = dict(extra_body or {})
        # The cache identity: model @ URL (+ extra body); the key is not part of it.
        extra = json.dumps(self.extra_body, sort_keys=True) if self.extra_body else ""
        self.model = f"{self.served_model}@{self.base_url}" + (f"#{extra}" if extra else "")
        self.requests_sent = 0

    def config(self) -> dict:
        return {"model": self.served_model, "base_url": self.base_url, "extra_body": self.extra_body}

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base_url + "/chat/completions", data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp is not None else ""
            where = f"{self.served_model}@{self.base_url}"
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                try:
                    wait = float(retry_after) if retry_after else None
                except ValueError:
                    wait = None
                raise TransientLLMError(f"HTTP {e.code} from {where}: {detail}", retry_after=wait) from e
            if e.code in (401, 403, 404):
                # a rejected key or an unknown model/endpoint: no request can succeed until the
                # user fixes it, so the run stops (resumable) instead of recording empty iterations
                hint = f" (check the key in ${self.api_key_env})" if e.code in (401, 403) else \
                    " (check the model name and base URL)"
                raise LLMUnavailableError(f"HTTP {e.code} from {where}{hint}: {detail}") from e
            raise LLMError(f"HTTP {e.code} from {where}: {detail}") from e
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            raise TransientLLMError(f"cannot reach {self.base_url}: {getattr(e, 'reason', e)}") from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise LLMError(f"{self.base_url} answered with non-JSON: {raw[:200]!r}") from e

    @staticmethod
    def _texts(reply: dict) -> list[str]:
        try:
            return [(c.get("message") or {}).get("content") or c.get("text") or "" for c in reply["choices"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise LLMError(f"unexpected chat completion shape: {str(reply)[:200]}") from e

    def forward(self, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                seed: int | None, stop: list[str] | None = None) -> list[str]:
        body = {"model": self.served_model, "messages": messages, "temperature": temperature,
                "max_tokens": max_tokens, **self.extra_body}
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API takes at most four
        if seed is not None:
            body["seed"] = seed
        if n > 1:
            body["n"] = n
        texts = self._texts(self._post(body))
        # Servers that ignore n return one choice: fetch the rest one by one,
        # each with its own derived seed so they differ.
        i = len(texts)
        while len(texts) < n:
            one = dict(body)
            one.pop("n", None)
            if seed is not None:
                one["seed"] = sample_seed(seed, i)
            got = self._texts(self._post(one))
            if not got:
                raise LLMError(f"{self.base_url} returned no choices")
            texts.extend(got[: n - len(texts)])
            i += 1
        return texts[:n]


def load_openai(model: str, base_url: str | None = None, *, cache: Cache | None = None,
                max_retries: int = 4, backoff: float = 0.5, **backend_kw) -> ChatLLM:
    """A ``ChatLLM`` over an OpenAI-compatible endpoint, retrying transient HTTP failures.

    >>> llm = load_openai("llama3", "http://localhost:11434/v1")  # doctest: +SKIP
    """
    return ChatLLM(OpenAIBackend(model, base_url, **backend_kw), cache=cache,
                   max_retries=max_retries, backoff=backoff)


def from_name(rest: str, **kw) -> ChatLLM:
    """Registry factory for ``"openai:<model>[@<base URL>]"``."""
    if not isinstance(rest, str) or not rest.strip():
        raise ValueError(f"openai needs a model name, e.g. 'openai:gpt-4o-mini@https://api.openai.com/v1'; got {rest!r}")
    model, sep, url = rest.strip().partition("@")
    return load_openai(model, url if sep else None, **kw)
