"""8 concurrent studio sessions against one: wall time and cross-talk checks.

Starts the real server (`mmopt app`), then runs one session alone and 8 sessions at
once through `gradio_client` (each Client is its own session), every session with its
own prompt and the same options (offline preset, rule-based proposer so the LLM does
not dominate, 2 iterations x 2 candidates x 2 seeds). Checks that every session gets
its own run, only its own images and only its own runs in the run browser.

    python benchmarks/studio_sessions.py --results benchmarks/results/studio_sessions

Prints the wall times and the ratio (8 sessions / 1 session); like for like: each
session does the same amount of work, so 8.0 means no overlap at all and 1.0 perfect.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OPTIONS = ("offline", 2, 2, 2, "rules")
PROMPTS = ["two red circles", "three blue squares", "a green triangle above a red circle", "four yellow circles",
           "a blue circle to the left of a green square", "two red triangles", "three green circles",
           "a yellow square below a blue triangle"]


def main() -> int:
    import httpx
    from gradio_client import Client

    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--sessions", type=int, default=8)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="studio-sessions-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    log = open(out / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mmopt.cli", "app", "--out", str(out / "runs"), "--port",
                               str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                if httpx.get(url + "api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)

        def session(prompt: str) -> dict:
            t0 = time.monotonic()
            r = Client(url, verbose=False).predict(prompt, *OPTIONS, api_name="/optimize")
            r["wall_s"] = time.monotonic() - t0
            return r

        session("warm up the models")  # model loading is not part of either measurement
        load = os.getloadavg()
        t0 = time.monotonic()
        one = session("a red circle to the left of a blue square")
        wall_one = time.monotonic() - t0
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.sessions) as pool:
            many = list(pool.map(session, PROMPTS[:args.sessions]))
        wall_many = time.monotonic() - t0
        # cross-talk: each session's own prompt, run, images and run list
        from mmopt.apps.studio import Studio

        studio = Studio(out / "runs")
        problems = []
        for p, r in zip(PROMPTS, many):
            if r["intent"] != p:
                problems.append(f"{p!r} got the result of {r['intent']!r}")
            if not all(x.startswith(f"runs/{r['run_id']}/") for x in r["images"]):
                problems.append(f"{p!r} got images of another run")
            if [row["run_id"] for row in studio.runs_of(r["workspace"])] != [r["run_id"]]:
                problems.append(f"{p!r}: its run browser lists other runs")
        if len({r["workspace"] for r in many}) != len(many):
            problems.append("two sessions share a workspace")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    report = {"sessions": args.sessions, "options": OPTIONS, "wall_one_s": round(wall_one, 1),
              "wall_many_s": round(wall_many, 1), "ratio": round(wall_many / wall_one, 2),
              "per_session_s": [round(r["wall_s"], 1) for r in many], "cross_talk": problems,
              "loadavg_before": load, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.json").write_text(json.dumps(report, indent=1))
    print(f"1 session: {wall_one:.1f} s; {args.sessions} concurrent sessions: {wall_many:.1f} s "
          f"(x{wall_many / wall_one:.2f}); cross-talk problems: {len(problems)}")
    for p in problems:
        print("  " + p)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
