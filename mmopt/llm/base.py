"""Layered LLM clients: backend ``forward`` -> retries -> request cache.

A *backend* knows one way to run a chat model (llama.cpp, transformers, an
HTTP endpoint) and implements only ``forward``. ``ChatLLM`` wraps any backend
and adds what every backend needs the same way:

1. argument checks with clear errors,
2. a request cache keyed by sha256 of the request content (backend name,
   model, messages, n, temperature, max_tokens, seed; never API keys),
3. retries with exponential backoff on transient failures (HTTP 429/5xx,
   timeouts), raised by backends as ``TransientLLMError``; when they run
   out, ``LLMUnavailableError`` (the LLM is down: the run stops as
   interrupted and resumes later, see ``mmopt.errors``),
4. counters: ``requests`` (every ``chat`` call) and ``calls`` (requests that
   reached the backend, retries included), which the optimizer's LLM-call
   budget reads.

>>> class Echo:
...     name, model = "echo", "v1"
...     def forward(self, messages, *, n, temperature, max_tokens, seed):
...         return [messages[-1]["content"]] * n
>>> llm = ChatLLM(Echo())
>>> llm.chat([{"role": "user", "content": "hi"}], n=2, seed=0)
['hi', 'hi']
>>> llm.chat([{"role": "user", "content": "hi"}], n=2, seed=0); (llm.requests, llm.calls)
['hi', 'hi']
(2, 1)
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from typing import Any, Callable, Protocol, runtime_checkable

from mmopt.cache import Cache, content_key
from mmopt.errors import LLMError, LLMUnavailableError

__all__ = ["Backend", "ChatLLM", "TransientLLMError", "chat", "check_messages", "sample_seed"]

log = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant")


class TransientLLMError(LLMError):
    """A failure worth retrying (HTTP 429/5xx, timeout, dropped connection).

    ``retry_after`` is the delay in seconds the server asked for, if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def sample_seed(seed: int | None, index: int) -> int:
    """The seed of the ``index``-th completion of a request with ``seed``.

    Each completion gets its own seed so that completion ``i`` does not depend
    on how many were asked for. ``seed=None`` draws a fresh one.

    >>> sample_seed(7, 0) == sample_seed(7, 0) != sample_seed(7, 1)
    True
    """
    if seed is None:
        return random.SystemRandom().randrange(2**31)
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def chat(llm: Any, messages: list[dict], *, stop: list[str] | None = None, stop_rule: Any = None,
         **kwargs: Any) -> list[str]:
    """``llm.chat(messages, **kwargs)``, with ``stop`` and ``stop_rule`` passed only to LLMs whose ``chat`` takes them.

    Both only save decoding time (callers parse replies anyway), so an LLM
    written to the older protocol without them still works.
    """
    for name, value in (("stop", stop), ("stop_rule", stop_rule)):
        if value and _takes(llm.chat, name):
            kwargs[name] = value
    return llm.chat(messages, **kwargs)


def _takes(function: Callable, name: str) -> bool:
    """Whether ``function`` has a parameter called ``name``, or takes any keyword (``**kwargs``:
    a wrapper that hands everything on)."""
    import inspect

    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@runtime_checkable
class Backend(Protocol):
    """One way to run a chat model. ``forward`` returns exactly ``n`` completions.

    ``name`` is the backend kind ("llamacpp", "transformers", "openai"),
    ``model`` identifies the weights (path + fingerprint, hub id + revision,
    served model name @ URL); both go into cache keys and ``config()``, so
    they must not contain secrets.
    """

    name: str
    model: str

    def forward(self, messages: list[dict], *, n: int, temperature: float,
                max_tokens: int, seed: int | None, stop: list[str] | None = None) -> list[str]: ...

    # Optional: a ``stop_rule`` parameter of ``forward`` (see ``ChatLLM.chat``).
    # Optional: ``last_usage``, a dict of what the last forward cost (prompt_tokens,
    # reused_tokens, completion_tokens, prefill_s, decode_s, ...); ChatLLM adds it up.


