"""Offline tiny components: a seeded tiny Stable Diffusion pipeline, a tiny
open_clip model, and a real CLIP BPE tokenizer, all built from data.

Nothing here downloads. The architectures are JSON in ``mmopt/assets/configs``
(``tiny_sd.json``, ``tiny_clip.json``); the weights are random but seeded, so
the same seed gives bit-identical weights; the tokenizer is the real CLIP BPE
tokenizer, rebuilt from the merges file that open_clip ships
(``bpe_simple_vocab_16e6.txt.gz``). The saved directories load back through
the same code as a hub id:

>>> from mmopt.pipelines.tiny import build_tiny_sd, build_tiny_clip
>>> sd = build_tiny_sd("/tmp/mmopt-tiny/sd")            # doctest: +SKIP
>>> create("generator", f"diffusers:{sd}")               # doctest: +SKIP
>>> clip = build_tiny_clip("/tmp/mmopt-tiny/clip")     # doctest: +SKIP
>>> create("scorer", f"clip:{clip}")                     # doctest: +SKIP

Layouts written:

* tiny SD: ``StableDiffusionPipeline.save_pretrained`` (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
  safetensors weights) plus ``mmopt_preset.json`` (the generation preset the
  DiffusersGenerator reads from local directories: 2 steps, 64 px).
* tiny CLIP: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``)
  and ``open_clip_model.safetensors``, the layout of open_clip hub repos.
* CLIP tokenizer: transformers ``CLIPTokenizer`` files (``vocab.json``,
  ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``).

The scheduler is EulerDiscrete with ``timestep_spacing="trailing"``: a
deterministic few-step sampler whose 2-step schedule starts at the highest
noise level, as turbo models are sampled.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# open_clip keeps the first 49152 - 256 - 2 merges of the file (after its header
# line): 256 byte tokens x 2 (plain and "</w>") + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
_STAMP = "mmopt_build.json"


# --------------------------------------------------------------------------- configs


def load_config(name: str) -> dict:
    """A JSON config shipped in ``mmopt/assets/configs`` (``"tiny_sd"`` or ``"tiny_clip"``).

    >>> load_config("tiny_sd")["preset"]["steps"]
    2
    """
    path = resources.files("mmopt.assets") / "configs" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no config {name!r} in mmopt/assets/configs (expected {name}.json)")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("_comment", None)
    return cfg


def _fingerprint(cfg: dict, seed: int) -> str:
    blob = json.dumps({"cfg": cfg, "seed": seed, "torch": torch.__version__.split("+")[0]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_built(out_dir: Path, fingerprint: str) -> bool:
    stamp = out_dir / _STAMP
    try:
        return json.loads(stamp.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


@contextmanager
def _seeded(seed: int, device: str = "cpu"):
    """Seed torch's RNG of ``device`` for weight init without leaking into the global state."""
    cuda = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _clear_out_dir(out: Path) -> None:
    """Empty ``out`` for a rebuild, refusing to delete a folder that is not ours."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out_dir must be a directory, got the file {str(out)!r}")
        if any(out.iterdir()) and not (out / _STAMP).exists():
            raise ValueError(
                f"out_dir {str(out)!r} is not empty and holds no earlier tiny build; "
                f"pass an empty or new directory"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, in CLIP's id order.

    Printable Latin-1 bytes map to themselves and come first; the other bytes
    (control characters, space, ...) follow, shifted past 255, so every byte
    has a visible, unambiguous character that BPE merges can refer to. The
    insertion order of the table is the order of the first 256 token ids.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    rest = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(rest)})
    return table


def clip_bpe_vocab() -> tuple[dict[str, int], list[str]]:
    """The CLIP BPE vocabulary and merge list, rebuilt from open_clip's shipped file.

    Ids follow open_clip's tokenizer: the 256 byte characters (printable bytes
    first, see ``_bytes_to_unicode``), the same 256 with ``</w>`` (end of word), one token per merge in
    file order, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

    >>> vocab, merges = clip_bpe_vocab(); vocab["<|endoftext|>"], len(merges)
    (49407, 48894)
    """
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [line for line in lines[1:1 + N_MERGES]]  # line 0 is the "#version" header
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocab has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer_dir(out_dir: str | Path) -> Path:
    """Write transformers ``CLIPTokenizer`` files for the real CLIP BPE into ``out_dir``.

    Returns ``out_dir``; ``CLIPTokenizer.from_pretrained(out_dir)`` then
    tokenizes like open_clip (same ids; pad = ``<|endoftext|>``, window 77).

    >>> from transformers import CLIPTokenizer                       # doctest: +SKIP
    >>> CLIPTokenizer.from_pretrained(clip_tokenizer_dir("/tmp/tok"))("a cat").input_ids
    [49406, 320, 2368, 49407]
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # transformers skips the first line of merges.txt, like open_clip skips the header
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
              "do_lower_case": True, "errors": "replace", **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


