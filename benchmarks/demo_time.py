"""`mmopt demo` end to end: where a newcomer's first run spends its time, and what its budget buys.

Four parts, one run:

A. The command itself, ``mmopt demo --no-progress`` in a fresh folder, ``--repeats``
   times (wall clock of the whole process: interpreter start, imports, model
   loading, the run, the report, exit). Median, min and max.
B. The split of one run, in a child process: imports, model loading, the run
   (search, honest selection, held-out seeds), the report, and the exit
   (measured as the child's wall time minus what it timed inside).
C. The same demo run with the shipped model's batch of 32 images per pipeline
   call against the generic default of 4 (same process, models loaded once, a
   fresh store each): wall time of the run, the ratio, and whether both chose
   the same prompt with the same held-out scores.
D. What the budget buys (``--budgets``): the demo's run at each budget, and its
   chosen prompt against the original on 32 seeds nobody searched on (DSG).

    python benchmarks/demo_time.py                      # about 5 minutes on 2 cores
    python benchmarks/demo_time.py --repeats 5 --budgets 48,64,96,128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

# B's child: times its own stages and prints them as one JSON line
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from mmopt.commands.demo import DEMO_IMAGES, DEMO_PROMPT
from mmopt.presets import build_optimizer, load_preset, resolve
from mmopt.store import Store
import diffusers, transformers  # noqa: F401  (what loading needs first)
from diffusers import StableDiffusionPipeline  # noqa: F401
t1 = time.perf_counter()
store = Store(sys.argv[1])
opt = build_optimizer(resolve(load_preset("offline"), max_images=DEMO_IMAGES), store=store, seed=0)
t2 = time.perf_counter()
result = opt.run(DEMO_PROMPT)
t3 = time.perf_counter()
from mmopt.apps.report import write_report
write_report(store, result.run_id)
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "run": t3 - t2, "report": t4 - t3,
                  "images": result.images, "heldout_gain": result.heldout_gain}))
"""


def end_to_end(repeats: int) -> dict:
    walls, gains = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            proc = subprocess.run(["mmopt", "demo", "--out", out, "--no-progress"], capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise SystemExit(f"mmopt demo failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
            held = re.search(r"held-out:\s+([+-][0-9.]+)", proc.stdout)
            gains.append(float(held.group(1)) if held else float("nan"))
    return {"walls": walls, "median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "heldout_gain": gains[0]}


def split() -> dict:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, out], capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"split child failed: {proc.stderr.strip()[-400:]}")
    parts = json.loads(proc.stdout.strip().splitlines()[-1])
    inside = sum(parts[k] for k in ("imports", "load", "run", "report"))
    parts["start and exit"] = wall - inside
    parts["wall"] = wall
    return parts


def batch_compare(budget: int) -> dict:
    from mmopt.commands.demo import DEMO_PROMPT
    from mmopt.presets import build_optimizer, load_preset, resolve
    from mmopt.store import Store

    rows = {}
    for batch in (4, 32):
        with tempfile.TemporaryDirectory() as out:
            opt = build_optimizer(resolve(load_preset("offline"), max_images=budget), store=Store(out), seed=0)
            opt.generator._batch = batch  # the models are loaded once per process; only the chunking differs
            t = time.perf_counter()
            r = opt.run(DEMO_PROMPT)
            rows[batch] = {"run_s": time.perf_counter() - t, "best": r.best.prompt, "heldout": r.heldout,
                           "images": r.images}
    rows["ratio"] = rows[4]["run_s"] / rows[32]["run_s"]
    rows["same_result"] = rows[4]["best"] == rows[32]["best"] and rows[4]["heldout"] == rows[32]["heldout"]
    return rows


def budgets(values: list[int], unseen: int = 32) -> list[dict]:
    from mmopt.commands.demo import DEMO_PROMPT
    from mmopt.presets import build_optimizer, load_preset, resolve
    from mmopt.store import Store

    rows = []
    seeds = list(range(5000, 5000 + unseen))
    for n in values:
        with tempfile.TemporaryDirectory() as out:
            opt = build_optimizer(resolve(load_preset("offline"), max_images=n), store=Store(out), seed=0)
            t = time.perf_counter()
            r = opt.run(DEMO_PROMPT)
            run_s = time.perf_counter() - t
            evs = opt.evaluator.evaluate_all([r.original.candidate, r.best.candidate], seeds, r.original.prompt)
            orig, best = (statistics.fmean(s.value for s in ev.scores["offline:dsg"]) for ev in evs)
        rows.append({"budget": n, "run_s": run_s, "images": r.images, "heldout_gain_4": r.heldout_gain,
                     "unseen_original": orig, "unseen_best": best, "unseen_gain": best - orig,
                     "best": r.best.prompt})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs of `mmopt demo` (A)")
    ap.add_argument("--budgets", default="48,64,128", help="budgets for D, comma-separated")
    ap.add_argument("--skip", default="", help="parts to skip, e.g. 'C,D'")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}", flush=True)
    report = {}
    if "A" not in skip:
        a = report["A"] = end_to_end(args.repeats)
        print(f"A. mmopt demo end to end, {args.repeats} runs: median {a['median']:.1f} s "
              f"(min {a['min']:.1f}, max {a['max']:.1f}); held-out gain {a['heldout_gain']:+.3f}", flush=True)
    if "B" not in skip:
        b = report["B"] = split()
        print("B. split of one run: " + ", ".join(f"{k} {b[k]:.1f} s" for k in
              ("imports", "load", "run", "report", "start and exit")) + f"; {b['wall']:.1f} s in all, "
              f"{b['images']} images in the budget", flush=True)
    if "C" not in skip:
        from mmopt.commands.demo import DEMO_IMAGES

        c = report["C"] = batch_compare(DEMO_IMAGES)
        print(f"C. the demo's run, 4 vs 32 images per pipeline call: {c[4]['run_s']:.1f} s vs {c[32]['run_s']:.1f} s, "
              f"ratio {c['ratio']:.2f}x; same winner and held-out scores: {c['same_result']}", flush=True)
    if "D" not in skip:
        rows = report["D"] = budgets([int(x) for x in args.budgets.split(",")])
        print("D. budget | run s | held-out gain (4 seeds) | 32 unseen seeds: original -> chosen (gain)")
        for r in rows:
            print(f"   {r['budget']:>6} | {r['run_s']:5.1f} | {r['heldout_gain_4']:+.3f} | "
                  f"{r['unseen_original']:.3f} -> {r['unseen_best']:.3f} ({r['unseen_gain']:+.3f})  {r['best']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
