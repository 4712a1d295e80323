"""Text-to-image generation with any diffusers pipeline.

``DiffusersGenerator`` loads a pipeline by hub id (``"stabilityai/sd-turbo"``)
or local directory (a ``save_pretrained`` folder) through one code path and
renders every (prompt, seed) pair of an optimization iteration in batches.

* Loading: the class named in ``model_index.json`` when the preset table knows
  it as a text-to-image family, else ``AutoPipelineForText2Image``, falling back
  to the named class. A hub id that cannot be reached fails within seconds
  with a :class:`~mmopt.errors.ModelLoadError` (see :mod:`mmopt.hub`).
* Presets (steps, guidance, size, negative prompt, prompt style, token
  budget) are data: ``mmopt/assets/models.json`` holds defaults per pipeline
  class and overrides per hub id; a local directory may carry its own
  ``mmopt_preset.json`` with the same fields; keyword arguments win.
* Determinism: one ``torch.Generator`` per image, seeded with that image's
  seed, so an image depends only on its (prompt, seed), not on its batch.
* Device/dtype: cuda bf16 (fp16 without bf16), mps fp16, cpu fp32, unless given.
* CUDA out of memory: the batch is halved and retried; the size that worked
  is kept for later calls.

>>> gen = DiffusersGenerator("stabilityai/sd-turbo")                 # doctest: +SKIP
>>> [g.media.size for g in gen.generate(["a red cube", "a red cube"], [0, 1])]  # doctest: +SKIP
[(512, 512), (512, 512)]
"""
from __future__ import annotations

import inspect
import json
import re
import threading
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch

from mmopt.device import dtype_name, pick_device, pick_dtype
from mmopt.pipelines import fast
from mmopt.errors import ModelLoadError
from mmopt.fingerprint import dir_fingerprint
from mmopt.hub import check_hub_repo
from mmopt.types import Candidate, Generation

PROMPT_STYLES = ("tags", "sentences")
PRESET_FILE = "mmopt_preset.json"  # optional preset inside a local pipeline directory
_PRESET_FIELDS = ("steps", "guidance", "height", "width", "negative_prompt", "prompt_style",
                  "max_prompt_tokens", "tokenizer", "call_kwargs")
_UNSET = object()
AUTO_BATCH = 64  # max_batch="auto" on cuda starts here and halves on out-of-memory

try:  # newer diffusers renamed from_pretrained's torch_dtype to dtype
    from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    _DTYPE_KWARG = "dtype"
except ImportError:
    _DTYPE_KWARG = "torch_dtype"

# Loaded pipelines, keyed by (model, revision, variant, dtype, device): a model is
# loaded once per process however many generators use it.
_PIPELINES: dict[tuple, Any] = {}
_PIPELINES_LOCK = threading.Lock()


# --------------------------------------------------------------------------- presets


def load_presets(table: str = "models.json") -> dict:
    """A preset table of ``mmopt/assets`` (``models.json`` for images, ``video_models.json``
    for video): ``{"families": {...}, "models": {...}}``."""
    path = resources.files("mmopt.assets") / table
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_preset(model: str, pipeline_class: str | None, local_preset: dict | None = None,
                   overrides: dict | None = None, table: str = "models.json") -> dict:
    """Merge the preset layers: family defaults < hub-id entry < local file < ``overrides``.

    ``None`` values in ``overrides`` mean "not given" and are skipped; ``table`` is the
    preset file of ``mmopt/assets``.

    >>> resolve_preset("stabilityai/sd-turbo", "StableDiffusionPipeline")["steps"]
    1
    """
    table = load_presets(table)
    entry = {k.lower(): v for k, v in table["models"].items()}.get(model.strip().lower(), {})
    cls = pipeline_class or entry.get("pipeline_class")
    preset = dict(table["families"].get(cls, table["families"]["default"]))
    preset.update({k: v for k, v in entry.items() if k != "pipeline_class"})
    preset.update(local_preset or {})
    preset.update({k: v for k, v in (overrides or {}).items() if v is not None})
    preset["call_kwargs"] = dict(preset.get("call_kwargs") or {})
    return preset


