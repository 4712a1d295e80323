"""Loop overhead: mmopt's Optimizer against calling the same pipeline and scorer directly.

Both ways do the same work with the same batches: per iteration, one
generator call with every (prompt, seed) pair, one CLIPScore call with every
image. The optimizer adds what it is for: candidate admission, the content
cache, the objective, and committing each trial (PNG + SQLite) to the store.
The proposer replays a fixed schedule so no LLM time is counted.

    python benchmarks/loop_overhead.py            # tiny SD + tiny CLIP on CPU
    python benchmarks/loop_overhead.py --iterations 6 --candidates 8 --repeats 5

Prints both wall times and the ratio (target: optimizer / direct <= 1.05).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=4, help="iterations after the original prompt")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generator", default=None, help="generator registry name (default: a tiny SD built here)")
    ap.add_argument("--scorer", default=None, help="scorer registry name (default: a tiny CLIP built here)")
    args = ap.parse_args()

    from mmopt import registry
    from mmopt.cache import default_cache_dir
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.pipelines.tiny import build_tiny_clip, build_tiny_sd
    from mmopt.proposers.fixed import FixedProposer

    tiny = default_cache_dir() / "tiny"
    gen = registry.create("generator", args.generator or f"diffusers:{build_tiny_sd(tiny / 'sd')}", max_batch=64)
    scorer = registry.create("scorer", args.scorer or f"clip:{build_tiny_clip(tiny / 'clip')}")
    intent = "a red circle to the left of a blue square"
    words = ["bright", "small", "large", "centered", "flat", "vivid", "simple", "clean", "sharp", "plain"]
    schedule = [[f"{intent}, {words[(i * args.candidates + j) % len(words)]} {i}-{j}" for j in range(args.candidates)]
                for i in range(args.iterations)]
    seeds = list(range(args.seeds))

    def direct() -> float:
        t0 = time.perf_counter()
        for prompts in [[intent]] + schedule:
            pairs = [(p, s) for p in prompts for s in seeds]
            gens = gen.generate([p for p, _ in pairs], [s for _, s in pairs])
            scorer.score(gens, intent)
        return time.perf_counter() - t0

    def optimizer() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            opt = Optimizer(gen, [scorer], FixedProposer(schedule), budget=Budget(iterations=args.iterations + 1),
                            candidates=args.candidates, seeds=seeds, store=Path(tmp))
            t0 = time.perf_counter()
            result = opt.run(intent)
            dt = time.perf_counter() - t0
        assert len(result.trials) == 1 + args.iterations * args.candidates
        # the loop's own time: everything but waiting for the generator and the scorer
        own = dt - opt.timings["generate"] - opt.timings["score"]
        return dt, own

    direct(); optimizer()  # warm-up: weights paged in, intent embedding cached for both
    d, o, own = [], [], []
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both
        d.append(direct())
        t, mine = optimizer()
        o.append(t)
        own.append(mine)
    images = (1 + args.iterations * args.candidates) * args.seeds
    dm, om = statistics.median(d), statistics.median(o)
    print(f"work: {images} images per run ({args.iterations} iterations x {args.candidates} candidates x "
          f"{args.seeds} seeds + the original), {args.repeats} repeats, medians")
    print(f"direct pipeline + scorer: {dm:.3f} s  ({images / dm:.1f} images/s)")
    print(f"mmopt Optimizer:          {om:.3f} s  ({images / om:.1f} images/s)")
    print(f"ratio optimizer/direct:   {om / dm:.3f}  (overhead {100 * (om / dm - 1):+.1f}%)")
    # on a shared machine the repeats themselves vary by more than the overhead: two steadier views
    paired = statistics.median(b / a for a, b in zip(d, o))
    print(f"median of paired ratios:  {paired:.3f}; fastest/fastest {min(o) / min(d):.3f}; "
          f"spread of the direct runs {100 * (max(d) / min(d) - 1):.0f}%")
    print(f"the loop's own time (not waiting on generator or scorer): {statistics.median(own):.3f} s = "
          f"{100 * statistics.median(own) / dm:.1f}% of the direct time")


if __name__ == "__main__":
    main()
