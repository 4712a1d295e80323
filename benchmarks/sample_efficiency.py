"""Sample efficiency on ShapesWorld: does optimizing the prompt beat drawing more seeds?

For each of a fixed set of held-out compositional prompts (``benchmark_prompts``:
2-4 objects with attributes, counts and relations, never a training caption)
every method gets the same image budget on the shipped ShapesWorld generator
(``offline:t2i``). Its best prompt is then re-scored with detector-backed DSG
(``offline:dsg``) on held-out seeds the search never saw. Methods:

* ``best-of-N``: the compute-matched baseline; the original prompt on N seeds.
  Its prompt is the original, so its held-out score is the original's; the
  table also lists its best single image among the N (what picking a seed buys).
* ``opt2i/topk``: the OPT2I rewriter with the embedded SmolLM2-135M, top-10 history.
* ``opt2i/beam``: the same rewriter with a beam history (width 3).
* ``rules/topk``, ``rules/beam``: the rule-based proposer (style-modifier edits)
  with either history.

Every optimizer runs once at the largest budget; the anytime curve at a smaller
budget B uses the trials that fit in B images (trial k costs ``seeds`` images,
the original prompt is trial 0). Results are appended to
``OUT/results.jsonl`` one (prompt, method) at a time, so a stopped run resumes;
``OUT/table.md`` and ``OUT/sample_efficiency.png`` (matplotlib) summarise them.

    python benchmarks/sample_efficiency.py --out runs/sample_eff           # full: 50 prompts
    python benchmarks/sample_efficiency.py --quick --out runs/sample_quick # smoke: ~2 min

The full run renders about 1,000 images and makes ~30 LLM calls per prompt:
roughly 3-5 minutes per prompt on 2 CPU cores, so use ``--prompts`` /
``--methods`` to split it, or a GPU (``--device cuda``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

METHODS = ("best-of-N", "opt2i/topk", "opt2i/beam", "rules/topk", "rules/beam")


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/sample_efficiency", help="output folder (results.jsonl, table.md, PNG)")
    p.add_argument("--prompts", type=int, default=50, help="number of benchmark prompts (>= 50 for the full run)")
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of benchmark_prompts")
    p.add_argument("--budgets", default="64,128,256", help="image budgets per prompt (comma-separated)")
    p.add_argument("--seeds", type=int, default=4, help="search seeds per candidate prompt")
    p.add_argument("--candidates", type=int, default=4, help="candidates per iteration")
    p.add_argument("--heldout", type=int, default=8, help="held-out seeds for the re-scoring")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--device", default=None, help="generator device (default: automatic)")
    p.add_argument("--llm-threads", type=int, default=None,
                   help="llama.cpp threads for the embedded LLM (default: half the cores; all cores are "
                        "faster when nothing else runs, since the loop waits on the LLM)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: write the table and plot from what OUT/results.jsonl holds")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 prompts, budgets 8,16, 2 seeds, 2 held-out seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.budgets, args.seeds, args.candidates, args.heldout = 3, "8,16", 2, 2, 2
    args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; expected a subset of {METHODS}")
    if not args.budgets or args.budgets[0] < args.seeds:
        raise ValueError(f"every budget must be >= --seeds ({args.seeds}), got {args.budgets}")
    return args


# Held-out seeds start far from the search seeds (0..N-1 for best-of-N).
HELDOUT_BASE = 1_000_000


def run_prompt(prompt: str, method: str, args, components: dict) -> dict:
    """One (prompt, method): anytime best prompt and its held-out DSG at every budget."""
    from mmopt import registry
    from mmopt.optimizer import Budget, Optimizer

    gen, dsg, cache = components["generator"], components["dsg"], components["cache"]
    heldout = list(range(HELDOUT_BASE, HELDOUT_BASE + args.heldout))
    top = args.budgets[-1]
    t0 = time.time()
    if method == "best-of-N":
        # the original prompt on `top` seeds; the first B of them form budget B
        gens = gen.generate([prompt] * top, list(range(top)))
        per_image = [s.value for s in dsg.score(gens, prompt)]
        opt = Optimizer(gen, [dsg], "rules", seeds=args.seeds, cache=cache, budget=Budget(iterations=1))
        held = opt.evaluate_prompts(prompt, [prompt], heldout)[0].objective
        rows = [{"budget": b, "best_prompt": prompt, "search": statistics.fmean(per_image[:b]),
                 "best_image": max(per_image[:b]), "heldout": held} for b in args.budgets]
        return {"prompt": prompt, "method": method, "rows": rows, "seconds": round(time.time() - t0, 1)}

    proposer_name, strategy_name = method.split("/")
    if proposer_name == "opt2i":
        proposer = registry.create("proposer", "opt2i", reuse=False, llm=components["llm"])
    else:
        proposer = registry.create("proposer", "rules", reuse=False)
    strategy = registry.create("strategy", "topk:10" if strategy_name == "topk" else "beam:3", reuse=False)
    opt = Optimizer(gen, [dsg], proposer, strategy=strategy, seeds=args.seeds, candidates=args.candidates,
                    cache=cache, seed=0, budget=Budget(iterations=10_000, images=top))
    result = opt.run(prompt)
    trials = sorted(result.trials, key=lambda t: t.index)
    rows, memo = [], {}
    for b in args.budgets:
        fit = [t for t in trials if (t.index + 1) * args.seeds <= b] or trials[:1]
        best = max(fit, key=lambda t: (t.objective, -t.index))
        if best.prompt not in memo:
            memo[best.prompt] = opt.evaluate_prompts(prompt, [best.prompt], heldout)[0].objective
        rows.append({"budget": b, "best_prompt": best.prompt, "search": best.objective,
                     "heldout": memo[best.prompt], "trials": len(fit)})
    return {"prompt": prompt, "method": method, "rows": rows, "images": result.images,
            "llm_calls": result.llm_calls, "seconds": round(time.time() - t0, 1)}


def _at(recs: list[dict], budget: int, value) -> list[float]:
    """``value(record, row)`` for every record's row at ``budget``."""
    return [value(r, row) for r in recs for row in r["rows"] if row["budget"] == budget]


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summarise(records: list[dict], budgets: list[int], methods: list[str]) -> tuple[str, dict]:
    """Markdown table (mean +- standard error over prompts) and the curve data."""
    by_method = {m: [r for r in records if r["method"] == m] for m in methods}
    searched = {m: recs for m, recs in by_method.items() if m != "best-of-N" and recs}  # the optimizers run
    curves: dict = {}
    lines = ["| method | " + " | ".join(f"{b} images: held-out DSG" for b in budgets) + " | prompts |",
             "|---" * (len(budgets) + 2) + "|"]
    for m, recs in by_method.items():
        if not recs:
            continue
        ys = [_mean_se(_at(recs, b, lambda r, row: row["heldout"])) for b in budgets]
        curves[m] = ys
        lines.append(f"| {m} | " + " | ".join(f"{mean:.3f} ± {se:.3f}" for mean, se in ys) + f" | {len(recs)} |")
    base = [r for r in records if r["method"] == "best-of-N"]
    if base:
        cells = [f"{statistics.fmean(_at(base, b, lambda r, row: row['best_image'])):.3f}" for b in budgets]
        lines.append("| best-of-N: best single image in search | " + " | ".join(cells) + f" | {len(base)} |")
        lines += ["", "Paired difference from best-of-N on the same prompts (method - baseline, mean ± s.e.):", "",
                  "| method | " + " | ".join(f"{b} images" for b in budgets) + " | wins / ties / losses at "
                  f"{budgets[-1]} | prompts |", "|---" * (len(budgets) + 3) + "|"]
        held = {(r["prompt"], row["budget"]): row["heldout"] for r in base for row in r["rows"]}
        for m, recs in searched.items():
            recs = [r for r in recs if all((r["prompt"], b) in held for b in budgets)]
            if not recs:
                continue
            diffs = {b: _at(recs, b, lambda r, row: row["heldout"] - held[(r["prompt"], row["budget"])])
                     for b in budgets}
            cells = [f"{mean:+.3f} ± {se:.3f}" for mean, se in (_mean_se(diffs[b]) for b in budgets)]
            last = diffs[budgets[-1]]
            wtl = (sum(d > 1e-9 for d in last), sum(abs(d) <= 1e-9 for d in last), sum(d < -1e-9 for d in last))
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {wtl[0]} / {wtl[1]} / {wtl[2]} | {len(recs)} |")
    # The winner's curse: the chosen prompt's score on the search seeds minus its held-out score.
    lines += ["", "Optimism of the search (DSG of the chosen prompt on the search seeds - on held-out seeds):", "",
              "| method | " + " | ".join(f"{b} images" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m, recs in searched.items():
        gaps = [statistics.fmean(_at(recs, b, lambda r, row: row["search"] - row["heldout"])) for b in budgets]
        lines.append(f"| {m} | " + " | ".join(f"{g:+.3f}" for g in gaps) + " |")
    return "\n".join(lines) + "\n", curves


def plot(curves: dict, budgets: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, ys in curves.items():
        ax.errorbar(budgets, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("images generated per prompt")
    ax.set_ylabel("DSG of best prompt on held-out seeds")
    ax.set_title("ShapesWorld sample efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmopt import registry
    from mmopt.cache import Cache
    from mmopt.shapesworld.grammar import benchmark_prompts

    # 1. inputs and the fixed prompt set (held out from training by construction)
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = benchmark_prompts(args.prompts, seed=args.prompt_seed)

    # 2. components, loaded once; one cache so every method reuses shared renders
    components: dict = {}
    if not args.table_only:
        gen_kwargs = {"max_batch": 64, **({"device": args.device} if args.device else {})}
        components = {"generator": registry.create("generator", "offline:t2i", **gen_kwargs),
                      "dsg": registry.create("scorer", "offline:dsg"),
                      "cache": Cache(out / "cache.sqlite")}
        if any(m.startswith("opt2i") for m in args.methods):
            llm_kwargs = {"n_threads": args.llm_threads} if args.llm_threads else {}
            components["llm"] = registry.create("llm", "smollm2", **llm_kwargs)

    # 3. run what is not done yet (resumable)
    path = out / "results.jsonl"
    done = set()
    records = []
    key_cfg = {"budgets": args.budgets, "seeds": args.seeds, "candidates": args.candidates, "heldout": args.heldout}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("config") == key_cfg:
                records.append(r)
                done.add((r["prompt"], r["method"]))
    with path.open("a") as f:
        for i, prompt in enumerate([] if args.table_only else prompts):
            for m in args.methods:
                if (prompt, m) in done:
                    continue
                rec = run_prompt(prompt, m, args, components)
                rec["config"] = key_cfg
                f.write(json.dumps(rec) + "\n")
                f.flush()
                records.append(rec)
                last = rec["rows"][-1]
                print(f"[{i + 1}/{len(prompts)}] {m:11s} held-out {last['heldout']:.3f} "
                      f"({rec['seconds']} s) {prompt!r} -> {last['best_prompt']!r}", flush=True)

    # 4. table and plot
    records = [r for r in records if r["prompt"] in set(prompts)]
    table, curves = summarise(records, args.budgets, args.methods)
    header = (f"ShapesWorld sample efficiency: {len(prompts)} prompts, budgets {args.budgets}, "
              f"{args.seeds} search seeds per candidate, {args.candidates} candidates per iteration, "
              f"{args.heldout} held-out seeds; mean ± s.e. over prompts.\n\n")
    (out / "table.md").write_text(header + table)
    plot(curves, args.budgets, out / "sample_efficiency.png")
    print(header + table)
    return {"table": table, "curves": curves}


if __name__ == "__main__":
    main()
