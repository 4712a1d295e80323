"""Options and store helpers shared by ``mmopt coop``, ``mmopt tpt`` and ``mmopt invert``.

Importing this module stays light (no torch): data and models load inside the
commands' ``run``. Each command writes one run into the store: one trial per
evaluation (the starting prompt first, as trial 0, like the optimizer's
original prompt), with the accuracies in ``Trial.scores`` and the learned
files in the run's folder, so ``mmopt runs --out DIR`` lists it.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mmopt.commands._options import positive_int

TASK_NAMES = ("colour_shape", "count", "relation")


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default="offline:clip",
                   help="open_clip model: ViT-B-16/openai, hf-hub:org/repo, a local folder, or offline:clip "
                        "(the shipped ShapesWorld CLIP; default)")
    p.add_argument("--out", default="runs", help="output folder (store); default ./runs")
    p.add_argument("--run-id", dest="run_id", help="name the run (default: hash of the data and configuration)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="CPU threads for torch (default 1: fastest for small models on a busy 2-core machine; "
                        "raise it for large models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_data_options(p: argparse.ArgumentParser, *, test: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=TASK_NAMES, help="a ShapesWorld task (rendered, nothing to download)")
    src.add_argument("--data", help="an ImageFolder-style directory: DIR/<class>/<images>")
    p.add_argument("--classnames", help="class-name file for --data (one per line; 'folder<TAB>name' allowed)")
    if test:
        p.add_argument("--test", help="test folder for --data (default: the images of --data not drawn as shots)")


def check_data_args(args) -> None:
    """Bad combinations of data options, before anything loads."""
    if args.classnames and not args.data:
        raise ValueError("--classnames goes with --data (a ShapesWorld --task has its own class names)")
    if getattr(args, "test", None) and not args.data:
        raise ValueError("--test goes with --data (a ShapesWorld --task has its own test splits)")
    for flag in ("data", "test", "classnames"):
        value = getattr(args, flag, None)
        if value and not Path(value).exists():
            raise ValueError(f"--{flag} {value!r} does not exist")


def set_threads(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


@contextmanager
def open_run(store, run_id: str, intent: str, config: dict) -> Iterator[str]:
    """Hold the run's lock; yields its status ("new", "resume" or "finished"). A failure marks it failed."""
    with store.lock_run(run_id):
        status = store.start_run(run_id, intent, config)
        try:
            yield status
        except BaseException:
            store.set_status(run_id, "failed")
            raise


def save_result(store, run_id: str, index: int, prompt: str, scores: dict, objective_key: str, *,
                meta: dict | None = None, payload: dict | None = None, feedback: str = "") -> None:
    """One evaluation as a trial (no media): scores per split, the objective is ``scores[objective_key]``."""
    from mmopt.types import Trial

    trial = Trial(index=index, iteration=index, prompt=prompt, objective=float(scores[objective_key]),
                  scores={k: float(v) for k, v in scores.items()}, feedback=feedback, meta=meta or {},
                  payload=payload)
    store.save_trial(run_id, trial, [], {})


def progress_callback(args, total: int, desc: str, unit: str):
    """A tqdm bar and a callback that moves it to ``done`` (hidden with --no-progress)."""
    from mmopt.commands._options import progress_bar

    bar = progress_bar(total, desc, unit=unit, disable=args.no_progress)

    def update(done: int, *_: object) -> None:
        bar.update(done - bar.n)

    return bar, update


def fmt(value: float) -> str:
    return f"{100 * value:.1f}"
