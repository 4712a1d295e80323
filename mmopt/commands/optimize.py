"""``mmopt optimize PROMPT``: optimize one prompt under a preset and overrides."""
from __future__ import annotations

import argparse
import sys

from mmopt.commands._options import positive_int, progress_bar

HELP = "optimize one prompt"


def add_arguments(p) -> None:
    p.add_argument("prompt")
    p.add_argument("--out", default="runs", help="output folder (store + media); default ./runs")
    add_run_options(p, default_preset="turbo")


def add_run_options(p, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, help="preset name (turbo, offline, quality) or JSON path")
    p.add_argument("--generator", help="generator registry name, e.g. diffusers:stabilityai/sd-turbo")
    p.add_argument("--scorer", action="append", dest="scorers",
                   help="scorer registry name (repeatable), e.g. clip:ViT-B-32/openai")
    p.add_argument("--llm", help="LLM registry name: smollm2, gguf:/path.gguf, hf:ORG/MODEL, openai:MODEL@URL")
    p.add_argument("--proposer", help="proposer registry name (opt2i, edits, concepts, textgrad, expand, negative, "
                                      "raw, rules)")
    p.add_argument("--strategy", help="strategy registry name (topk:10, append:10, greedy, beam:3, halving, ucb, evolve, tpe)")
    p.add_argument("--fallback", help="proposer asked when the proposer leaves an iteration short (e.g. edits)")
    p.add_argument("--prescreen", action=argparse.BooleanOptionalAction, default=None,
                   help="check text-only constraints (drift guard, intent check) before rendering")
    p.add_argument("--iterations", type=positive_int, help="iterations including the original prompt's (iteration 0)")
    p.add_argument("--candidates", type=positive_int, help="new prompts per iteration")
    p.add_argument("--seeds", type=positive_int, help="images per prompt (search seeds 0..S-1)")
    p.add_argument("--max-images", type=positive_int, dest="max_images", help="stop after this many images")
    p.add_argument("--patience", type=positive_int, help="stop after this many iterations without gain")
    p.add_argument("--heldout-seeds", type=positive_int, dest="heldout_seeds",
                   help="re-score the best and the original on this many unseen seeds")
    p.add_argument("--seed", type=int, default=0, help="base seed of the proposer (default 0)")
    p.add_argument("--lookahead", action="store_true", default=None,
                   help="the LLM writes the next iteration's prompts while this one renders "
                        "(from a history one iteration older)")
    p.add_argument("--protect", action="append", default=[], help="a word or span every rewrite must keep")
    p.add_argument("--run-id", dest="run_id", help="name the run (default: hash of prompt + config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _progress_callback(opt):
    """A tqdm bar that shows the best objective so far: over iterations, or for a video
    generator over frames x candidates (a clip's frames x the seeds, per candidate)."""
    gen = opt.generator
    per_trial = int(getattr(gen, "num_frames", 1)) * len(opt.seeds) \
        if getattr(gen, "media_kind", "image") == "video" else 0
    by_images = not per_trial and opt.budget.images is not None
    if per_trial:
        bar = progress_bar(per_trial * (1 + (opt.budget.iterations - 1) * opt.candidates), "optimizing", unit="frame")
    elif by_images:  # an image budget: the bar counts images, whatever the iterations
        bar = progress_bar(opt.budget.images, "optimizing", unit="img")
    else:
        bar = progress_bar(opt.budget.iterations, "optimizing", unit="iter")

    def callback(event, **info):
        if event == "trial" and per_trial:
            bar.update(per_trial)
        elif event == "iteration":
            if by_images:
                bar.update(max(0, info.get("images", bar.n) - bar.n))
            elif not per_trial:
                bar.update(1)
            bar.set_postfix(best=f"{info['best'].objective:.3f}", trials=len(info["trials"]))
        elif event == "done":
            bar.close()

    return callback


def _fmt_scores(scores: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def _spec(text: str | None):
    """A component given on the command line: a registry name, or a JSON spec {"name", "kwargs"}."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"a component spec starting with '{{' must be JSON like "
                         f"{{\"name\": \"dsg:blip-vqa\", \"kwargs\": {{}}}}; got {text!r} ({e.msg})") from None


def build_from_args(args, callbacks=()):
    """The Optimizer and Store that ``args`` describe. Every option is checked before the
    store is opened or a model loads."""
    from mmopt.presets import build_optimizer, load_preset, resolve
    from mmopt.store import Store, check_run_id

    if args.run_id is not None:
        check_run_id(args.run_id)
    spec = resolve(
        load_preset(args.preset), generator=_spec(args.generator),
        scorers=[_spec(s) for s in args.scorers] if args.scorers else None, llm=_spec(args.llm),
        proposer=_spec(args.proposer), strategy=_spec(args.strategy), iterations=args.iterations,
        candidates=args.candidates, seeds=args.seeds, max_images=args.max_images, patience=args.patience,
        lookahead=args.lookahead, heldout_seeds=args.heldout_seeds, fallback=_spec(args.fallback),
        prescreen=args.prescreen,
    )
    store = Store(args.out)
    opt = build_optimizer(spec, store=store, seed=args.seed, callbacks=callbacks, protected=args.protect)
    return opt, store


def run(args) -> int:
    from mmopt.apps.report import write_report

    opt, store = build_from_args(args)
    plan = opt.projection()
    print(f"budget:    up to {plan['images']} images"
          + (f" ({plan['confirmation_images']} of them to confirm the winner on fresh seeds)"
             if plan["confirmation_images"] else "")
          + f", {plan['iterations']} iterations"
          + (f", {plan['llm_calls']} LLM calls" if plan["llm_calls"] else "")
          + (f", then {plan['heldout_images']} held-out images" if plan["heldout_images"] else ""))
    if not args.no_progress:  # the bar appears once everything is valid and loaded
        opt.callbacks.append(_progress_callback(opt))
    result = opt.run(args.prompt, run_id=args.run_id)
    report = write_report(store, result.run_id)
    print(f"run:       {result.run_id} ({result.stopped}; {len(result.trials)} trials, {result.images} images, "
          f"{result.wall_time_s:.1f} s)")
    print(f"original:  {result.original.prompt}")
    print(f"           objective {result.original.objective:.4f}  " + _fmt_scores(result.original.scores)
          + ("" if result.original_feasible else "  [breaks a constraint: "
             + "; ".join(result.original.meta.get("violations", [])) + "]"))
    print(f"best:      {result.best.prompt}" + (f"  (negative: {result.best.negative})" if result.best.negative else ""))
    print(f"           objective {result.best.objective:.4f}  " + _fmt_scores(result.best.scores))
    if not result.feasible:
        print("gain:      +0.0000 (no candidate met the constraints; the original is returned)")
    else:
        print(f"gain:      {result.gain:+.4f} (on the search seeds, where the best was chosen)")
    if result.selection:
        fresh = {row["index"]: row for row in result.selection}
        print(f"selection: on {result.selection[0]['fresh_seeds']} fresh seeds the original scored "
              f"{fresh[result.original.index]['fresh']:.4f} and the winner {fresh[result.best.index]['fresh']:.4f} "
              f"(of {len(result.selection)} finalists); the winner's own estimate {result.estimate:.4f}")
    ledger = result.ledger
    print(f"spent:     {ledger['images']} images, {ledger['llm_calls']} LLM calls ({ledger['llm_tokens']} tokens), "
          f"{ledger['device_s']:.1f} s rendering and scoring, {ledger['wall_s']:.1f} s in all")
    if result.heldout:
        print(f"held-out:  {result.heldout_gain:+.4f} on {len(result.heldout['best'].meta['seeds'])} unseen seeds "
              f"(original {result.heldout['original'].objective:.4f} -> best {result.heldout['best'].objective:.4f})")
    if result.failures:
        print(f"note:      {len(result.failures)} proposer failure(s) recorded; the best so far was kept")
    print(f"report:    {report}", file=sys.stdout)
    return 0
