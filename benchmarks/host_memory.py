"""Host memory across loop iterations: the loop's heap trim never, as shipped, and every iteration.

A generator that paints seeded 512 px noise (what random-weight models emit)
feeds the real Optimizer, store, content cache and CLIPScore (a tiny tower
with a 224 px input, so preprocessing resizes 512 -> 224 as ViT-L/14 does).
Every iteration renders 16 candidates x 4 seeds; RSS is read after each.
The thread pools are sized as on a 16-core machine (``--threads``), since
glibc's per-thread arenas are what the trim hands back.

The three ways run in separate processes (RSS is per process), one after the
other: "never" disables the trim; "shipped" is the loop as it is
(``malloc_trim`` on the writer thread once RSS has crept ``HOST_TRIM_MB``
since the last trim); "every" trims after every iteration.

    python benchmarks/host_memory.py                     # 50 iterations each, ~5 min on 2 cores
    python benchmarks/host_memory.py --iterations 20
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INTENT = "a red cube"


class NoiseGenerator:
    """Seeded 512 px noise images through the Generator protocol."""

    name, prompt_style, max_prompt_tokens = "noise", "tags", 77

    def __init__(self, size: int):
        self.size = size

    def generate(self, prompts, seeds):
        import numpy as np
        from PIL import Image

        from mmopt.cache import content_key
        from mmopt.types import Candidate, Generation

        out = []
        for p, s in zip(prompts, seeds):
            p = Candidate.of(p)
            rng = np.random.default_rng(int(content_key(p.text, s)[:8], 16))
            pixels = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
            out.append(Generation(p, s, Image.fromarray(pixels), {}))
        return out

    def count_tokens(self, prompt):
        return len(prompt.split())

    def config(self):
        return {"component": "noise", "size": self.size}


MODES = ("never", "shipped", "every")


def child(iterations: int, mode: str, threads: int, root: Path) -> dict:
    """One process: the loop for ``iterations`` iterations; RSS after each."""
    import gc

    import open_clip
    import torch
    from safetensors.torch import save_file

    import mmopt.optimizer as optimizer_module
    from mmopt.device import host_rss_mb
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.pipelines.tiny import load_config
    from mmopt.proposers.fixed import FixedProposer
    from mmopt.registry import create

    os.cpu_count = lambda: 2 * threads  # size the CLIP preprocessing pool as on that machine
    if mode == "never":
        optimizer_module.release_free_host_memory = lambda *args: False
    elif mode == "every":
        optimizer_module.HOST_TRIM_MB = 0
    cfg = load_config("tiny_clip")
    cfg["model_cfg"]["vision_cfg"].update(image_size=224, patch_size=32)
    clip = root / "clip"
    clip.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**cfg["model_cfg"]).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip / "open_clip_model.safetensors"))
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    scorer = create("scorer", f"clip:{clip}", device="cpu", batch_size=64)
    schedule = [[f"{INTENT}, variant {i}-{j}" for j in range(16)] for i in range(iterations)]
    rss: list[float] = []

    def after_iteration(event, **info):
        if event == "iteration":
            gc.collect()
            rss.append(host_rss_mb())

    opt = Optimizer(NoiseGenerator(512), [scorer], FixedProposer(schedule), budget=Budget(iterations=iterations + 1),
                    candidates=16, seeds=[0, 1, 2, 3], store=root / "store", callbacks=[after_iteration],
                    workers=threads)
    t0 = time.perf_counter()
    opt.run(INTENT)
    return {"mode": mode, "seconds": time.perf_counter() - t0, "rss_mb": rss}


def summary(rss: list[float]) -> dict:
    """Start of the plateau (mean of iterations 5-14), its end (last 10), growth between."""
    start, end = statistics.fmean(rss[5:15]), statistics.fmean(rss[-10:])
    return {"plateau_start": start, "plateau_end": end, "growth": end - start,
            "per_iteration": (end - start) / max(1, (len(rss) - 5) - 10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=8, help="PNG workers and CLIP preprocessing threads")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iterations < 25:
        ap.error("--iterations must be >= 25 (the plateau is read from iteration 5 on)")
    if not sys.platform.startswith("linux"):
        ap.error("reads /proc/self/statm and trims glibc's heap: Linux only")

    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(child(args.iterations, args.child, args.threads, Path(tmp))))
        return

    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--iterations", str(args.iterations),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.iterations} iterations x 64 images of 512 px, {args.threads} PNG workers and preprocessing threads")
    never = results["never"]
    for mode, r in results.items():
        s = summary(r["rss_mb"])
        print(f"trim {mode:8s} RSS after iteration 1 {r['rss_mb'][0]:.0f} MiB; plateau {s['plateau_start']:.0f} -> "
              f"{s['plateau_end']:.0f} MiB ({s['growth']:+.0f}, {s['per_iteration']:+.2f} MiB/iteration); "
              f"{r['seconds']:.0f} s = x{r['seconds'] / never['seconds']:.2f} the time without trimming")

if __name__ == "__main__":
    sys.exit(main())
