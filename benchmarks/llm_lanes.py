"""Why two decoding lanes: one llama.cpp context's decode step alone vs two contexts stepping at once.

llama.cpp does not split a small model's one-token decode step over cores usefully, so
``LlamaCppBackend(lanes=None)`` decodes the second half of a request's replies in a second
context over the same weights, on another core. This times, in one run on this machine,
the embedded SmolLM2-135M's decode step (one thread, after a ~370-token prompt):

* one context stepping alone;
* two contexts stepping at the same time on two threads (llama.cpp releases the GIL).

If the two run side by side at the speed of one, two lanes halve the decode time.

    python benchmarks/llm_lanes.py            # under a minute on 2 cores
"""
from __future__ import annotations

import threading
import time

STEPS = 48


def step_time(engine, tokens, out: list) -> None:
    from mmopt.llm.llamacpp_engine import Usage

    engine._use_threads("prefill")
    engine._prefill(tokens, Usage())
    engine._use_threads("decode")
    p = len(tokens)
    t0 = time.perf_counter()
    for r in range(STEPS):  # one token of sequence 0 per step, at the next position
        engine.batch.reset()
        b = engine.batch.batch
        b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0] = 100, p + r, 1, True
        b.seq_id[0][0] = 0
        b.n_tokens = 1
        engine._decode()
    out.append((time.perf_counter() - t0) / STEPS)


def main() -> None:
    from mmopt.llm.gguf import LlamaCppBackend, embedded_smollm2_path
    from mmopt.llm.llamacpp_engine import LlamaCppEngine

    backend = LlamaCppBackend(embedded_smollm2_path(), n_threads=1)
    first = backend.engine
    second = LlamaCppEngine(backend._llm, 4096)  # a second context over the same weights
    tokens, _ = first.prompt_tokens([{"role": "user", "content": "Write a long story about the sky. " * 40}])
    alone: list = []
    step_time(first, tokens, alone)
    both: list = []
    threads = [threading.Thread(target=step_time, args=(e, tokens, both)) for e in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"decode step, {len(tokens)}-token prompt, one thread each ({STEPS} steps):")
    print(f"  one context alone:        {1000 * alone[0]:.1f} ms")
    print(f"  two contexts at once:     {1000 * both[0]:.1f} / {1000 * both[1]:.1f} ms")
    print(f"  throughput, two vs one:   x{(1 / both[0] + 1 / both[1]) / (1 / alone[0]):.2f}")


if __name__ == "__main__":
    main()
