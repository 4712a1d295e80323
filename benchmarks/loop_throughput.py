"""Loop throughput: the naive generate-and-score loop against mmopt's loop, and the hardware limit.

One process, one run, the same optimization work two ways:

(a) naive: what published prompt-optimization code does: one pipeline call
    per (prompt, seed), one scorer call per image, each image saved as PNG
    with PIL's defaults;
(b) mmopt: the Optimizer (FixedProposer replays the same candidates, so no
    LLM time is counted), batched and pipelined, each trial committed to the
    store; variants: full VAE, tiny decoder (TAESD) + a final full-VAE
    re-score of the best prompt, and (on a GPU) torch.compile.

Full-size architectures are built from configs with random weights (nothing
is downloaded): ``--arch sd-turbo`` (default) = the SD 2.1 UNet + OpenCLIP
ViT-H text tower + SD VAE at 512 px, 1 step (``assets/configs/sd_turbo.json``);
``--arch sdxl-turbo`` = the SDXL UNet + its two text encoders + the SDXL VAE at
512 px, 1 step (``assets/configs/sdxl_turbo.json``); the tiny decoder of the
family (TAESD / TAESDXL architecture); the CLIP ViT-L/14 scorer (open_clip,
random weights). ``--tiny`` uses the tiny test models (SD or SDXL) on the CPU.

    python benchmarks/loop_throughput.py --tiny                     # CPU, tiny SD
    python benchmarks/loop_throughput.py --tiny --arch sdxl-turbo   # CPU, tiny SDXL
    python benchmarks/loop_throughput.py --compile default          # GPU, SD-Turbo
    python benchmarks/loop_throughput.py --arch sdxl-turbo          # GPU, SDXL-Turbo
    python benchmarks/loop_throughput.py --tiny --leak-check 50     # memory across 50 iterations

Prints images/s of both loops and their ratio, stage shares (LLM, generation,
decode, scoring, overhead), on a GPU the UNet's achieved TFLOP/s as a share
of the bf16 peak (FLOPs counted with torch.utils.flop_counter on one UNet
forward) and peak GPU memory. ``--json PATH`` writes every figure.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

INTENT = "a red fox sitting in fresh snow beside a wooden fence at sunrise"
WORDS = ["photorealistic", "detailed fur", "golden light", "soft shadows", "wide angle", "bokeh", "winter",
         "cinematic", "sharp focus", "35mm", "morning mist", "high contrast", "pastel sky", "rim light",
         "award winning", "national geographic", "frosty", "warm tones", "cool tones", "crisp"]
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense datasheet figures


def log(*a):
    print(*a, flush=True)


def schedule(iterations: int, candidates: int) -> list[list[str]]:
    return [[f"{INTENT}, {WORDS[(i * candidates + j) % len(WORDS)]}, {WORDS[(i + 3 * j) % len(WORDS)]} v{i}.{j}"
             for j in range(candidates)] for i in range(iterations)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- models


ARCHS = {"sd-turbo": "sd_turbo", "sdxl-turbo": "sdxl_turbo"}  # --arch -> config in mmopt/assets/configs


def build_full_models(root: Path, device: str, arch: str) -> dict:
    """Random-weight ``arch`` pipeline (bf16), its tiny decoder and CLIP ViT-L/14 saved under ``root``."""
    from diffusers import AutoencoderTiny

    from mmopt.pipelines.tiny import build_pipeline, build_random_clip, load_config

    cfg = load_config(ARCHS[arch])
    sd, taesd, clip = root / f"{arch}-random", root / f"taesd-{arch}-random", root / "clip-vit-l14-random"
    t0 = time.perf_counter()
    # initialised on the GPU: seconds instead of minutes
    build_pipeline(ARCHS[arch], sd, seed=0, device=device, dtype=torch.bfloat16)
    if not (taesd / "config.json").is_file():
        with torch.device(device):
            AutoencoderTiny(**cfg["taesd"]).to(torch.bfloat16).save_pretrained(taesd, safe_serialization=True)
    build_random_clip(clip, "ViT-L-14", seed=0, device=device)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"built random-weight models in {time.perf_counter() - t0:.1f} s under {root}")
    return {"sd": sd, "taesd": taesd, "clip": clip}


def build_tiny_models(arch: str) -> dict:
    from mmopt.cache import default_cache_dir
    from mmopt.pipelines.fast import build_tiny_taesd
    from mmopt.pipelines.tiny import build_tiny_clip, build_tiny_sd, build_tiny_sdxl

    tiny = default_cache_dir() / "tiny"
    pipe = build_tiny_sdxl(tiny / "sdxl") if arch == "sdxl-turbo" else build_tiny_sd(tiny / "sd")
    return {"sd": pipe, "clip": build_tiny_clip(tiny / "clip"), "taesd": build_tiny_taesd(tiny / "taesd")}


# --------------------------------------------------------------------------- FLOPs


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def unet_inputs(gen, batch: int, device: str) -> tuple:
    """Latents and keyword arguments for one denoiser call at ``batch``, as the pipeline makes
    them (SDXL adds the pooled text embedding and the size/crop ids)."""
    pipe = gen.pipe
    cfg = pipe.unet.config
    h, w = int(gen.preset["height"]), int(gen.preset["width"])
    f = pipe.vae_scale_factor
    lat = torch.randn(batch, cfg.in_channels, h // f, w // f, device=device, dtype=gen.dtype)
    kw = dict(encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim, device=device, dtype=gen.dtype),
              timestep_cond=None, cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=False)
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, device=device, dtype=gen.dtype),
                                   "time_ids": torch.tensor([[h, w, 0, 0, h, w]] * batch, device=device,
                                                            dtype=gen.dtype)}
    return lat, kw


def text_encoders(pipe) -> list:
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


def model_flops(gen, scorer, device: str) -> dict:
    """FLOPs per image of each stage, from one forward at batch 1 (they scale linearly with batch)."""
    pipe = gen.pipe
    lat, kw = unet_inputs(gen, 1, device)
    t = torch.tensor([999], device=device)
    ids = torch.randint(0, 49000, (1, 77), device=device)
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    out = {"unet": count_flops(lambda: unet(lat, t, **kw)),
           "text": sum(count_flops(lambda: enc(ids)) for enc in text_encoders(pipe)),
           "vae_decode": count_flops(lambda: pipe.vae.decode(lat / pipe.vae.config.scaling_factor))}
    try:
        tiny = gen._tiny_decoder()
        out["tiny_decode"] = count_flops(lambda: tiny.decode(lat))
    except Exception:  # no tiny decoder available
        out["tiny_decode"] = 0
    size = scorer.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    img = torch.randn(1, 3, size, size, device=device, dtype=scorer.dtype)
    out["clip_image"] = count_flops(lambda: scorer.model.encode_image(img))
    out["steps"] = int(gen.preset["steps"])
    return out


def measure_matmul_peak(device: str) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    sync(device)
    return 2 * 8192 ** 3 * 20 / (start.elapsed_time(end) / 1e3)


def unet_throughput(gen, batch: int, device: str, flops_per_image: int, repeats: int = 10) -> dict:
    """The denoiser alone at ``batch`` (as the generator runs it): ms per forward, TFLOP/s."""
    pipe = gen.pipe
    # called exactly as the pipeline calls it, so a compiled UNet reuses its graph
    lat, kw = unet_inputs(gen, batch, device)
    t = torch.tensor(999.0, device=device)
    with torch.inference_mode():
        for _ in range(3):
            pipe.unet(lat, t, **kw)
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            pipe.unet(lat, t, **kw)
        end.record()
        sync(device)
    ms = start.elapsed_time(end) / repeats
    return {"batch": batch, "ms_per_forward": ms, "tflops": flops_per_image * batch / (ms / 1e3) / 1e12}


# --------------------------------------------------------------------------- the two loops


def naive_loop(pipe, scorer, sched, seeds, device, out_dir: Path, save: bool = True) -> dict:
    """One pipeline call per (prompt, seed); one scorer call per image; one PNG per image."""
    from mmopt.types import Generation

    preset_args = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE)
    n, scores = 0, []
    sync(device)
    t0 = time.perf_counter()
    for it, prompts in enumerate([[INTENT]] + sched):
        for i, prompt in enumerate(prompts):
            for seed in seeds:
                g = torch.Generator(device=device).manual_seed(seed)
                image = pipe(prompt, generator=g, **preset_args).images[0]
                s = scorer.score([Generation(prompt, seed, image, {})], INTENT)[0]
                scores.append(s.value)
                if save:
                    image.save(out_dir / f"it{it}_c{i}_s{seed}.png")
                n += 1
    sync(device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def mmopt_loop(gen, scorer, sched, seeds, store: Path, final_rescore=False, overlap=False, callbacks=()) -> dict:
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.proposers.fixed import FixedProposer

    opt = Optimizer(gen, [scorer], FixedProposer(sched), budget=Budget(iterations=len(sched) + 1),
                    candidates=len(sched[0]), seeds=list(seeds), store=store, final_rescore=final_rescore,
                    overlap=overlap, callbacks=callbacks, workers=min(8, os.cpu_count() or 2))
    sync(gen.device)
    t0 = time.perf_counter()
    result = opt.run(INTENT)
    sync(gen.device)
    dt = time.perf_counter() - t0
    n = result.images
    if len(result.trials) != 1 + sum(len(r) for r in sched):
        raise RuntimeError(f"expected {1 + sum(len(r) for r in sched)} trials, got {len(result.trials)}")
    out = {"images": n, "seconds": dt, "images_per_s": n / dt, "timings": dict(opt.timings)}
    if result.final:
        out["final_images"] = len(result.final) * len(seeds) if result.final["best"].prompt != result.final[
            "original"].prompt else len(seeds)
        out["final_best_objective"] = result.final["best"].objective
    return out


class StageTimer:
    """Wall time inside the text encoder, the denoiser, the decoders and the scorer (synchronised)."""

    def __init__(self, gen, scorer, device):
        self.device, self.t = device, {"text": 0.0, "unet": 0.0, "decode": 0.0, "score": 0.0}
        self.undo = []
        pipe = gen.pipe
        for name, mod in [("text", enc) for enc in text_encoders(pipe)] + [("unet", pipe.unet)]:
            self.undo.append(mod.register_forward_pre_hook(self._pre))
            self.undo.append(mod.register_forward_hook(self._post(name)))
        decoders = [pipe.vae]
        try:
            decoders.append(gen._tiny_decoder())
        except Exception:
            pass
        self.patched = [(d, "decode") for d in decoders] + [(scorer, "score")]
        for obj, attr in self.patched:
            setattr(obj, attr, self._wrap(getattr(obj, attr), "score" if obj is scorer else "decode"))

    def _pre(self, *a):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, name):
        def hook(*a):
            sync(self.device)
            self.t[name] += time.perf_counter() - self._t0
        return hook

    def _wrap(self, fn, name):
        def timed(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            r = fn(*a, **k)
            sync(self.device)
            self.t[name] += time.perf_counter() - t0
            return r
        return timed

    def close(self):
        for h in self.undo:
            h.remove()
        for obj, attr in self.patched:
            obj.__dict__.pop(attr, None)


def stage_shares(gen, scorer, sched, seeds, tmp: Path, label: str, flops: dict) -> dict:
    """One serial (no overlap) instrumented mmopt run: share of wall time per stage."""
    timer = StageTimer(gen, scorer, gen.device)
    try:
        r = mmopt_loop(gen, scorer, sched, seeds, tmp / f"stages-{label}", overlap=False)
    finally:
        timer.close()
    total = r["seconds"]
    st = timer.t
    shares = {"llm": r["timings"].get("propose", 0.0) / total,
              "generation": (st["text"] + st["unet"]) / total,
              "decode": st["decode"] / total,
              "scoring": st["score"] / total}
    shares["overhead"] = max(0.0, 1.0 - sum(shares.values()))
    gen_flops = (flops["unet"] * flops["steps"] + flops["text"]) * r["images"]
    return {"images_per_s_instrumented": r["images_per_s"], "shares": shares, "seconds": st,
            "generation_stage_tflops": gen_flops / max(st["text"] + st["unet"], 1e-9) / 1e12}


# --------------------------------------------------------------------------- leak check


def leak_check(gen, scorer, iterations: int, candidates: int, seeds, tmp: Path) -> dict:
    """Run ``iterations`` iterations; record GPU memory and process RSS after each."""
    cuda = gen.device.startswith("cuda")
    rows = []

    def cb(event, **info):
        if event == "iteration":
            gc.collect()
            rows.append({"iteration": info["iteration"],
                         "gpu_allocated_mb": torch.cuda.memory_allocated() / 2**20 if cuda else 0.0,
                         "rss_mb": _rss_mb()})

    mmopt_loop(gen, scorer, schedule(iterations, candidates), seeds, tmp / "leak", callbacks=[cb])
    first = rows[min(4, len(rows) - 1)]  # after warm-up (allocator pools, caches)
    last = rows[-1]
    # a plateau has slope ~0 in the second half; a leak keeps its slope
    half = rows[len(rows) // 2:]
    return {"iterations": len(rows), "rss_slope_mb_per_iteration_second_half": _slope(
                [r["iteration"] for r in half], [r["rss_mb"] for r in half]),
            "gpu_mb_after_warmup": first["gpu_allocated_mb"],
            "gpu_mb_last": last["gpu_allocated_mb"], "gpu_growth_mb": last["gpu_allocated_mb"] - first["gpu_allocated_mb"],
            "rss_mb_after_warmup": first["rss_mb"], "rss_mb_last": last["rss_mb"],
            "rss_growth_mb": last["rss_mb"] - first["rss_mb"], "per_iteration": rows}


def _slope(xs: list, ys: list) -> float:
    """Least-squares slope of ys on xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def _rss_mb() -> float:
    """RSS now (Linux); elsewhere the peak RSS, the closest the platform reports."""
    from mmopt.device import host_rss_mb

    rss = host_rss_mb()
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- main


