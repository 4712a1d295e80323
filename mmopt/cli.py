"""Command line: ``mmopt <command>``; each command is one module in ``mmopt.commands``.

    mmopt optimize "a red cube on a blue sphere" --preset turbo --iterations 8
    mmopt runs --out runs/              # list runs; `mmopt runs RUN_ID` shows one
    mmopt demo                          # the whole loop offline, writes an HTML page

A command module has ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; a new command is a new module plus a row in
``COMMANDS``. Importing a command module must stay light (no torch): models
load inside ``run``.

Exit codes: 0 done; 1 a model, store or LLM failure (one line, no traceback;
``MMOPT_DEBUG=1`` shows it); 2 bad input (one line: what was received, what
was expected); 75 the LLM could not be reached (the run is stored as
interrupted: run the same command again to resume); 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> module (configs as data: one row per command)
COMMANDS: dict[str, str] = {
    "optimize": "mmopt.commands.optimize",
    "demo": "mmopt.commands.demo",
    "runs": "mmopt.commands.runs",
    "export-pairs": "mmopt.commands.export_pairs",
    "distill": "mmopt.commands.distill",
    "export": "mmopt.commands.export",
    "coop": "mmopt.commands.coop",
    "tpt": "mmopt.commands.tpt",
    "invert": "mmopt.commands.invert",
    "batch": "mmopt.commands.batch",
    "report": "mmopt.commands.report",
    "app": "mmopt.commands.app",
}

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_LLM_UNAVAILABLE = 75  # EX_TEMPFAIL: try again later
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), not the usage block."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmopt", description="Optimize prompts for generative vision models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mmopt.errors import LLMUnavailableError, MmoptError

    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("MMOPT_DEBUG"))
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are stored; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LLMUnavailableError as e:
        if debug:
            raise
        print(f"mmopt: the LLM is unavailable: {e}\nmmopt: the run is stored as interrupted; run the same "
              "command again to resume once it is back", file=sys.stderr)
        return EXIT_LLM_UNAVAILABLE
    except (ValueError, TypeError) as e:
        if debug:
            raise
        print(f"mmopt: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MmoptError, ImportError, OSError) as e:
        if debug:
            raise
        print(f"mmopt: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


def entry() -> None:
    """The ``mmopt`` console script: :func:`main`, then a quick exit.

    Tearing down an interpreter that imported torch, diffusers and transformers
    takes 1-2 s on 2 cores (module finalization) and does nothing for us: every
    trial is already in the store (which survives a kill -9 by design), the
    report is written. So once the command returns we flush the streams, run the
    atexit handlers and leave with ``os._exit``, unless a non-daemon thread is
    still working, which gets the normal exit that waits for it.
    """
    code = main()
    import atexit
    import threading

    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if busy or os.environ.get("MMOPT_SLOW_EXIT"):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
