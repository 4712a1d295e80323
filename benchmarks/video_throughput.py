"""Video throughput: frames/s of clip generation (batched vs one clip per call) and of each video scorer.

One process, the same clips two ways, then every video scorer on them:

(a) generation, one clip per pipeline call (``max_batch=1``) against every clip
    of the call in batches of ``--batch`` (the generator's default path): frames/s
    of each and their ratio (like for like: same prompts, seeds, steps, frames;
    the two alternate ``--repeats`` times and each one's fastest run counts);
(b) scorers on those clips: frame-sampled CLIPScore (k frames, mean), temporal
    consistency (CLIP on consecutive frames), Farneback motion magnitude, and DSG
    with the ShapesWorld frame-set VQA (on rendered ShapesWorld clips: a VQA needs a
    world it can judge): frames/s each.

Peak memory is reported beside each figure: on the GPU ``torch.cuda.max_memory_allocated``
for that stage; on the CPU the process's peak resident memory during the stage, sampled
every 10 ms (it includes the models, so compare stages, not absolute numbers).

Architectures are built from configs with random weights (nothing is downloaded):

    python benchmarks/video_throughput.py --tiny                       # CPU: tiny AnimateDiff, CogVideoX, LTX, Wan
    python benchmarks/video_throughput.py --arch cogvideox-2b          # GPU, bf16: CogVideoX-2b, 49 x 480x720
    python benchmarks/video_throughput.py --arch ltx-video --frames 97
    python benchmarks/video_throughput.py --arch wan2.1-1.3b --frames 33

Full-size: ``assets/configs/cogvideox_2b.json``, ``ltx_video.json``, ``wan21_t2v_1_3b.json``
(the T5-XXL / UMT5-XXL text encoders included: 4.8-5.7 B parameters), initialised on the
GPU in bf16; scorers use CLIP ViT-B-32 (random weights) on the GPU. ``--json PATH`` writes
every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

TINY = {"animatediff": "tiny_animatediff", "cogvideox": "tiny_cogvideox", "ltx": "tiny_ltx", "wan": "tiny_wan"}
FULL = {"cogvideox-2b": "cogvideox_2b", "ltx-video": "ltx_video", "wan2.1-1.3b": "wan21_t2v_1_3b"}
PROMPTS = ["a red fox trotting through fresh snow, the camera tracking it from the left",
           "a paper boat drifting down a rain-soaked street, slow push-in",
           "a hot air balloon rising over a misty valley at sunrise, static camera",
           "a cat leaping from a sofa onto a bookshelf, handheld camera"]


def log(*a):
    print(*a, flush=True)


class PeakMemory:
    """Peak memory of a stage: CUDA's allocator peak, else the host RSS sampled every 10 ms (MiB)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        from mmopt.device import host_rss_mb

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self.peak = host_rss_mb() or 0.0

        def sample():
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, host_rss_mb() or 0.0)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        self.kind = "GPU allocated" if self.cuda else "host RSS"
        return False


def timed(fn, device: str):
    """(result, seconds, peak MiB) of ``fn()``."""
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return out, dt, mem.peak


def bench_generation(path: Path, args, device: str, dtype) -> tuple[dict, list]:
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    kw = {"device": device, "dtype": dtype}
    if args.frames:
        kw["num_frames"] = args.frames
    if args.steps:
        kw["steps"] = args.steps
    if args.size:
        kw["height"] = kw["width"] = args.size
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clips)]
    seeds = list(range(args.clips))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = DiffusersVideoGenerator(str(path), max_batch=1, **kw)
        batched = DiffusersVideoGenerator(str(path), max_batch=args.batch, **kw)
        one.generate(prompts[:1], seeds[:1])  # warm-up: first-call allocations, kernels
        batched.generate(prompts[:2], seeds[:2])
        # alternate the two ways and keep each one's fastest run: other load on the machine
        # then slows both alike instead of one
        runs = {"one": [], "batched": []}
        for _ in range(args.repeats):
            for key, gen in (("one", one), ("batched", batched)):
                runs[key].append(timed(lambda: gen.generate(prompts, seeds), device))
        clips, tb, mb = min(runs["batched"], key=lambda r: r[1])
        _, t1, m1 = min(runs["one"], key=lambda r: r[1])
    frames = sum(len(g.media) for g in clips)
    row = {"pipeline": one.pipeline_class, "clips": len(clips), "frames_per_clip": len(clips[0].media),
           "size": list(clips[0].media[0].size), "steps": int(one.preset["steps"]),
           "guidance": float(one.preset["guidance"]), "batch": args.batch,
           "one_clip_per_call_fps": frames / t1, "one_clip_per_call_peak_mib": m1,
           "batched_fps": frames / tb, "batched_peak_mib": mb, "batched_over_one": t1 / tb}
    return row, clips


