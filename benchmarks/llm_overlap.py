"""LLM / generator overlap: the same OPT2I optimization run serially and with lookahead.

Serially, each iteration waits for the LLM's rewrites, then renders and scores
them; the generator idles while the LLM writes. With ``Optimizer(lookahead=True)``
the LLM writes iteration i+1's candidates while iteration i renders and scores
(from the history through iteration i-1, iteration i's candidates listed as not
scored yet), so after the first iteration the loop waits on the LLM only for
whatever the render does not cover.

Everything is real and offline: the embedded SmolLM2-135M (llama.cpp) writes the
rewrites, the shipped ShapesWorld generator renders, detector-backed DSG scores.
Each run has its own empty cache, so both modes render every image. Per prompt
the two modes run back to back, in alternating order. Reported: seconds per
prompt, the seconds the loop waited on the LLM, images/s and their ratio; and,
since lookahead changes what the LLM sees, the held-out DSG of each run's best
prompt on 8 seeds the search never saw.

On a CPU-only machine the LLM and the generator share the cores, so each mode
names its threads: ``--modes serial:2,2 serial:1,1 lookahead:1,1`` (the default
on 2 cores) runs serially with both cores for each stage, serially with one core
each, and overlapped with one core each. The first pair isolates what the
overlap buys when the LLM and the generator have hardware of their own (as on a
GPU machine, where the LLM runs on the CPU cores or a server); the first against
the last is what a 2-core user gains.

    python benchmarks/llm_overlap.py                      # 4 prompts, ~15 min on 2 cores
    python benchmarks/llm_overlap.py --prompts 8 --modes serial:1,1 lookahead:1,1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELDOUT_BASE = 1_000_000  # held-out seeds, far from the search seeds


def _mode(text: str) -> tuple[str, bool, tuple[int, int]]:
    """``"serial:2,2"`` / ``"lookahead:1,1"`` -> (label, lookahead, (LLM threads, torch threads))."""
    try:
        kind, threads = text.split(":")
        llm, torch_threads = (int(x) for x in threads.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected serial:LLM,TORCH or lookahead:LLM,TORCH; got {text!r}") from None
    if kind not in ("serial", "lookahead") or llm < 1 or torch_threads < 1:
        raise argparse.ArgumentTypeError(f"expected serial|lookahead and thread counts >= 1, got {text!r}")
    return text, kind == "lookahead", (llm, torch_threads)


def run_once(prompt: str, lookahead: bool, llm, threads: tuple[int, int], args) -> dict:
    """One optimization of ``prompt``; timings, images and the held-out DSG of its best prompt."""
    import torch

    from mmopt import registry
    from mmopt.cache import Cache
    from mmopt.optimizer import Budget, Optimizer

    torch.set_num_threads(threads[1])
    gen = registry.create("generator", "offline:t2i", max_batch=64)
    dsg = registry.create("scorer", "offline:dsg")
    proposer = registry.create("proposer", "opt2i", reuse=False, llm=llm)
    opt = Optimizer(gen, [dsg], proposer, seeds=args.seeds, candidates=args.candidates, cache=Cache(":memory:"),
                    seed=0, budget=Budget(iterations=args.iterations + 1), lookahead=lookahead)
    t0 = time.perf_counter()
    result = opt.run(prompt)
    seconds = time.perf_counter() - t0
    heldout = list(range(HELDOUT_BASE, HELDOUT_BASE + args.heldout))
    held = opt.evaluate_prompts(prompt, [result.best.prompt], heldout)[0].objective
    return {"seconds": seconds, "llm_wait": opt.timings["propose"], "images": result.images,
            "llm_calls": result.llm_calls, "search_best": result.best.objective, "heldout": held,
            "best_prompt": result.best.prompt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4, help="ShapesWorld benchmark prompts")
    ap.add_argument("--iterations", type=int, default=5, help="iterations after the original prompt")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--heldout", type=int, default=8)
    cores = os.cpu_count() or 2
    half = max(1, cores // 2)
    ap.add_argument("--modes", type=_mode, nargs="+", metavar="MODE",
                    default=[_mode(f"serial:{cores},{cores}"), _mode(f"serial:{half},{half}"),
                             _mode(f"lookahead:{half},{half}")])
    args = ap.parse_args()
    if args.prompts < 1 or args.iterations < 2:
        ap.error("need --prompts >= 1 and --iterations >= 2 (lookahead starts paying from the second)")
    if len({m[0] for m in args.modes}) != len(args.modes):
        ap.error("modes must be distinct")

    from mmopt import registry
    from mmopt.shapesworld.grammar import benchmark_prompts

    # one llama.cpp instance per thread count (set when the model loads)
    llms = {n: registry.create("llm", "smollm2", reuse=False, n_threads=n) for n in {m[2][0] for m in args.modes}}
    modes = {label: (lookahead, threads) for label, lookahead, threads in args.modes}
    print(f"{args.prompts} prompts x {args.iterations} iterations x {args.candidates} candidates x {args.seeds} "
          f"seeds; modes (LLM threads, torch threads): {', '.join(modes)}; {cores} cores", flush=True)
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for i, prompt in enumerate(benchmark_prompts(args.prompts, seed=0)):
        order = list(modes) if i % 2 == 0 else list(reversed(modes))  # no mode always runs first
        for mode in order:
            lookahead, threads = modes[mode]
            r = run_once(prompt, lookahead, llms[threads[0]], threads, args)
            rows[mode].append(r)
            print(f"[{i + 1}/{args.prompts}] {mode:15s} {r['seconds']:6.1f} s, waited on the LLM "
                  f"{r['llm_wait']:5.1f} s, {r['images']} images, {r['llm_calls']} LLM calls, held-out DSG "
                  f"{r['heldout']:.3f}  {prompt!r}", flush=True)

    def mean(mode, key):
        return statistics.fmean(r[key] for r in rows[mode])

    def se(values):
        return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")

    print("\nmode             s/prompt  LLM wait s  images/s  LLM calls  held-out DSG")
    for mode in modes:
        ips = sum(r["images"] for r in rows[mode]) / sum(r["seconds"] for r in rows[mode])
        held = [r["heldout"] for r in rows[mode]]
        print(f"{mode:15s} {mean(mode, 'seconds'):9.1f} {mean(mode, 'llm_wait'):11.1f} {ips:9.2f} "
              f"{mean(mode, 'llm_calls'):10.1f}  {statistics.fmean(held):.3f} ± {se(held):.3f}")
    print()
    labels = list(modes)
    for a in labels:
        for b in labels:
            if modes[b][0] and not modes[a][0]:  # every lookahead mode against every serial one
                ratio = sum(r["seconds"] for r in rows[a]) / sum(r["seconds"] for r in rows[b])
                diffs = [y["heldout"] - x["heldout"] for x, y in zip(rows[a], rows[b])]
                print(f"{b} vs {a}: speed-up x{ratio:.2f} (wall time of {a} / {b}); held-out DSG "
                      f"{statistics.fmean(diffs):+.3f} "
                      f"± {se(diffs):.3f} (paired)")

if __name__ == "__main__":
    sys.exit(main())
