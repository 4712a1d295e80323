"""``mmopt batch INPUT --preset NAME --out DIR``: optimize every prompt of a file.

Resumable (rerun the same command), one batch per folder (a second is refused),
and sharded with ``accelerate launch`` / ``torchrun`` (one process per GPU).
The work is :func:`mmopt.apps.batch.run_batch`.
"""
from __future__ import annotations

from mmopt.commands._options import non_negative_int, positive_int

HELP = "optimize every prompt of a file (PartiPrompts, COCO, DrawBench, GenEval, DSG-1k, txt, csv, jsonl)"

FORMATS = ("parti", "coco", "drawbench", "geneval", "dsg1k", "txt", "csv", "jsonl", "folder")


def add_arguments(p) -> None:
    p.add_argument("input", help="prompt file, or a folder of images with sidecar .txt prompts")
    p.add_argument("--out", required=True, help="output folder (results.jsonl, summary, store, images)")
    p.add_argument("--preset", default="offline", help="preset name (offline, turbo, quality) or JSON path")
    p.add_argument("--format", choices=FORMATS, help="input format (guessed from the file when not given)")
    p.add_argument("--category", action="append", default=[], help="keep this category (repeatable)")
    p.add_argument("--challenge", action="append", default=[], help="keep this challenge (PartiPrompts; repeatable)")
    p.add_argument("--tag", action="append", default=[], help="keep rows with this tag (GenEval; repeatable)")
    p.add_argument("--limit", type=positive_int, help="at most this many prompts (after filters and shuffle)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the prompts (with --seed) before --limit")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed and base seed of each run (default 0)")
    p.add_argument("--iterations", type=positive_int, help="iterations per prompt, the original's included")
    p.add_argument("--candidates", type=positive_int, help="new prompts per iteration")
    p.add_argument("--seeds", type=positive_int, help="search images per prompt (seeds 0..S-1)")
    p.add_argument("--heldout-seeds", type=non_negative_int, dest="heldout_seeds",
                   help="held-out seeds per prompt (0: none)")
    p.add_argument("--generator", help="generator registry name or JSON spec")
    p.add_argument("--scorer", action="append", dest="scorers", help="scorer registry name or JSON spec (repeatable)")
    p.add_argument("--llm", help="LLM registry name")
    p.add_argument("--proposer", help="proposer registry name (opt2i, rules)")
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads per process (default: cores / local processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mmopt.apps.batch import BatchBusyError, run_batch
    from mmopt.commands.optimize import _spec

    overrides = {
        "iterations": args.iterations, "candidates": args.candidates, "seeds": args.seeds,
        "heldout_seeds": args.heldout_seeds or None, "generator": _spec(args.generator),
        "scorers": [_spec(s) for s in args.scorers] if args.scorers else None, "llm": _spec(args.llm),
        "proposer": _spec(args.proposer),
    }
    try:
        result = run_batch(args.input, out=args.out, preset=args.preset, fmt=args.format,
                           categories=args.category, challenges=args.challenge, tags=args.tag, limit=args.limit,
                           shuffle=args.shuffle, seed=args.seed, overrides=overrides,
                           progress=not args.no_progress, drop_heldout=args.heldout_seeds == 0, threads=args.threads)
    except BatchBusyError as e:
        print(f"mmopt: {e}")
        return 1
    if result.summary:
        from mmopt.apps.batch import format_summary

        print(format_summary(result.summary), end="")
        print(f"ran {result.ran} prompt(s) now on process 0 of {result.processes}, {result.skipped} were already "
              "finished; "
              f"results: {result.out / 'results.jsonl'}")
    return 0
