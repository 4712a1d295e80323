"""Flash attention on or off for llama.cpp on a CPU: decode steps/s and prompt tokens/s, in one run.

llama.cpp's default ("auto") turns flash attention on, also on a CPU. This times the
embedded SmolLM2-135M through the project's own engine (``LlamaCppEngine``: prompt read
in 64-token chunks, n sequences decoded in one batch) with the attention kernel as the
only difference, on one thread, for a short prompt and for one as long as an OPT2I
request's (~770 tokens, the history of ten tried prompts), with 1, 2 and 4 sequences
(a two-lane request of 4 replies decodes 2 per lane). Each cell is the median of
``--repeats`` requests, the two kernels interleaved request by request.

    python benchmarks/llm_attention.py               # about 2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import statistics

MAX_TOKENS = 44  # an OPT2I parallel reply's cap for a short request


def history(k: int) -> str:
    return "\n".join(f"a blue diamond on the right of a red disc with shiny edges, version {i} | 0.{i % 10}50 | "
                     f"wrong: is the diamond blue? (no)" for i in range(k))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from mmopt.llm.gguf import embedded_smollm2_path
    from mmopt.llm.llamacpp_engine import LlamaCppEngine, load_llama

    llama = load_llama(embedded_smollm2_path(), n_threads=1)
    engines = {"flash": LlamaCppEngine(llama, 4096, flash_attn=True),
               "plain": LlamaCppEngine(llama, 4096, flash_attn=False)}
    prompts = {"short": 0, "long": 20}
    print(f"SmolLM2-135M, llama.cpp, one thread, {MAX_TOKENS} new tokens at most, median of {args.repeats}\n")
    print("| prompt | sequences | flash: steps/s | plain: steps/s | plain / flash |")
    print("|---|---|---|---|---|")
    prefill = {name: [] for name in engines}
    for label, k in prompts.items():
        messages = [{"role": "user", "content": "Prompts tried so far:\n" + history(k) +
                     '\nWrite one new prompt for the image "a blue diamond on the right of a red disc".'}]
        n_tokens = len(engines["plain"].prompt_tokens(messages)[0])
        for n in (1, 2, 4):
            rates = {name: [] for name in engines}
            for r in range(args.repeats):
                for name, engine in engines.items():
                    if label == "long" and n == 1:
                        engine._cached = []  # a cold prompt: time the whole read
                    _, usage = engine.generate(messages, n=n, temperature=0.8, max_tokens=MAX_TOKENS, seed=r)
                    rates[name].append(usage.decode_steps / usage.decode_s)
                    if label == "long" and n == 1:
                        prefill[name].append(usage.prompt_tokens / usage.prefill_s)
            f, q = statistics.median(rates["flash"]), statistics.median(rates["plain"])
            print(f"| {label} ({n_tokens} tokens) | {n} | {f:.1f} | {q:.1f} | x{q / f:.2f} |")
    f, q = statistics.median(prefill["flash"]), statistics.median(prefill["plain"])
    print(f"\nprompt read (the long prompt, cold): flash {f:.0f} tokens/s, plain {q:.0f} tokens/s: x{q / f:.2f}")


if __name__ == "__main__":
    main()
