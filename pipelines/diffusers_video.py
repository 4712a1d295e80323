"""Text-to-video generation with diffusers video pipelines, in the same loop as images.

``DiffusersVideoGenerator`` loads CogVideoX (2b/5b), LTX-Video, Wan2.1 and
AnimateDiff (a motion adapter over a Stable Diffusion 1.5 base) by hub id or
local directory, through the loading code of the image generator
(:mod:`mmopt.pipelines.diffusers_t2i`: fail-fast hub checks, local folders
named by their content, one load per process). Each ``Generation``'s media is
a list of PIL frames and ``meta["fps"]`` says how fast they play.

* Presets are data: ``mmopt/assets/video_models.json`` (frames, fps, size,
  steps, guidance, VAE tiling) per pipeline class and per hub id; a local
  folder's ``mmopt_preset.json``; keyword arguments win.
* What a pipeline supports is read from the loaded pipeline: the VAE's
  temporal compression (CogVideoX and Wan take 4k+1 frames, LTX-Video 8k+1),
  the latent grid (height/width multiples), the motion module's length
  (AnimateDiff). A value it does not support becomes the nearest supported
  one with a warning (``on_unsupported="nearest"``) or is an error
  (``"error"``); ``meta["adjusted"]`` records what changed.
* Determinism: one ``torch.Generator`` per clip, seeded with its seed.
* Batched: every (candidate, seed) pair of a chunk goes in one pipeline call
  (``max_batch`` clips).
* Memory: ``vae_tiling`` / ``vae_slicing``, ``offload`` ("model" or
  "sequential" CPU offload). Out of memory on a long clip: the generator
  retries with VAE tiling and slicing, then with fewer clips per call, then
  (AnimateDiff) fewer frames per decode chunk; every step is warned about and
  recorded in ``meta["memory_fallbacks"]``.
* Multi-shot: a candidate whose ``payload["shots"]`` is a list of
  ``{"prompt": str, "duration": seconds}`` renders each shot with its prompt
  and ``round(duration * fps)`` frames (snapped like ``num_frames``), with
  the clip's seed, and joins them into one clip (``meta["shots"]``).

>>> gen = DiffusersVideoGenerator("THUDM/CogVideoX-2b", num_frames=17)     # doctest: +SKIP
>>> clip = gen.generate(["a red fox running through snow"], [0])[0]        # doctest: +SKIP
>>> len(clip.media), clip.meta["fps"]                                       # doctest: +SKIP
(17, 8)
"""
from __future__ import annotations

import inspect
import time
import warnings
from typing import Any, Sequence

import torch

from mmopt.device import dtype_name, pick_device, pick_dtype
from mmopt.errors import ModelLoadError
from mmopt.pipelines.diffusers_t2i import (_UNSET, VIDEO_PRESETS, PipelineGenerator, _is_oom, _load_pipeline,
                                           _pipeline_lock, check_generator_args, is_video_pipeline,
                                           locate_pipeline, name_and_revision, resolve_preset)
from mmopt.types import Candidate, Generation

PRESETS = VIDEO_PRESETS
ON_UNSUPPORTED = ("nearest", "error")
OFFLOAD = ("none", "model", "sequential")
# Image pipelines an AnimateDiff motion adapter can animate (SD 1.5 UNets).
_ANIMATABLE = ("StableDiffusionPipeline",)


# --------------------------------------------------------------------------- what a pipeline supports


def supported_grid(pipe: Any) -> dict:
    """``{"frame_step", "size_step", "max_frames"}`` of a loaded video pipeline.

    Frames must be ``frame_step * k + 1`` (1 when any count works), height and width
    multiples of ``size_step``; ``max_frames`` is None when unbounded.
    """
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or getattr(pipe, "vae_temporal_compression_ratio", None)
    spatial = (getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
               or getattr(pipe, "vae_scale_factor", None) or 8)
    net = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    patch = getattr(getattr(net, "config", None), "patch_size", 1) or 1
    if isinstance(patch, (list, tuple)):  # Wan: (t, h, w)
        patch = patch[-1]
    max_frames = getattr(getattr(net, "config", None), "motion_max_seq_length", None)  # AnimateDiff
    return {"frame_step": int(temporal or 1), "size_step": int(spatial) * int(patch),
            "max_frames": int(max_frames) if max_frames else None}


