"""Yes/no VQA backends on transformers (implement ``mmopt.types.VQAModel``).

Every backend answers a batch of (image, question) pairs and returns a
:class:`~mmopt.types.VQAAnswer` whose ``p_yes`` is P("yes") normalised over
{"yes", "no"}, so DSG and VQAScore get a soft score for free:

* :class:`BlipVQA` (``BlipForQuestionAnswering``): BLIP's answer decoder
  *generates*, so both answers are scored by their decoder likelihood
  (answer tokens + end token) and compared.
* :class:`HFVLMVQA` (``AutoModelForImageTextToText``): any image-text-to-text
  model: Qwen2-VL / Qwen2.5-VL, SmolVLM / Idefics3, PaliGemma, InstructBLIP,
  ... The next-token logits after the prompt are compared for "yes" vs "no"
  (case and leading-space variants pooled).

``answer`` is then "yes" when ``p_yes >= 0.5`` else "no": whatever the model
would have generated (``raw``, the arg-max token), it is mapped to the closer
of the two by probability. Friendly aliases (``qwen2.5-vl-7b``, ``blip-vqa``,
...) live in ``assets/vqa_models.json``.
"""
from __future__ import annotations

import importlib.resources
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from mmopt.device import dtype_name, pick_device, pick_dtype
from mmopt.errors import ModelLoadError
from mmopt.fingerprint import weights_record
from mmopt.types import VQAAnswer

