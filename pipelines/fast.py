"""GPU fast paths for diffusers pipelines, each a switch with a sane default.

``DiffusersGenerator`` reads these switches from its preset (``models.json``,
a local ``mmopt_preset.json``) or its keyword arguments, keyword arguments
winning. ``None`` means "the default for this device":

==================  ===========================  ==================================================
switch              default                      what it does
==================  ===========================  ==================================================
``channels_last``   True on cuda, else False     NHWC memory format for the UNet and VAE (faster
                                                 convolutions on tensor cores)
``fuse_qkv``        True on cuda, else False     one matmul for Q, K and V in self-attention
                                                 (``pipe.fuse_qkv_projections``; same function,
                                                 other rounding)
``compile``         None (off)                   ``torch.compile`` of the UNet/transformer and of
                                                 the decoder in use (VAE or tiny); the value is the
                                                 mode: "default", "reduce-overhead",
                                                 "max-autotune", "max-autotune-no-cudagraphs"
``static_batch``    True when compiled           pad the last chunk to the fixed batch size, so a
                                                 compiled model (or a CUDA graph) sees one shape
``decoder``         "full"                       "tiny" decodes with an AutoencoderTiny (TAESD):
                                                 for the iterations of a search; the final
                                                 re-score uses "full" (``with_decoder("full")``)
``tiny_decoder``    by family (see below)        hub id or local directory of the AutoencoderTiny
``attention``       "sdpa"                       "sdpa" = torch's scaled_dot_product_attention
                                                 (diffusers' default); "eager" = plain matmuls
``offload``         "auto"                       "auto": move to the GPU what fits, and enable
                                                 model CPU offload only when the whole pipeline
                                                 does not fit (with a warning saying so); "none";
                                                 "model" (always offload); "sequential"
                                                 (one submodule at a time: least memory,
                                                 slowest; for long video clips)
==================  ===========================  ==================================================

Precision (bf16/fp16/fp32) is the generator's ``dtype`` argument (cuda:
bf16 by default).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from mmopt.device import check_compile_mode, compile_in_place

DECODERS = ("full", "tiny")
ATTENTION = ("sdpa", "eager")
OFFLOAD = ("auto", "none", "model", "sequential")
FAST_FIELDS = ("channels_last", "fuse_qkv", "compile", "static_batch", "decoder", "tiny_decoder",
               "attention", "offload")

# The tiny autoencoder that matches each family's latent space.
TINY_DECODERS = {
    "StableDiffusionPipeline": "madebyollin/taesd",
    "StableDiffusionXLPipeline": "madebyollin/taesdxl",
    "StableDiffusion3Pipeline": "madebyollin/taesd3",
    "FluxPipeline": "madebyollin/taef1",
}
# Families whose latents the tiny decoder reads directly (4-channel SD latents).
_TINY_READY = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

# Loaded tiny decoders, keyed by (source, dtype, device): loaded once per process.
_TINY: dict[tuple, Any] = {}


def resolve_fast_options(preset: dict, overrides: dict, device: str, pipeline_class: str) -> dict:
    """The fast-path switches: device defaults < preset < keyword ``overrides`` (None = unset).

    >>> resolve_fast_options({}, {"compile": "default"}, "cuda", "StableDiffusionPipeline")["static_batch"]
    True
    """
    cuda = device.startswith("cuda")
    opts = {"channels_last": cuda, "fuse_qkv": cuda, "compile": None, "static_batch": None,
            "decoder": "full", "tiny_decoder": TINY_DECODERS.get(pipeline_class),
            "attention": "sdpa", "offload": "auto"}
    opts.update({k: preset[k] for k in FAST_FIELDS if preset.get(k) is not None})
    opts.update({k: v for k, v in overrides.items() if v is not None})
    # 1. check each switch
    for key in ("channels_last", "fuse_qkv"):
        if not isinstance(opts[key], bool):
            raise TypeError(f"{key} must be True or False, got {opts[key]!r}")
    opts["compile"] = check_compile_mode(opts["compile"])
    if opts["static_batch"] is None:
        opts["static_batch"] = opts["compile"] is not None
    if not isinstance(opts["static_batch"], bool):
        raise TypeError(f"static_batch must be True or False, got {opts['static_batch']!r}")
    if opts["decoder"] not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {opts['decoder']!r}")
    if opts["decoder"] == "tiny":
        if pipeline_class not in _TINY_READY:
            raise ValueError(f"decoder='tiny' is supported for {_TINY_READY}, not {pipeline_class!r}")
        if not opts["tiny_decoder"]:
            raise ValueError("decoder='tiny' needs tiny_decoder: a hub id (e.g. 'madebyollin/taesd') "
                             "or a local AutoencoderTiny directory")
    if opts["attention"] not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {opts['attention']!r}")
    if opts["offload"] not in OFFLOAD:
        raise ValueError(f"offload must be one of {OFFLOAD}, got {opts['offload']!r}")
    return opts


def pipeline_id_options(opts: dict) -> tuple:
    """The switches that change the loaded pipeline object (part of its load-once key)."""
    return tuple((k, opts[k]) for k in ("channels_last", "fuse_qkv", "compile", "attention", "offload"))


# --------------------------------------------------------------------------- memory


def module_bytes(module: Any) -> int:
    """Bytes of the parameters and buffers of a torch module (0 for anything else)."""
    if not isinstance(module, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def plan_memory(pipe: Any, device: str, offload: str, headroom: float = 0.25) -> str:
    """Move ``pipe`` to ``device``, offloading to the CPU only if it does not fit.

    Returns ``"resident"`` (everything on the device) or ``"offload"``
    (``enable_model_cpu_offload``: each model visits the GPU when it runs).
    ``headroom`` is the share of free memory kept for activations.
    """
    if not device.startswith("cuda") or offload == "none":
        pipe.to(device)
        return "resident"
    need = sum(module_bytes(m) for m in getattr(pipe, "components", {}).values())
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    fits = need <= (1.0 - headroom) * free
    if offload == "model" or not fits:
        if offload == "auto":
            warnings.warn(
                f"the pipeline's weights need {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB of "
                f"{device} memory is free (keeping {headroom:.0%} for activations): offloading models to "
                "the CPU between uses (enable_model_cpu_offload; slower). Free GPU memory, use "
                "dtype='fp16'/'bf16', or pass offload='none' to force everything onto the GPU.",
                stacklevel=3)
        pipe.enable_model_cpu_offload(device=device)
        pipe._mmopt_memory = "offload"
        return "offload"
    pipe.to(device)
    return "resident"


# --------------------------------------------------------------------------- fast paths


def denoiser(pipe: Any) -> Any:
    """The pipeline's denoising network: ``unet`` or ``transformer``."""
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def apply_fast_paths(pipe: Any, opts: dict) -> None:
    """Apply attention / fused QKV / channels_last / torch.compile to ``pipe`` in place, once."""
    if getattr(pipe, "_mmopt_fast", None) is not None:
        return
    net = denoiser(pipe)
    # 1. attention first: setting processors afterwards would undo the fused ones
    if opts["attention"] == "eager" and net is not None and hasattr(net, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor

        net.set_attn_processor(AttnProcessor())
    # 2. one matmul for Q, K, V where diffusers offers it
    if opts["fuse_qkv"]:
        if hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
        elif net is not None and hasattr(net, "fuse_qkv_projections"):
            net.fuse_qkv_projections()
    # 3. NHWC for the convolutional models
    if opts["channels_last"]:
        for name in ("unet", "vae"):
            m = getattr(pipe, name, None)
            if isinstance(m, torch.nn.Module):
                m.to(memory_format=torch.channels_last)
    # 4. compile the denoiser and the VAE's decoder in place (the pipeline keeps its modules
    #    and configs); with a 1-step model the decoder costs more FLOPs than the UNet
    if opts["compile"] is not None:
        for module in (net, getattr(getattr(pipe, "vae", None), "decoder", None)):
            if isinstance(module, torch.nn.Module):
                compile_in_place(module, opts["compile"])
    pipe._mmopt_fast = dict(opts)


# --------------------------------------------------------------------------- tiny decoder


def load_tiny_decoder(source: str, dtype, device: str, *, timeout: float = 10.0, channels_last: bool = False,
                      compile: str | None = None):
    """An ``AutoencoderTiny`` from a hub id or local directory, loaded once per process
    (per ``compile`` mode: a compiled copy is a separate entry)."""
    from diffusers import AutoencoderTiny

    from mmopt.errors import ModelLoadError

    key = (str(source), str(dtype), device, compile)
    if key in _TINY:
        return _TINY[key]
    local = Path(str(source)).expanduser()
    try:
        if local.exists():
            if not (local / "config.json").is_file():
                raise ModelLoadError(f"{str(local)!r} is not an AutoencoderTiny directory: no config.json")
            model = AutoencoderTiny.from_pretrained(str(local), local_files_only=True, torch_dtype=dtype)
        else:
            from mmopt.hub import check_hub_repo

            check = check_hub_repo(str(source), what="tiny autoencoder", probe_file="config.json",
                                   timeout=timeout)
            model = AutoencoderTiny.from_pretrained(str(source), local_files_only=check.local_files_only,
                                                    torch_dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot load the tiny decoder {source!r}: {type(e).__name__}: {e}") from e
    model = model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile is not None:
        compile_in_place(model.decoder, compile)
    _TINY[key] = model
    return model


def build_tiny_taesd(out_dir: str | Path, config: dict | None = None, seed: int = 0) -> Path:
    """Save a seeded random ``AutoencoderTiny`` (default: a 2-level one matching the tiny SD's
    64 px <-> 32x32 latents) to ``out_dir``; returns it. Loads with ``tiny_decoder=str(path)``.

    >>> build_tiny_taesd("/tmp/mmopt-tiny/taesd")                     # doctest: +SKIP
    """
    from diffusers import AutoencoderTiny

    cfg = dict(config or {"encoder_block_out_channels": [16, 16], "decoder_block_out_channels": [16, 16],
                          "num_encoder_blocks": [1, 1], "num_decoder_blocks": [1, 1], "latent_channels": 4})
    out = Path(out_dir)
    stamp = out / "mmopt_build.json"
    fingerprint = json.dumps({"cfg": cfg, "seed": seed}, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == fingerprint:
        return out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderTiny(**cfg)
    model.save_pretrained(out, safe_serialization=True)
    stamp.write_text(fingerprint)
    return out


def decodes_like_the_pipeline(pipe: Any, pipeline_class: str) -> bool:
    """Whether :func:`decode_latents` with ``pipe.vae`` computes exactly what the pipeline's own
    decode and postprocess do: SD, and SDXL when its VAE needs no fp32 upcast and has no
    latent mean/std; the VAE must be resident (not offloaded)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(pipe, "image_processor") or getattr(pipe, "_mmopt_memory", "resident") != "resident":
        return False
    if pipeline_class == "StableDiffusionPipeline":
        return True
    if pipeline_class == "StableDiffusionXLPipeline":
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        return not upcast and getattr(vae.config, "latents_mean", None) is None
    return False


def decode_latents(pipe: Any, decoder: Any, latents: torch.Tensor) -> tuple[list, torch.Tensor | None]:
    """Images from SD/SDXL ``latents`` through ``decoder`` (the VAE or an AutoencoderTiny):
    ``(PIL images, uint8 pixels on the device or None)``, as :func:`to_images`."""
    latents = latents.to(decoder.dtype)
    if getattr(decoder.config, "shift_factor", 0.0):
        latents = latents / decoder.config.scaling_factor + decoder.config.shift_factor
    else:
        latents = latents / decoder.config.scaling_factor
    image = decoder.decode(latents, return_dict=False)[0]
    return to_images(pipe, image)


def to_images(pipe: Any, image: torch.Tensor) -> tuple[list, torch.Tensor | None]:
    """PIL images from decoder output in [-1, 1], exactly as the pipeline's postprocess makes
    them, but quantised to uint8 on the device: 4x fewer bytes cross to the host and the
    host does no float work. (Same ops in the same order: denormalise in the decoder's
    dtype, widen to float32, x255, round half to even, to uint8.)

    Also returns the uint8 batch, shape ``(N, 3, H, W)``, still on the device, so that a
    scorer there can read the pixels without the host round trip (``Generation.pixels``);
    ``None`` when the pipeline's own postprocess had to be used.
    """
    from PIL import Image

    proc = pipe.image_processor
    if not getattr(proc.config, "do_normalize", True) or getattr(proc.config, "do_binarize", False):
        return proc.postprocess(image, output_type="pil"), None
    x = (image / 2 + 0.5).clamp(0, 1).float().mul(255).round().to(torch.uint8)
    arr = x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr], None
    return [Image.fromarray(a) for a in arr], x
