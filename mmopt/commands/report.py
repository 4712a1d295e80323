"""``mmopt report RUN_OR_BATCH``: an HTML page of one run or of one batch, readable without a server.

RUN_OR_BATCH is a batch folder (it has ``results.jsonl``), a run folder
(``OUT/runs/<run_id>``), or a run id in the store given with ``--out``.
"""
from __future__ import annotations

from pathlib import Path

HELP = "write the HTML report of a run or a batch"


def add_arguments(p) -> None:
    p.add_argument("target", help="batch folder, run folder (OUT/runs/<run_id>) or run id (with --out)")
    p.add_argument("--out", default="runs", help="store folder of a run id; default ./runs")


def run(args) -> int:
    from mmopt.apps.report import write_batch_report, write_report
    from mmopt.commands._options import progress_bar
    from mmopt.store import Store, check_run_id

    target = Path(args.target)
    bar = None
    if (target / "results.jsonl").is_file():
        bar = progress_bar(1, "report", unit="page")
        path = write_batch_report(target)
    else:
        if target.is_dir() and target.parent.name == "runs" and (target.parent.parent / "mmopt.sqlite").is_file():
            root, run_id = target.parent.parent, target.name
        else:
            root, run_id = Path(args.out), check_run_id(args.target)
        if not (root / "mmopt.sqlite").is_file():
            raise ValueError(f"{args.target!r} is neither a batch folder, a run folder nor a run id in {str(root)!r} "
                             "(no mmopt.sqlite there; give --out)")
        bar = progress_bar(1, "report", unit="page")
        path = write_report(Store(root), run_id)
    bar.update(1)
    bar.close()
    print(path)
    return 0
