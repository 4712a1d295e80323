"""Train mmopt's own ShapesWorld models: a tiny CLIP and a tiny text-to-image model.

One command trains both, with fixed seeds, and writes them in the layouts the
normal loaders read (so they load exactly like hub models)::

    python -m mmopt.shapesworld.train --out /tmp/shapesworld            # GPU if present
    python -m mmopt.shapesworld.train --out /tmp/sw --steps-scale 0.01  # smoke run

Output (the shipped copy lives in ``mmopt/assets/shapesworld``)::

    OUT/clip/  open_clip_config.json + open_clip_model.safetensors   (clip:<dir>)
    OUT/t2i/   a StableDiffusionPipeline save_pretrained folder       (diffusers:<dir>)
               + mmopt_preset.json (steps, guidance, 64 px)
    OUT/train_report.json   steps run, seconds per phase, CLIP zero-shot accuracy

Architectures and hyper-parameters are data (``assets/configs/shapesworld.json``).
Phases:

1. data: ``n_images`` (caption, render) pairs at 64 px from the grammar's
   training captions (benchmark prompts are held out by construction), drawn
   in fixed-size chunks each seeded by (seed, chunk), so the data set does not
   depend on the number of worker processes.
2. CLIP: symmetric contrastive loss on (render, caption) batches; renders are
   blurred at random so generated (soft-edged) images score sensibly too.
3. autoencoder: an AutoencoderKL (64 px <-> 8x8x8 latents) with L1 + MSE
   reconstruction and a tiny KL term; its ``scaling_factor`` is set so that
   scaled latents have unit standard deviation, as in Stable Diffusion.
4. text-to-image: a UNet2DConditionModel and a CLIPTextModel trained jointly
   (epsilon prediction, DDPM noise schedule), with the caption dropped for
   ``p_uncond`` of the samples so classifier-free guidance works; the saved
   weights are an exponential moving average.

Weights are stored as float16 (half the size); the loaders cast to the dtype
they run in.

Cost: on one H100 the phases run at about 25 (CLIP, batch 1024), 19
(autoencoder, batch 256) and 10 (UNet fp32, batch 1024) steps per second, so
the full schedule takes about 7 minutes plus 30 s of rendering on 16 cores.
On 2 CPU cores expect roughly 2-3 s per CLIP step, 10-13 s per autoencoder
step and 5-6 s per UNet step at these batch sizes, about half a day in all;
``--steps-scale`` and ``--set unet.batch=128`` shrink it. Fine-tune an
existing model with ``--phases t2i --init-from <previous OUT>``. Determinism: every random draw comes from a generator seeded by
``--seed``; on CPU the same command gives the same weights; on CUDA cuDNN is
put in deterministic mode, but bit-identity across GPU models is not promised.
Each phase has a wall-clock cap (``max_seconds`` in the config, or
``--max-seconds``) as a safety net; a phase stopped early records the steps
it ran in ``train_report.json`` (then the result depends on the machine's speed).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import grammar as G
from .render import render

CONFIG_NAME = "shapesworld"
CHUNK = 500  # captions per data chunk (fixed so that the data does not depend on workers)
PAD_OPEN_CLIP = 0
EOS_ID = 49407


def load_config() -> dict:
    """The ShapesWorld training config ``mmopt/assets/configs/shapesworld.json``."""
    path = resources.files("mmopt.assets") / "configs" / f"{CONFIG_NAME}.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("_comment", None)
    return cfg


@contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG for weight init without leaking into the global state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- 1. data


def _render_chunk(args: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Captions and renders of one chunk, seeded by (seed, chunk index)."""
    seed, index, count, size = args
    rng = random.Random(f"shapesworld-train:{seed}:{index}")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        desc = G.training_description(rng)
        captions.append(G.describe(desc, rng))
        images[i] = np.asarray(render(G.layout(desc, rng), size))
    return images, captions


def make_dataset(n: int, seed: int, size: int = 64, workers: int | None = None
                 ) -> tuple[np.ndarray, list[str]]:
    """``n`` (render, caption) training pairs: a uint8 array (n, size, size, 3) and the captions.

    >>> images, captions = make_dataset(4, seed=0, size=32, workers=1)
    >>> images.shape, len(captions)
    ((4, 32, 32, 3), 4)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    jobs = [(seed, i, min(CHUNK, n - i * CHUNK), size) for i in range(math.ceil(n / CHUNK))]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs, chunksize=1)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def _to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batches(n: int, batch: int, gen: torch.Generator):
    """Endless shuffled index batches drawn from ``gen`` (epoch after epoch)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


# --------------------------------------------------------------------------- 2. CLIP


