"""``mmopt app``: the studio (Gradio) and its REST API on one local server."""
from __future__ import annotations

from mmopt.commands._options import int_at_least

HELP = "start the studio (a web UI in Gradio, plus a REST API)"


def add_arguments(p) -> None:
    p.add_argument("--preset", default="offline", help="the preset selected at start (default offline)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port (default 7860)")
    p.add_argument("--out", default="runs-studio", help="output folder (store + media); default ./runs-studio")


def run(args) -> int:
    from mmopt.apps.app import serve
    from mmopt.commands._options import progress_bar
    from mmopt.presets import load_preset

    load_preset(args.preset)  # a bad name fails before the server starts
    if args.port > 65535:
        raise ValueError(f"--port must be at most 65535, got {args.port}")
    bar = progress_bar(1, "starting the studio", unit="server")
    bar.update(1)
    bar.close()
    print(f"mmopt studio on http://{args.host}:{args.port}/ (REST: /api/v1/optimize); output in {args.out}")
    serve(args.out, args.preset, args.host, args.port)
    return 0
