"""Sample efficiency on ShapesWorld: does optimizing the prompt beat drawing more seeds?

For each of a fixed set of held-out compositional prompts (``benchmark_prompts``:
2-4 objects with attributes, counts and relations, never a training caption)
every method gets the same image budget on the shipped ShapesWorld generator
(``offline:t2i``). The prompt it picks is then re-scored with detector-backed
DSG (``offline:dsg``) on held-out seeds the search never saw. Methods:

* ``best-of-N``: the compute-matched baseline; the original prompt on N seeds.
  Its prompt is the original, so its held-out score is the original's; the
  table also lists its best single image among the N (what picking a seed buys).
* ``PROPOSER/STRATEGY`` for every proposer and strategy below, e.g.
  ``edits/halving`` (rule edits, successive halving on seeds, honest selection)
  or ``opt2i/topk`` (the OPT2I rewriter with the embedded SmolLM2-135M, top-10
  history). ``--methods all`` runs every combination.

Intent-preserving by default: the objective carries the ShapesWorld intent check
(``intent:shapes``: the caption parser's reading of the rewrite must be the
intent's, with no unreadable words) and the drift guard as hard constraints,
checked before rendering (``prescreen``), with rule edits as the fallback when a
proposer returns nothing usable. A chosen prompt that fails the intent check
(possible only with ``--no-intent``) counts as the original: no gain.

Every method runs once per budget (a real run that stops at B images, its honest
selection included); runs share one content cache, so a larger budget re-renders
nothing a smaller one already did. Results are appended to ``OUT/results.jsonl``
one (prompt, method) at a time, so a stopped run resumes; ``OUT/table.md`` and
``OUT/sample_efficiency.png`` (matplotlib) summarise them.

    python benchmarks/sample_efficiency.py --out runs/sample_eff --methods best-of-N,edits/halving
    python benchmarks/sample_efficiency.py --quick --out runs/sample_quick      # smoke: ~1 min
    # the same searches judged on 32 held-out seeds (re-scores the recorded choices; searches 2 again)
    python benchmarks/sample_efficiency.py --out runs/sample_eff32 --heldout 32 --rescore runs/sample_eff/results.jsonl

On 2 shared CPU cores one method costs roughly 1-2 minutes per prompt for the three
budgets with ``--torch-threads 1`` (LLM methods more: ``--llm-threads``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

#: The strategies compared, as registry specs (honest selection where the name says so or
#: where the strategy's default has it: halving and ucb confirm on fresh seeds by default).
STRATEGIES = {
    "topk": {"name": "topk", "kwargs": {"k": 10}},
    "topk+confirm": {"name": "topk", "kwargs": {"k": 10, "confirm": 2}},
    "greedy": {"name": "greedy", "kwargs": {"k": 20}},
    "beam": {"name": "beam", "kwargs": {"width": 3}},
    "halving": {"name": "halving", "kwargs": {"eta": 2, "min_seeds": 1, "new": 8}},
    "ucb": {"name": "ucb", "kwargs": {"c": 1.0, "pulls": 4, "new": 4}},
    "evolve": {"name": "evolve", "kwargs": {"population": 8, "parents": 4, "crossover": 2, "confirm": 2}},
    "tpe": {"name": "tpe", "kwargs": {"confirm": 2}},
}
#: The proposers compared; the ones marked True need the LLM.
PROPOSERS = {"edits": False, "rules": False, "negative": False, "opt2i": True, "concepts": True,
             "textgrad": True, "expand": True}
BASELINE = "best-of-N"


def all_methods() -> list[str]:
    return [BASELINE] + [f"{p}/{s}" for p in PROPOSERS for s in STRATEGIES]


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/sample_efficiency", help="output folder (results.jsonl, table.md, PNG)")
    p.add_argument("--prompts", type=int, default=50, help="number of benchmark prompts (>= 50 for the full run)")
    p.add_argument("--first", type=int, default=0, help="skip the first FIRST prompts (split a run)")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of benchmark_prompts (another seed: a "
                   "second, independent prompt set)")
    p.add_argument("--budgets", default="64,128,256", help="image budgets per prompt (comma-separated)")
    p.add_argument("--seeds", type=int, default=4, help="search seeds per candidate prompt")
    p.add_argument("--candidates", type=int, default=4, help="candidates per iteration")
    p.add_argument("--heldout", type=int, default=8, help="held-out seeds for the re-scoring")
    p.add_argument("--methods", default="best-of-N,edits/halving",
                   help="comma-separated PROPOSER/STRATEGY names and best-of-N, or 'all' "
                        f"(proposers: {', '.join(PROPOSERS)}; strategies: {', '.join(STRATEGIES)})")
    p.add_argument("--no-intent", action="store_true",
                   help="no intent constraints (the chosen prompt is still checked: a failure counts as the original)")
    p.add_argument("--drift-min", type=float, default=0.6, help="the drift guard's floor (similarity to the intent)")
    p.add_argument("--device", default=None, help="generator device (default: automatic)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine more threads wait on each other)")
    p.add_argument("--llm-threads", type=int, default=1, help="llama.cpp threads for the embedded LLM")
    p.add_argument("--rescore", default=None, metavar="FILE",
                   help="take the searches recorded in FILE (a results.jsonl of the same settings but another "
                        "--heldout) and score their chosen prompts on this run's held-out seeds instead of "
                        "searching again (the search never sees held-out seeds); see --verify")
    p.add_argument("--verify", type=int, default=2,
                   help="with --rescore: search the first VERIFY prompts again and stop unless every budget "
                        "chooses the recorded prompt")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: write the table and plot from what OUT/results.jsonl holds")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 prompts, budgets 16,32, 2 seeds, 2 held-out seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.budgets, args.seeds, args.candidates, args.heldout = 3, "16,32", 2, 2, 2
    args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    args.methods = all_methods() if args.methods.strip() == "all" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m != BASELINE and (m.count("/") != 1 or m.split("/")[0] not in PROPOSERS
                                                         or m.split("/")[1] not in STRATEGIES)]
    if bad:
        raise ValueError(f"unknown methods {bad}; expected best-of-N or PROPOSER/STRATEGY with a proposer in "
                         f"{sorted(PROPOSERS)} and a strategy in {sorted(STRATEGIES)}")
    if not args.budgets or args.budgets[0] < args.seeds:
        raise ValueError(f"every budget must be >= --seeds ({args.seeds}), got {args.budgets}")
    return args


# Held-out seeds start far from the search seeds (0..N-1 for best-of-N) and the fresh seeds.
HELDOUT_BASE = 1_000_000


def _strategy(name: str, args) -> dict:
    spec = json.loads(json.dumps(STRATEGIES[name]))
    if spec["kwargs"].get("confirm") or name in ("halving", "ucb"):
        spec["kwargs"].setdefault("confirm_seeds", args.seeds)
    return spec


def _objective(components: dict, intent: bool, drift_min: float):
    from mmopt.objective import Constraint, Objective

    scorers = components["scorers"]
    weights = {s.name: (1.0 if s.name == "offline:dsg" else 0.0) for s in scorers}
    constraints = [Constraint("intent:shapes", min=1.0), Constraint("drift:minilm", min=drift_min)] if intent else []
    return Objective.for_scorers(scorers, weights, constraints)


def heldout_judge(prompt: str, args, components: dict):
    """``held(candidate)``: the candidate's DSG for ``prompt`` on the held-out seeds (memoised)."""
    from mmopt import registry
    from mmopt.optimizer import Budget, Optimizer

    heldout = list(range(HELDOUT_BASE, HELDOUT_BASE + args.heldout))
    judge = Optimizer(components["generator"], [components["dsg"]], registry.create("proposer", "edits", reuse=False),
                      seeds=args.seeds, cache=components["cache"],
                      budget=Budget(iterations=1))  # only its evaluate_prompts is used: the held-out scores
    memo: dict = {}

    def held(cand) -> float:
        if cand not in memo:
            memo[cand] = judge.evaluate_prompts(prompt, [cand], heldout)[0].objective
        return memo[cand]

    return held


