"""Command line: ``mmopt optimize``, ``mmopt runs``, ``mmopt demo``.

    mmopt optimize "a red cube on a blue sphere" --preset turbo --iterations 8
    mmopt runs --out runs/              # list runs; `mmopt runs RUN_ID` shows one
    mmopt demo                          # the whole loop offline, writes an HTML page

Re-running the same ``optimize`` command with the same ``--out`` resumes the
run (the run id is a hash of the prompt and the configuration): finished
trials are read back, nothing is recomputed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _progress_callback(total_iterations: int):
    """A tqdm bar over iterations that shows the best objective so far."""
    from tqdm import tqdm

    bar = tqdm(total=total_iterations, unit="iter", desc="optimizing", file=sys.stderr, dynamic_ncols=True)

    def callback(event, **info):
        if event == "iteration":
            bar.update(1)
            bar.set_postfix(best=f"{info['best'].objective:.3f}", trials=len(info["trials"]))
        elif event == "done":
            bar.close()

    return callback


def _add_run_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, help="preset name (turbo, offline) or JSON path")
    p.add_argument("--generator", help="generator registry name, e.g. diffusers:stabilityai/sd-turbo")
    p.add_argument("--scorer", action="append", dest="scorers",
                   help="scorer registry name (repeatable), e.g. clip:ViT-B-32/openai")
    p.add_argument("--llm", help="LLM registry name: smollm2, gguf:/path.gguf, hf:ORG/MODEL, openai:MODEL@URL")
    p.add_argument("--proposer", help="proposer registry name (opt2i, rules)")
    p.add_argument("--iterations", type=int, help="iterations including the original prompt's (iteration 0)")
    p.add_argument("--candidates", type=int, help="new prompts per iteration")
    p.add_argument("--seeds", type=int, help="images per prompt (search seeds 0..S-1)")
    p.add_argument("--max-images", type=int, dest="max_images", help="stop after this many images")
    p.add_argument("--patience", type=int, help="stop after this many iterations without gain")
    p.add_argument("--seed", type=int, default=0, help="base seed of the proposer (default 0)")
    p.add_argument("--lookahead", action="store_true", default=None,
                   help="the LLM writes the next iteration's prompts while this one renders "
                        "(from a history one iteration older)")
    p.add_argument("--protect", action="append", default=[], help="a word or span every rewrite must keep")
    p.add_argument("--run-id", dest="run_id", help="name the run (default: hash of prompt + config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_optimize(args) -> int:
    from mmopt.apps.report import write_report
    from mmopt.presets import build_optimizer, load_preset
    from mmopt.store import Store

    preset = load_preset(args.preset)
    store = Store(args.out)
    callbacks = [] if args.no_progress else [_progress_callback(args.iterations or preset.get("iterations", 5))]
    opt = build_optimizer(
        preset, store=store, seed=args.seed, callbacks=callbacks, protected=args.protect,
        generator=args.generator, scorers=args.scorers, llm=args.llm, proposer=args.proposer,
        iterations=args.iterations, candidates=args.candidates, seeds=args.seeds,
        max_images=args.max_images, patience=args.patience, lookahead=args.lookahead,
    )
    result = opt.run(args.prompt, run_id=args.run_id)
    report = write_report(store, result.run_id)
    print(f"run:       {result.run_id} ({result.stopped}; {len(result.trials)} trials, {result.images} images, "
          f"{result.wall_time_s:.1f} s)")
    print(f"original:  {result.original.prompt}")
    print(f"           objective {result.original.objective:.4f}  " + _fmt_scores(result.original.scores))
    print(f"best:      {result.best.prompt}")
    print(f"           objective {result.best.objective:.4f}  " + _fmt_scores(result.best.scores))
    print(f"gain:      {result.gain:+.4f} (on the search seeds)")
    if result.failures:
        print(f"note:      {len(result.failures)} proposer failure(s) recorded; the best so far was kept")
    print(f"report:    {report}")
    return 0


def _fmt_scores(scores: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def cmd_runs(args) -> int:
    from mmopt.store import Store

    if not (Path(args.out) / "mmopt.sqlite").exists():
        print(f"no runs in {args.out} (no mmopt.sqlite there)")
        return 1
    store = Store(args.out)
    if args.run_id:
        run = store.get_run(args.run_id)
        print(json.dumps({k: v for k, v in run.items() if k != "config"}, indent=2))
        for t in store.load_trials(args.run_id):
            flag = "" if t.feasible else "  [infeasible]"
            print(f"  it{t.iteration} #{t.index:<3} {t.objective:.4f}  {t.prompt}{flag}")
        return 0
    runs = store.list_runs()
    if not runs:
        print(f"no runs in {args.out}")
    for r in runs:
        s = r["summary"] or {}
        gain = f"gain {s['gain']:+.4f}" if "gain" in s else ""
        print(f"{r['run_id']}  {r['status']:<11} {r['trials']:>3} trials  {gain:<14} {r['intent']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmopt", description="Optimize prompts for generative vision models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="optimize one prompt")
    p.add_argument("prompt")
    p.add_argument("--out", default="runs", help="output folder (store + media); default ./runs")
    _add_run_options(p, "turbo")

    p = sub.add_parser("demo", help="run the whole loop offline on the project's own small models")
    p.add_argument("--prompt", default=None, help="prompt to optimize (default: a ShapesWorld scene)")
    p.add_argument("--out", default="runs-demo", help="output folder; default ./runs-demo")
    _add_run_options(p, "offline")

    p = sub.add_parser("runs", help="list stored runs, or show one")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--out", default="runs", help="output folder; default ./runs")

    args = parser.parse_args(argv)
    try:
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "demo" and args.prompt is None:
            from mmopt.demo import DEMO_PROMPT
            args.prompt = DEMO_PROMPT
        return cmd_optimize(args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are stored; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as e:
        print(f"mmopt: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # model/LLM failures: say what failed, keep the traceback for -v users
        from mmopt.errors import MmoptError

        if isinstance(e, (MmoptError, ImportError)) and not os.environ.get("MMOPT_DEBUG"):
            print(f"mmopt: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