STEPS, GUIDANCE, SIZE = 1, 0.0, 512


def main() -> None:
    global STEPS, GUIDANCE, SIZE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd-turbo", help="architecture of the generator")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=5, help="iterations after the original prompt")
    ap.add_argument("--compile", default=None, help="torch.compile mode for an extra mmopt variant (GPU)")
    ap.add_argument("--max-batch", default="auto")
    ap.add_argument("--leak-check", type=int, default=0, metavar="N", help="also run N iterations and report memory")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--root", default=None, help="where the random-weight models are saved")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from diffusers import DiffusionPipeline

    from mmopt.registry import create

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tmp = Path(tempfile.mkdtemp(prefix="mmopt-bench-"))
    paths = build_tiny_models(args.arch) if device == "cpu" else build_full_models(
        Path(args.root or tmp / "models"), device, args.arch)
    dtype = "fp32" if device == "cpu" else "bf16"
    max_batch = args.max_batch if args.max_batch == "auto" else int(args.max_batch)
    if device == "cpu" and max_batch == "auto":
        max_batch = 64
    preset = json.loads((Path(paths["sd"]) / "mmopt_preset.json").read_text())
    STEPS, GUIDANCE, SIZE = int(preset["steps"]), float(preset["guidance"]), int(preset["height"])
    sched = schedule(args.iterations, args.candidates)
    seeds = list(range(args.seeds))
    images = args.seeds * (1 + args.iterations * args.candidates)
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "torch": torch.__version__, "arch": args.arch + (" (tiny)" if device == "cpu" else ""),
                    "work": {"candidates": args.candidates, "seeds": args.seeds,
                                                         "iterations": args.iterations, "images": images,
                                                         "size": SIZE, "steps": STEPS, "dtype": dtype}}
    log(f"device {report['device']}; {report['arch']}; work: {images} images ({args.iterations} iterations x {args.candidates} "
        f"candidates x {args.seeds} seeds + the original), {SIZE} px, {STEPS} step(s), {dtype}")

    # the default scorer preprocesses on the device on a GPU (Generation.pixels); the naive loop
    # uses open_clip's PIL transform as published CLIPScore code does; a second mmopt variant
    # runs with the other mode, so the two are compared in this run
    scorer = create("scorer", f"clip:{paths['clip']}", device=device, dtype=dtype, batch_size=64)
    other_mode = "pil" if scorer.preprocess_mode == "tensor" else "tensor"
    scorers = {scorer.preprocess_mode: scorer,
               other_mode: create("scorer", f"clip:{paths['clip']}", device=device, dtype=dtype, batch_size=64,
                                  preprocess=other_mode)}
    for s in scorers.values():
        s.encode_texts([INTENT])

    # (a) the naive loop, on a plain pipeline (no fast paths), warmed up first
    if not args.skip_naive:
        naive_pipe = DiffusionPipeline.from_pretrained(
            str(paths["sd"]), torch_dtype=torch.float32 if device == "cpu" else torch.bfloat16).to(device)
        naive_pipe.set_progress_bar_config(disable=True)
        (tmp / "naive").mkdir()
        naive_loop(naive_pipe, scorers["pil"], [sched[0][:2]], seeds[:1], device, tmp / "naive")  # warm-up
        report["naive"] = naive_loop(naive_pipe, scorers["pil"], sched, seeds, device, tmp / "naive")
        log(f"(a) naive loop:  {report['naive']['images_per_s']:8.2f} images/s  ({report['naive']['seconds']:.1f} s)")
        del naive_pipe
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    # (b) mmopt's loop: variants
    # (label, generator switches, final full-VAE re-score, overlap of generation and scoring,
    #  CLIP preprocessing mode)
    mode = scorer.preprocess_mode
    variants = [("mmopt full VAE", dict(decoder="full"), False, False, mode),
                ("mmopt tiny decoder + final full-VAE re-score", dict(decoder="tiny"), True, False, mode),
                (f"mmopt tiny decoder + final re-score, CLIP preprocess {other_mode}", dict(decoder="tiny"), True,
                 False, other_mode),
                ("mmopt tiny decoder + final re-score, overlap thread", dict(decoder="tiny"), True, True, mode)]
    if args.compile and device == "cuda":
        variants += [(f"mmopt tiny decoder + compile({args.compile})", dict(decoder="tiny", compile=args.compile),
                      True, False, mode)]
    report["mmopt"] = {}
    report["clip_preprocess_default"] = mode
    gens, by_kw = {}, {}
    for label, kw, final, overlap, preprocess in variants:
        scorer = scorers[preprocess]
        key = json.dumps(kw, sort_keys=True)
        warm = 0.0
        if key not in by_kw:
            by_kw[key] = create("generator", f"diffusers:{paths['sd']}", device=device, dtype=dtype,
                                max_batch=max_batch, tiny_decoder=str(paths["taesd"]), **kw)
            t0 = time.perf_counter()
            mmopt_loop(by_kw[key], scorer, schedule(1, args.candidates), seeds, tmp / f"warm-{len(report['mmopt'])}",
                       final_rescore=final)  # warm-up: compile, autotune, allocator, cached intent
            warm = time.perf_counter() - t0
        gen = gens[label] = by_kw[key]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = mmopt_loop(gen, scorer, sched, seeds, tmp / f"run-{len(report['mmopt'])}", final_rescore=final,
                       overlap=overlap)
        r["warmup_s"] = warm
        r["batch"] = gen._batch
        if device == "cuda":
            r["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if "naive" in report:
            r["ratio_vs_naive"] = r["images_per_s"] / report["naive"]["images_per_s"]
        report["mmopt"][label] = r
        log(f"(b) {label}: {r['images_per_s']:8.2f} images/s  ({r['seconds']:.1f} s, batch {r['batch']}, "
            f"warm-up {warm:.1f} s" + (f", peak {r['peak_gpu_gb']:.1f} GiB" if "peak_gpu_gb" in r else "")
            + (f", x{r['ratio_vs_naive']:.2f} naive" if "ratio_vs_naive" in r else "") + ")")

    scorer = scorers[mode]

    # FLOPs per image of each stage (eager modules)
    last = gens[variants[-1][0]]
    flops = model_flops(gens[variants[1][0]], scorer, device)
    report["flops_per_image"] = flops

    # stage shares (serial, synchronised; eager variants only: hooks would break compiled graphs)
    report["stages"] = {}
    for label, *_ in variants[:2]:
        st = report["stages"][label] = stage_shares(gens[label], scorer, sched, seeds, tmp,
                                                    str(len(report["stages"])), flops)
        log(f"stages [{label}]: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in st["shares"].items())
            + f"; generation stage (text encoder + UNet) {st['generation_stage_tflops']:.1f} TFLOP/s")
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        measured = measure_matmul_peak(device)
        report["peak"] = {"datasheet_bf16": peak, "measured_matmul_bf16": measured}
        eager = gens[variants[1][0]]
        unet_rows = [dict(unet_throughput(eager, 1, device, flops["unet"]), variant="eager"),
                     dict(unet_throughput(eager, eager._batch, device, flops["unet"]), variant="eager")]
        if last is not eager:
            unet_rows.append(dict(unet_throughput(last, last._batch, device, flops["unet"]), variant="compiled"))
        report["unet"] = unet_rows
        for label, st in report["stages"].items():
            st["generation_stage_mfu"] = st["generation_stage_tflops"] * 1e12 / peak if peak else None
        for row in unet_rows:
            row["mfu_datasheet"] = row["tflops"] * 1e12 / peak if peak else None
            row["mfu_measured_matmul"] = row["tflops"] * 1e12 / measured
            log(f"UNet alone ({row['variant']}), batch {row['batch']}: {row['ms_per_forward']:.2f} ms, {row['tflops']:.0f} TFLOP/s = "
                f"{100 * (row['mfu_datasheet'] or 0):.0f}% of the {(peak or 0) / 1e12:.0f} TFLOP/s datasheet bf16 peak, "
                f"{100 * row['mfu_measured_matmul']:.0f}% of the measured {measured / 1e12:.0f} TFLOP/s matmul")
        for label, r in report["mmopt"].items():
            tiny = "tiny" in label
            per_img = flops["unet"] * STEPS + flops["text"] + (flops["tiny_decode"] if tiny else flops["vae_decode"]) \
                + flops["clip_image"]
            r["loop_tflops"] = per_img * r["images_per_s"] / 1e12
            r["loop_mfu_datasheet"] = r["loop_tflops"] * 1e12 / peak if peak else None
            gen_t = r["timings"]["generate"]
            log(f"[{label}] whole loop: {r['loop_tflops']:.0f} TFLOP/s useful = {100 * (r['loop_mfu_datasheet'] or 0):.0f}% "
                f"of peak; generate-wait {gen_t:.2f} s, score {r['timings']['score']:.2f} s, write-wait "
                f"{r['timings']['write_wait']:.2f} s")
    log("GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items() if k != "steps"))

    if args.leak_check:
        report["leak"] = leak_check(last, scorer, args.leak_check, args.candidates, seeds, tmp)
        lk = report["leak"]
        log(f"leak check over {lk['iterations']} iterations: GPU allocated {lk['gpu_mb_after_warmup']:.0f} -> "
            f"{lk['gpu_mb_last']:.0f} MiB ({lk['gpu_growth_mb']:+.1f}), RSS {lk['rss_mb_after_warmup']:.0f} -> "
            f"{lk['rss_mb_last']:.0f} MiB ({lk['rss_growth_mb']:+.1f}; slope over the second half "
            f"{lk['rss_slope_mb_per_iteration_second_half']:+.2f} MiB/iteration)")

    if "naive" in report:
        best = max(report["mmopt"].items(), key=lambda kv: kv[1]["images_per_s"])
        log(f"SUMMARY naive {report['naive']['images_per_s']:.2f} images/s; best mmopt [{best[0]}] "
            f"{best[1]['images_per_s']:.2f} images/s; ratio {best[1]['ratio_vs_naive']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