def rescore_record(rec: dict, args, components: dict) -> dict:
    """A finished (prompt, method) record with its held-out scores taken again on this run's held-out
    seeds. The search never sees the held-out seeds (they are only the judge's), so its choices at
    every budget stand as recorded; only ``heldout`` and ``original_heldout`` change."""
    from mmopt.types import Candidate

    held = heldout_judge(rec["prompt"], args, components)
    original = held(Candidate(rec["prompt"]))
    rows = [{**row, "heldout": held(Candidate(row["best_prompt"], negative=row.get("best_negative"))),
             "original_heldout": original} for row in rec["rows"]]
    return {**rec, "rows": rows}


def _recorded_searches(args, key_cfg: dict) -> dict:
    """(prompt, method) -> record of ``args.rescore`` whose settings are this run's but for the held-out count."""
    def settings(cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k != "heldout"}

    same = settings(key_cfg)
    recorded = {}
    for line in Path(args.rescore).read_text().splitlines():
        r = json.loads(line)
        if settings(r.get("config") or {}) == same:
            recorded[(r["prompt"], r["method"])] = r
    if not recorded:
        raise SystemExit(f"--rescore {args.rescore}: no record with this run's settings ({same}); expected a "
                         "results.jsonl written with the same budgets, seeds, candidates and intent settings")
    return recorded