def train_clip(images: torch.Tensor, tokens: torch.Tensor, cfg: dict, *, seed: int, device: str,
               steps: int, max_seconds: float):
    """Train an open_clip ``CLIP`` contrastively; return (model, steps run)."""
    import open_clip

    tcfg = cfg["train"]["clip"]
    with _seeded(seed):
        model = open_clip.CLIP(**cfg["clip"]["model_cfg"])
    model.to(device).train()
    mean = torch.tensor(cfg["clip"]["preprocess_cfg"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["clip"]["preprocess_cfg"]["std"], device=device).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tcfg["lr"])
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(len(images), min(tcfg["batch"], len(images)), gen)
    start, step = time.time(), 0
    for step in range(steps):
        if time.time() - start > max_seconds:
            _log(f"clip: stopped by --max-seconds after {step} steps")
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, tcfg["lr"], tcfg["warmup"])
        idx = next(batches)
        x = images[idx].to(device, non_blocking=True)
        x = (_to_float(x) + 1) / 2
        # soft edges half of the time: generated images are blurrier than renders
        blur = (torch.rand(len(x), generator=gen) < 0.5).to(device).view(-1, 1, 1, 1)
        x = torch.where(blur, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
        x = (x - mean) / std
        t = tokens[idx].to(device, non_blocking=True)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(t, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(len(x), device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 250 == 0 or step == steps - 1:
            _log(f"clip step {step}/{steps} loss {loss.item():.4f}")
    else:
        step = steps
    return model.eval(), step


@torch.no_grad()
def clip_zero_shot_accuracy(model, cfg: dict, *, device: str, per_class: int = 20, seed: int = 1234,
                            tokenize=None) -> float:
    """Top-1 accuracy of ``model`` over the colour x shape classes on single-object renders.

    Class prompts are ``"a {colour} {shape}"``; each class is rendered ``per_class``
    times (random size and position).
    """
    import open_clip

    tokenize = tokenize or open_clip.tokenize
    classes = [(c, s) for c in G.COLOURS for s in G.SHAPES]
    prompts = [f"a {c} {s}" for c, s in classes]
    size = cfg["image_size"]
    rng = random.Random(seed)
    imgs, labels = [], []
    for k, (c, s) in enumerate(classes):
        for _ in range(per_class):
            desc = G.Description(groups=(G.Group(1, c, s, rng.choice(G.SIZES)),), relations=())
            imgs.append(np.asarray(render(G.layout(desc, rng), size)))
            labels.append(k)
    mean = torch.tensor(cfg["clip"]["preprocess_cfg"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["clip"]["preprocess_cfg"]["std"], device=device).view(1, 3, 1, 1)
    x = (_to_float(torch.from_numpy(np.stack(imgs)).to(device)) + 1) / 2
    x = (x - mean) / std
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(tokenize(prompts).to(device), normalize=True)
    pred = (img @ txt.T).argmax(dim=1).cpu()
    return float((pred == torch.tensor(labels)).float().mean())


# --------------------------------------------------------------------------- 3. autoencoder


def train_vae(images: torch.Tensor, cfg: dict, *, seed: int, device: str, steps: int,
              max_seconds: float):
    """Train an AutoencoderKL on renders; return (vae, steps run). Sets ``scaling_factor``."""
    from diffusers import AutoencoderKL

    tcfg = cfg["train"]["vae"]
    with _seeded(seed + 1):
        vae = AutoencoderKL(**cfg["vae"])
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=tcfg["lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    batches = _batches(len(images), min(tcfg["batch"], len(images)), gen)
    start, step = time.time(), 0
    for step in range(steps):
        if time.time() - start > max_seconds:
            _log(f"vae: stopped by --max-seconds after {step} steps")
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, tcfg["lr"], tcfg["warmup"])
        x = _to_float(images[next(batches)].to(device, non_blocking=True))
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=dev_gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + tcfg["kl_weight"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            _log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    else:
        step = steps
    vae.eval()
    # scale latents to unit std, as Stable Diffusion's scaling_factor does
    with torch.no_grad():
        x = _to_float(images[: min(4096, len(images))].to(device))
        z = torch.cat([vae.encode(x[i:i + 512]).latent_dist.mean for i in range(0, len(x), 512)])
        vae.register_to_config(scaling_factor=float(1.0 / z.std().item()))
    return vae, step


@torch.no_grad()
def vae_reconstruction_error(vae, images: torch.Tensor, *, device: str) -> float:
    """Mean absolute error (0-255 scale) of encode->decode on ``images`` (uint8, BHWC)."""
    x = _to_float(images.to(device))
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return float((rec - x).abs().mean().item() * 127.5)


# --------------------------------------------------------------------------- 4. text-to-image


def _hf_ids(tokens: torch.Tensor) -> torch.Tensor:
    """open_clip token ids (padded with 0) -> CLIPTokenizer ids (padded with <|endoftext|>)."""
    ids = tokens.clone()
    ids[ids == PAD_OPEN_CLIP] = EOS_ID
    return ids


def train_t2i(latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor, cfg: dict, *,
              seed: int, device: str, steps: int, max_seconds: float, init_from: str | None = None):
    """Train UNet + text encoder jointly on (latent, caption ids); return (unet, text_encoder, steps).

    ``init_from``: a previous OUT whose ``t2i`` UNet and text encoder are the
    starting point (fine-tuning) instead of seeded random weights. On CUDA the
    forward/backward runs under bf16 autocast (weights and optimizer stay fp32).
    Returned modules hold the EMA weights.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tcfg = cfg["train"]["unet"]
    if init_from:
        root = Path(init_from) / "t2i"
        unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=torch.float32)
    else:
        with _seeded(seed + 2):
            unet = UNet2DConditionModel(**cfg["unet"])
        with _seeded(seed + 3):
            text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    unet.to(device).train()
    text_encoder.to(device).train()
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    noise_sched = DDPMScheduler(**cfg["train_scheduler"])
    alphas = noise_sched.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed + 2)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 2)
    batches = _batches(len(latents), min(tcfg["batch"], len(latents)), gen)
    empty = empty_ids.to(device).view(1, -1)
    n_t = cfg["train_scheduler"]["num_train_timesteps"]
    start, step = time.time(), 0
    for step in range(steps):
        if time.time() - start > max_seconds:
            _log(f"t2i: stopped by --max-seconds after {step} steps")
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, tcfg["lr"], tcfg["warmup"])
        idx = next(batches)
        z0 = latents[idx].to(device, non_blocking=True)
        t_ids = ids[idx].to(device, non_blocking=True)
        # classifier-free guidance: the empty caption for p_uncond of the samples
        drop = (torch.rand(len(idx), generator=gen) < tcfg["p_uncond"]).to(device).view(-1, 1)
        t_ids = torch.where(drop, empty, t_ids)
        t = torch.randint(0, n_t, (len(idx),), generator=dev_gen, device=device)
        noise = torch.randn(z0.shape, generator=dev_gen, device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            cond = text_encoder(t_ids)[0]
            pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(tcfg["ema"], (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        if step % 500 == 0 or step == steps - 1:
            _log(f"t2i step {step}/{steps} loss {loss.item():.4f}")
    else:
        step = steps
    return ema_unet, ema_te, step


# --------------------------------------------------------------------------- saving


def _half_state(module) -> dict:
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in module.state_dict().items()}


def save_clip(model, cfg: dict, out: Path) -> Path:
    """Write the open_clip hub-repo layout (config + float16 safetensors) to ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(_half_state(model), str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(cfg["clip"], indent=2))
    return out


def save_t2i(vae, unet, text_encoder, cfg: dict, out: Path) -> Path:
    """Write a StableDiffusionPipeline folder (float16 safetensors) + ``mmopt_preset.json``."""
    import diffusers
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from mmopt.pipelines.tiny import clip_tokenizer_dir

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir(tmp))
    sched_cfg = dict(cfg["scheduler"])
    scheduler = getattr(diffusers, sched_cfg.pop("class"))(**sched_cfg)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to("cpu", torch.float16),
        text_encoder=copy.deepcopy(text_encoder).to("cpu", torch.float16),
        tokenizer=tokenizer, unet=copy.deepcopy(unet).to("cpu", torch.float16),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "mmopt_preset.json").write_text(json.dumps(cfg["preset"], indent=2))
    return out


# --------------------------------------------------------------------------- main


def _pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def main(argv: list[str] | None = None) -> dict:
    """Run all phases; return the training report (also written to OUT/train_report.json)."""
    p = argparse.ArgumentParser(prog="python -m mmopt.shapesworld.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (clip/, t2i/, train_report.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every phase's steps (e.g. 0.01 for a smoke run)")
    p.add_argument("--n-images", type=int, default=None, help="override the data set size")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock cap for every phase, replacing the config's per-phase caps "
                        "(a safety net; the report records the steps run); 0 = no cap")
    p.add_argument("--workers", type=int, default=None, help="processes that render the data")
    p.add_argument("--phases", default="clip,vae,t2i",
                   help="comma-separated phases to run (clip, vae, t2i); a skipped vae is loaded from --init-from")
    p.add_argument("--init-from", default=None,
                   help="a previous OUT: t2i starts from its UNet/text encoder, a skipped vae is its vae")
    p.add_argument("--set", action="append", default=[], metavar="PHASE.KEY=VALUE",
                   help="override a training hyper-parameter, e.g. --set unet.batch=128 (repeatable)")
    args = p.parse_args(argv)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not phases or any(x not in ("clip", "vae", "t2i") for x in phases):
        raise ValueError(f"--phases must list clip, vae and/or t2i, got {args.phases!r}")
    if "vae" not in phases and "t2i" in phases and not args.init_from:
        raise ValueError("--phases without vae needs --init-from <previous OUT> to load the autoencoder")
    if args.steps_scale <= 0:
        raise ValueError(f"--steps-scale must be > 0, got {args.steps_scale}")

    # 1. set-up: determinism where the backend allows it
    device = _pick_device(args.device)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    cfg = load_config()
    for item in args.set:
        key, sep, value = item.partition("=")
        phase, dot, name = key.partition(".")
        if not sep or not dot or phase not in cfg["train"] or not isinstance(cfg["train"][phase], dict):
            raise ValueError(f"--set expects PHASE.KEY=VALUE with PHASE in clip/vae/unet, got {item!r}")
        cfg["train"][phase][name] = json.loads(value)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {k: max(1, round(v["steps"] * args.steps_scale)) for k, v in cfg["train"].items()
             if isinstance(v, dict)}
    caps = {k: (v.get("max_seconds", float("inf")) if args.max_seconds is None else (args.max_seconds or float("inf")))
            for k, v in cfg["train"].items() if isinstance(v, dict)}
    report: dict = {"seed": args.seed, "device": device, "torch": torch.__version__,
                    "phases": phases, "init_from": args.init_from, "overrides": args.set,
                    "steps_planned": steps, "steps_run": {}, "seconds": {}}

    # 2. data (rendered by forked workers before CUDA is initialised)
    t0 = time.time()
    n = args.n_images or cfg["train"]["n_images"]
    images_np, captions = make_dataset(n, args.seed, cfg["image_size"], args.workers)
    import open_clip

    tokens = open_clip.tokenize(captions)
    images = torch.from_numpy(images_np)
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
        images, tokens = images.to(device), tokens.to(device)
    report["n_images"] = n
    report["seconds"]["data"] = round(time.time() - t0, 1)
    _log(f"data: {n} pairs in {report['seconds']['data']} s; e.g. {captions[0]!r}")

    # 3. CLIP
    t0 = time.time()
    if "clip" in phases:
        clip, report["steps_run"]["clip"] = train_clip(images, tokens, cfg, seed=args.seed, device=device,
                                                       steps=steps["clip"], max_seconds=caps["clip"])
        report["clip_zero_shot_top1"] = clip_zero_shot_accuracy(clip, cfg, device=device)
        save_clip(clip, cfg, out / "clip")
        report["seconds"]["clip"] = round(time.time() - t0, 1)
        _log(f"clip: zero-shot top-1 {report['clip_zero_shot_top1']:.3f} ({report['seconds']['clip']} s)")
        del clip

    # 4. autoencoder
    t0 = time.time()
    if "vae" in phases:
        vae, report["steps_run"]["vae"] = train_vae(images, cfg, seed=args.seed, device=device,
                                                    steps=steps["vae"], max_seconds=caps["vae"])
        report["vae_mae_255"] = vae_reconstruction_error(vae, images[-256:], device=device)
        report["vae_scaling_factor"] = vae.config.scaling_factor
        report["seconds"]["vae"] = round(time.time() - t0, 1)
        _log(f"vae: reconstruction MAE {report['vae_mae_255']:.2f}/255 ({report['seconds']['vae']} s)")
    elif "t2i" in phases:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(args.init_from) / "t2i" / "vae", torch_dtype=torch.float32).to(device).eval()

    # 5. text-to-image: latents of the whole data set, then UNet + text encoder
    if "t2i" in phases:
        t0 = time.time()
        with torch.no_grad():
            sf = vae.config.scaling_factor
            latents = torch.cat([vae.encode(_to_float(images[i:i + 1024].to(device))).latent_dist.mean * sf
                                 for i in range(0, len(images), 1024)])
        ids = _hf_ids(tokens)
        empty_ids = _hf_ids(open_clip.tokenize([""]))[0]
        unet, text_encoder, report["steps_run"]["unet"] = train_t2i(
            latents, ids, empty_ids, cfg, seed=args.seed, device=device, steps=steps["unet"],
            max_seconds=caps["unet"], init_from=args.init_from)
        save_t2i(vae, unet, text_encoder, cfg, out / "t2i")
        report["seconds"]["t2i"] = round(time.time() - t0, 1)
        _log(f"t2i: done ({report['seconds']['t2i']} s)")

    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    _log(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
