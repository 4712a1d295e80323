"""LLM clients for mmopt: layered backends, the rewrite parser, and ``load_llm``.

Names (registry kind ``llm``; the ``llm:`` prefix is optional here):
  - ``smollm2``                       embedded SmolLM2-135M-Instruct (offline default;
                                      ``smollm2:llamacpp`` / ``smollm2:transformers`` force the engine)
  - ``gguf:/path/model.gguf``         any local GGUF chat model
  - ``hf:<hub id or dir>[@revision]`` transformers chat models
  - ``openai:<model>[@<base URL>]``   any OpenAI-compatible endpoint; key from
                                      ``$OPENAI_API_KEY`` (``api_key_env=`` to change)

>>> llm = load_llm("llm:smollm2")                                         # doctest: +SKIP
>>> llm.chat([{"role": "user", "content": "a cat"}], n=2, seed=0)        # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

from mmopt.llm.base import Backend, ChatLLM, TransientLLMError, check_messages
from mmopt.llm.parsing import parse_prompts

__all__ = ["Backend", "ChatLLM", "TransientLLMError", "check_messages", "parse_prompts",
           "load_llm", "DEFAULT_LLM"]

DEFAULT_LLM = "smollm2"


def load_llm(name: str = DEFAULT_LLM, **kwargs: Any):
    """Build (or reuse: one load per process) the LLM registered under ``name``.

    Accepts ``"llm:gguf:/m.gguf"`` or the bare ``"gguf:/m.gguf"``; keyword
    arguments go to the factory (e.g. ``cache=``, ``engine=``, ``api_key_env=``).
    """
    from mmopt import registry

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an LLM name is required, e.g. 'smollm2' or 'openai:gpt-4o-mini'; got {name!r}")
    name = name.strip()
    if name.startswith("llm:"):
        name = name[len("llm:"):]
    return registry.create("llm", name, **kwargs)
