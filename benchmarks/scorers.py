"""Scorer throughput: images (or prompts) per second for every scorer, one batch per call.

Default: tiny components built here from configs (random seeded weights, the
real CLIP BPE tokenizer) plus the real shipped MiniLM for the drift guard, on
the CPU. ``--full`` builds full-size architectures with random weights
(open_clip ViT-L-14 for CLIP/dCS/concepts/aesthetic, ViT-H-14 for HPS and
PickScore) and is meant for a GPU.

    python benchmarks/scorers.py                     # tiny, CPU
    python benchmarks/scorers.py --images 64 --repeats 5
    python benchmarks/scorers.py --full              # full-size, GPU

Each scorer is warmed up once (loading, text caches), then ``score`` is timed
``--repeats`` times over ``--images`` generations of one intent; the table
shows the median. The drift guard scores prompts, not images: its row counts
prompts/s (every prompt distinct, so its cache never hits).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTENT = "a red cat sitting on a blue mat with a hat"


def _images(n: int, size: int, seed: int):
    from PIL import Image

    rng = random.Random(seed)
    return [Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
            for _ in range(n)]


def _save_pickscore_dir(folder: Path, full: bool, seed: int) -> Path:
    """A transformers CLIPModel + processor (real CLIP BPE tokenizer): tiny, or ViT-H-14 sized."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    from mmopt.pipelines.tiny import clip_tokenizer_dir

    if full:  # the shape of laion/CLIP-ViT-H-14 (PickScore_v1)
        text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
        vision = dict(image_size=224, patch_size=14, hidden_size=1280, intermediate_size=5120,
                      num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu")
        proj, size = 1024, 224
    else:
        text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77)
        vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2)
        proj, size = 16, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj))
    model.save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir(folder / "tokenizer"))
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                     crop_size={"height": size, "width": size}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: lazy loads, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="generations per score call")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="full-size architectures (random weights); for a GPU")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ap.add_argument("--only", default="", help="comma-separated scorer labels to run")
    args = ap.parse_args()

    import torch

    if args.full and not torch.cuda.is_available() and args.device in (None, "cpu"):
        print("note: --full on CPU is slow (ViT-H-14 at fp32)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mmopt-bench-") as folder:
        _run(args, Path(folder))


def _run(args, tmp: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from mmopt import registry
    from mmopt.pipelines.tiny import build_random_clip, build_tiny_clip
    from mmopt.scorers.aesthetic import AestheticMLP, AestheticScorer
    from mmopt.scorers.concepts import ConceptScorer
    from mmopt.scorers.dcs import DecomposedCLIPScore
    from mmopt.types import Generation

    dev = {"device": args.device} if args.device else {}

    # 1. components: tiny (built from configs) or full-size random weights
    t0 = time.perf_counter()
    if args.full:
        clip_dir = build_random_clip(tmp / "vit-l-14", "ViT-L-14", seed=0)
        hps_arch = build_random_clip(tmp / "vit-h-14", "ViT-H-14", seed=1)
    else:
        clip_dir = build_tiny_clip(tmp / "tiny-clip", seed=0)
        hps_arch = clip_dir
    pick_dir = _save_pickscore_dir(tmp / "pickscore", args.full, seed=2)
    clip = registry.create("scorer", f"clip:{clip_dir}", **dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        mlp = AestheticMLP(clip.embed_dim)
    save_file(mlp.state_dict(), str(tmp / "aesthetic.safetensors"))
    build_s = time.perf_counter() - t0

    gens = [Generation(INTENT, i, im) for i, im in enumerate(_images(args.images, args.size, seed=0))]
    rng = random.Random(0)
    words = ["vivid", "soft light", "detailed", "studio", "cinematic", "pastel", "8k", "film grain"]

    def drift_call(guard):
        # distinct prompts every call: measures encoding, not the cache
        prompts = [f"{INTENT}, {rng.choice(words)} {rng.random():.6f}" for _ in gens]
        return guard.score([Generation(p, 0, gens[0].media) for p in prompts], INTENT)

    # 2. scorers (label, factory); each loads once (registry memoises)
    makers = {
        "clip": lambda: clip,
        # dCS / concepts / aesthetic share the loaded CLIP, as the registry does by name
        "dcs": lambda: DecomposedCLIPScore(clip),
        "concepts": lambda: ConceptScorer(clip),
        "aesthetic": lambda: AestheticScorer(tmp / "aesthetic.safetensors", clip=clip),
        "pickscore": lambda: registry.create("scorer", f"pickscore:{pick_dir}", **dev),
        "hps": lambda: _hps(tmp, hps_arch, dev),
        "drift": lambda: registry.create("scorer", "drift:minilm"),
    }
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    for label, make in makers.items():
        if only and label not in only:
            continue
        t1 = time.perf_counter()
        scorer = make()
        load_s = time.perf_counter() - t1
        call = (lambda s=scorer: drift_call(s)) if label == "drift" else (lambda s=scorer: s.score(gens, INTENT))
        sec = _time(call, args.repeats)
        rows.append((label, scorer.name, load_s, sec, len(gens) / sec))

    # 3. report
    device = clip.device if not args.device else args.device
    print(f"\nmode={'full' if args.full else 'tiny'} device={device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} images/call={len(gens)} size={args.size}px "
          f"repeats={args.repeats} (median) build={build_s:.1f}s")
    print(f"{'scorer':<10} {'load s':>8} {'s/call':>8} {'items/s':>9}  name")
    for label, name, load_s, sec, rate in rows:
        unit = " prompts/s" if label == "drift" else ""
        print(f"{label:<10} {load_s:>8.2f} {sec:>8.3f} {rate:>9.1f}  {name}{unit}")


def _hps(tmp: Path, arch_dir: Path, dev: dict):
    """HPS on a checkpoint file written from the architecture's random weights (load path as real)."""
    import torch
    from safetensors.torch import load_file

    from mmopt import registry

    ckpt = tmp / "hps_checkpoint.pt"      # the published format: {"state_dict": ...} .pt
    torch.save({"state_dict": load_file(str(Path(arch_dir) / "open_clip_model.safetensors"))}, ckpt)
    return registry.create("scorer", f"hps:{ckpt}", model=str(arch_dir), **dev)


if __name__ == "__main__":
    main()
