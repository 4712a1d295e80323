"""``mmopt demo``: the whole loop offline on the project's own small models."""
from __future__ import annotations

from mmopt.commands import optimize

HELP = "run the whole loop offline on the project's own small models"

DEMO_PROMPT = "a red circle to the left of a blue square"


def add_arguments(p) -> None:
    p.add_argument("--prompt", default=DEMO_PROMPT, help=f"prompt to optimize (default: {DEMO_PROMPT!r})")
    p.add_argument("--out", default="runs-demo", help="output folder; default ./runs-demo")
    optimize.add_run_options(p, default_preset="offline")


def run(args) -> int:
    return optimize.run(args)