VIDEO_PRESETS = "video_models.json"  # the video generator's table (mmopt.pipelines.diffusers_video)
# Classes whose name says video: refused by the image generator; the video generator takes them
# with the default video preset when its table does not know them yet.
_VIDEO_NAME = re.compile(r"(Video|AnimateDiff|CogVideoX|Wan|Mochi|Allegro|Latte|TextToVideo)", re.I)


def is_video_pipeline(pipeline_class: str) -> bool:
    """Whether ``pipeline_class`` (``model_index.json``'s ``_class_name``) renders video.

    >>> is_video_pipeline("CogVideoXPipeline"), is_video_pipeline("StableDiffusionPipeline")
    (True, False)
    """
    families = load_presets(VIDEO_PRESETS)["families"]
    return pipeline_class in families and pipeline_class != "default" or bool(_VIDEO_NAME.search(pipeline_class or ""))


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {what} {str(path)!r}: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class LocatedPipeline:
    """Where a pipeline's files are and what names its weights (see :func:`locate_pipeline`)."""

    index: dict               # model_index.json
    local_preset: dict | None  # mmopt_preset.json of a local folder
    source: str               # what from_pretrained gets: a resolved folder or the hub id
    local_files_only: bool
    model_id: str
    local: bool
    revision: str             # a local folder's content fingerprint, else the hub revision


def locate_pipeline(model: str, *, revision: str | None = None, timeout: float = 10.0) -> LocatedPipeline:
    """Find a diffusers pipeline: a local ``save_pretrained`` folder (named by its content) or
    a hub repo that can be reached (fails fast with ModelLoadError otherwise).
    Image and video generators load through it alike.
    """
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "model_index.json").is_file():
            raise ModelLoadError(
                f"{model!r} is not a diffusers pipeline directory: it has no model_index.json "
                f"(expected the output of Pipeline.save_pretrained)"
            )
        index = _read_json(local / "model_index.json", "pipeline index")
        local_preset = _read_json(local / PRESET_FILE, "preset") if (local / PRESET_FILE).is_file() else None
        source = str(local.resolve())
        return LocatedPipeline(index, local_preset, source, True, source, True, dir_fingerprint(local))
    check = check_hub_repo(model, what="diffusers pipeline", revision=revision,
                           probe_file="model_index.json", timeout=timeout)
    from huggingface_hub import hf_hub_download

    try:
        index_path = hf_hub_download(model, "model_index.json", revision=revision,
                                     local_files_only=check.local_files_only)
    except Exception as e:
        raise ModelLoadError(
            f"{model!r} has no model_index.json on the hub: it is not a diffusers pipeline ({e})"
        ) from e
    index = _read_json(Path(index_path), "pipeline index")
    return LocatedPipeline(index, None, model, check.local_files_only, model, False,
                           check.revision or revision or "main")


# --------------------------------------------------------------------------- loading