def _label(name: str) -> str:
    """A scorer's name without the model directory: ``frames:clip:/tmp/x/clip`` -> ``frames:clip``."""
    return ":".join(part for part in name.split(":") if "/" not in part)


def bench_scorers(clips: list, device: str, root: Path, args) -> list[dict]:
    from mmopt.pipelines.tiny import build_random_clip, build_tiny_clip
    from mmopt.registry import create
    from mmopt.shapesworld.video import all_specs, render_clip
    from mmopt.types import Generation

    clip_dir = build_tiny_clip(root / "tiny-clip") if args.tiny else build_random_clip(root / "vit-b-32", "ViT-B-32",
                                                                                       device=device)
    scorers = [create("scorer", f"frames:clip:{clip_dir}", k=args.k, device=device),
               create("scorer", f"temporal:{clip_dir}", device=device), create("scorer", "motion")]
    world = [Generation(s.caption, 0, render_clip(s, 0, frames=len(clips[0].media), size=64), {"fps": 8})
             for s in all_specs()[:len(clips)]]
    rows = []
    for scorer, gens in [(s, clips) for s in scorers] + [(create("scorer", "offline:dsg-video"), world)]:
        scorer.score(gens[:1], "a clip")  # warm-up
        _, dt, peak = timed(lambda: scorer.score(gens, gens[0].prompt), device)
        frames = sum(len(g.media) for g in gens)
        used = min(args.k, len(gens[0].media)) * len(gens) if scorer.name.startswith("frames:") else frames
        rows.append({"scorer": _label(scorer.name), "clip_frames_per_s": frames / dt, "frames_read": used, "seconds": dt,
                     "peak_mib": peak, "on": "ShapesWorld clips" if gens is world else "generated clips"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny test pipelines on the CPU")
    ap.add_argument("--arch", choices=sorted(FULL), action="append", help="full-size architecture(s) (GPU)")
    ap.add_argument("--clips", type=int, default=4, help="clips rendered each way")
    ap.add_argument("--batch", type=int, default=2, help="clips per call of the batched generator")
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: tiny 2, full 4)")
    ap.add_argument("--size", type=int, default=None, help="height = width (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each way (the fastest counts)")
    ap.add_argument("--k", type=int, default=8, help="frames sampled by the frame-sampled CLIPScore")
    ap.add_argument("--root", default=None, help="where the random-weight pipelines are saved")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.tiny and not args.arch:
        ap.error("give --tiny (CPU) or --arch ARCH (GPU)")
    cuda = torch.cuda.is_available()
    if args.arch and not cuda:
        sys.exit("full-size architectures need a CUDA GPU (bf16); use --tiny on the CPU")
    if args.arch and args.steps is None:
        args.steps = 4  # timing, not quality: the per-step cost is what scales
    device, dtype = ("cpu", None) if args.tiny else ("cuda", torch.bfloat16)

    from mmopt.pipelines.tiny_video import build_video_pipeline, count_parameters

    torch.manual_seed(0)
    root = Path(args.root or tempfile.mkdtemp(prefix="mmopt-video-bench-"))
    log(f"# video throughput on {torch.cuda.get_device_name() if cuda and not args.tiny else 'CPU'} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    report = {"device": device, "threads": torch.get_num_threads(), "generation": [], "scorers": []}
    names = TINY if args.tiny else {a: FULL[a] for a in args.arch}
    clips = None
    for label, config in names.items():
        params = count_parameters(config)
        path = build_video_pipeline(config, root / config, device=device if not args.tiny else "cpu",
                                    dtype=dtype)
        row, made = bench_generation(path, args, device, dtype)
        row.update({"arch": label, "params": params})
        report["generation"].append(row)
        clips = clips or made
        log(f"{label:13s} {row['pipeline']:20s} {row['clips']} clips x {row['frames_per_clip']} frames "
            f"{row['size'][0]}x{row['size'][1]}, {row['steps']} steps: one clip/call {row['one_clip_per_call_fps']:.2f} "
            f"frames/s (peak {row['one_clip_per_call_peak_mib']:.0f} MiB), batched x{args.batch} "
            f"{row['batched_fps']:.2f} frames/s (peak {row['batched_peak_mib']:.0f} MiB): "
            f"{row['batched_over_one']:.2f}x")
    for row in bench_scorers(clips, device, root, args):
        report["scorers"].append(row)
        log(f"scorer {row['scorer']:24s} {row['clip_frames_per_s']:8.1f} clip frames/s ({row['frames_read']} frames "
            f"read, {row['on']}; peak {row['peak_mib']:.0f} MiB)")
    log(f"# peak memory: {'GPU allocated' if device.startswith('cuda') else 'host RSS of the process'} during each stage")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
