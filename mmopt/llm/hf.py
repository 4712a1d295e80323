"""Chat models run with transformers, by hub id or local directory.

``"llm:hf:HuggingFaceTB/SmolLM2-360M-Instruct"`` or ``"llm:hf:/models/my-chat-model"``
(an ``@revision`` suffix pins a hub revision: ``"hf:Qwen/Qwen2.5-0.5B-Instruct@main"``).
The tokenizer's chat template formats the conversation; sampling is seeded
through a forked torch RNG, so the same request with the same seed gives the
same text on CPU and the global RNG state is left untouched.

A hub id that cannot be reached (no network, ``HF_HUB_OFFLINE=1`` and not in
the local cache, unknown id) fails fast with ``ModelLoadError``.
"""
from __future__ import annotations

import os
import threading

from mmopt.cache import Cache
from mmopt.device import pick_device, pick_dtype
from mmopt.errors import ModelLoadError
from mmopt.fingerprint import dir_fingerprint, file_fingerprint
from mmopt.llm.base import ChatLLM, sample_seed

__all__ = ["TransformersBackend", "from_name", "load_hf"]


def _looks_local(model: str) -> bool:
    """A path, not a hub id ("org/name" never starts with "/", ".", or "~")."""
    return model.startswith(("/", "./", "../", "~")) or os.path.isabs(model)


class TransformersBackend:
    """Runs a causal LM with ``AutoModelForCausalLM`` and its tokenizer's chat template.

    ``model`` is a hub id or a local directory; ``gguf_file`` names a GGUF file
    inside it (transformers dequantises it); ``device``/``dtype`` default to
    cuda (bf16) > mps (fp16) > cpu (fp32).
    """

    name = "transformers"

    def __init__(self, model: str, *, revision: str | None = None, gguf_file: str | None = None,
                 device: str | None = None, dtype: str | None = None):
        # 1. check inputs
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"a model hub id or directory is required, e.g. 'hf:HuggingFaceTB/SmolLM2-360M-Instruct'; got {model!r}")
        model = os.path.expanduser(model.strip())
        self._lock = threading.Lock()

        # 2. fail fast when the weights cannot be had
        local = os.path.isdir(model)
        if not local and _looks_local(model):
            raise ModelLoadError(f"model directory not found: {model!r}")
        load_kw: dict = {}
        if revision:
            load_kw["revision"] = revision
        if gguf_file:
            load_kw["gguf_file"] = gguf_file
            if local and not os.path.isfile(os.path.join(model, gguf_file)):
                raise ModelLoadError(f"GGUF file {gguf_file!r} not found in {model!r}")

        # A hub id is checked first (cache, HF_HUB_OFFLINE, reachability, existence)
        # by the project's one hub gate, so an unreachable hub fails in seconds.
        local_only = local
        if not local:
            from mmopt.hub import check_hub_repo

            check = check_hub_repo(model, what="chat model", revision=revision,
                                   probe_file=gguf_file or ("config.json", "tokenizer_config.json"))
            local_only = check.local_files_only
            if check.revision:
                load_kw["revision"] = check.revision

        # The cache identity names the weights: a hub commit, or a local content fingerprint.
        if local:
            ident = dir_fingerprint(model) if not gguf_file else file_fingerprint(os.path.join(model, gguf_file))
        else:
            ident = load_kw.get("revision") or "main"
        self.model = model + (f"/{gguf_file}" if gguf_file else "") + f"@{ident}"
        # identity: the weights by content when local, by hub id + revision otherwise (and the dtype)
        self._weights = {"model": "local" if local else model, "revision": ident, "gguf_file": gguf_file}

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_only, **load_kw)
            lm = AutoModelForCausalLM.from_pretrained(model, local_files_only=local_only,
                                                      dtype=pick_dtype(pick_device(device), dtype), **load_kw)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"transformers could not load the chat model {model!r}: {e}") from e

        # 3. a chat template is required: a base model cannot follow the meta-prompt
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{model!r} has no chat template in its tokenizer; use an instruction-tuned (chat) model"
            )
        self.device = pick_device(device)
        self.tokenizer = tokenizer
        self.lm = lm.to(self.device).eval()
        eos = lm.generation_config.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        self._eos = eos_ids
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]

    def config(self) -> dict:
        return {**self._weights, "dtype": str(self.lm.dtype).replace("torch.", "")}

    def forward(self, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                seed: int | None) -> list[str]:
        import torch
        from transformers import GenerationConfig

        # 1. format with the model's own chat template
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_tokens, do_sample=sampling, eos_token_id=self._eos, pad_token_id=self._pad,
            **({"temperature": float(temperature), "top_k": 0, "top_p": 1.0} if sampling else {}),
        )
        # 2. one completion per seed, so completion i does not depend on n;
        #    the forked RNG leaves the caller's global torch RNG as it was.
        outputs = []
        devices = [torch.cuda.current_device()] if self.device.startswith("cuda") else []
        with self._lock, torch.inference_mode():
            for i in range(n):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(sample_seed(seed, i))
                    out = self.lm.generate(**enc, generation_config=config)
                new_tokens = out[0, enc["input_ids"].shape[1]:]
                outputs.append(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        return outputs


def load_hf(model: str, *, cache: Cache | None = None, max_retries: int = 0, **backend_kw) -> ChatLLM:
    """A ``ChatLLM`` over a transformers chat model (hub id or local directory).

    >>> llm = load_hf("HuggingFaceTB/SmolLM2-360M-Instruct")  # doctest: +SKIP
    """
    return ChatLLM(TransformersBackend(model, **backend_kw), cache=cache, max_retries=max_retries)


def from_name(rest: str, **kw) -> ChatLLM:
    """Registry factory for ``"hf:<hub id or dir>[@revision]"``."""
    if not isinstance(rest, str) or not rest.strip():
        raise ValueError(f"hf needs a hub id or directory after the colon, e.g. 'hf:HuggingFaceTB/SmolLM2-360M-Instruct'; got {rest!r}")
    model, sep, revision = rest.strip().rpartition("@")
    if not sep or not model or "/" in revision:
        model, revision = rest.strip(), ""
    if revision:
        kw.setdefault("revision", revision)
    return load_hf(model, **kw)