# --------------------------------------------------------------------------- tiny SD


def build_tiny_sd(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, seed and save a tiny Stable Diffusion pipeline; return its directory.

    The directory is a normal diffusers pipeline (safetensors weights) plus
    ``mmopt_preset.json``; load it with ``DiffusersGenerator(str(path))`` or
    the registry name ``f"diffusers:{path}"``. Rebuilding with the same config
    and seed is skipped (a stamp file records both).

    >>> path = build_tiny_sd("/tmp/mmopt-tiny/sd", seed=0)   # doctest: +SKIP
    """
    return build_pipeline("tiny_sd", out_dir, seed=seed)


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Like :func:`build_tiny_sd`, for a tiny SDXL pipeline (two text encoders, pooled-text
    and size conditioning): the SDXL code path without downloading SDXL.

    >>> path = build_tiny_sdxl("/tmp/mmopt-tiny/sdxl", seed=0)   # doctest: +SKIP
    """
    return build_pipeline("tiny_sdxl", out_dir, seed=seed)


def build_pipeline(config: str | dict, out_dir: str | Path, seed: int = 0, *, device: str = "cpu",
                   dtype: Any = None) -> Path:
    """Build a diffusers pipeline from a config of ``mmopt/assets/configs`` (or its dict) with
    seeded random weights and save it with its ``mmopt_preset.json``; return the directory.

    A config with ``text_encoder_2`` is an SDXL pipeline, else Stable Diffusion. The
    full-size ones (``"sd_turbo"``, ``"sdxl_turbo"``) are for timing the architectures;
    initialise them on the GPU (``device="cuda"``, ``dtype=torch.bfloat16``): seconds
    instead of minutes. Rebuilding the same config and seed is skipped.
    """
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # 1. check inputs; skip work that is already done
    seed = _check_seed(seed)
    cfg = load_config(config) if isinstance(config, str) else {k: v for k, v in config.items() if k != "_comment"}
    out = Path(out_dir)
    # the tiny CPU builds keep their fingerprint; a device/dtype build is a different one
    stamp_cfg = cfg if device == "cpu" and dtype is None else {**cfg, "_init": [str(device), str(dtype)]}
    fingerprint = _fingerprint(stamp_cfg, seed)
    if _is_built(out, fingerprint):
        return out

    # 2. the real CLIP tokenizer (both SDXL tokenizers are the CLIP BPE one)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir(tmp))

    # 3. seeded random weights; each module from its own seed so changing one
    #    module's config does not change the others' weights
    xl = "text_encoder_2" in cfg

    def make(build, offset):
        with _seeded(seed + offset, device), torch.device(device):
            module = build()
        return module.to(dtype) if dtype is not None else module

    unet = make(lambda: UNet2DConditionModel(**cfg["unet"]), 0)
    vae = make(lambda: AutoencoderKL(**cfg["vae"]), 1)
    text_encoder = make(lambda: CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])), 2)
    sched_cfg = dict(cfg["scheduler"])
    scheduler = getattr(diffusers, sched_cfg.pop("class"))(**sched_cfg)

    # 4. save as a plain diffusers pipeline (no safety checker: random weights)
    if xl:
        text_encoder_2 = make(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])), 3)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    _clear_out_dir(out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "mmopt_preset.json").write_text(json.dumps(cfg["preset"], indent=2))
    (out / _STAMP).write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}))
    return out