def _load_pipeline(source: str, *, pipeline_class: str, revision: str | None, variant: str | None,
                   dtype, device: str, local_files_only: bool, cache_id: tuple, offload: str = "auto",
                   auto: bool = True, components: dict | None = None):
    """Load (or reuse) a pipeline; ``source`` is a hub id or a local directory.

    ``auto`` (image pipelines): a family of the preset table loads as its own class, any
    other through ``AutoPipelineForText2Image``; without it the class ``pipeline_class``
    is used directly (video pipelines). ``components``: loaded
    modules to put in (an AnimateDiff motion adapter over an SD base).
    """
    with _PIPELINES_LOCK:
        if cache_id in _PIPELINES:
            return _PIPELINES[cache_id]
    import diffusers

    kwargs = {_DTYPE_KWARG: dtype, "local_files_only": local_files_only, **(components or {})}
    if revision:
        kwargs["revision"] = revision
    if variant:
        kwargs["variant"] = variant
    # 1. a family of the preset table is a text-to-image class already: load it directly (the
    #    auto class would pick the same class, after importing every pipeline diffusers ships,
    #    about 1 s on 2 cores); otherwise the auto class knows every text-to-image family
    try:
        if not auto:
            raise ValueError("no auto class for this kind of pipeline")
        known = pipeline_class in load_presets()["families"] and hasattr(diffusers, pipeline_class)
        loader = getattr(diffusers, pipeline_class if known else "AutoPipelineForText2Image")
        pipe = loader.from_pretrained(source, **kwargs)
    except (ValueError, KeyError) as auto_error:
        # 2. a pipeline the auto class has no mapping for: use the class the
        #    folder names (community and newer pipelines)
        cls = getattr(diffusers, pipeline_class, None)
        if cls is None:
            raise ModelLoadError(
                f"cannot load {source!r}: model_index.json names the pipeline class "
                f"{pipeline_class!r}, which this diffusers {diffusers.__version__} does not have"
            ) from auto_error
        try:
            pipe = cls.from_pretrained(source, **kwargs)
        except Exception as e:
            raise ModelLoadError(f"cannot load diffusers pipeline {source!r} as {pipeline_class}: {e}") from e
    except Exception as e:
        raise ModelLoadError(f"cannot load diffusers pipeline {source!r}: {type(e).__name__}: {e}") from e
    if offload == "sequential" and device.startswith("cuda"):  # the least memory, the slowest: one submodule at a time
        pipe.enable_sequential_cpu_offload(device=device)
        pipe._mmopt_memory = "offload"
    else:
        fast.plan_memory(pipe, device, offload)  # resident if it fits, CPU offload (with a warning) if not
    pipe.set_progress_bar_config(disable=True)
    with _PIPELINES_LOCK:
        return _PIPELINES.setdefault(cache_id, pipe)


_CALL_LOCKS: dict[tuple, threading.Lock] = {}


def _pipeline_lock(cache_id: tuple) -> threading.Lock:
    """The lock of one loaded pipeline, shared by every generator that uses it."""
    with _PIPELINES_LOCK:
        return _CALL_LOCKS.setdefault(cache_id, threading.Lock())


def clear_pipeline_cache() -> None:
    """Forget every loaded pipeline (frees memory; mainly for tests)."""
    with _PIPELINES_LOCK:
        _PIPELINES.clear()


def _is_oom(error: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    if oom_type and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def check_generator_args(model: Any, *, max_batch: Any, guidance: Any, prompt_style: Any, call_kwargs: Any,
                         negative_prompt: Any, ints: dict) -> None:
    """The argument checks every pipeline generator shares (``ints``: name -> positive int or None)."""
    if not isinstance(model, (str, Path)) or not str(model).strip():
        raise ValueError(f"model must be a hub id or a local directory, got {model!r}")
    if max_batch != "auto" and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be a positive int or 'auto', got {max_batch!r}")
    for key, val in ints.items():
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ValueError(f"{key} must be a positive int or None, got {val!r}")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or guidance < 0):
        raise ValueError(f"guidance must be a non-negative number or None, got {guidance!r}")
    if prompt_style is not None and prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
    if call_kwargs is not None and not isinstance(call_kwargs, dict):
        raise TypeError(f"call_kwargs must be a dict, got {type(call_kwargs).__name__}")
    if negative_prompt is not _UNSET and negative_prompt is not None and not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")


