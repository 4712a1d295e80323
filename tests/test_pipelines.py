"""DiffusersGenerator and the offline tiny components, on a tiny real pipeline."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

from mmopt.errors import ModelLoadError
from mmopt.types import Generator

PROMPTS = ["a red cube on a table", "a blue ball", "a cat wearing a hat"]
SEEDS = [11, 22, 33]


def pixels(generation) -> np.ndarray:
    return np.asarray(generation.media, dtype=np.int16)


# ----------------------------------------------------------------------------- tokenizer


TEXTS = [
    "a cat",
    "A photo of a RED car, parked on the street!!",
    "café über naïve 東京 🐱",
    "don't   stop   me   now",
    "(word:1.2) <lora:style_v2:0.8> hello-world, 8k, masterpiece",
    "an astronaut riding a horse on mars, digital art " * 12,  # over the 77-token window
]


def test_built_tokenizer_matches_open_clip(clip_tok_dir):
    import open_clip
    from transformers import CLIPTokenizer

    ours = CLIPTokenizer.from_pretrained(clip_tok_dir)
    reference = open_clip.get_tokenizer("ViT-B-32")  # open_clip's SimpleTokenizer, 77 tokens
    for text in TEXTS:
        ids = ours(text, padding="max_length", truncation=True, max_length=77).input_ids
        ref = reference([text])[0].tolist()
        n = ref.index(49407) + 1  # open_clip pads with 0, ours with <|endoftext|>
        assert ids[:n] == ref[:n], text
        assert len(ids) == 77
    assert ours.vocab_size == 49408
    assert ours("a cat").input_ids == [49406, 320, 2368, 49407]


# ----------------------------------------------------------------------------- tiny builds


def test_tiny_sd_build_is_seeded_small_and_cached(tiny_sd_dir, tmp_path):
    from safetensors.torch import load_file

    from mmopt.pipelines.tiny import build_tiny_sd, dir_size_bytes

    assert (tiny_sd_dir / "model_index.json").is_file()
    assert (tiny_sd_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert dir_size_bytes(tiny_sd_dir) < 25e6
    # same seed -> bit-identical weights; a rebuild into the same folder is skipped
    again = build_tiny_sd(tmp_path / "sd", seed=0)
    rel = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tiny_sd_dir / rel), load_file(again / rel)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mtime = (again / rel).stat().st_mtime_ns
    assert build_tiny_sd(tmp_path / "sd", seed=0) == again
    assert (again / rel).stat().st_mtime_ns == mtime
    # a different seed gives different weights
    other = build_tiny_sd(tmp_path / "sd", seed=1)
    c = load_file(other / rel)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tiny_build_refuses_foreign_folder(tmp_path):
    from mmopt.pipelines.tiny import build_tiny_clip

    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        build_tiny_clip(tmp_path)
    assert (tmp_path / "keep.txt").exists()
    with pytest.raises(ValueError, match="seed"):
        build_tiny_clip(tmp_path / "x", seed=-1)


# ----------------------------------------------------------------------------- loading


def test_local_dir_loads_through_registry(tiny_generator, tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator
    from mmopt.registry import create

    gen = tiny_generator
    assert isinstance(gen, DiffusersGenerator) and isinstance(gen, Generator)
    assert gen.name == f"diffusers:{tiny_sd_dir}"
    assert gen.pipeline_class == "StableDiffusionPipeline"
    assert gen.prompt_style == "tags" and gen.max_prompt_tokens == 77
    assert gen.preset["steps"] == 2 and gen.preset["height"] == 64  # from mmopt_preset.json
    assert gen.device == "cpu" and gen.dtype == torch.float32
    # loaded once per process: the registry memoises, the module caches pipelines
    assert create("generator", f"diffusers:{tiny_sd_dir}") is gen
    assert DiffusersGenerator(str(tiny_sd_dir), steps=1).pipe is gen.pipe


def test_presets_resolve_by_hub_id_and_family():
    from mmopt.pipelines.diffusers_t2i import resolve_preset

    turbo = resolve_preset("stabilityai/sd-turbo", None)
    assert (turbo["steps"], turbo["guidance"], turbo["prompt_style"], turbo["max_prompt_tokens"]) == (1, 0.0, "tags", 77)
    flux = resolve_preset("black-forest-labs/FLUX.1-schnell", "FluxPipeline")
    assert (flux["prompt_style"], flux["max_prompt_tokens"], flux["tokenizer"]) == ("sentences", 256, "tokenizer_2")
    assert resolve_preset("stabilityai/stable-diffusion-3.5-medium", None)["tokenizer"] == "tokenizer_3"
    assert resolve_preset("someone/pixart-finetune", "PixArtSigmaPipeline")["max_prompt_tokens"] == 300
    assert resolve_preset("someone/unknown", "SomeNewPipeline")["prompt_style"] == "tags"
    assert resolve_preset("stabilityai/sd-turbo", None, overrides={"steps": 4, "guidance": None})["steps"] == 4


# ----------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def batch(tiny_generator):
    start = time.perf_counter()
    gens = tiny_generator.generate(PROMPTS, SEEDS)
    return gens, time.perf_counter() - start


def test_generate_meta_and_order(batch, tiny_generator):
    gens, _ = batch
    assert [(g.prompt, g.seed) for g in gens] == list(zip(PROMPTS, SEEDS))
    for g in gens:
        assert g.media.size == (64, 64) and g.media.mode == "RGB"
        m = g.meta
        assert m["model"] == tiny_generator.model_id and m["revision"].startswith("local-")
        assert (m["steps"], m["guidance"], m["height"], m["width"]) == (2, 3.0, 64, 64)
        assert m["latency_s"] > 0 and m["batch_size"] == 3 and m["truncated_tokens"] == 0
    # different prompts or seeds give different images
    assert np.abs(pixels(gens[0]) - pixels(gens[1])).mean() > 5


def test_generate_is_deterministic(batch, tiny_generator):
    gens, _ = batch
    again = tiny_generator.generate(PROMPTS, SEEDS)
    for a, b in zip(gens, again):
        assert np.array_equal(pixels(a), pixels(b))


def test_image_depends_only_on_its_prompt_and_seed(batch, tiny_generator):
    gens, _ = batch
    # the same pairs in another order, in a batch of the same size: bit-identical
    reordered = tiny_generator.generate(PROMPTS[::-1], SEEDS[::-1])[::-1]
    for a, b in zip(gens, reordered):
        assert np.array_equal(pixels(a), pixels(b))
    # alone: the same noise and conditioning; batched CPU kernels may round the
    # last float bit differently, which can move a pixel by one level at most
    alone = tiny_generator.generate([PROMPTS[2]], [SEEDS[2]])[0]
    assert np.abs(pixels(alone) - pixels(gens[2])).max() <= 1
    # while another seed changes the image completely
    other = tiny_generator.generate([PROMPTS[2]], [SEEDS[2] + 1])[0]
    assert np.abs(pixels(other) - pixels(gens[2])).mean() > 5


def test_generate_chunks_by_max_batch(tiny_sd_dir, batch):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    gen = DiffusersGenerator(str(tiny_sd_dir), max_batch=2)
    gens = gen.generate(PROMPTS, SEEDS)
    assert [g.meta["batch_size"] for g in gens] == [2, 2, 1]
    for a, b in zip(gens, batch[0]):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_cuda_oom_halves_the_batch_and_remembers(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    gen = DiffusersGenerator(str(tiny_sd_dir), max_batch=4, steps=1, guidance=0.0)  # cheap renders
    real = gen.pipe
    calls = []

    def small_memory_pipe(**kwargs):  # the real pipeline behind a 1-image memory limit
        calls.append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kwargs)

    gen.pipe = small_memory_pipe
    with pytest.warns(UserWarning, match="out of memory"):
        gens = gen.generate(PROMPTS[:2], SEEDS[:2])
    assert calls == [2, 1, 1] and len(gens) == 2 and gen._batch == 1
    gen.generate(PROMPTS[:2], SEEDS[:2])
    assert calls[3:] == [1, 1]  # the size that worked is kept


def test_token_budget_count_truncate_and_warn(tiny_generator):
    gen = tiny_generator
    assert gen.count_tokens("a cat") == 4  # <start> a cat <end>
    long = "a majestic red fox, " * 30
    assert gen.count_tokens(long) > 77
    cut = gen.truncate(long)
    assert long.startswith(cut) and gen.count_tokens(cut) <= 77 and len(cut) > 100
    assert gen.truncate("a cat") == "a cat"
    assert gen.count_tokens(gen.truncate("x" * 2000)) <= 77  # one giant word is cut inside
    with pytest.warns(UserWarning, match="over the 77-token window"):
        g = gen.generate([long], [0])[0]
    assert g.meta["truncated_tokens"] == gen.count_tokens(long) - 77
    assert g.prompt == long


def test_negative_prompt_is_used(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    plain = DiffusersGenerator(str(tiny_sd_dir), steps=1)
    negative = DiffusersGenerator(str(tiny_sd_dir), steps=1, negative_prompt="blurry, dark")
    a = plain.generate(["a red cube"], [5])[0]
    b = negative.generate(["a red cube"], [5])[0]
    assert b.meta["negative_prompt"] == "blurry, dark" and a.meta["negative_prompt"] is None
    assert np.abs(pixels(a) - pixels(b)).mean() > 0.5


def test_config_covers_every_argument(tiny_sd_dir, tiny_generator):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    key = tiny_generator.config()
    for field in ("model", "revision", "steps", "guidance", "height", "width", "negative_prompt",
                  "dtype", "scheduler", "call_kwargs"):
        assert field in key
    assert DiffusersGenerator(str(tiny_sd_dir)).config() == key
    assert DiffusersGenerator(str(tiny_sd_dir), steps=3).config() != key
    assert DiffusersGenerator(str(tiny_sd_dir), negative_prompt="blurry").config() != key


# ----------------------------------------------------------------------------- bad input


def test_bad_prompts_and_seeds(tiny_generator):
    gen = tiny_generator
    with pytest.raises(ValueError, match="empty"):
        gen.generate(["a cat", "  "], [0, 1])
    with pytest.raises(ValueError, match="parallel"):
        gen.generate(["a cat", "a dog"], [0])
    with pytest.raises(TypeError, match="sequence of prompts"):
        gen.generate("a cat", [0])
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(["a cat"], [-1])
    with pytest.raises(TypeError):
        gen.generate([None], [0])
    assert gen.generate([], []) == []


def test_not_a_pipeline_directory(tmp_path):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        DiffusersGenerator(str(tmp_path))
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        DiffusersGenerator(str(f))


def test_unknown_hub_id_fails_fast_offline():
    from mmopt.registry import create

    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        create("generator", "diffusers:no-such-org/no-such-model")
    assert time.perf_counter() - start < 5
    assert "no-such-org/no-such-model" in str(err.value) and "no network" in str(err.value)
    with pytest.raises(ModelLoadError, match="neither an existing local directory"):
        create("generator", "diffusers:not a//valid id")


def test_unreachable_hub_fails_fast(monkeypatch):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable"):
        DiffusersGenerator("stabilityai/sd-turbo", timeout=2)
    assert time.perf_counter() - start < 10


def test_bad_constructor_arguments(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator, from_name

    with pytest.raises(ValueError, match="max_batch"):
        DiffusersGenerator(str(tiny_sd_dir), max_batch=0)
    with pytest.raises(ValueError, match="prompt_style"):
        DiffusersGenerator(str(tiny_sd_dir), prompt_style="poems")
    with pytest.raises(ValueError, match="dtype"):
        DiffusersGenerator(str(tiny_sd_dir), dtype="int3")
    with pytest.raises(ValueError, match="no model"):
        from_name("")



# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_generation_is_deterministic_and_batch_independent(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    gen = DiffusersGenerator(str(tiny_sd_dir))  # automatic choice: cuda, bf16 (fp16 without bf16)
    assert gen.device == "cuda" and gen.dtype in (torch.bfloat16, torch.float16)
    first = gen.generate(PROMPTS, SEEDS)
    again = gen.generate(PROMPTS, SEEDS)
    for a, b in zip(first, again):
        assert np.array_equal(pixels(a), pixels(b))
    alone = gen.generate([PROMPTS[1]], [SEEDS[1]])[0]
    other = gen.generate([PROMPTS[1]], [SEEDS[1] + 1])[0]
    batched_vs_alone = np.abs(pixels(alone) - pixels(first[1])).mean()
    assert batched_vs_alone < 0.2 * np.abs(pixels(other) - pixels(first[1])).mean()
    assert first[0].meta["latency_s"] > 0


def test_full_size_configs_are_the_published_architectures():
    # the benchmark configs build SD-Turbo (SD 2.1) and SDXL-Turbo exactly: parameter counts of
    # the released checkpoints, counted on the meta device (no memory, no download)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mmopt.pipelines.tiny import load_config

    def params(module):
        return sum(p.numel() for p in module.parameters())

    expected = {"sd_turbo": (865_910_724, [340_387_840]), "sdxl_turbo": (2_567_463_684, [123_060_480, 694_659_840])}
    for name, (unet_params, text_params) in expected.items():
        cfg = load_config(name)
        with torch.device("meta"):
            assert params(UNet2DConditionModel(**cfg["unet"])) == unet_params
            assert params(AutoencoderKL(**cfg["vae"])) == 83_653_863
            texts = [CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))]
            if "text_encoder_2" in cfg:
                texts.append(CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])))
            assert [params(t) for t in texts] == text_params