# --------------------------------------------------------------------------- tiny CLIP


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, seed and save a tiny open_clip model; return its directory.

    Writes ``open_clip_config.json`` and ``open_clip_model.safetensors`` (the
    layout of an open_clip hub repo), loadable with
    ``CLIPScoreScorer(str(path))`` or the registry name ``f"clip:{path}"``.

    >>> path = build_tiny_clip("/tmp/mmopt-tiny/clip", seed=0)   # doctest: +SKIP
    """
    import open_clip
    from safetensors.torch import save_file

    # 1. check inputs; skip work that is already done
    seed = _check_seed(seed)
    cfg = load_config("tiny_clip")
    out = Path(out_dir)
    fingerprint = _fingerprint(cfg, seed)
    if _is_built(out, fingerprint):
        return out

    # 2. seeded random weights
    with _seeded(seed):
        model = open_clip.CLIP(**cfg["model_cfg"]).eval()
    _orient_towards_positive_cosine(model, cfg["model_cfg"], seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    # 3. save in the hub-repo layout
    _clear_out_dir(out)
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    (out / _STAMP).write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}))
    return out


def build_random_clip(out_dir: str | Path, arch: str, seed: int = 0, device: str = "cpu") -> Path:
    """Save open_clip architecture ``arch`` (e.g. ``"ViT-L-14"``) at full size with seeded
    random weights, in the same hub-repo layout as :func:`build_tiny_clip`; return its directory.

    For benchmarks that time full-size towers without downloading weights (the scores
    mean nothing). ``device`` is where the weights are initialised (faster on a GPU;
    the init is then seeded by the device's RNG). Preprocessing is open_clip's OpenAI
    default: bicubic resize of the shortest side, centre crop, OpenAI mean/std.

    >>> path = build_random_clip("/tmp/mmopt-full/vit-l-14", "ViT-L-14")   # doctest: +SKIP
    """
    import open_clip
    from safetensors.torch import save_file

    seed = _check_seed(seed)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic", "resize_mode": "shortest"}}
    out = Path(out_dir)
    fingerprint = _fingerprint({**cfg, "arch": arch, "init_device": str(device).split(":")[0]}, seed)
    if _is_built(out, fingerprint):
        return out
    with _seeded(seed, device), torch.device(device):
        model = open_clip.create_model(arch, pretrained=None, device=device)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    del model
    _clear_out_dir(out)
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    (out / _STAMP).write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}))
    return out


@torch.no_grad()
def _orient_towards_positive_cosine(model, model_cfg: dict, seed: int) -> None:
    """Flip the text projection's sign if image-text cosines are negative on average.

    A random CLIP maps every image near one direction and every text near
    another, so all its cosines share one sign, set by the seed. CLIPScore
    clamps negative cosines to 0, which would make every tiny score 0; the
    flip (a deterministic function of the weights) keeps them positive and
    varied, so offline runs have something to optimize.
    """
    import open_clip

    size = model_cfg["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, size, size, generator=gen)
    texts = open_clip.tokenize(["a photo of a cat", "a red cube", "a house by a lake", "two dogs",
                                "a blue car", "a bowl of fruit", "a man on a horse", "a city at night"])
    img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
    if (img @ txt.T).mean() < 0:
        model.text_projection.mul_(-1)


def dir_size_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (for reporting what a build costs on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
