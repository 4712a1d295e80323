"""Batch accounting, kill-and-resume and 2-process sharding on one prompt file.

Three batches of the same prompts with the same options, compared record by record
(everything but wall time, process rank and finish time):

  A  uninterrupted, one process;
  B  killed with SIGKILL twice midway (at ``--kill-at`` of A's wall time after each
     start), then run to the end with the same command;
  C  two processes (``torchrun --nproc_per_node 2``), merged.

    python benchmarks/batch_resume.py PartiPrompts.tsv --out /tmp/bench-batch \\
        --results benchmarks/results/batch_partiprompts -- --iterations 1 --seeds 1 --heldout-seeds 0

Arguments after ``--`` go to every ``mmopt batch`` call. Prints the counts, the wall
times and whether B and C equal A; writes ``<results>.json`` and ``<results>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def batch_cmd(inp: str, out: Path, extra: list[str], nproc: int = 1) -> list[str]:
    base = ["-m", "mmopt.cli", "batch", inp, "--out", str(out), "--no-progress", "--threads", "1", *extra]
    if nproc == 1:
        return [sys.executable, *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *base]


def run(cmd: list[str], log, timeout: float | None = None) -> tuple[int, float]:
    t0 = time.monotonic()
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        rc = -9
    dt = time.monotonic() - t0
    log.write(f"[exit {rc} after {dt:.1f} s]\n")
    log.flush()
    return rc, dt


def records(out: Path) -> list[dict]:
    from mmopt.apps.batch import comparable

    return comparable([json.loads(line) for line in open(out / "results.jsonl", encoding="utf-8")])


def part_lines(out: Path) -> int:
    return sum(1 for p in (out / "parts").glob("rank-*.jsonl") for _ in open(p, encoding="utf-8"))


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--out", required=True)
    ap.add_argument("--results", required=True, help="path prefix of the .json and .log written")
    ap.add_argument("--kill-at", type=float, default=0.3, help="kill B after this fraction of A's wall time")
    args = ap.parse_args(argv)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"input": args.input, "options": extra, "machine": os.uname().nodename,
                    "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with open(f"{args.results}.log", "w", encoding="utf-8") as log:
        # A: uninterrupted
        rc, wall_a = run(batch_cmd(args.input, root / "A", extra), log)
        report["A"] = {"rc": rc, "wall_s": round(wall_a, 1), "summary": json.loads((root / "A" / "summary.json").read_text())}
        # B: killed twice, then resumed to the end
        kills = []
        for k in range(2):
            rc, dt = run(batch_cmd(args.input, root / "B", extra), log, timeout=wall_a * args.kill_at)
            kills.append({"rc": rc, "after_s": round(dt, 1), "records_on_disk": part_lines(root / "B")})
        rc, dt = run(batch_cmd(args.input, root / "B", extra), log)
        wall_b = sum(k["after_s"] for k in kills) + dt
        report["B"] = {"kills": kills, "final_rc": rc, "final_run_s": round(dt, 1), "wall_s_total": round(wall_b, 1)}
        # C: two processes
        rc, wall_c = run(batch_cmd(args.input, root / "C", extra, nproc=2), log)
        report["C"] = {"rc": rc, "wall_s": round(wall_c, 1)}
        a, b, c = records(root / "A"), records(root / "B"), records(root / "C")
        report["records"] = {"A": len(a), "B": len(b), "C": len(c)}
        report["B_equals_A"] = a == b
        report["C_equals_A"] = a == c
        report["C_ranks"] = sorted({json.loads(line)["rank"] for p in (root / "C" / "parts").glob("*.jsonl")
                                    for line in open(p, encoding="utf-8")})
        report["load_after"] = os.getloadavg()
    Path(f"{args.results}.json").write_text(json.dumps(report, indent=1))
    s = report["A"]["summary"]
    print(f"input rows {s['rows_read']}: {s['done']} done, {s['failed']} failed, {s['bad_rows']} bad rows, "
          f"{s['not_finished']} not finished")
    print(f"A uninterrupted: {wall_a:.0f} s; B killed at {[k['records_on_disk'] for k in kills]} records, "
          f"total {wall_b:.0f} s; C 2 processes (ranks {report['C_ranks']}): {wall_c:.0f} s")
    print(f"B == A: {report['B_equals_A']}; C == A: {report['C_equals_A']} ({len(a)} records)")
    return 0 if report["B_equals_A"] and report["C_equals_A"] else 1


if __name__ == "__main__":
    sys.exit(main())
