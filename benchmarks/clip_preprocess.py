"""CLIPScore preprocessing: open_clip's PIL transform against the same steps as tensor ops.

Both ways score the same generations against the same intent with the same
tower; only the resize / crop / normalise differs:

* ``pil``: what the reference CLIPScore does. Each PIL image is resized by
  open_clip's torchvision transform (host threads), stacked, copied to the
  scorer's device.
* ``tensor``: ``CLIPScoreScorer(preprocess="tensor")``. The generator leaves a
  uint8 copy of each image on its device (``Generation.pixels``); the scorer
  resizes the whole batch there in one call. On a GPU nothing crosses to the
  host; on the CPU it is a batched torch resize instead of per-image PIL.

It reports images/s of both and their ratio, and how far the scores move: the
largest |difference| in CLIPScore, and whether the best generation of each
group of candidates is the same one (what an optimizer acts on).

Agreement is measured with mmopt's own trained CLIP (``offline:clip``, 64 px
input) on ShapesWorld renders at ``--size`` px, where the scores mean
something; speed also with a ViT-B-32-sized tower (random weights, 224 px),
where the resize is to 224 as in the common CLIPScore setups.

    python benchmarks/clip_preprocess.py                 # CPU, 64 images of 512 px
    python benchmarks/clip_preprocess.py --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shapes_generations(n: int, size: int, device: str, seed: int):
    """``n`` ShapesWorld renders of random captions as Generations, pixels on ``device``."""
    import numpy as np
    import torch

    from mmopt.shapesworld import grammar
    from mmopt.shapesworld.render import render_caption
    from mmopt.types import Generation

    rng = random.Random(seed)
    gens = []
    for i in range(n):
        caption = grammar.sample_caption(rng)
        image = render_caption(caption, seed=seed + i, size=size)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device)
        gens.append(Generation(caption, i, image, {}, pixels=pixels))
    return gens


def time_score(scorer, gens, intent: str, repeats: int) -> float:
    """Median seconds of one ``score`` call over every generation (after one warm-up)."""
    import torch

    def sync():
        if scorer.device.startswith("cuda"):
            torch.cuda.synchronize()

    scorer.score(gens, intent)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        scorer.score(gens, intent)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def agreement(pil_scores, tensor_scores, group: int) -> dict:
    """Largest |difference|, and how often the best of each ``group`` is the same generation."""
    diffs = [abs(a.value - b.value) for a, b in zip(pil_scores, tensor_scores)]
    same, groups = 0, 0
    for start in range(0, len(diffs) - group + 1, group):
        a = [s.value for s in pil_scores[start:start + group]]
        b = [s.value for s in tensor_scores[start:start + group]]
        same += a.index(max(a)) == b.index(max(b))
        groups += 1
    return {"max_abs_diff": max(diffs), "mean_abs_diff": statistics.fmean(diffs),
            "same_best": same, "groups": groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="rendered image side in pixels")
    ap.add_argument("--group", type=int, default=4, help="candidates per group for the same-best check")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.images < args.group or args.group < 2:
        ap.error("need --group >= 2 and --images >= --group")

    from mmopt.cache import default_cache_dir
    from mmopt.pipelines.tiny import build_random_clip
    from mmopt.registry import create
    from mmopt.scorers.clip import CLIPScoreScorer

    gens = shapes_generations(args.images, args.size, args.device, args.seed)
    intent = gens[0].prompt
    print(f"{args.images} ShapesWorld renders of {args.size} px, device {args.device}, "
          f"{os.cpu_count()} CPU threads available")

    # 1. agreement with a trained CLIP: mmopt's own (64 px input, trained on ShapesWorld)
    offline = {mode: create("scorer", "offline:clip", device=args.device, preprocess=mode, batch_size=args.images)
               for mode in ("pil", "tensor")}
    agree = agreement(offline["pil"].score(gens, intent), offline["tensor"].score(gens, intent), args.group)
    print(f"offline:clip (trained, 64 px input): max |CLIPScore pil - tensor| {agree['max_abs_diff']:.4f} "
          f"(mean {agree['mean_abs_diff']:.4f}; scores lie in [0, 2.5]); same best of {args.group} in "
          f"{agree['same_best']}/{agree['groups']} groups")

    # 2. speed, with the trained tower and with a ViT-B-32-sized one (224 px input)
    vit_b = build_random_clip(default_cache_dir() / "random" / "ViT-B-32", "ViT-B-32", seed=args.seed)
    vit = {mode: CLIPScoreScorer(str(vit_b), device=args.device, preprocess=mode, batch_size=args.images)
           for mode in ("pil", "tensor")}
    for label, scorers in (("offline:clip (64 px)", offline), ("ViT-B-32 random (224 px)", vit)):
        seconds = {mode: time_score(scorer, gens, intent, args.repeats) for mode, scorer in scorers.items()}
        print(f"{label}: pil {args.images / seconds['pil']:.1f} images/s, tensor "
              f"{args.images / seconds['tensor']:.1f} images/s, ratio tensor/pil x{seconds['pil'] / seconds['tensor']:.2f}")
    agree_b = agreement(vit["pil"].score(gens, intent), vit["tensor"].score(gens, intent), args.group)
    print(f"ViT-B-32 random: max |CLIPScore pil - tensor| {agree_b['max_abs_diff']:.4f}; same best in "
          f"{agree_b['same_best']}/{agree_b['groups']} groups (random weights: cosines carry little signal)")


if __name__ == "__main__":
    sys.exit(main())
