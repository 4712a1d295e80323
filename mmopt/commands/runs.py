"""``mmopt runs [RUN_ID] --out DIR``: list the stored runs, or show one."""
from __future__ import annotations

import json
from pathlib import Path

HELP = "list stored runs, or show one"


def add_arguments(p) -> None:
    p.add_argument("run_id", nargs="?", help="show this run's trials")
    p.add_argument("--out", default="runs", help="output folder; default ./runs")


def run(args) -> int:
    from mmopt.store import Store

    if not (Path(args.out) / "mmopt.sqlite").exists():
        print(f"no runs in {args.out} (no mmopt.sqlite there)")
        return 1
    store = Store(args.out, readonly=True)
    if args.run_id:
        info = store.get_run(args.run_id)
        print(json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2))
        for t in store.load_trials(args.run_id):
            flag = "" if t.feasible else "  [infeasible]"
            neg = f"  (negative: {t.negative})" if t.negative else ""
            print(f"  it{t.iteration} #{t.index:<3} {t.objective:.4f}  {t.prompt}{neg}{flag}")
        return 0
    runs = store.list_runs()
    if not runs:
        print(f"no runs in {args.out}")
    for r in runs:
        s = r["summary"] or {}
        gain = f"gain {s['gain']:+.4f}" if isinstance(s.get("gain"), (int, float)) else ""
        print(f"{r['run_id']}  {r['status']:<11} {r['trials']:>3} trials  {gain:<14} {r['intent']}")
    return 0
