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
        self._cache = None            # the last prompt's cache (prefix reuse)
        self._cached_tokens: list[int] = []
        self.last_usage: dict = {}

    def config(self) -> dict:
        return {**self._weights, "dtype": str(self.lm.dtype).replace("torch.", "")}

    # prompt tokens per prefill batch: the grid that makes prefix reuse exact (as in the llama.cpp engine)
    CHUNK = 64

    def _prefill(self, ids):
        """The model's cache for ``ids`` on the CHUNK grid, reusing whole chunks of the last prompt.

        Returns (cache, reused tokens). The caller decodes from a copy of the cache, so the cache
        of the prompt survives for the next request; a cold and a warm prefill give the same numbers.
        """
        import torch
        from transformers import DynamicCache

        tokens = ids[0].tolist()
        common = 0
        for a, b in zip(self._cached_tokens, tokens):
            if a != b:
                break
            common += 1
        reuse = (common // self.CHUNK) * self.CHUNK
        if self._cache is None or reuse == 0:
            cache, reuse = DynamicCache(), 0
        else:
            cache = self._cache
            drop = cache.get_seq_length() - reuse
            if drop > 0:
                cache.crop(-drop)  # keep the first `reuse` positions
        for start in range(reuse, len(tokens), self.CHUNK):
            chunk = ids[:, start:start + self.CHUNK]
            pos = torch.arange(start, start + chunk.shape[1], device=ids.device)[None]
            self.lm(input_ids=chunk, past_key_values=cache, position_ids=pos, cache_position=pos[0], use_cache=True)
        self._cache, self._cached_tokens = cache, tokens
        return cache, reuse

    def forward(self, messages: list[dict], *, n: int, temperature: float, max_tokens: int,
                seed: int | None, stop: list[str] | None = None) -> list[str]:
        import copy
        import time

        import torch
        from transformers import GenerationConfig

        # 1. format with the model's own chat template
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_tokens, do_sample=sampling, eos_token_id=self._eos, pad_token_id=self._pad,
            **({"temperature": float(temperature), "top_k": 0, "top_p": 1.0} if sampling else {}),
            **({"stop_strings": list(stop)} if stop else {}),
        )
        outputs = []
        usage = {"prompt_tokens": ids.shape[1], "reused_tokens": 0, "completion_tokens": 0,
                 "prefill_s": 0.0, "decode_s": 0.0}
        devices = [torch.cuda.current_device()] if self.device.startswith("cuda") else []
        with self._lock, torch.inference_mode():
            # 2. the prompt once (all but its last token, on the chunk grid); each completion
            #    decodes from a copy of that cache
            t0 = time.perf_counter()
            cache, usage["reused_tokens"] = self._prefill(ids[:, :-1])
            usage["prefill_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(n):
                # one seed per completion, so completion i does not depend on n; the forked RNG
                # leaves the caller's global torch RNG as it was
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(sample_seed(seed, i))
                    out = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           past_key_values=copy.deepcopy(cache), generation_config=config,
                                           tokenizer=self.tokenizer if stop else None)
                new_tokens = out[0, ids.shape[1]:]
                usage["completion_tokens"] += int(new_tokens.shape[0])
                text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
                cut = min((text.find(x) for x in stop or () if x in text), default=-1)
                outputs.append(text[:cut] if cut >= 0 else text)
            usage["decode_s"] = time.perf_counter() - t0
        self.last_usage = usage
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