def _check_same_choices(fresh: dict, old: dict) -> None:
    """Stop unless a repeated search chose, at every budget, the prompt the recorded one chose."""
    def choices(rec: dict) -> list:
        return [(row["budget"], row["best_prompt"], row.get("best_negative")) for row in rec["rows"]]

    now, then = choices(fresh), choices(old)
    if now != then:
        raise SystemExit(f"--rescore: searching {fresh['prompt']!r} with {fresh['method']} again chose {now}, "
                         f"the record chose {then}; the recorded searches do not reproduce here, run them again")


def run_prompt(prompt: str, method: str, args, components: dict) -> dict:
    """One (prompt, method): at every budget the chosen prompt, its scores, and its held-out DSG."""
    from mmopt import registry
    from mmopt.optimizer import Budget, Optimizer

    gen, cache = components["generator"], components["cache"]
    dsg, intent_check = components["dsg"], components["intent"]
    top = args.budgets[-1]
    t0 = time.time()
    held = heldout_judge(prompt, args, components)

    if method == BASELINE:
        # the original prompt on `top` seeds; the first B of them form budget B
        gens = gen.generate([prompt] * top, list(range(top)))
        per_image = [s.value for s in dsg.score(gens, prompt)]
        h = held(prompt)
        rows = [{"budget": b, "best_prompt": prompt, "search": statistics.fmean(per_image[:b]),
                 "reported": statistics.fmean(per_image[:b]), "best_image": max(per_image[:b]), "heldout": h,
                 "original_heldout": h, "intent_ok": True} for b in args.budgets]
        return {"prompt": prompt, "method": method, "rows": rows, "seconds": round(time.time() - t0, 1)}

    proposer_name, strategy_name = method.split("/")
    kwargs = {"llm": components["llm"]} if PROPOSERS[proposer_name] else {}
    rows = []
    for b in args.budgets:
        proposer = registry.create("proposer", proposer_name, reuse=False, **kwargs)
        strategy = registry.create("strategy", _strategy(strategy_name, args), reuse=False)
        opt = Optimizer(gen, components["scorers"], proposer, objective=components["objective"], strategy=strategy,
                        seeds=args.seeds, candidates=args.candidates, cache=cache, seed=0,
                        budget=Budget(iterations=10_000, images=b), prescreen=not args.no_intent,
                        fallback=None if args.no_intent else registry.create("proposer", "edits", reuse=False))
        t1 = time.time()
        result = opt.run(prompt)
        best = result.best
        # the intent check on the chosen prompt itself: a failure counts as the original
        ok = intent_check.check(best.prompt, prompt)["ok"]
        chosen = best.candidate if ok else result.original.candidate
        fresh = None
        if result.selection:
            fresh = next(r["fresh"] for r in result.selection if r["index"] == best.index)
        search = best.objective if ok else result.original.objective
        # what the run reports for its choice: after an honest selection, its score on seeds that
        # chose nothing (Result.estimate); otherwise the search-seed score it was chosen on
        reported = result.estimate if (ok and result.estimate is not None) else search
        fallback = sum(1 for t in result.trials if t.meta.get("origin") == "fallback")
        rows.append({"budget": b, "best_prompt": chosen.text, "best_negative": chosen.negative,
                     "search": search, "fresh": fresh if ok else None, "reported": reported,
                     "heldout": held(chosen), "original_heldout": held(result.original.candidate),
                     "intent_ok": ok, "images": result.images, "trials": len(result.trials),
                     "llm_calls": result.llm_calls, "fallback": fallback, "seconds": round(time.time() - t1, 1)})
    return {"prompt": prompt, "method": method, "rows": rows, "seconds": round(time.time() - t0, 1)}


