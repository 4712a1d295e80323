"""Decoding for the llama.cpp backend: a reused prompt prefix and n sequences in one batch.

On a CPU the loop waits on the LLM, and a rewrite request spends its time in
two places: the prompt pass (the meta-prompt, mostly the same from one
iteration to the next) and token-by-token decoding. This engine cuts both:

1. **Prefix reuse, deterministically.** The prompt is always evaluated in
   chunks of ``CHUNK`` tokens on a fixed grid from position 0, so the keys and
   values of chunk k depend on the first (k+1) x CHUNK tokens only. A request
   whose prompt shares whole chunks with the previous prompt reuses them from
   the cache and evaluates the rest on the same grid: the logits are exactly
   those of a cold evaluation, so a seeded request gives the same text
   whether the prefix was cached or not (llama-cpp-python's own prefix reuse
   re-evaluates whatever tail differs in one batch, which changes the
   numbers slightly and, with them, sampled text).
2. **n completions as parallel sequences.** The prompt's cache is shared by n
   sequences (``seq_cp``) that are decoded together, one batch of n tokens
   per step, each with its own sampler seeded by ``sample_seed(seed, i)``. On a
   CPU a batch of n tokens costs little more than one (the weights are read
   once per step), so n completions cost about as much as the longest one.
   The result is reproducible for the same request; completion i can differ
   in the last bits from a request with another n, since the batch it was
   decoded in differs. A small model's decode does not split over cores, so
   on a machine with two cores the sequences go in two **lanes**: the second half
   decodes in a second context over the same weights (holding a copy of the
   prompt's cells) on a thread of its own, at full speed beside the first
   (with flash attention the replies read the same as from one batch; plain
   attention, point 4, sums over the cells of the context it runs in, so a reply
   of the second lane can differ in its last bits: the same on every run with the
   same lanes, which are chosen from the machine's cores, never from their load).
3. **Stop strings** end a sequence as soon as they appear (the text is cut
   before them); the end-of-generation tokens of the vocabulary end it too.
   A **stop rule** (``stop_rule(text) -> length to keep or None``, e.g.
   :class:`mmopt.llm.parsing.ListStop`) ends it once the reply holds what the
   caller will read from it.

4. **Plain attention on a CPU.** llama.cpp turns flash attention on by default
   ("auto"); on a CPU its kernel is the slow path for decoding over a long prompt.
   ``benchmarks/llm_attention.py`` (SmolLM2-135M, one thread, the project's 2-core
   machine): after a 786-token prompt, the size of an OPT2I request, plain attention
   decodes 1.55x / 2.08x / 2.42x as many steps per second for 1 / 2 / 4 sequences and
   reads the prompt 1.05x as fast; after a 57-token prompt it is 0.85-0.98x. A
   rewrite request carries its history, so a CPU-only build decodes with flash
   attention off (``flash_attn=None``); a build that can offload to a GPU keeps
   llama.cpp's choice. The two round differently, so a seeded request
   may sample other text with one than with the other (the same text every time
   with either).

It runs on llama-cpp-python's context/batch/sampler wrappers (``_internals``,
the thin layer over llama.cpp's C API that ``Llama`` itself uses), on a
context of its own with room for several sequences.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from mmopt.errors import LLMError
from mmopt.llm.base import sample_seed

CHUNK = 64        # prompt tokens per evaluation batch: the grid that makes prefix reuse exact
MAX_SEQUENCES = 8  # completions decoded together at most (more are decoded in rounds)
SMALL_MODEL_PARAMS = 500_000_000  # below this, decode steps run on one thread (see _use_threads)


def _cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX (its tiles show as ``amx_*`` flags in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return " amx_int8" in line or " amx_tile" in line
    except OSError:
        pass
    return False


def load_llama(path: str, *, n_threads: int):
    """A llama-cpp-python ``Llama`` over the GGUF file at ``path`` (weights, tokenizer, template).

    On CPUs with AMX, llama.cpp moves quantised weights into AMX buffers, and those kernels
    are wrong or crash for SmolLM2's Q4_1 weights: with llama-cpp-python 0.3.16 a prompt read
    in batches of 32 tokens or more gets wrong logits (perplexity 730-806 on this project's
    README vs 57-73 on the plain kernels; batches of up to 16 and single tokens are right), and
    with 0.3.36 the process segfaults on the first batch. So on an AMX CPU the model is loaded
    without the extra buffer types (llama.cpp's ``--no-repack``): the plain CPU kernels.
    ``Llama`` takes no argument for it, so the default parameters it asks for are adjusted
    while it loads.
    """
    import llama_cpp.llama as high_level
    from llama_cpp import Llama

    low = high_level.llama_cpp
    defaults = low.llama_model_default_params
    plain = _cpu_has_amx() and any(name == "use_extra_bufts" for name, *_ in low.llama_model_params._fields_)
    if not plain:
        return Llama(model_path=path, n_ctx=64, n_threads=n_threads, verbose=False)

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LOAD_LOCK:
        low.llama_model_default_params = without_extra_buffers
        try:
            return Llama(model_path=path, n_ctx=64, n_threads=n_threads, verbose=False)
        finally:
            low.llama_model_default_params = defaults


_LOAD_LOCK = threading.Lock()


def check_flash_attn(value) -> None:
    """A one-line ValueError unless ``value`` is a ``flash_attn`` choice: True, False or None."""
    if value not in (None, True, False):
        raise ValueError(f"flash_attn must be True, False or None (off on a CPU-only build), got {value!r}")


@dataclass
class Usage:
    """What one request cost: tokens and seconds per stage."""

    prompt_tokens: int = 0
    reused_tokens: int = 0       # prompt tokens whose cache was reused
    completion_tokens: int = 0   # over every sequence
    decode_steps: int = 0        # batches decoded (what the wall time follows)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    threads: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "reused_tokens": self.reused_tokens,
                "completion_tokens": self.completion_tokens, "decode_steps": self.decode_steps,
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "threads": self.threads}


class LlamaCppEngine:
    """Prefill + parallel decode over a llama-cpp-python ``Llama``'s model.

    ``llama`` supplies the model weights, tokenizer and chat template; the
    engine makes its own context of ``n_ctx`` cells shared by up to
    ``MAX_SEQUENCES`` sequences. ``flash_attn``: True/False, or None for off on a
    CPU-only llama.cpp build and llama.cpp's own choice otherwise (see point 4 above).
    """

    def __init__(self, llama, n_ctx: int, *, reuse_prefix: bool = True, flash_attn: bool | None = None):
        import llama_cpp
        from llama_cpp import _internals, llama_chat_format

        check_flash_attn(flash_attn)
        self.llama = llama
        self._api = llama_cpp
        self._internals = _internals
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = max(CHUNK, MAX_SEQUENCES)
        params.n_ubatch = params.n_batch
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # the sequences share one cache: the prompt's cells are not copied
        params.n_threads = params.n_threads_batch = llama.context_params.n_threads
        if flash_attn is None and not llama_cpp.llama_supports_gpu_offload():
            flash_attn = False  # after a long prompt the CPU flash-attention kernel decodes 1.5-2.4x slower (point 4)
        if flash_attn is not None:
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.flash_attn = flash_attn  # None: llama.cpp decides ("auto")
        self._params = params
        self.ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=MAX_SEQUENCES, verbose=False)
        self._lane2 = None  # (context, batch) decoding half the sequences on a second core (made on first use)
        self.n_ctx = n_ctx
        self.n_params = int(llama._model.n_params())
        self.small = self.n_params < SMALL_MODEL_PARAMS
        self._threads = max(1, int(llama.context_params.n_threads))
        self._decode_threads: int | None = None  # threads for decode steps when not self._threads
        self._vocab = llama._model.vocab
        # the chat template stored in the GGUF file formats the conversation
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise LLMError(f"{llama.model_path!r} has no chat template in its metadata; use a chat (instruct) model")
        eos, bos = llama.token_eos(), llama.token_bos()
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
        self._cached: list[int] = []  # the last prompt, whose chunks sit in sequence 0's cache
        self.reuse_prefix = bool(reuse_prefix)

    # ------------------------------------------------------------------ prompt
    def prompt_tokens(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """The chat-formatted prompt as tokens, and the template's own stop strings."""
        result = self._formatter(messages=messages)
        tokens = self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return tokens, [s for s in stops if s]

    def _prefill(self, tokens: list[int], usage: Usage) -> int:
        """Evaluate ``tokens`` for sequence 0 on the CHUNK grid, reusing whole cached chunks.

        Returns the batch index of the last prompt token (whose logits the first sample reads).
        """
        common = 0
        for a, b in zip(self._cached if self.reuse_prefix else (), tokens):
            if a != b:
                break
            common += 1
        reuse = (common // CHUNK) * CHUNK
        if reuse >= len(tokens):  # the whole prompt is cached: evaluate its last chunk again for the logits
            reuse = ((len(tokens) - 1) // CHUNK) * CHUNK
        # sequence 0 from the first position not reused, the others whole (one by one:
        # llama-cpp-python's wrapper turns the "every sequence" id -1 into sequence 0)
        self.ctx.kv_cache_seq_rm(0, reuse, -1)
        for s in range(1, MAX_SEQUENCES):
            self.ctx.kv_cache_seq_rm(s, 0, -1)
        self._cached = list(tokens[:reuse])
        last = 0
        for start in range(reuse, len(tokens), CHUNK):
            chunk = tokens[start:start + CHUNK]
            self.batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            self._decode()
            self._cached.extend(chunk)
            last = len(chunk) - 1
        usage.prompt_tokens += len(tokens)
        usage.reused_tokens += reuse
        return last

    def _decode(self, ctx=None, batch=None) -> None:
        code = self._api.llama_decode((ctx or self.ctx).ctx, (batch or self.batch).batch)
        if code != 0:
            raise LLMError(f"llama.cpp could not decode a batch (code {code}): the context window "
                           f"({self.n_ctx} tokens) may be too small for this request")

    # ------------------------------------------------------------------ decoding
    def _sampler(self, temperature: float, seed: int):
        sampler = self._internals.LlamaSampler()
        if temperature <= 0:
            sampler.add_greedy()
        else:  # plain temperature sampling: no top-k/top-p/min-p truncation, no penalties
            sampler.add_temp(float(temperature))
            sampler.add_dist(seed)
        return sampler

    def _use_threads(self, stage: str) -> None:
        """Set llama.cpp's threads for ``stage`` ("prefill" or "decode").

        A prompt chunk (64 tokens) is worth splitting over every free core. A decode step of a
        small model (one token per live sequence) is not: its threads spend the step waking and
        waiting on each other. Measured on the project's 2-core machine with SmolLM2-135M: one
        sequence 78 steps/s on 1 thread vs 35 on 2; 4 sequences 25 vs 24 steps/s; prompt chunks
        163 vs 143 tokens/s on 2 vs 1 threads. The text is the same on any thread count.
        """
        threads = self._decode_threads if stage == "decode" and self._decode_threads else self._threads
        one_token = 1 if self.small else threads             # llama.cpp's threads for 1-token batches
        batch = 1 if self.small and stage == "decode" else threads  # ... and for larger ones
        self.ctx.set_n_threads(one_token, batch)

    def generate(self, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                 seed: int | None, stop: list[str] | None = None, threads: int | None = None,
                 stop_rule=None, decode_threads: int | None = None,
                 on_prefill=None, lanes: int = 1) -> tuple[list[str], Usage]:
        """``n`` completions of ``messages`` (in rounds of at most MAX_SEQUENCES), and the usage.

        ``threads``: llama.cpp's threads (``decode_threads`` for the decode steps when given);
        ``on_prefill()`` is called once the first round's prompt is read (a CoreHandoff's release);
        ``lanes=2`` decodes a small model's sequences as two batches on two cores at once.
        """
        usage = Usage()
        self._threads = threads or self._threads
        self._decode_threads = decode_threads
        if threads:
            usage.threads = threads
        tokens, template_stops = self.prompt_tokens(messages)
        stops = [s for s in (stop or []) if s] + template_stops
        outputs: list[str] = []
        while len(outputs) < n:
            k = min(MAX_SEQUENCES, n - len(outputs))
            if len(tokens) + k * max_tokens > self.n_ctx:
                raise LLMError(f"the request needs {len(tokens)} prompt tokens + {k} x {max_tokens} new tokens, "
                               f"over the {self.n_ctx}-token context; ask for fewer tokens or completions")
            seeds = [sample_seed(seed, len(outputs) + i) for i in range(k)]
            outputs += self._round(tokens, seeds, temperature, max_tokens, stops, stop_rule, usage,
                                   on_prefill if not outputs else None, lanes)
        return outputs, usage

    def _round(self, tokens, seeds, temperature, max_tokens, stops, stop_rule, usage, on_prefill=None,
               lanes: int = 1) -> list[str]:
        k, p = len(seeds), len(tokens)
        # 1. the prompt, once, for sequence 0; the other sequences share its cells
        t0 = time.perf_counter()
        self._use_threads("prefill")
        last = self._prefill(tokens, usage)
        for s in range(1, k):
            self.ctx.kv_cache_seq_cp(0, s, 0, p)
        usage.prefill_s += time.perf_counter() - t0
        if on_prefill is not None:
            on_prefill()
        # 2. each sequence's first token from the prompt's logits, then every live sequence in one
        #    batch per step; with lanes=2 a small model's second half decodes in a second lane
        t0 = time.perf_counter()
        self._use_threads("decode")
        samplers = [self._sampler(temperature, sd) for sd in seeds]
        generated: list[list[int]] = [[] for _ in seeds]
        texts = [""] * k
        try:
            live = []
            for i in range(k):
                tok = samplers[i].sample(self.ctx, last)
                if self._take(i, tok, generated, texts, stops, stop_rule):
                    live.append((i, i, tok))
            tokens_out, steps = self._decode_lane(self.ctx, self.batch, live, samplers, generated, texts, p,
                                                  max_tokens, stops, stop_rule,
                                                  split=lanes > 1 and self.small)
            usage.completion_tokens += k + tokens_out
            usage.decode_steps += steps
        finally:
            # 3. keep only the prompt (sequence 0) for the next request's prefix
            for s in range(1, k):
                self.ctx.kv_cache_seq_rm(s, 0, -1)
            self.ctx.kv_cache_seq_rm(0, p, -1)
            if self._lane2 is not None:
                self._lane2[0].kv_cache_clear()
            for sampler in samplers:
                sampler.close()
        usage.decode_s += time.perf_counter() - t0
        return texts

    def _take(self, i, tok, generated, texts, stops, stop_rule) -> bool:
        """Add ``tok`` to sequence ``i``; False when the sequence has ended (end of generation, a stop)."""
        if self._api.llama_vocab_is_eog(self._vocab, tok):
            return False
        generated[i].append(tok)
        # the whole reply each time: a character may span tokens
        text = self.llama.detokenize(generated[i]).decode("utf-8", errors="ignore")
        cut = min((text.find(x) for x in stops if x in text), default=-1)
        if cut < 0 and stop_rule is not None:
            cut = stop_rule(text)
            cut = -1 if cut is None else cut
        texts[i] = text[:cut] if cut >= 0 else text
        return cut < 0

    def _decode_lane(self, ctx, batch, live, samplers, generated, texts, p, max_tokens, stops, stop_rule,
                     step: int = 0, split: bool = False):
        """Decode ``live`` = [(sequence id in ``ctx``, index in the request, its last token)] from
        ``step`` to their ends; returns (tokens sampled, batches decoded along the longest lane).

        With ``split`` and two sequences or more live, the second half first moves to the second
        lane (their cells copied to its context) and decodes there on a thread of its own
        (llama.cpp releases the GIL while it decodes). Moving replies later, in the middle (when a
        lookahead render ends), was tried: it changed a reply in its last bits (the first lane's
        batch and cells change), and when would depend on timing, so it is not done.
        """
        tokens = steps = 0
        other = pool = None
        try:
            while live and step < max_tokens - 1:
                if split and len(live) >= 2:
                    from concurrent.futures import ThreadPoolExecutor

                    half = (len(live) + 1) // 2  # sequence 0 (the next request's prefix) stays here
                    moved = self._move_to_second_lane(ctx, live[half:])
                    pool = ThreadPoolExecutor(1, thread_name_prefix="mmopt-lane")
                    other = (steps, pool.submit(self._decode_lane, *self._lane2, moved, samplers, generated,
                                                texts, p, max_tokens, stops, stop_rule, step))
                    live = live[:half]
                split = False
                batch.reset()
                for j, (sid, _, tok) in enumerate(live):
                    b = batch.batch
                    b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = tok, p + step, 1, True
                    b.seq_id[j][0] = sid
                batch.batch.n_tokens = len(live)
                self._decode(ctx, batch)
                steps += 1
                new = []
                for j, (sid, i, _) in enumerate(live):
                    tok = samplers[i].sample(ctx, j)
                    tokens += 1
                    if self._take(i, tok, generated, texts, stops, stop_rule):
                        new.append((sid, i, tok))
                live, step = new, step + 1
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # the second lane ends before its cells are cleared
        if other is not None:
            moved_tokens, moved_steps = other[1].result()
            tokens, steps = tokens + moved_tokens, max(steps, other[0] + moved_steps)
        return tokens, steps

    def _move_to_second_lane(self, ctx, moving):
        """Copy the cells of the ``moving`` sequences of ``ctx`` into the second lane's context (as
        its sequences 0, 1, ...), drop them from ``ctx``, and return them renumbered."""
        import ctypes

        if self._lane2 is None:
            self._lane2 = (self._internals.LlamaContext(model=self.llama._model, params=self._params, verbose=False),
                           self._internals.LlamaBatch(n_tokens=self._params.n_batch, embd=0,
                                                      n_seq_max=MAX_SEQUENCES, verbose=False))
        other = self._lane2[0]
        other.set_n_threads(1, 1)
        other.kv_cache_clear()
        renumbered = []
        for j, (sid, i, tok) in enumerate(moving):
            size = self._api.llama_state_seq_get_size(ctx.ctx, sid)
            buf = (ctypes.c_uint8 * size)()
            got = self._api.llama_state_seq_get_data(ctx.ctx, buf, size, sid)
            if not got or self._api.llama_state_seq_set_data(other.ctx, buf, got, j) == 0:
                raise LLMError("llama.cpp could not copy a sequence's cache to the second decoding lane")
            ctx.kv_cache_seq_rm(sid, 0, -1)
            renumbered.append((j, i, tok))
        return renumbered