def nearest_frames(n: int, step: int, max_frames: int | None = None) -> int:
    """The supported frame count nearest ``n``: ``step * k + 1`` (any count for step 1), at
    most ``max_frames``.

    >>> nearest_frames(48, 4), nearest_frames(16, 8), nearest_frames(40, 1, 32)
    (49, 17, 32)
    """
    if step > 1:
        n = step * max(0, round((n - 1) / step)) + 1
    if max_frames:
        top = max_frames if step == 1 else step * ((max_frames - 1) // step) + 1
        n = min(n, top)
    return max(1, n)


def nearest_multiple(n: int, step: int) -> int:
    """The positive multiple of ``step`` nearest ``n``.

    >>> nearest_multiple(500, 16), nearest_multiple(3, 16)
    (496, 16)
    """
    return max(step, step * round(n / step))


def _check_shots(payload: Any, where: str) -> list[dict] | None:
    """The shot list of a candidate's payload (None when it has none); ValueError when malformed."""
    shots = (payload or {}).get("shots")
    if shots is None:
        return None
    if not isinstance(shots, list) or not shots:
        raise ValueError(f"{where}: payload['shots'] must be a non-empty list of "
                         f"{{'prompt': str, 'duration': seconds}}, got {shots!r}")
    for j, shot in enumerate(shots):
        ok = (isinstance(shot, dict) and isinstance(shot.get("prompt"), str) and shot["prompt"].strip()
              and isinstance(shot.get("duration"), (int, float)) and not isinstance(shot.get("duration"), bool)
              and shot["duration"] > 0)
        if not ok:
            raise ValueError(f"{where}: shot {j} must be {{'prompt': non-empty text, 'duration': seconds > 0}}, "
                             f"got {shot!r}")
    return shots


# --------------------------------------------------------------------------- generator


class DiffusersVideoGenerator(PipelineGenerator):
    """A :class:`~mmopt.types.Generator` of clips, backed by a diffusers text-to-video pipeline.

    Args:
        model: hub id (``"THUDM/CogVideoX-2b"``, ``"Lightricks/LTX-Video"``,
            ``"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"``) or a local pipeline directory; with
            ``motion_adapter``, a Stable Diffusion 1.5 base to animate with AnimateDiff.
        motion_adapter: hub id or local directory of an AnimateDiff ``MotionAdapter``
            (``"guoyww/animatediff-motion-adapter-v1-5-2"``).
        num_frames, fps, height, width, steps, guidance, negative_prompt, prompt_style,
        max_prompt_tokens, call_kwargs: override the preset.
        max_batch: clips per pipeline call (halved on out-of-memory).
        vae_tiling, vae_slicing: decode in spatial tiles / one clip at a time (None: preset).
        offload: None/"none" (resident), "model" or "sequential" CPU offload (CUDA only).
        on_unsupported: "nearest" (snap with a warning) or "error" for a frame count or size
            the pipeline cannot render.
        revision, variant, device, dtype, timeout: as for the image generator.

    ``media_kind = "video"`` tells the loop (and the OPT2I proposer) that it renders clips.

    >>> gen = DiffusersVideoGenerator("/tmp/mmopt-tiny/animatediff")           # doctest: +SKIP
    >>> len(gen.generate(["a red ball bouncing"], [0])[0].media)                # doctest: +SKIP
    8
    """

    media_kind = "video"

    def __init__(self, model: str, *, motion_adapter: str | None = None, revision: str | None = None,
                 device: str | None = None, dtype: Any = None, max_batch: int = 2, steps: int | None = None,
                 guidance: float | None = None, num_frames: int | None = None, fps: int | None = None,
                 height: int | None = None, width: int | None = None, negative_prompt: Any = _UNSET,
                 prompt_style: str | None = None, max_prompt_tokens: int | None = None,
                 call_kwargs: dict | None = None, variant: str | None = None, timeout: float = 10.0,
                 vae_tiling: bool | None = None, vae_slicing: bool | None = None, offload: str | None = None,
                 on_unsupported: str = "nearest"):
        # 1. check arguments
        check_generator_args(model, max_batch=max_batch, guidance=guidance, prompt_style=prompt_style,
                             call_kwargs=call_kwargs, negative_prompt=negative_prompt,
                             ints={"steps": steps, "num_frames": num_frames, "fps": fps, "height": height,
                                   "width": width, "max_prompt_tokens": max_prompt_tokens})
        if max_batch == "auto":
            max_batch = 2
        for key, val in (("vae_tiling", vae_tiling), ("vae_slicing", vae_slicing)):
            if val is not None and not isinstance(val, bool):
                raise TypeError(f"{key} must be True, False or None, got {val!r}")
        offload = offload or "none"
        if offload not in OFFLOAD:
            raise ValueError(f"offload must be one of {OFFLOAD}, got {offload!r}")
        if on_unsupported not in ON_UNSUPPORTED:
            raise ValueError(f"on_unsupported must be one of {ON_UNSUPPORTED}, got {on_unsupported!r}")
        if motion_adapter is not None and (not isinstance(motion_adapter, str) or not motion_adapter.strip()):
            raise ValueError(f"motion_adapter must be a hub id or a local directory, got {motion_adapter!r}")
        model = str(model).strip()
        self.name = f"diffusers-video:{model}"
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.max_batch = max_batch

        # 2. find the pipeline (and the motion adapter): the image generator's code path
        found = locate_pipeline(model, revision=revision, timeout=timeout)
        self.model_id, self.local, self.revision = found.model_id, found.local, found.revision
        base_class = str(found.index.get("_class_name", ""))
        self.adapter = None
        if motion_adapter is not None:
            if base_class not in _ANIMATABLE:
                raise ValueError(f"motion_adapter animates a Stable Diffusion 1.5 base ({_ANIMATABLE}); "
                                 f"{model!r} is a {base_class or 'pipeline without a class name'}")
            self.adapter = _adapter_record(motion_adapter, timeout)
            self.pipeline_class = "AnimateDiffPipeline"
        elif is_video_pipeline(base_class):
            self.pipeline_class = base_class
        else:
            raise ValueError(f"{model!r} is a text-to-image pipeline ({base_class or 'unknown class'}), not a "
                             f"video one: load it with 'diffusers:{model}', or animate an SD 1.5 base with "
                             "AnimateDiff by passing motion_adapter=<hub id or directory>")

        # 3. preset: data first, keyword arguments last
        overrides = {"steps": steps, "guidance": guidance, "num_frames": num_frames, "fps": fps, "height": height,
                     "width": width, "prompt_style": prompt_style, "max_prompt_tokens": max_prompt_tokens,
                     "vae_tiling": vae_tiling, "vae_slicing": vae_slicing}
        self._set_preset(resolve_preset(model, self.pipeline_class, found.local_preset, overrides, table=PRESETS),
                         negative_prompt, call_kwargs)

        # 4. load once per process
        components = {}
        if self.adapter is not None:
            components["motion_adapter"] = _load_adapter(self.adapter, self.dtype)
        cache_id = (self.model_id, self.revision, variant, dtype_name(self.dtype), self.device, offload,
                    None if self.adapter is None else self.adapter["revision"])
        self.pipe = _load_pipeline(found.source, pipeline_class=self.pipeline_class, revision=revision,
                                   variant=variant, dtype=self.dtype, device=self.device,
                                   local_files_only=found.local_files_only, cache_id=cache_id,
                                   offload="none" if offload == "none" else offload, auto=False,
                                   components=components)
        self.variant, self.offload, self.on_unsupported = variant, offload, on_unsupported
        self._call_lock = _pipeline_lock(cache_id)  # one call at a time per loaded pipeline
        self._call_params = inspect.signature(self.pipe.__call__).parameters
        self._tokenizer = getattr(self.pipe, self.preset.get("tokenizer") or "tokenizer", None) \
            or getattr(self.pipe, "tokenizer", None)

        # 5. what the pipeline supports: snap the preset to it (or refuse)
        self.grid = supported_grid(self.pipe)
        self.adjusted: dict = {}
        self.num_frames = self._supported_frames(int(self.preset["num_frames"]), "num_frames")
        self.height, self.width = (self._supported_size(self.preset.get(k), k) for k in ("height", "width"))
        self.fps = int(self.preset["fps"])
        self._batch = max_batch if self.preset.get("batch", True) else 1
        self._tiling, self._slicing = bool(self.preset["vae_tiling"]), bool(self.preset["vae_slicing"])
        self._decode_chunk = None  # AnimateDiff frames per VAE call, shrunk on out-of-memory
        self.memory_fallbacks: list[str] = []

    # ------------------------------------------------------------------ supported values

    def _unsupported(self, what: str, asked: int, nearest: int, why: str) -> int:
        if self.on_unsupported == "error":
            raise ValueError(f"{self.pipeline_class} cannot render {what}={asked}: {why}; the nearest supported "
                             f"value is {nearest}")
        warnings.warn(f"{self.pipeline_class} cannot render {what}={asked} ({why}); using {nearest}", stacklevel=4)
        self.adjusted[what] = {"asked": asked, "used": nearest}
        return nearest

    def _supported_frames(self, n: int, what: str) -> int:
        step, top = self.grid["frame_step"], self.grid["max_frames"]
        good = nearest_frames(n, step, top)
        if good == n:
            return n
        why = (f"frames must be {step}k+1" if step > 1 else "") + \
              (f"{', ' if step > 1 else ''}at most {top} (the motion module's length)" if top and n > top else "")
        return self._unsupported(what, n, good, why)

    def _supported_size(self, n: Any, what: str) -> int | None:
        if n is None:
            return None
        step = self.grid["size_step"]
        good = nearest_multiple(int(n), step)
        return int(n) if good == int(n) else self._unsupported(what, int(n), good, f"it must be a multiple of {step}")

    # ------------------------------------------------------------------ generate

    def _units(self, cands: list[Candidate], seeds: list[int]) -> list[dict]:
        """What one pipeline sample renders: a whole clip, or one shot of a multi-shot clip."""
        units = []
        for i, (c, s) in enumerate(zip(cands, seeds)):
            shots = _check_shots(c.payload, f"prompts[{i}]")
            if shots is None:
                units.append({"owner": i, "text": c.text, "frames": self.num_frames, "seed": s, "shot": None})
                continue
            for j, shot in enumerate(shots):
                frames = self._supported_frames(max(1, round(shot["duration"] * self.fps)), f"shot {j} frames")
                units.append({"owner": i, "text": shot["prompt"], "frames": frames, "seed": s, "shot": j,
                              "duration": float(shot["duration"])})
        return units

    def _call_args(self, units: list[dict], cands: list[Candidate]) -> dict:
        p = self.preset
        args = {
            "prompt": [u["text"] for u in units],
            "num_frames": units[0]["frames"],
            "num_inference_steps": int(p["steps"]),
            "guidance_scale": float(p["guidance"]),
            "generator": self._generators([u["seed"] for u in units]),
            "output_type": "pil",
            "frame_rate": self.fps,  # LTX-Video conditions on it; dropped for the others
        }
        if self.height:
            args["height"] = self.height
        if self.width:
            args["width"] = self.width
        negatives = [self.negative_for(cands[u["owner"]]) for u in units]
        if any(negatives):
            args["negative_prompt"] = [neg or "" for neg in negatives]
        if self._decode_chunk is not None:
            args["decode_chunk_size"] = self._decode_chunk
        args.update(p["call_kwargs"])
        if "frame_rate" not in self._call_params:
            args.pop("frame_rate")
        return self._only_accepted(args)

    def _set_vae_memory(self) -> None:
        """Tiling and slicing are switched before each call: generators sharing one loaded
        pipeline may want them differently."""
        vae = getattr(self.pipe, "vae", None)
        for flag, on, off in ((self._tiling, "enable_tiling", "disable_tiling"),
                              (self._slicing, "enable_slicing", "disable_slicing")):
            method = getattr(vae, on if flag else off, None)
            if callable(method):
                method()

    def _shrink_after_oom(self, size: int) -> bool:
        """One step down the memory ladder; False when nothing is left to try."""
        if not (self._tiling and self._slicing) and hasattr(getattr(self.pipe, "vae", None), "enable_tiling"):
            self._tiling = self._slicing = True
            step = "vae_tiling"
        elif size > 1:
            self._batch = max(1, size // 2)
            step = f"batch {self._batch}"
        elif "decode_chunk_size" in self._call_params and (self._decode_chunk or self.num_frames) > 1:
            self._decode_chunk = max(1, (self._decode_chunk or self.num_frames) // 2)
            step = f"decode_chunk_size {self._decode_chunk}"
        else:
            return False
        self.memory_fallbacks.append(step)
        warnings.warn(f"out of memory rendering {self.pipeline_class} clips; retrying with {step}", stacklevel=4)
        return True

    def generate_chunks(self, prompts: Sequence[Candidate | str], seeds: Sequence[int]):
        """Render ``prompts[i]`` with ``seeds[i]``; yield the finished clips chunk by chunk.

        Concatenated, the chunks are ``generate(prompts, seeds)``: one Generation per pair,
        in order, whose media is a list of frames.

        >>> [len(c) for c in gen.generate_chunks(["a cat"] * 3, [0, 1, 2])]   # doctest: +SKIP
        [2, 1]
        """
        # 1. check inputs; split multi-shot candidates into their shots
        cands, seeds = self._check_inputs(prompts, seeds)
        if not cands:
            return
        units = self._units(cands, seeds)

        # 2. measure every text against the encoder's window
        for u, n in zip(units, self._measure([u["text"] for u in units])):
            u["tokens"] = n

        # 3. render consecutive units of one frame count together; on OOM step down and retry
        frames_of: dict[int, list] = {}
        latency: dict[int, float] = {}
        batch_of: dict[int, int] = {}
        left = {i: sum(u["owner"] == i for u in units) for i in range(len(cands))}
        next_out = 0
        i = 0
        while i < len(units):
            size = 1
            while size < min(self._batch, len(units) - i) and units[i + size]["frames"] == units[i]["frames"]:
                size += 1
            chunk = units[i:i + size]
            start = time.perf_counter()
            try:
                # one call at a time per loaded pipeline: its scheduler keeps per-call state and
                # the VAE switches are set for this generator's call
                with self._call_lock, torch.inference_mode():
                    self._set_vae_memory()
                    out = self.pipe(**self._call_args(chunk, cands)).frames
                clips = [list(clip) for clip in out][:size]
            except Exception as e:
                if not _is_oom(e):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if not self._shrink_after_oom(size):
                    raise
                continue
            per_clip = (time.perf_counter() - start) / size
            for u, clip in zip(chunk, clips):
                frames_of.setdefault(u["owner"], []).extend(clip)
                latency[u["owner"]] = latency.get(u["owner"], 0.0) + per_clip
                batch_of[u["owner"]] = size
                left[u["owner"]] -= 1
            i += size

            # 4. wrap every clip whose units are all rendered, in order
            ready = []
            while next_out < len(cands) and left[next_out] == 0:
                ready.append(self._wrap(cands[next_out], seeds[next_out], frames_of.pop(next_out),
                                        [u for u in units if u["owner"] == next_out],
                                        latency[next_out], batch_of[next_out]))
                next_out += 1
            if ready:
                yield ready

    def _wrap(self, cand: Candidate, seed: int, frames: list, units: list[dict], latency: float,
              batch: int) -> Generation:
        tokens = max(u["tokens"] for u in units)
        meta = {
            "model": self.model_id,
            "revision": self.revision,
            "pipeline": self.pipeline_class,
            "media_kind": "video",
            "steps": int(self.preset["steps"]),
            "guidance": float(self.preset["guidance"]),
            "num_frames": len(frames),
            "fps": self.fps,
            "height": frames[0].height,
            "width": frames[0].width,
            "negative_prompt": self.negative_for(cand),
            "latency_s": latency,
            "batch_size": batch,
            "prompt_tokens": tokens,
            "truncated_tokens": max(0, tokens - self.max_prompt_tokens),
        }
        if units[0]["shot"] is not None:
            meta["shots"] = [{"prompt": u["text"], "duration": u["duration"], "frames": u["frames"]} for u in units]
        if self.adjusted:
            meta["adjusted"] = dict(self.adjusted)
        if self.memory_fallbacks:
            meta["memory_fallbacks"] = list(self.memory_fallbacks)
        if self.adapter is not None:
            meta["motion_adapter"] = self.adapter["model"]
        return Generation(candidate=cand, seed=seed, media=frames, meta=meta)

    def full_quality(self) -> "DiffusersVideoGenerator":
        """The generator for the final re-score: this one (there is no preview decoder)."""
        return self

    # ------------------------------------------------------------------ identity

    def config(self) -> dict:
        """Everything that determines a clip besides (candidate, seed): this generator's identity."""
        return {
            "component": "mmopt.pipelines.diffusers_video.DiffusersVideoGenerator",
            **self._pipeline_record(),
            "motion_adapter": None if self.adapter is None else {k: self.adapter[k] for k in ("model", "revision")},
            "num_frames": self.num_frames,
            "fps": self.fps,
            "height": self.height,
            "width": self.width,
            # tiled decoding blends tile seams: other pixels
            "vae_tiling": bool(self.preset["vae_tiling"]),
        }

    def __repr__(self) -> str:
        return (f"DiffusersVideoGenerator({self.model_id!r}, {self.pipeline_class}, frames={self.num_frames}, "
                f"device={self.device!r}, dtype={dtype_name(self.dtype)})")


# --------------------------------------------------------------------------- motion adapters

_ADAPTERS: dict[tuple, Any] = {}


def _adapter_record(source: str, timeout: float) -> dict:
    """Where a motion adapter is and what names its weights (a local folder by content)."""
    from pathlib import Path

    from mmopt.fingerprint import dir_fingerprint
    from mmopt.hub import check_hub_repo

    local = Path(source).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{source!r} is not a MotionAdapter directory: it has no config.json")
        return {"model": "local", "source": str(local.resolve()), "revision": dir_fingerprint(local),
                "local_files_only": True}
    check = check_hub_repo(source, what="AnimateDiff motion adapter", probe_file="config.json", timeout=timeout)
    return {"model": source, "source": source, "revision": check.revision or "main",
            "local_files_only": check.local_files_only}


def _load_adapter(record: dict, dtype) -> Any:
    from diffusers import MotionAdapter

    key = (record["source"], record["revision"], str(dtype))
    if key not in _ADAPTERS:
        try:
            _ADAPTERS[key] = MotionAdapter.from_pretrained(record["source"], torch_dtype=dtype,
                                                           local_files_only=record["local_files_only"])
        except Exception as e:
            raise ModelLoadError(f"cannot load the motion adapter {record['source']!r}: {type(e).__name__}: {e}") from e
    return _ADAPTERS[key]


def from_name(rest: str, **kwargs: Any) -> DiffusersVideoGenerator:
    """Registry factory for ``"diffusers-video:<hub id or path>[@revision]"``.

    >>> from mmopt.registry import create
    >>> create("generator", "diffusers-video:Wan-AI/Wan2.1-T2V-1.3B-Diffusers", num_frames=33)  # doctest: +SKIP
    """
    return DiffusersVideoGenerator(name_and_revision(rest, kwargs, "diffusers-video"), **kwargs)
