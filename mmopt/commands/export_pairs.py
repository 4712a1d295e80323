"""``mmopt export-pairs OUT.jsonl --out DIR``: the (intent -> best prompt) pairs of a store's runs, for distilling."""
from __future__ import annotations

from pathlib import Path

HELP = "export (intent -> best prompt, scores) pairs of stored runs as JSONL (SFT / DPO data)"


def add_arguments(p) -> None:
    p.add_argument("path", help="the JSONL file to write")
    p.add_argument("--out", default="runs", help="the store folder to read; default ./runs")
    p.add_argument("--min-gain", type=float, default=0.0, dest="min_gain",
                   help="keep runs whose winner beat the original by more than this (default 0)")
    p.add_argument("--use", choices=("estimate", "heldout", "search"), default="estimate",
                   help="which gain decides: the winner's estimate on seeds that chose nothing (default), "
                        "the held-out gain, or the search-seed gain")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mmopt.commands._options import progress_bar
    from mmopt.distill import export_pairs
    from mmopt.store import Store

    if not (Path(args.out) / "mmopt.sqlite").exists():
        raise ValueError(f"no runs in {args.out!r} (no mmopt.sqlite there); give the store folder with --out")
    store = Store(args.out, readonly=True)
    bar = progress_bar(len(store.list_runs()), "exporting", unit="run", disable=args.no_progress)
    info = export_pairs(store, args.path, min_gain=args.min_gain, use=args.use, progress=bar)
    bar.close()
    print(f"wrote {info['written']} pairs to {args.path} ({info['skipped']} of {info['runs']} finished runs skipped: "
          f"no gain above {args.min_gain})")
    return 0
