"""transformers chat backend: a tiny local chat model with the real SmolLM2 tokenizer, hub failures, GGUF."""
import os
import shutil
import socket
import time

import pytest

from mmopt.errors import ModelLoadError
from mmopt.llm import load_llm
from mmopt.llm.gguf import embedded_smollm2_path
from mmopt.llm.hf import from_name

MSG = [{"role": "user", "content": "Rewrite the prompt 'a red cat' with more detail."}]


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory):
    """A 2-layer Llama with random weights and SmolLM2's real tokenizer + chat template (from its GGUF)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, filename = os.path.split(embedded_smollm2_path())
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-chat")
    tok.save_pretrained(out)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_local_dir_chat_is_seeded_and_leaves_global_rng(tiny_chat_dir):
    import torch

    llm = load_llm(f"llm:hf:{tiny_chat_dir}")
    assert load_llm(f"hf:{tiny_chat_dir}") is llm  # one load per process
    state = torch.random.get_rng_state()
    a = llm.backend.forward(MSG, n=2, temperature=1.0, max_tokens=8, seed=3)
    b = llm.backend.forward(MSG, n=2, temperature=1.0, max_tokens=8, seed=3)
    c = llm.backend.forward(MSG, n=1, temperature=1.0, max_tokens=8, seed=4)
    assert a == b and len(a) == 2 and a[0] != a[1] and c[0] != a[0]
    assert all(isinstance(t, str) and t for t in a)
    assert torch.equal(state, torch.random.get_rng_state())
    greedy = llm.chat(MSG, temperature=0, max_tokens=6)
    assert greedy == llm.backend.forward(MSG, n=1, temperature=0, max_tokens=6, seed=99)
    # the chat template was applied: the prompt ends with the assistant header
    text = llm.backend.tokenizer.apply_chat_template(MSG, add_generation_prompt=True, tokenize=False)
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_unknown_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="nosuchorg/nosuchmodel.*HF_HUB_OFFLINE"):
        from_name("nosuchorg/nosuchmodel")
    assert time.time() - t0 < 10


def test_unreachable_hub_fails_fast(monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on stands in for the hub
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="nosuchorg/nosuchmodel.*unreachable"):
        from_name("nosuchorg/nosuchmodel@main")
    assert time.time() - t0 < 10


def test_bad_directories(tmp_path, tiny_chat_dir):
    with pytest.raises(ModelLoadError, match="not found"):
        from_name(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="could not load"):
        from_name(str(empty))
    with pytest.raises(ValueError, match="hub id"):
        from_name("  ")
    # a model without a chat template cannot follow the meta-prompt
    base = tmp_path / "base"
    shutil.copytree(tiny_chat_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    cfg = base / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="chat template"):
        from_name(str(base))


@pytest.mark.slow
def test_embedded_smollm2_through_transformers_gguf():
    llm = load_llm("smollm2:transformers")
    a = llm.backend.forward(MSG, n=1, temperature=0.8, max_tokens=24, seed=5)
    assert a == llm.backend.forward(MSG, n=1, temperature=0.8, max_tokens=24, seed=5)
    assert a[0].strip()
