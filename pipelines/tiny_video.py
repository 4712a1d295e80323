"""Video pipelines built from configs: tiny ones for offline tests, full-size ones for benchmarks.

Nothing here downloads. Architectures are JSON in ``mmopt/assets/configs``
(``tiny_animatediff``, ``tiny_cogvideox``, ``tiny_ltx``, ``tiny_wan`` and the
full-size ``cogvideox_2b``, ``ltx_video``, ``wan21_t2v_1_3b``); weights are
random and seeded; the saved folder is a normal diffusers pipeline plus
``mmopt_preset.json``, and loads through exactly the code that loads a hub id:

>>> from mmopt.pipelines.tiny_video import build_video_pipeline
>>> path = build_video_pipeline("tiny_cogvideox", "/tmp/mmopt-tiny/cogvideox")   # doctest: +SKIP
>>> create("generator", f"diffusers-video:{path}")                                 # doctest: +SKIP

Tokenizers are real:

* AnimateDiff (over the tiny SD of ``tiny_sd.json``) uses the real CLIP BPE
  tokenizer (:func:`mmopt.pipelines.tiny.clip_tokenizer_dir`).
* CogVideoX, LTX-Video and Wan use a T5-family tokenizer. T5's SentencePiece
  vocabulary cannot be downloaded here, so :func:`t5_tokenizer_dir` builds a
  real ``T5TokenizerFast`` (a ``tokenizers`` Unigram model with T5's special
  tokens ``<pad>``=0, ``</s>``=1, ``<unk>``=2, Metaspace word boundaries and an
  ``</s>`` appended) over a vocabulary constructed from CLIP's BPE word list.
  It tokenizes like a T5 tokenizer does, but its ids are NOT the released
  T5's: it serves random-weight architectures only, never pretrained T5 weights.

A config names the pipeline class, its modules (``{"class", "config"}``: a
diffusers model built as ``cls(**config)``, a transformers one as
``cls(cls.config_class(**config))``), the tokenizer, the scheduler and the
preset; ``"base": "tiny_sd"`` takes the UNet, VAE, text encoder and CLIP
tokenizer of that config (same seeds as ``build_tiny_sd``).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmopt.pipelines.tiny import (_STAMP, _check_seed, _clear_out_dir, _fingerprint, _is_built, _seeded,
                                  clip_bpe_vocab, clip_tokenizer_dir, load_config)

T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
# Characters every constructed vocabulary holds alone and word-initially, so plain text
# never falls back to <unk>.
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()[]/&%+*=<>#@_$"
VIDEO_CONFIGS = ("tiny_animatediff", "tiny_cogvideox", "tiny_ltx", "tiny_wan",
                 "cogvideox_2b", "ltx_video", "wan21_t2v_1_3b")


# --------------------------------------------------------------------------- T5-family tokenizer


def t5_vocabulary(size: int) -> list[tuple[str, float]]:
    """A Unigram vocabulary of ``size`` pieces with scores, built from CLIP's BPE merges.

    Order: T5's three specials, single characters (alone and word-initial, ``"▁"``
    marking a word start as in SentencePiece), then the pieces of CLIP's merges in merge
    order (about frequency order), each word-initially and word-internally, scored
    ``-log(rank + 2)`` so frequent pieces win the segmentation.

    >>> vocab = t5_vocabulary(2000); vocab[:3], len(vocab)
    ([('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0)], 2000)
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 + 2 * len(_CHARS) + 1:
        raise ValueError(f"size must be an int >= {3 + 2 * len(_CHARS) + 1}, got {size!r}")
    pieces: dict[str, float] = {s: 0.0 for s in T5_SPECIALS}
    pieces["▁"] = -2.0
    for c in _CHARS:  # characters are the fallback: rarely the best segmentation
        pieces.setdefault("▁" + c, -12.0)
        pieces.setdefault(c, -12.0)
    _vocab, merges = clip_bpe_vocab()
    rank = 0
    for merge in merges:
        token = merge.replace(" ", "")
        core = token[:-4] if token.endswith("</w>") else token
        if not core.isascii() or not core.isprintable() or not core.strip():
            continue
        for piece in ("▁" + core, core):
            if len(pieces) >= size:
                break
            if piece not in pieces:
                pieces[piece] = -math.log(rank + 2)
                rank += 1
        if len(pieces) >= size:
            break
    return list(pieces.items())


def t5_tokenizer_dir(out_dir: str | Path, vocab_size: int = 8192, model_max_length: int = 512) -> Path:
    """Write a real ``T5TokenizerFast`` over :func:`t5_vocabulary` to ``out_dir``; return it.

    ``T5TokenizerFast.from_pretrained(out_dir)`` (and ``AutoTokenizer``) loads it back;
    ``"a red fox"`` tokenizes to word pieces followed by ``</s>`` (id 1), padding is
    ``<pad>`` (id 0). Its ids are not the released T5's (see the module docstring).

    >>> from transformers import AutoTokenizer                                   # doctest: +SKIP
    >>> AutoTokenizer.from_pretrained(t5_tokenizer_dir("/tmp/t5tok"))("a cat").input_ids[-1]
    1
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram(t5_vocabulary(vocab_size), unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=model_max_length)
    fast.save_pretrained(out)
    return out


def _tokenizer(spec: dict, tmp: str):
    """The tokenizer a config asks for, saved and loaded back (so the ids are the loaded ones)."""
    from transformers import AutoTokenizer, CLIPTokenizer

    kind = spec.get("kind")
    if kind == "clip":
        return CLIPTokenizer.from_pretrained(clip_tokenizer_dir(Path(tmp) / "clip"))
    if kind == "t5":
        path = t5_tokenizer_dir(Path(tmp) / "t5", int(spec["vocab_size"]), int(spec.get("model_max_length", 512)))
        return AutoTokenizer.from_pretrained(path)
    raise ValueError(f"tokenizer kind must be 'clip' or 't5', got {kind!r}")


# --------------------------------------------------------------------------- modules


def module_class(name: str):
    """A model class by name: diffusers first, then transformers."""
    import diffusers
    import transformers

    cls = getattr(diffusers, name, None) or getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"no diffusers or transformers class {name!r}")
    return cls


def build_module(spec: dict) -> Any:
    """A module from ``{"class", "config"}`` (on the current default device)."""
    cls = module_class(spec["class"])
    cfg = dict(spec["config"])
    config_class = getattr(cls, "config_class", None)
    if config_class is not None and cls.__module__.startswith("transformers"):
        return cls(config_class(**cfg))
    return cls(**cfg)


def count_parameters(config: str | dict) -> dict[str, int]:
    """Parameters of each module of a video config, counted on the ``meta`` device (no memory).

    >>> count_parameters("tiny_cogvideox")["transformer"] > 0   # doctest: +SKIP
    True
    """
    cfg = load_config(config) if isinstance(config, str) else config
    with torch.device("meta"):
        return {name: sum(p.numel() for p in build_module(spec).parameters())
                for name, spec in cfg["modules"].items()}


# --------------------------------------------------------------------------- pipelines


def build_video_pipeline(config: str | dict, out_dir: str | Path, seed: int = 0, *, device: str = "cpu",
                         dtype: Any = None) -> Path:
    """Build a video pipeline from a config of ``mmopt/assets/configs`` (or its dict) with seeded
    random weights, save it with its ``mmopt_preset.json``, and return the directory.

    Load it with ``DiffusersVideoGenerator(str(path))`` or ``f"diffusers-video:{path}"``.
    Rebuilding the same config and seed is skipped. Build the full-size ones on a GPU
    (``device="cuda", dtype=torch.bfloat16``): the text encoders alone hold 4.8-5.7 B
    parameters.
    """
    import diffusers

    # 1. check inputs; skip work that is already done
    seed = _check_seed(seed)
    cfg = load_config(config) if isinstance(config, str) else {k: v for k, v in config.items() if k != "_comment"}
    if "pipeline" not in cfg or "preset" not in cfg:
        raise ValueError("a video pipeline config needs 'pipeline' (a diffusers class) and 'preset'")
    out = Path(out_dir)
    stamp_cfg = cfg if device == "cpu" and dtype is None else {**cfg, "_init": [str(device), str(dtype)]}
    fingerprint = _fingerprint(stamp_cfg, seed)
    if _is_built(out, fingerprint):
        return out

    def make(spec_or_build, offset):
        build = spec_or_build if callable(spec_or_build) else (lambda: build_module(spec_or_build))
        with _seeded(seed + offset, device), torch.device(device):
            module = build()
        return module.to(dtype) if dtype is not None else module

    # 2. modules: a base config's (same seeds as its own builder), then this config's own
    parts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.get("base"):
            base = load_config(cfg["base"])
            from transformers import CLIPTextConfig, CLIPTextModel

            parts["unet"] = make(lambda: diffusers.UNet2DConditionModel(**base["unet"]), 0)
            parts["vae"] = make(lambda: diffusers.AutoencoderKL(**base["vae"]), 1)
            parts["text_encoder"] = make(lambda: CLIPTextModel(CLIPTextConfig(**base["text_encoder"])), 2)
            parts["tokenizer"] = _tokenizer({"kind": "clip"}, tmp)
            sched = dict(cfg.get("scheduler") or base["scheduler"])
        else:
            parts["tokenizer"] = _tokenizer(cfg["tokenizer"], tmp)
            sched = dict(cfg["scheduler"])
        for k, (name, spec) in enumerate(cfg["modules"].items()):
            parts[name] = make(spec, 10 + k)
    parts["scheduler"] = getattr(diffusers, sched.pop("class"))(**sched)

    # 3. save as a plain diffusers pipeline
    pipe = getattr(diffusers, cfg["pipeline"])(**parts)
    _clear_out_dir(out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "mmopt_preset.json").write_text(json.dumps(cfg["preset"], indent=2))
    (out / _STAMP).write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}))
    return out
