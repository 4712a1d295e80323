"""``mmopt export RUN_ID``: write a stored run's clips as GIF and MP4 files beside their frames."""
from __future__ import annotations

from pathlib import Path

from mmopt.commands._options import progress_bar

HELP = "write a run's video clips as GIF / MP4 files"


def add_arguments(p) -> None:
    p.add_argument("run_id", help="the run whose clips to export")
    p.add_argument("--out", default="runs", help="output folder of the run; default ./runs")
    p.add_argument("--format", action="append", dest="formats", choices=("gif", "mp4"),
                   help="gif and/or mp4 (repeatable; default both). MP4 needs the 'video' extra")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mmopt.apps.video import export_run
    from mmopt.store import Store, check_run_id

    check_run_id(args.run_id)
    if not (Path(args.out) / "mmopt.sqlite").exists():
        raise ValueError(f"no run store in {args.out!r} (no mmopt.sqlite there); pass --out")
    store = Store(args.out)
    store.get_run(args.run_id)  # a clear error for an unknown run
    clips = sum(1 for t in store.load_trials(args.run_id) for g in store.load_generations(args.run_id, t.index)
                if len(g["paths"]) > 1 or "fps" in g["meta"])
    bar = progress_bar(clips, "exporting", unit="clip", disable=args.no_progress)
    written = export_run(store, args.run_id, args.formats or ("gif", "mp4"), progress=bar.update)
    bar.close()
    print(f"{clips} clips, {len(written)} files under {store.media_dir(args.run_id)}")
    return 0