def _at(recs: list[dict], budget: int, value) -> list[float]:
    """``value(record, row)`` for every record's row at ``budget``."""
    return [value(r, row) for r in recs for row in r["rows"] if row["budget"] == budget]


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def _wtl(diffs: list[float]) -> str:
    return f"{sum(d > 1e-9 for d in diffs)} / {sum(abs(d) <= 1e-9 for d in diffs)} / {sum(d < -1e-9 for d in diffs)}"


def summarise(records: list[dict], budgets: list[int], methods: list[str]) -> tuple[str, dict]:
    """Markdown tables (mean ± standard error over prompts) and the curve data."""
    by_method = {m: [r for r in records if r["method"] == m] for m in methods}
    searched = {m: recs for m, recs in by_method.items() if m != BASELINE and recs}  # the optimizers run
    curves: dict = {}
    lines = ["| method | " + " | ".join(f"{b} images: held-out DSG" for b in budgets) + " | prompts |",
             "|---" * (len(budgets) + 2) + "|"]
    for m, recs in by_method.items():
        if not recs:
            continue
        ys = [_mean_se(_at(recs, b, lambda r, row: row["heldout"])) for b in budgets]
        curves[m] = ys
        lines.append(f"| {m} | " + " | ".join(f"{mean:.3f} ± {se:.3f}" for mean, se in ys) + f" | {len(recs)} |")
    base = [r for r in records if r["method"] == BASELINE]
    if base:
        cells = [f"{statistics.fmean(_at(base, b, lambda r, row: row['best_image'])):.3f}" for b in budgets]
        lines.append("| best-of-N: best single image in search | " + " | ".join(cells) + f" | {len(base)} |")
        lines += ["", "Paired difference from best-of-N on the same prompts (method - baseline, mean ± s.e.; "
                  "wins / ties / losses below each):", "",
                  "| method | " + " | ".join(f"{b} images" for b in budgets) + " | prompts |",
                  "|---" * (len(budgets) + 2) + "|"]
        held = {(r["prompt"], row["budget"]): row["heldout"] for r in base for row in r["rows"]}
        for m, recs in searched.items():
            recs = [r for r in recs if all((r["prompt"], b) in held for b in budgets)]
            if not recs:
                continue
            diffs = {b: _at(recs, b, lambda r, row: row["heldout"] - held[(r["prompt"], row["budget"])])
                     for b in budgets}
            cells = [f"{mean:+.3f} ± {se:.3f} ({_wtl(diffs[b])})"
                     for b, (mean, se) in zip(budgets, (_mean_se(diffs[b]) for b in budgets))]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {len(recs)} |")
    # The winner's curse: what the search reports for its choice (after an honest selection its
    # score on seeds that chose nothing, else the search-seed score) minus its held-out score.
    lines += ["", "Optimism of the search (the score the search reports for its chosen prompt - its held-out "
              "score; search-seed score alone in brackets):", "",
              "| method | " + " | ".join(f"{b} images" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m, recs in searched.items():
        cells = []
        for b in budgets:
            rep = statistics.fmean(_at(recs, b, lambda r, row: row.get("reported", row["search"]) - row["heldout"]))
            raw = statistics.fmean(_at(recs, b, lambda r, row: row["search"] - row["heldout"]))
            cells.append(f"{rep:+.3f} ({raw:+.3f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    # What the runs cost and did: intent failures (counted as the original), fallback candidates, LLM calls
    lines += ["", "Per run at the largest budget (means over prompts): images, trials, LLM calls, candidates "
              "from the rule-edit fallback, chosen prompts that failed the intent check, seconds:", "",
              "| method | images | trials | LLM calls | fallback | intent failures | seconds |",
              "|---|---|---|---|---|---|---|"]
    for m, recs in searched.items():
        rows = [row for r in recs for row in r["rows"] if row["budget"] == budgets[-1]]
        if not rows:
            continue

        def mean(key):
            vals = [row.get(key) for row in rows if row.get(key) is not None]
            return statistics.fmean(vals) if vals else float("nan")

        fails = sum(not row.get("intent_ok", True) for row in rows)
        # an LLM-free proposer makes no LLM call (records written before it reported 0 counted proposals)
        calls = mean("llm_calls") if PROPOSERS.get(m.split("/")[0], True) else 0.0
        lines.append(f"| {m} | {mean('images'):.0f} | {mean('trials'):.1f} | {calls:.1f} | "
                     f"{mean('fallback'):.1f} | {fails} | {mean('seconds'):.0f} |")
    return "\n".join(lines) + "\n", curves


def plot(curves: dict, budgets: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, ys in curves.items():
        ax.errorbar(budgets, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("images generated per prompt")
    ax.set_ylabel("DSG of the chosen prompt on held-out seeds")
    ax.set_title("ShapesWorld sample efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmopt.shapesworld.grammar import benchmark_prompts

    # 1. inputs and the fixed prompt set (held out from training by construction)
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = benchmark_prompts(args.prompts, seed=args.prompt_seed)[args.first:]

    # 2. components, loaded once; one cache so every method reuses shared renders
    components: dict = {}
    if not args.table_only:
        import torch

        from mmopt import registry
        from mmopt.cache import Cache

        torch.set_num_threads(args.torch_threads)
        gen_kwargs = {"max_batch": 64, **({"device": args.device} if args.device else {})}
        cache = Cache(out / "cache.sqlite")
        dsg = registry.create("scorer", "offline:dsg")
        intent = registry.create("scorer", "intent:shapes")
        drift = registry.create("scorer", "drift:minilm", threshold=args.drift_min)
        components = {"generator": registry.create("generator", "offline:t2i", **gen_kwargs), "dsg": dsg,
                      "intent": intent, "cache": cache, "scorers": [dsg, intent, drift]}
        components["objective"] = _objective(components, not args.no_intent, args.drift_min)
        if any(m != BASELINE and PROPOSERS[m.split("/")[0]] for m in args.methods):
            llm_kwargs = {"n_threads": args.llm_threads} if args.llm_threads else {}
            components["llm"] = registry.create("llm", "smollm2", cache=cache, **llm_kwargs)

    # 3. run what is not done yet (resumable)
    path = out / "results.jsonl"
    done = set()
    records = []
    key_cfg = {"budgets": args.budgets, "seeds": args.seeds, "candidates": args.candidates, "heldout": args.heldout,
               "intent": not args.no_intent, "drift_min": args.drift_min, "version": 2}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("config") == key_cfg:
                records.append(r)
                done.add((r["prompt"], r["method"]))
    recorded = _recorded_searches(args, key_cfg) if args.rescore else {}
    with path.open("a") as f:
        for i, prompt in enumerate([] if args.table_only else prompts):
            for m in args.methods:
                if (prompt, m) in done:
                    continue
                old = recorded.get((prompt, m))
                if old is not None and i >= args.verify:
                    rec = {**rescore_record(old, args, components), "rescored_from": args.rescore}
                else:
                    rec = run_prompt(prompt, m, args, components)
                    if old is not None:
                        _check_same_choices(rec, old)
                rec["config"] = key_cfg
                f.write(json.dumps(rec) + "\n")
                f.flush()
                records.append(rec)
                last = rec["rows"][-1]
                print(f"[{args.first + i + 1}/{args.first + len(prompts)}] {m:18s} held-out "
                      + " ".join(f"{row['heldout']:.3f}" for row in rec["rows"])
                      + f" ({rec['seconds']} s) {prompt!r} -> {last['best_prompt']!r}", flush=True)

    # 4. table and plot
    wanted = set(benchmark_prompts(args.prompts, seed=args.prompt_seed))
    records = [r for r in records if r["prompt"] in wanted]
    methods = list(dict.fromkeys([BASELINE] + args.methods + [r["method"] for r in records]))
    table, curves = summarise(records, args.budgets, methods)
    header = (f"ShapesWorld sample efficiency: {len(wanted)} prompts (prompt seed {args.prompt_seed}), "
              f"budgets {args.budgets}, {args.seeds} search seeds per candidate, {args.candidates} candidates per "
              f"iteration, {args.heldout} held-out seeds; intent constraints "
              f"{'off' if args.no_intent else 'on'}; mean ± s.e. over prompts.\n\n")
    (out / "table.md").write_text(header + table)
    plot(curves, args.budgets, out / "sample_efficiency.png")
    print(header + table)
    return {"table": table, "curves": curves}


if __name__ == "__main__":
    main()
