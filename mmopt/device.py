"""Device and dtype choice shared by every torch-backed generator and scorer.

torch is imported inside the functions so that importing this module (and
``import mmopt``) stays light.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any

#: ``torch.compile`` modes a generator or scorer accepts ("reduce-overhead" = CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def pick_device(device: Any = None) -> str:
    """The device to run on: ``device`` when given, else cuda, then mps, then cpu.

    >>> pick_device("cpu")
    'cpu'
    """
    import torch

    if device is not None:
        text = str(device)
        try:
            torch.device(text)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be like 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}") from e
        if text.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {text!r} was requested but CUDA is not available on this machine")
        return text
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: Any = None):
    """The torch dtype for ``device``: ``dtype`` when given, else cuda bf16 (fp16 on
    GPUs without bf16), mps fp16, cpu fp32.

    Accepts a ``torch.dtype`` or a name (``"fp16"``, ``"bfloat16"``, ...).

    >>> str(pick_dtype("cpu"))
    'torch.float32'
    """
    import torch

    if dtype is not None:
        if isinstance(dtype, torch.dtype):
            return dtype
        name = _DTYPE_NAMES.get(str(dtype).lower().replace("torch.", ""))
        if name is None:
            raise ValueError(
                f"dtype must be a torch.dtype or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}"
            )
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def _cpu_busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


@contextlib.contextmanager
def torch_threads_beside(other_work: bool, cores: int = 1):
    """torch's CPU threads lowered by ``cores`` (to at least 1) while ``other_work`` runs beside it.

    A lookahead LLM call decodes on one core while the generator renders: torch's
    threads spin while they wait, so with every core in torch's pool both run several
    times slower than on cores of their own (on 2 cores, 1 + 1 is faster than 2 + 1).
    Restored on exit; nothing changes when ``other_work`` is false or torch is not in use.
    """
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if other_work and torch is not None else 1
    if before > 1:
        torch.set_num_threads(max(1, before - cores))
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


def free_cpu_cores(window_s: float = 0.05) -> int:
    """CPU cores this process may use that nothing else is using right now (at least 1).

    Measured over ``window_s``: the machine's busy time minus the calling
    thread's own, as a share of the cores this process may run on (other
    threads of this process, e.g. a generator rendering beside a lookahead
    proposal, count as busy). Threads that spin while they wait (llama.cpp's)
    are several times slower when they outnumber the free cores, so an LLM
    call asks this before it starts.
    """
    import os
    import time

    cores = usable_cores()
    before, own_before = _cpu_busy_jiffies(), time.thread_time()
    if before is None:
        return cores
    time.sleep(window_s)
    after, own_after = _cpu_busy_jiffies(), time.thread_time()
    total = after[1] - before[1]
    if total <= 0:
        return cores
    hz = os.sysconf("SC_CLK_TCK")
    machine_cores = os.cpu_count() or cores
    others = max(0.0, (after[0] - before[0]) - (own_after - own_before) * hz) / total * machine_cores
    return max(1, min(cores, int(round(cores - others))))


class CoreHandoff:
    """The CPU's cores lent by a render to the LLM call it overlaps, while the LLM reads its prompt.

    On a machine without an accelerator a lookahead proposal (``Optimizer(lookahead=True)``)
    shares the cores with the render it overlaps. llama.cpp reads a prompt on every core it
    gets (2 cores: 299 tokens/s vs 150 on one) but decodes a small model on one core, so the
    quickest order is: the render waits while the LLM reads its prompt on all the cores, then
    renders on the others while the LLM decodes. An LLM backend that reads prompts on the
    CPU ``claim``s the handoff when its request starts and ``release``s it once the prompt is
    read; the proposal's thread releases it when it ends, so a proposer without a local LLM
    (or one answered from the cache) holds nothing up for long.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.state = "open"  # open -> claimed -> released, or open -> released

    def claim(self) -> bool:
        """True for the first caller while nothing claimed or released it: it may use every core."""
        with self._cond:
            if self.state != "open":
                return False
            self.state = "claimed"
            self._cond.notify_all()
            return True

    def release(self) -> None:
        with self._cond:
            self.state = "released"
            self._cond.notify_all()

    def wait(self, claim_s: float = 0.25, hold_s: float = 30.0) -> float:
        """Block the render until the lent cores are back: at most ``claim_s`` for a claim,
        then at most ``hold_s`` for its release. Returns the seconds waited."""
        import time

        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: self.state != "open", claim_s)
            if self.state == "claimed":
                self._cond.wait_for(lambda: self.state == "released", hold_s)
        return time.perf_counter() - t0


_lane = threading.local()  # .handoff: the calling thread's CoreHandoff


def set_thread_handoff(handoff: CoreHandoff | None) -> None:
    """Make ``handoff`` the calling thread's (None: no cores lent to it)."""
    _lane.handoff = handoff


def thread_handoff() -> CoreHandoff | None:
    """The calling thread's CoreHandoff (a lookahead proposal's thread), else None."""
    return getattr(_lane, "handoff", None)


def usable_cores() -> int:
    """The cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` -> ``"float16"`` (for cache keys and messages)."""
    return str(dtype).replace("torch.", "")


_LIBC: Any = None
_TRIM_BASELINE_MB: float | None = None


def release_free_host_memory(min_growth_mb: float = 0.0) -> bool:
    """Return the heap pages that ``free`` kept back to the operating system.

    glibc keeps freed memory in per-thread arenas; a loop that decodes, resizes
    and PNG-encodes batches of images on several threads leaves each arena
    holding its high-water mark, so RSS can creep upwards. ``malloc_trim(0)``
    hands those pages back, but it costs ~10-30 ms and the pages are faulted in
    again when the next iteration needs them: measured on the CPU, trimming after
    every iteration made the tiny loop 3% slower. So with ``min_growth_mb`` it
    trims only when RSS (read at the same point of each iteration) has grown that
    much since the last trim or the first call: at most once per that much creep,
    never on a steady plateau. Returns whether it trimmed; always False where
    there is no glibc (macOS, musl, Windows).
    """
    global _LIBC, _TRIM_BASELINE_MB
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = libc if hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC is False:
        return False
    if min_growth_mb > 0:
        rss = host_rss_mb()
        if rss is None:
            return False
        if _TRIM_BASELINE_MB is None:  # the first call only sets the baseline
            _TRIM_BASELINE_MB = rss
            return False
        if rss - _TRIM_BASELINE_MB < min_growth_mb:
            return False
        _TRIM_BASELINE_MB = rss
    _LIBC.malloc_trim(0)
    return True


def host_rss_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux), else None."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def compile_in_place(module: Any, mode: str) -> None:
    """``torch.compile`` ``module``'s forward in place, for one static input shape (the loop
    pads batches to one size), letting graph breaks fall back to eager."""
    module.compile(mode=mode, fullgraph=False, dynamic=False)


def check_compile_mode(compile: Any) -> str | None:
    """``None`` (off), or a mode of :data:`COMPILE_MODES`; ``True`` means "default".

    >>> check_compile_mode(True), check_compile_mode(None)
    ('default', None)
    """
    if compile is True:
        return "default"
    if compile is None or compile is False:
        return None
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be None/False or a mode in {COMPILE_MODES}, got {compile!r}")
    return compile