__all__ = ["BlipVQA", "HFVLMVQA", "HFVideoVLMVQA", "hf_video_from_name", "vqa_aliases", "resolve_vqa_name", "resolve_vqa_spec", "from_name",
           "blip_from_name", "hf_vlm_from_name", "check_image"]


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def vqa_aliases() -> dict[str, dict]:
    """Friendly VQA names -> ``{"name": registry name, "kwargs": {...}}`` (assets/vqa_models.json)."""
    text = (importlib.resources.files("mmopt.assets") / "vqa_models.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def resolve_vqa_name(name: str) -> str:
    """An alias (``"qwen2.5-vl-7b"``) -> its registry name (``"hf-vlm:Qwen/Qwen2.5-VL-7B-Instruct"``);
    any other name is returned unchanged.

    >>> resolve_vqa_name("blip-vqa")
    'blip:Salesforce/blip-vqa-base'
    """
    return resolve_vqa_spec(name)[0]


def resolve_vqa_spec(name: str) -> tuple[str, dict]:
    """Like :func:`resolve_vqa_name` but also returns the alias' constructor kwargs.

    A local model directory is recognised by its ``config.json``: a BLIP VQA
    model becomes ``blip:<dir>``, any other model ``hf-vlm:<dir>``.
    """
    alias = vqa_aliases().get(name)
    if alias:
        return alias["name"], dict(alias.get("kwargs", {}))
    folder = Path(name).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise ValueError(f"{name!r} is a directory but holds no config.json: expected a saved "
                             "transformers VQA model (BLIP-VQA or an image-text-to-text model)")
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        return (f"blip:{folder}" if model_type == "blip" else f"hf-vlm:{folder}"), {}
    return name, {}


def check_image(image: Any) -> Any:
    """A PIL RGB image from ``image`` (PIL image or HxWxC uint8 array); ValueError if empty.

    Non-RGB modes (L, RGBA, P, ...) are converted to RGB.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy ships with torch
            np = None
        if np is not None and isinstance(image, np.ndarray):
            if image.size == 0:
                raise ValueError(f"image array is empty (shape {image.shape})")
            image = Image.fromarray(image)
        else:
            raise TypeError(f"expected a PIL.Image.Image (or a uint8 array), got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty: size {image.size}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pairs(images: Sequence[Any], questions: Sequence[str]) -> tuple[list, list[str]]:
    images, questions = list(images), list(questions)
    if len(images) != len(questions):
        raise ValueError(f"images[i] pairs with questions[i]: got {len(images)} images and {len(questions)} questions")
    for q in questions:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"every question must be a non-empty string, got {q!r}")
    return [check_image(im) for im in images], questions


def _from_pretrained(cls: Any, name: str, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a local dir or a hub id; ModelLoadError (fast) when unreachable.

    A hub id is first checked with :func:`mmopt.hub.check_hub_repo` (a few
    seconds at most: cached copy, ``HF_HUB_OFFLINE``, network probe), so an
    offline machine fails at once instead of waiting on retries.
    """
    if not os.path.isdir(name):
        try:
            from mmopt.hub import check_hub_repo
        except ImportError:  # older core without the hub helper: rely on from_pretrained's errors
            pass
        else:
            check = check_hub_repo(name, what=what, revision=kwargs.get("revision"), probe_file="config.json")
            kwargs.setdefault("local_files_only", bool(check.local_files_only))
    try:
        return cls.from_pretrained(name, **kwargs)
    except Exception as e:
        where = "directory" if os.path.isdir(name) else "hub id"
        raise ModelLoadError(f"could not load the {what} from {where} {name!r}: {e}") from e


def _answer(p_yes: float, raw: str) -> VQAAnswer:
    return VQAAnswer(answer="yes" if p_yes >= 0.5 else "no", p_yes=float(p_yes), raw=raw)


# ---------------------------------------------------------------------------
# BLIP-VQA
# ---------------------------------------------------------------------------

class BlipVQA:
    """BLIP VQA (``BlipForQuestionAnswering``) scoring "yes" vs "no" by decoder likelihood.

    ``model`` is a hub id (``"Salesforce/blip-vqa-base"``) or a local dir
    holding the model and its processor.

    >>> vqa = BlipVQA("Salesforce/blip-vqa-base")  # doctest: +SKIP
    >>> vqa.answer([image], ["Is there a cat?"])[0].answer  # doctest: +SKIP
    'yes'
    """

    def __init__(self, model: str, *, device: Any = None, dtype: Any = None, batch_size: int = 16,
                 revision: str | None = None):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a hub id or a directory, got {model!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        extra = {"revision": revision} if revision else {}
        self.processor = _from_pretrained(BlipProcessor, model, "BLIP processor", **extra)
        self.model = _from_pretrained(BlipForQuestionAnswering, model, "BLIP-VQA model",
                                      dtype=self.dtype, **extra).to(self.device).eval()
        self.batch_size = int(batch_size)
        self.name = f"blip:{model}"
        self.model_id = model
        self.revision = revision
        tok = self.processor.tokenizer
        # Each candidate answer is decoded as [bos] answer-tokens [sep]; its score is the
        # log-likelihood of answer-tokens + [sep].
        self._answers = {a: tok(a, add_special_tokens=False).input_ids for a in ("yes", "no")}
        cfg = self.model.config.text_config
        self._bos, self._sep = cfg.bos_token_id, cfg.sep_token_id

    def config(self) -> dict:
        return {"component": "mmopt.scorers.vqa.BlipVQA", **weights_record(self.model_id, self.revision), "dtype": dtype_name(self.dtype)}

    @torch.inference_mode()
    def _loglik(self, question_embeds, question_mask, ids: list[int]) -> torch.Tensor:
        n = question_embeds.shape[0]
        seq = torch.tensor([self._bos, *ids, self._sep], device=self.device).expand(n, -1)
        logits = self.model.text_decoder(
            input_ids=seq, attention_mask=torch.ones_like(seq),
            encoder_hidden_states=question_embeds, encoder_attention_mask=question_mask,
            return_dict=True,
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        return logp.gather(-1, seq[:, 1:, None]).squeeze(-1).sum(-1)

    @torch.inference_mode()
    def answer(self, images: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]:
        """Answers ``questions[i]`` about ``images[i]``, batched."""
        images, questions = _check_pairs(images, questions)
        out: list[VQAAnswer] = []
        for start in range(0, len(images), self.batch_size):
            # 1. encode image and question
            batch = self.processor(images=images[start:start + self.batch_size],
                                   text=questions[start:start + self.batch_size],
                                   padding=True, return_tensors="pt").to(self.device)
            pixels = batch["pixel_values"].to(self.dtype)
            image_embeds = self.model.vision_model(pixel_values=pixels).last_hidden_state
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            question_embeds = self.model.text_encoder(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                return_dict=True,
            ).last_hidden_state
            # 2. likelihood of each answer; p_yes = softmax over the two. Rows are grouped by
            # question length and the padding cut off, so no row ever sees padding: the result
            # of a pair does not depend on what else is in the batch (some transformers
            # versions let BLIP's decoder cross-attend to padded positions).
            lengths = batch["attention_mask"].sum(-1)
            ll = torch.empty(len(lengths), len(self._answers), device=self.device)
            for length in lengths.unique().tolist():
                rows = (lengths == length).nonzero().squeeze(-1)
                q_embeds = question_embeds[rows, :length]
                q_mask = torch.ones(q_embeds.shape[:-1], dtype=torch.long, device=self.device)
                for j, ids in enumerate(self._answers.values()):
                    ll[rows, j] = self._loglik(q_embeds, q_mask, ids).to(ll.dtype)
            p_yes = torch.softmax(ll, dim=-1)[:, 0]
            out += [_answer(p, "yes" if p >= 0.5 else "no") for p in p_yes.tolist()]
        return out


# ---------------------------------------------------------------------------
# Generic image-text-to-text models
# ---------------------------------------------------------------------------

# Prompt formats of models whose processor has no chat template.
_PLAIN_PROMPTS = {
    "paligemma": "answer en {question}",
    "instructblip": "Question: {question} Short answer:",
    "blip-2": "Question: {question} Answer:",
}
# Processors that want one list of images per text.
_NESTED_IMAGES = {"idefics2", "idefics3", "smolvlm", "mllama"}
_YES = ("yes", "Yes", "YES", " yes", " Yes", " YES")
_NO = ("no", "No", "NO", " no", " No", " NO")


class HFVLMVQA:
    """Any transformers image-text-to-text model as a yes/no VQA (next-token yes vs no).

    ``model`` is a hub id (``"Qwen/Qwen2.5-VL-7B-Instruct"``) or a local dir.
    ``prompt`` formats the question (``{question}`` placeholder); by default
    the processor's chat template is used (one user turn: image + question,
    then the assistant prefix), or the model family's plain format
    (PaliGemma: ``"answer en {question}"``).

    >>> vqa = HFVLMVQA("Qwen/Qwen2.5-VL-7B-Instruct")  # doctest: +SKIP
    >>> vqa.answer([image], ["Is the cat red?"])[0].p_yes  # doctest: +SKIP
    0.93
    """

    def __init__(self, model: str, *, device: Any = None, dtype: Any = None, batch_size: int = 8,
                 prompt: str | None = None, revision: str | None = None,
                 processor_kwargs: dict | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a hub id or a directory, got {model!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if prompt is not None and "{question}" not in prompt:
            raise ValueError(f"prompt must contain the placeholder '{{question}}', got {prompt!r}")
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        extra = {"revision": revision} if revision else {}
        self.processor = _from_pretrained(AutoProcessor, model, "processor",
                                          **extra, **(processor_kwargs or {}))
        self.model = _from_pretrained(AutoModelForImageTextToText, model, "image-text-to-text model",
                                      dtype=self.dtype, **extra).to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ModelLoadError(f"the processor of {model!r} has no tokenizer")
        # Left padding puts every prompt's last token at position -1.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_type = getattr(self.model.config, "model_type", "")
        self.use_chat = prompt is None and bool(getattr(self.processor, "chat_template", None))
        self.prompt = prompt or _PLAIN_PROMPTS.get(self.model_type, "{question}")
        self.batch_size = int(batch_size)
        self.name = f"hf-vlm:{model}"
        self.model_id = model
        self.revision = revision
        self._yes, self._no = self._token_ids(_YES), self._token_ids(_NO)
        cfg = self.model.config
        # Encoder-decoder language models (InstructBLIP-Flan-T5) read logits of the first decoder step.
        self._seq2seq = bool(getattr(cfg, "is_encoder_decoder", False)) or (
            getattr(cfg, "use_decoder_only_language_model", True) is False)

    def _token_ids(self, variants: Sequence[str]) -> list[int]:
        """Single-token ids of the answer's spellings (first token when none is single)."""
        ids = []
        for v in variants:
            toks = self.tokenizer(v, add_special_tokens=False).input_ids
            if len(toks) == 1 and toks[0] not in ids:
                ids.append(toks[0])
        if not ids:
            ids = [self.tokenizer(variants[0], add_special_tokens=False).input_ids[0]]
        return ids

    def config(self) -> dict:
        return {"component": "mmopt.scorers.vqa.HFVLMVQA", **weights_record(self.model_id, self.revision), "dtype": dtype_name(self.dtype),
                "prompt": None if self.use_chat else self.prompt, "yes": self._yes, "no": self._no}

    media_type = "image"  # what the chat template's user turn holds besides the question

    def _texts(self, questions: list[str]) -> list[str]:
        if not self.use_chat:
            return [self.prompt.format(question=q) for q in questions]
        texts = []
        for q in questions:
            messages = [{"role": "user", "content": [{"type": self.media_type}, {"type": "text", "text": q}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return texts

    def _check(self, items: Sequence[Any], questions: Sequence[str]) -> tuple[list, list[str]]:
        return _check_pairs(items, questions)

    def _encode(self, items: list, texts: list[str]) -> dict:
        ims_arg = [[im] for im in items] if self.model_type in _NESTED_IMAGES else items
        return self.processor(text=texts, images=ims_arg, padding=True, return_tensors="pt")

    @torch.inference_mode()
    def answer(self, images: Sequence[Any], questions: Sequence[str]) -> list[VQAAnswer]:
        """Answers ``questions[i]`` about ``images[i]``, batched."""
        images, questions = self._check(images, questions)
        out: list[VQAAnswer] = []
        for start in range(0, len(images), self.batch_size):
            # 1. build the prompts and encode
            texts = self._texts(questions[start:start + self.batch_size])
            batch = self._encode(images[start:start + self.batch_size], texts)
            batch = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in batch.items()}
            for key in ("pixel_values", "pixel_values_videos"):
                if key in batch and batch[key].is_floating_point():
                    batch[key] = batch[key].to(self.dtype)
            if self._seq2seq:
                start_id = self.model.config.text_config.decoder_start_token_id
                batch["decoder_input_ids"] = torch.full((len(texts), 1), start_id, device=self.device)
            # 2. next-token logits; pool the spellings of yes and of no
            logits = self.model(**batch, return_dict=True).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            yes = torch.logsumexp(logp[:, self._yes], dim=-1)
            no = torch.logsumexp(logp[:, self._no], dim=-1)
            p_yes = torch.sigmoid(yes - no)
            raw = self.tokenizer.batch_decode(logits.argmax(-1)[:, None])
            out += [_answer(p, r.strip()) for p, r in zip(p_yes.tolist(), raw)]
        return out


class HFVideoVLMVQA(HFVLMVQA):
    """A transformers video-capable VLM as a yes/no VQA over frame sets (``takes_frames``).

    ``answer(frame_sets, questions)`` pairs ``frame_sets[i]`` (a list of PIL frames, or one
    image as a one-frame clip) with ``questions[i]``; the chat template's user turn holds
    a video (Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision, SmolVLM2, ...) and the processor
    receives ``videos=``. ``frames`` caps the frames sent per clip (uniformly sampled;
    DSG samples before that). Everything else is :class:`HFVLMVQA`'s: next-token yes vs no.

    >>> vqa = HFVideoVLMVQA("Qwen/Qwen2.5-VL-3B-Instruct")                       # doctest: +SKIP
    >>> vqa.answer([frames], ["Is the dog running to the left?"])[0].p_yes          # doctest: +SKIP
    0.81
    """

    takes_frames = True
    media_type = "video"

    def __init__(self, model: str, *, frames: int = 8, **kwargs: Any):
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        super().__init__(model, **kwargs)
        if not self.use_chat:
            raise ModelLoadError(f"{model!r} has no chat template, so it cannot be asked about a video")
        self.frames = frames
        self.name = f"hf-video:{model}"

    def config(self) -> dict:
        return {**super().config(), "component": "mmopt.scorers.vqa.HFVideoVLMVQA", "frames": self.frames}

    def _check(self, items: Sequence[Any], questions: Sequence[str]) -> tuple[list, list[str]]:
        from mmopt.scorers.video import sample_indices

        items, questions = list(items), list(questions)
        if len(items) != len(questions):
            raise ValueError(f"frame_sets[i] pairs with questions[i]: got {len(items)} frame sets and "
                             f"{len(questions)} questions")
        clips = []
        for i, clip in enumerate(items):
            frames = list(clip) if isinstance(clip, (list, tuple)) else [clip]
            if not frames:
                raise ValueError(f"frame_sets[{i}] is empty; expected at least one frame")
            clips.append([check_image(frames[j]) for j in sample_indices(len(frames), self.frames)])
        _check_pairs([c[0] for c in clips], questions)  # the questions' checks
        return clips, questions

    def _encode(self, items: list, texts: list[str]) -> dict:
        return self.processor(text=texts, videos=items, padding=True, return_tensors="pt")


# ---------------------------------------------------------------------------
# Registry factories
# ---------------------------------------------------------------------------

def from_name(name: str, **kwargs: Any) -> Any:
    """A VQA backend from an alias, ``blip:<id or dir>`` or ``hf-vlm:<id or dir>``."""
    alias = vqa_aliases().get(name)
    if alias:
        name, kwargs = alias["name"], {**alias.get("kwargs", {}), **kwargs}
    prefix, _, rest = name.partition(":")
    if prefix == "blip" and rest:
        return BlipVQA(rest, **kwargs)
    if prefix == "hf-vlm" and rest:
        return HFVLMVQA(rest, **kwargs)
    raise ValueError(
        f"unknown VQA model {name!r}: expected an alias ({', '.join(sorted(vqa_aliases()))}), "
        f"'blip:<hub id or dir>' or 'hf-vlm:<hub id or dir>'"
    )


def hf_video_from_name(rest: str, **kwargs: Any) -> HFVideoVLMVQA:
    """Registry factory for ``vqa`` ``hf-video:<hub id, dir or alias>`` (an ``hf-vlm`` alias
    such as ``qwen2.5-vl-3b`` names the same model, asked about frame sets)."""
    alias = vqa_aliases().get(rest)
    if alias:
        rest, kwargs = alias["name"].partition(":")[2], {**alias.get("kwargs", {}), **kwargs}
    if not rest:
        raise ValueError("expected 'hf-video:<hub id or directory>', e.g. 'hf-video:Qwen/Qwen2.5-VL-3B-Instruct'")
    return HFVideoVLMVQA(rest, **kwargs)


def blip_from_name(rest: str, **kwargs: Any) -> BlipVQA | Any:
    """Registry factory for ``vqa`` ``blip:<hub id, dir or alias>``."""
    if rest in vqa_aliases():
        return from_name(rest, **kwargs)
    return from_name(f"blip:{rest}", **kwargs)


def hf_vlm_from_name(rest: str, **kwargs: Any) -> HFVLMVQA | Any:
    """Registry factory for ``vqa`` ``hf-vlm:<hub id, dir or alias>``."""
    if rest in vqa_aliases():
        return from_name(rest, **kwargs)
    return from_name(f"hf-vlm:{rest}", **kwargs)