def check_messages(messages: Any) -> list[dict]:
    """Validate a chat transcript; return it as a list of ``{"role", "content"}`` dicts.

    >>> check_messages([{"role": "user", "content": "hi"}])
    [{'role': 'user', 'content': 'hi'}]
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in _ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {_ROLES}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise TypeError(f"messages[{i}]['content'] must be a str, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatLLM:
    """The ``LLM`` protocol over a ``Backend``: checks, cache, retries, counters.

    Takes the backend; ``cache`` is a ``mmopt.cache.Cache`` (persistent, shared
    with the rest of a run) or ``None`` for an in-process memo. Only
    reproducible requests are cached: those with a ``seed`` or with
    ``temperature == 0``; an unseeded sampling request always reaches the
    backend, since its caller asked for fresh randomness.
    ``max_retries`` retries follow the first attempt, waiting
    ``backoff * 2**attempt`` seconds (at most ``max_backoff``, or the server's
    Retry-After when it is larger).
    """

    def __init__(self, backend: Backend, *, cache: Cache | None = None, max_retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep):
        # 1. check inputs
        if not callable(getattr(backend, "forward", None)) or not getattr(backend, "name", None):
            raise TypeError(f"backend must have a name and a forward(...) method, got {backend!r}")
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"cache must be a mmopt.cache.Cache or None, got {type(cache).__name__}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff!r}, {max_backoff!r}")
        self.backend = backend
        self.cache = cache
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep = sleep
        self._memo: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.requests = 0      # chat() calls, cached or not
        self.calls = 0         # backend.forward() invocations, retries included
        self.cache_hits = 0
        self.retries = 0
        self.usage: dict[str, float] = {}  # the backend's usage, summed over the calls that reached it
        self.last_usage: dict = {}

    # The registry-style id of this LLM, e.g. "llamacpp:/path/SmolLM2.gguf".
    @property
    def name(self) -> str:
        return f"{self.backend.name}:{getattr(self.backend, 'model', '')}"

    def __repr__(self) -> str:
        return f"ChatLLM({self.name!r}, calls={self.calls}, requests={self.requests})"

    def config(self) -> dict:
        """What changes this LLM's replies: the backend kind and its weights (no secrets).

        Sampling settings (temperature, max_tokens, seed) belong to each request,
        so they are part of the caller's config (the proposer's), not this one.
        """
        own = getattr(self.backend, "config", None)
        weights = own() if callable(own) else {"model": getattr(self.backend, "model", "")}
        return {"component": "mmopt.llm.ChatLLM", "backend": self.backend.name, **weights}

    def request_key(self, messages: list[dict], *, n: int, temperature: float,
                    max_tokens: int, seed: int | None, stop: list[str] | None = None, stop_rule: Any = None) -> str:
        """sha256 of the request content; backend secrets never enter it."""
        parts = ["llm-chat", self.backend.name, getattr(self.backend, "model", ""),
                 messages, n, float(temperature), max_tokens, seed]
        return content_key(*parts, *([list(stop)] if stop else []),
                           *([{"stop_rule": stop_rule.key}] if stop_rule is not None else []))

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 1.0,
             max_tokens: int = 256, seed: int | None = None, stop: list[str] | None = None,
             stop_rule: Any = None) -> list[str]:
        """Return ``n`` completions of ``messages`` (a list of role/content dicts).

        ``stop``: strings that end a completion (cut before them). ``stop_rule``:
        a callable given a completion's text so far that returns the length to keep
        when the completion should end there (else None), with a ``key`` (str) naming
        what it depends on, which enters the cache key; e.g.
        :class:`mmopt.llm.parsing.ListStop`. A backend whose ``forward`` takes no
        ``stop_rule`` decodes the whole completion instead. Raises
        ``LLMError`` when the backend keeps failing after the retries, and
        ``LLMUnavailableError`` when it cannot be reached at all.
        """
        # 1. check inputs
        messages = check_messages(messages)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5:
            raise ValueError(f"temperature must be a number in [0, 5], got {temperature!r}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(x, str) and x for x in stop)):
            raise ValueError(f"stop must be a list of non-empty strings or None, got {stop!r}")
        if stop_rule is not None and (not callable(stop_rule) or not isinstance(getattr(stop_rule, "key", None), str)):
            raise TypeError(f"stop_rule must be a callable with a str 'key' (e.g. mmopt.llm.parsing.ListStop), "
                            f"got {stop_rule!r}")
        with self._lock:
            self.requests += 1

        # 2. cache lookup (reproducible requests only)
        cacheable = seed is not None or temperature == 0
        key = self.request_key(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop,
                               stop_rule=stop_rule)
        if cacheable:
            hit = self.cache.get_json(key) if self.cache is not None else self._memo.get(key)
            if hit is not None:
                with self._lock:
                    self.cache_hits += 1
                return list(hit)

        # 3. call the backend with retries on transient failures
        # stop and stop_rule only save decoding time: a backend whose forward does not take them works without
        extra = {"stop": list(stop)} if stop and _takes(self.backend.forward, "stop") else {}
        if stop_rule is not None and _takes(self.backend.forward, "stop_rule"):
            extra["stop_rule"] = stop_rule
        outputs = self._forward_with_retries(messages, n=n, temperature=float(temperature),
                                             max_tokens=max_tokens, seed=seed, **extra)

        # 4. store
        if cacheable:
            if self.cache is not None:
                self.cache.put_json(key, outputs)
            else:
                self._memo[key] = list(outputs)
        return outputs

    def _forward_with_retries(self, messages, **kw) -> list[str]:
        attempt = 0
        while True:
            with self._lock:
                self.calls += 1
            try:
                outputs = self.backend.forward(messages, **kw)
            except TransientLLMError as e:
                if attempt >= self.max_retries:
                    raise LLMUnavailableError(
                        f"{self.name}: giving up after {attempt + 1} attempts: {e}"
                    ) from e
                delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                if e.retry_after is not None:
                    delay = max(delay, min(float(e.retry_after), self.max_backoff))
                log.warning("%s: transient error (%s); retry %d/%d in %.2fs",
                            self.name, e, attempt + 1, self.max_retries, delay)
                with self._lock:
                    self.retries += 1
                self._sleep(delay)
                attempt += 1
                continue
            if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
                raise LLMError(f"{self.name}: backend returned {type(outputs).__name__}, expected list[str]")
            if len(outputs) != kw["n"]:
                raise LLMError(f"{self.name}: backend returned {len(outputs)} completions, expected {kw['n']}")
            usage = getattr(self.backend, "last_usage", None)
            if isinstance(usage, dict):
                with self._lock:
                    self.last_usage = dict(usage)
                    for k, v in usage.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            self.usage[k] = self.usage.get(k, 0) + v
            return outputs