class PipelineGenerator:
    """What the image and the video generator share: the preset's prompt settings, the
    token window (count, truncate, warn), input checks, per-sample seeded noise, and the
    filtering of call arguments a pipeline does not take.

    A subclass sets ``preset`` (with :meth:`_set_preset`), ``device``, ``model_id``,
    ``pipeline_class``, ``_tokenizer`` and ``_call_params``, and defines ``generate_chunks``.
    """

    def _set_preset(self, preset: dict, negative_prompt: Any, call_kwargs: dict | None) -> None:
        """Adopt a resolved preset; ``negative_prompt`` (unless unset) and ``call_kwargs`` win."""
        self.preset = preset
        if negative_prompt is not _UNSET:
            self.preset["negative_prompt"] = negative_prompt
        if call_kwargs:
            self.preset["call_kwargs"].update(call_kwargs)
        if self.preset["prompt_style"] not in PROMPT_STYLES:
            raise ValueError(f"preset prompt_style must be one of {PROMPT_STYLES}, got {self.preset['prompt_style']!r}")
        self.prompt_style = self.preset["prompt_style"]
        self.max_prompt_tokens = int(self.preset["max_prompt_tokens"])

    # ------------------------------------------------------------------ tokens

    def count_tokens(self, prompt: str) -> int:
        """Tokens the text encoder sees for ``prompt``, special tokens included, untruncated.

        A prompt fits when ``count_tokens(prompt) <= max_prompt_tokens``.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if self._tokenizer is None:  # no tokenizer: approximate by words
            return len(prompt.split()) + 2
        return len(self._tokenizer(prompt, add_special_tokens=True, truncation=False,
                                   verbose=False)["input_ids"])

    def truncate(self, prompt: str) -> str:
        """``prompt`` cut to the encoder's token budget, as text (original casing and spacing).

        Cuts at the last whole word that fits (at a character if a single word is
        longer than the budget) and drops dangling separators.

        >>> gen.truncate("a cat, " * 60).count("cat") < 60                      # doctest: +SKIP
        True
        """
        if self.count_tokens(prompt) <= self.max_prompt_tokens:
            return prompt
        fits = lambda text: self.count_tokens(text) <= self.max_prompt_tokens  # noqa: E731
        ends = [m.end() for m in re.finditer(r"\S+", prompt)]
        # binary search the number of whole words that fit
        lo, hi = 0, len(ends)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(prompt[:ends[mid - 1]]):
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            cut = prompt[:ends[lo - 1]]
        else:  # the first word alone is too long: cut inside it
            lo, hi = 0, len(prompt)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(prompt[:mid]):
                    lo = mid
                else:
                    hi = mid - 1
            cut = prompt[:lo]
        return cut.rstrip(" \t\n,;:")

    def _check_inputs(self, prompts: Sequence[Candidate | str], seeds: Sequence[int]) -> tuple[list[Candidate], list[int]]:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a sequence of prompts (strings or Candidates), got {type(prompts).__name__}")
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
            raise TypeError(f"seeds must be a sequence of ints, got {type(seeds).__name__}")
        if len(prompts) != len(seeds):
            raise ValueError(
                f"prompts and seeds are parallel lists (image i = prompts[i] with seeds[i]); got "
                f"{len(prompts)} prompts and {len(seeds)} seeds. For every prompt x seed, pass "
                f"[p for p in prompts for s in seeds] and [s for p in prompts for s in seeds]"
            )
        cands = []
        for i, p in enumerate(prompts):
            if not isinstance(p, (str, Candidate)):
                raise TypeError(f"prompts[{i}] must be a string or a Candidate, got {type(p).__name__}")
            c = Candidate.of(p)
            if not c.text.strip():
                raise ValueError(f"prompts[{i}] is empty or whitespace ({c.text!r}); expected text to render")
            cands.append(c)
        for i, s in enumerate(seeds):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2 ** 63:
                raise ValueError(f"seeds[{i}] must be an int in [0, 2**63), got {s!r}")
        return cands, list(seeds)

    def negative_for(self, candidate: Candidate) -> str | None:
        """The negative prompt ``candidate`` renders with: its own, else the preset's."""
        return candidate.negative if candidate.negative is not None else self.preset.get("negative_prompt")

    def _measure(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts``, with a warning for each that overflows the window."""
        n_tokens = [self.count_tokens(t) for t in texts]
        for text, n in zip(texts, n_tokens):
            if n > self.max_prompt_tokens:
                warnings.warn(
                    f"prompt has {n} tokens, over the {self.max_prompt_tokens}-token window of "
                    f"{self.model_id}; the last {n - self.max_prompt_tokens} are dropped: {text[:60]!r}...",
                    stacklevel=3,
                )
        return n_tokens

    def _generators(self, seeds: Sequence[int]) -> list:
        """One seeded ``torch.Generator`` per sample, so a sample depends only on its own seed."""
        # mps generators are not reliably reproducible: draw the noise on the cpu there
        gen_device = "cpu" if self.device.startswith("mps") else self.device
        return [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]

    def _only_accepted(self, args: dict) -> dict:
        """``args`` without the keys the pipeline's ``__call__`` does not take (with a warning)."""
        takes_any = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in self._call_params.values())
        if takes_any:
            return args
        dropped = sorted(k for k in args if k not in self._call_params)
        if dropped:
            warnings.warn(f"{self.pipeline_class} takes no {dropped}; ignoring them", stacklevel=4)
        return {k: v for k, v in args.items() if k in self._call_params}

    def _pipeline_record(self) -> dict:
        """The part of ``config()`` every pipeline generator shares: the weights (a local folder
        by its content, not where it lies), the pipeline and scheduler, precision, sampling."""
        import diffusers

        p = self.preset
        return {
            "model": "local" if self.local else self.model_id,
            "revision": self.revision,
            "variant": self.variant,
            "pipeline": self.pipeline_class,
            "scheduler": type(self.pipe.scheduler).__name__ if hasattr(self.pipe, "scheduler") else None,
            "dtype": dtype_name(self.dtype),
            "device": self.device.split(":")[0],
            "steps": int(p["steps"]),
            "guidance": float(p["guidance"]),
            "negative_prompt": p.get("negative_prompt"),
            "call_kwargs": p["call_kwargs"],
            "diffusers": diffusers.__version__,
        }

    def generate(self, prompts: Sequence[Candidate | str], seeds: Sequence[int]) -> list[Generation]:
        """Render ``prompts[i]`` (a prompt or a Candidate, whose negative prompt wins over the
        preset's) with ``seeds[i]`` for every i; one Generation each, in order.

        Pairs are rendered in chunks of at most ``max_batch`` samples. A prompt
        over the token budget is rendered as the pipeline truncates it; a
        warning is issued and ``meta["truncated_tokens"]`` records how many
        tokens were dropped.

        >>> gens = gen.generate(["a red cube", "a blue ball"], [0, 0])      # doctest: +SKIP
        >>> gens[0].meta["model"], gens[0].media.size                        # doctest: +SKIP
        ('stabilityai/sd-turbo', (512, 512))
        """
        return [g for chunk in self.generate_chunks(prompts, seeds) for g in chunk]


# --------------------------------------------------------------------------- generator


class DiffusersGenerator(PipelineGenerator):
    """A :class:`~mmopt.types.Generator` backed by a diffusers text-to-image pipeline.

    Args:
        model: hub id (``"stabilityai/sd-turbo"``) or path of a local pipeline directory.
        revision: hub branch, tag or commit (default: the main branch).
        device, dtype: override the automatic choice (``"cuda"``, ``"fp16"``, ...).
        max_batch: at most this many images per pipeline call (halved on CUDA OOM), or
            ``"auto"``: start at ``AUTO_BATCH`` on cuda (4 elsewhere) and keep the largest
            size that ran, halving on OOM.
        channels_last, fuse_qkv, compile, static_batch, decoder, tiny_decoder, attention,
        offload: GPU fast paths (see :mod:`mmopt.pipelines.fast`); ``None`` = preset, then
            the device default.
        steps, guidance, height, width, negative_prompt, prompt_style,
        max_prompt_tokens, call_kwargs: override the preset (``negative_prompt=None``
            removes the preset's negative prompt).
        variant: weights variant on the hub (``"fp16"``).
        timeout: seconds to wait for the hub before failing with ModelLoadError.

    Attributes the loop reads: ``name`` (``"diffusers:<model>"``), ``prompt_style``
    (``"tags"`` or ``"sentences"``), ``max_prompt_tokens`` (the text encoder's window,
    special tokens included), ``preset`` (the merged preset).

    >>> gen = DiffusersGenerator("/tmp/mmopt-tiny/sd")                  # doctest: +SKIP
    >>> gen.generate(["a red cube"], [0])[0].meta["steps"]                 # doctest: +SKIP
    2
    """

    def __init__(self, model: str, *, revision: str | None = None, device: str | None = None,
                 dtype: Any = None, max_batch: int = 4, steps: int | None = None,
                 guidance: float | None = None, height: int | None = None, width: int | None = None,
                 negative_prompt: Any = _UNSET, prompt_style: str | None = None,
                 max_prompt_tokens: int | None = None, call_kwargs: dict | None = None,
                 variant: str | None = None, timeout: float = 10.0, channels_last: bool | None = None,
                 fuse_qkv: bool | None = None, compile: str | bool | None = None,
                 static_batch: bool | None = None, decoder: str | None = None,
                 tiny_decoder: str | None = None, attention: str | None = None, offload: str | None = None):
        # 1. check arguments
        check_generator_args(model, max_batch=max_batch, guidance=guidance, prompt_style=prompt_style,
                             call_kwargs=call_kwargs, negative_prompt=negative_prompt,
                             ints={"steps": steps, "height": height, "width": width,
                                   "max_prompt_tokens": max_prompt_tokens})
        model = str(model).strip()
        self.name = f"diffusers:{model}"
        self.max_batch = max_batch
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        if max_batch == "auto":
            max_batch = AUTO_BATCH if self.device.startswith("cuda") else 4
        self.max_batch = max_batch

        # 2. find the pipeline: a local folder, or a hub repo we can reach
        found = locate_pipeline(model, revision=revision, timeout=timeout)
        index, local_preset, source, local_files_only = found.index, found.local_preset, found.source, found.local_files_only
        self.model_id, self.local, self.revision = found.model_id, found.local, found.revision
        self.pipeline_class = str(index.get("_class_name", ""))
        if is_video_pipeline(self.pipeline_class):
            raise ValueError(f"{model!r} is a text-to-video pipeline ({self.pipeline_class}); load it with "
                             f"the video generator: 'diffusers-video:{model}'")

        # 3. preset: data first, keyword arguments last
        overrides = {"steps": steps, "guidance": guidance, "height": height, "width": width,
                     "prompt_style": prompt_style, "max_prompt_tokens": max_prompt_tokens}
        self._set_preset(resolve_preset(model, self.pipeline_class, local_preset, overrides),
                         negative_prompt, call_kwargs)

        # 4. load once per process (one object per set of switches that change the pipeline)
        self.fast = fast.resolve_fast_options(
            self.preset, {"channels_last": channels_last, "fuse_qkv": fuse_qkv, "compile": compile,
                          "static_batch": static_batch, "decoder": decoder, "tiny_decoder": tiny_decoder,
                          "attention": attention, "offload": offload},
            self.device, self.pipeline_class)
        cache_id = (self.model_id, self.revision, variant, dtype_name(self.dtype), self.device,
                    fast.pipeline_id_options(self.fast))
        self.pipe = _load_pipeline(source, pipeline_class=self.pipeline_class, revision=revision,
                                   variant=variant, dtype=self.dtype, device=self.device,
                                   local_files_only=local_files_only, cache_id=cache_id,
                                   offload=self.fast["offload"])
        fast.apply_fast_paths(self.pipe, self.fast)
        self._timeout = timeout
        self.variant = variant
        self._call_params = inspect.signature(self.pipe.__call__).parameters
        self._tokenizer = getattr(self.pipe, self.preset.get("tokenizer") or "tokenizer", None) \
            or getattr(self.pipe, "tokenizer", None)
        self._batch = max_batch  # shrinks after a CUDA OOM
        self._call_lock = _pipeline_lock(cache_id)

    def _call_args(self, cands: list[Candidate], seeds: list[int]) -> dict:
        """Pipeline arguments for one chunk; each image gets its own seeded generator."""
        p = self.preset
        args = {
            "prompt": [c.text for c in cands],
            "num_inference_steps": int(p["steps"]),
            "guidance_scale": float(p["guidance"]),
            "generator": self._generators(seeds),
            "output_type": "pil",
        }
        if p.get("height"):
            args["height"] = int(p["height"])
        if p.get("width"):
            args["width"] = int(p["width"])
        negatives = [self.negative_for(c) for c in cands]
        if any(negatives):
            # "" encodes exactly like no negative prompt (the unconditional branch is the empty prompt)
            args["negative_prompt"] = [neg or "" for neg in negatives]
        args.update(p["call_kwargs"])
        return self._only_accepted(args)

    def generate_chunks(self, prompts: Sequence[Candidate | str], seeds: Sequence[int]):
        """Like :meth:`generate`, but yields the Generations chunk by chunk as they are rendered.

        The loop scores chunk i while this renders chunk i+1 (see ``Optimizer``).
        Concatenated, the chunks are exactly ``generate(prompts, seeds)``.

        >>> [len(c) for c in gen.generate_chunks(["a cat"] * 5, list(range(5)))]  # doctest: +SKIP
        [4, 1]
        """
        # 1. check inputs
        prompts, seeds = self._check_inputs(prompts, seeds)
        if not prompts:
            return

        # 2. measure prompts against the encoder's window
        n_tokens = self._measure([p.text for p in prompts])

        # 3. render in chunks; on CUDA OOM halve the chunk and retry
        tiny = self.fast["decoder"] == "tiny"
        decoder = self._tiny_decoder() if tiny else None
        # SD's own decode is vae.decode(latents / scaling_factor) + postprocess: doing it here
        # is the same computation with the uint8 conversion on the device (fast.to_images)
        if decoder is None and fast.decodes_like_the_pipeline(self.pipe, self.pipeline_class):
            decoder = getattr(self.pipe, "vae", None)
        i = 0
        while i < len(prompts):
            size = min(self._batch, len(prompts) - i)
            chunk_p, chunk_s = prompts[i:i + size], seeds[i:i + size]
            # static shapes: pad the last chunk with copies of its last pair (dropped below),
            # so a compiled model / CUDA graph sees one batch size; per-image generators keep
            # every real image identical to an unpadded render
            pad = self._batch - size if self.fast["static_batch"] else 0
            call_p, call_s = chunk_p + chunk_p[-1:] * pad, chunk_s + chunk_s[-1:] * pad
            start = time.perf_counter()
            try:
                # one pipeline call at a time: its scheduler keeps per-call state (timesteps),
                # so two runs sharing this generator in two threads take turns here
                with self._call_lock, torch.inference_mode():
                    args = self._call_args(call_p, call_s)
                    if decoder is not None:
                        args["output_type"] = "latent"
                        latents = self.pipe(**args).images
                        images, pixels = fast.decode_latents(self.pipe, decoder, latents)
                    else:
                        images, pixels = self.pipe(**args).images, None
                images = images[:size]
            except Exception as e:
                if not _is_oom(e) or size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._batch = max(1, size // 2)
                warnings.warn(f"out of memory with a batch of {size}; retrying with {self._batch}",
                              stacklevel=2)
                continue
            latency = (time.perf_counter() - start) / size

            # 4. wrap each image with how it was made
            chunk = []
            for j, image in enumerate(images):
                k = i + j
                meta = {
                    "model": self.model_id,
                    "revision": self.revision,
                    "pipeline": self.pipeline_class,
                    "steps": int(self.preset["steps"]),
                    "guidance": float(self.preset["guidance"]),
                    "height": image.height,
                    "width": image.width,
                    "negative_prompt": self.negative_for(prompts[k]),
                    "latency_s": latency,
                    "batch_size": size,
                    "prompt_tokens": n_tokens[k],
                    "truncated_tokens": max(0, n_tokens[k] - self.max_prompt_tokens),
                }
                if tiny:
                    meta["decoder"] = "tiny"
                chunk.append(Generation(candidate=prompts[k], seed=seeds[k], media=image, meta=meta,
                                        pixels=None if pixels is None else pixels[j]))
            i += size
            yield chunk

    # ------------------------------------------------------------------ fast paths

    def _tiny_decoder(self):
        return fast.load_tiny_decoder(self.fast["tiny_decoder"], self.dtype, self.device,
                                      timeout=self._timeout, channels_last=self.fast["channels_last"],
                                      compile=self.fast["compile"])

    def with_decoder(self, decoder: str) -> "DiffusersGenerator":
        """A sibling generator that shares this one's loaded pipeline but decodes with
        ``decoder`` ("full" or "tiny"); its ``cache_key`` differs accordingly.

        The loop renders a search with ``decoder="tiny"`` and re-scores the best
        prompt with ``gen.with_decoder("full")`` (``Optimizer(final_rescore=True)``).

        >>> gen.with_decoder("full").fast["decoder"]                          # doctest: +SKIP
        'full'
        """
        import copy

        if decoder not in fast.DECODERS:
            raise ValueError(f"decoder must be one of {fast.DECODERS}, got {decoder!r}")
        twin = copy.copy(self)
        twin.fast = dict(self.fast, decoder=decoder)
        if decoder == "tiny" and not twin.fast.get("tiny_decoder"):
            raise ValueError(f"no tiny decoder is known for {self.pipeline_class}; pass tiny_decoder=")
        return twin

    def full_quality(self) -> "DiffusersGenerator":
        """The generator for the final re-score: this one with the full decoder."""
        return self if self.fast["decoder"] == "full" else self.with_decoder("full")

    # ------------------------------------------------------------------ cache

    def config(self) -> dict:
        """Everything that determines an image besides (candidate, seed): this generator's identity.

        >>> sorted(gen.config())                                             # doctest: +SKIP
        ['call_kwargs', 'component', 'device', 'diffusers', 'dtype', 'guidance', ...]
        """
        p = self.preset
        return {
            "component": "mmopt.pipelines.diffusers_t2i.DiffusersGenerator",
            **self._pipeline_record(),
            "height": p.get("height"),
            "width": p.get("width"),
            # only a tiny decoder changes the images; the other fast paths are the same
            # function (other rounding), like the batch size
            **({"decoder": "tiny", "tiny_decoder": str(self.fast["tiny_decoder"])}
               if self.fast["decoder"] == "tiny" else {}),
        }

    def __repr__(self) -> str:
        return (f"DiffusersGenerator({self.model_id!r}, device={self.device!r}, "
                f"dtype={dtype_name(self.dtype)}, steps={self.preset['steps']})")


def name_and_revision(rest: str, kwargs: dict, prefix: str = "diffusers") -> str:
    """The model of ``"<prefix>:<hub id or path>[@revision]"`` (``rest`` is after the prefix);
    a revision after ``@`` goes into ``kwargs``."""
    rest = (rest or "").strip()
    if not rest:
        raise ValueError(f"expected '{prefix}:<hub id or local directory>', got no model after '{prefix}:'")
    if "@" in rest and not Path(rest).expanduser().exists() and "revision" not in kwargs:
        rest, _, kwargs["revision"] = rest.rpartition("@")
    return rest


def from_name(rest: str, **kwargs: Any) -> DiffusersGenerator:
    """Registry factory for ``"diffusers:<hub id or path>[@revision]"``.

    >>> from mmopt.registry import create
    >>> create("generator", "diffusers:stabilityai/sd-turbo", max_batch=8)  # doctest: +SKIP
    """
    return DiffusersGenerator(name_and_revision(rest, kwargs), **kwargs)
