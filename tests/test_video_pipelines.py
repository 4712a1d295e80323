"""The video generator on tiny real pipelines (AnimateDiff over a tiny SD; CogVideoX, LTX-Video and
Wan with a constructed T5 tokenizer), the full-size architectures' parameter counts, and exports.

The T5-family tokenizer here is a REAL ``T5TokenizerFast`` built from a vocabulary mmopt constructs
(T5's SentencePiece vocabulary cannot be downloaded on this machine), so its ids are not T5's.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mmopt.types import Candidate, Generator


def frames_array(generation) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in generation.media])


# ----------------------------------------------------------------------------- tokenizer


def test_constructed_t5_tokenizer_is_real_and_loads_back(tmp_path):
    from transformers import AutoTokenizer, T5TokenizerFast

    from mmopt.pipelines.tiny_video import t5_tokenizer_dir

    path = t5_tokenizer_dir(tmp_path / "t5", vocab_size=8192, model_max_length=32)
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(tok, T5TokenizerFast)
    ids = tok("A red fox jumps over the lazy dog").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.unk_token_id == 2
    pieces = tok.convert_ids_to_tokens(ids)
    assert 2 not in ids and {"▁red", "▁fox", "▁the", "▁dog"} <= set(pieces)  # common words are one piece
    assert tok.decode(ids, skip_special_tokens=True) == "A red fox jumps over the lazy dog"
    assert T5TokenizerFast.from_pretrained(path)("a cat").input_ids == tok("a cat").input_ids
    padded = tok("a cat", padding="max_length", max_length=8).input_ids
    assert len(padded) == 8 and padded[-1] == 0


# ----------------------------------------------------------------------------- AnimateDiff


def test_tiny_animatediff_loads_through_the_registry(tiny_video_generator, tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator
    from mmopt.registry import create

    gen = tiny_video_generator
    assert isinstance(gen, DiffusersVideoGenerator) and isinstance(gen, Generator)
    assert gen.name == f"diffusers-video:{tiny_animatediff_dir}" and gen.media_kind == "video"
    assert gen.pipeline_class == "AnimateDiffPipeline" and gen.max_prompt_tokens == 77
    assert (gen.num_frames, gen.fps, gen.height) == (8, 8, 32)  # from mmopt_preset.json
    assert create("generator", f"diffusers-video:{tiny_animatediff_dir}") is gen


@pytest.fixture(scope="module")
def clips(tiny_video_generator):
    return tiny_video_generator.generate(["a red ball bouncing", "a cat walking left"], [3, 4])


def test_clips_are_frame_lists_with_fps_and_meta(clips):
    for g in clips:
        assert g.is_video and len(g.media) == 8 and g.media[0].size == (32, 32)
        assert g.meta["fps"] == 8 and g.meta["num_frames"] == 8 and g.meta["media_kind"] == "video"
        assert g.meta["pipeline"] == "AnimateDiffPipeline" and g.meta["batch_size"] == 2
    assert [g.seed for g in clips] == [3, 4]


def test_a_clip_depends_only_on_its_prompt_and_seed(clips, tiny_video_generator):
    alone = tiny_video_generator.generate(["a cat walking left"], [4])[0]
    other = tiny_video_generator.generate(["a cat walking left"], [5])[0]
    diff = np.abs(frames_array(alone) - frames_array(clips[1]))
    assert diff.max() <= 2  # batched or alone: the same clip (float rounding only)
    assert np.abs(frames_array(other) - frames_array(alone)).mean() > 10 * diff.mean() + 1


def test_animatediff_over_an_sd_base_with_a_motion_adapter(tiny_sd_dir, tiny_animatediff_dir, clips):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    # the hub-style use: an SD 1.5 base plus a MotionAdapter (here the tiny ones); the tiny
    # AnimateDiff pipeline is exactly those weights, so the clips agree
    gen = DiffusersVideoGenerator(str(tiny_sd_dir), motion_adapter=str(tiny_animatediff_dir / "motion_adapter"),
                                  num_frames=8, height=32, width=32, fps=8, negative_prompt=None, guidance=3.0,
                                  steps=2)
    assert gen.pipeline_class == "AnimateDiffPipeline" and gen.config()["motion_adapter"]["model"] == "local"
    g = gen.generate(["a red ball bouncing"], [3])[0]
    assert g.meta["motion_adapter"] == "local" and len(g.media) == 8
    assert np.abs(frames_array(g) - frames_array(clips[0])).max() <= 2


def test_image_and_video_pipelines_are_not_mixed_up(tiny_sd_dir, tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    with pytest.raises(ValueError, match="text-to-image pipeline .*'diffusers:"):
        DiffusersVideoGenerator(str(tiny_sd_dir))
    with pytest.raises(ValueError, match="text-to-video pipeline .*'diffusers-video:"):
        DiffusersGenerator(str(tiny_animatediff_dir))
    with pytest.raises(ValueError, match="Stable Diffusion 1.5 base"):
        DiffusersVideoGenerator(str(tiny_animatediff_dir), motion_adapter=str(tiny_animatediff_dir / "motion_adapter"))


def test_unsupported_frame_counts_snap_or_fail(tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator, nearest_frames, nearest_multiple

    assert (nearest_frames(48, 4), nearest_frames(50, 4), nearest_frames(100, 8, 97), nearest_frames(40, 1, 16)) \
        == (49, 49, 97, 16)
    assert (nearest_multiple(500, 16), nearest_multiple(4, 32)) == (496, 32)
    with pytest.warns(UserWarning, match="at most 16"):
        gen = DiffusersVideoGenerator(str(tiny_animatediff_dir), num_frames=40)
    assert gen.num_frames == 16 and gen.adjusted["num_frames"] == {"asked": 40, "used": 16}
    with pytest.raises(ValueError, match="nearest supported value is 16"):
        DiffusersVideoGenerator(str(tiny_animatediff_dir), num_frames=40, on_unsupported="error")
    with pytest.warns(UserWarning, match="multiple of 2"):
        assert DiffusersVideoGenerator(str(tiny_animatediff_dir), height=33).height == 32


def test_out_of_memory_falls_back_to_tiling_then_smaller_batches(tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    gen = DiffusersVideoGenerator(str(tiny_animatediff_dir), steps=1, guidance=0.0, num_frames=4)
    real, calls = gen.pipe, []

    def small_memory(**kwargs):  # the real pipeline behind a memory limit: 1 clip, tiled decoding
        calls.append((len(kwargs["prompt"]), bool(real.vae.use_tiling)))
        if len(kwargs["prompt"]) > 1 or not real.vae.use_tiling:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(**kwargs)

    small_memory.vae = real.vae  # the generator switches tiling on the pipeline's VAE
    gen.pipe = small_memory
    try:
        with pytest.warns(UserWarning, match="out of memory"):
            gens = gen.generate(["a red ball", "a blue ball"], [0, 1])
    finally:
        real.vae.disable_tiling()
        real.vae.disable_slicing()
    assert calls == [(2, False), (2, True), (1, True), (1, True)]
    assert gens[1].meta["memory_fallbacks"] == ["vae_tiling", "batch 1"] and len(gens[1].media) == 4


def test_multi_shot_candidates_join_their_shots(tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    gen = DiffusersVideoGenerator(str(tiny_animatediff_dir), steps=1, guidance=0.0)
    shots = {"shots": [{"prompt": "a red ball rolls in", "duration": 0.5},
                       {"prompt": "the red ball stops", "duration": 0.25}]}
    cand = Candidate("a red ball rolls in and stops", payload=shots)
    g = gen.generate([cand, "a plain clip"], [0, 0])
    assert len(g[0].media) == 4 + 2 and [s["frames"] for s in g[0].meta["shots"]] == [4, 2]
    assert len(g[1].media) == 8 and "shots" not in g[1].meta
    with pytest.raises(ValueError, match="shot 0 must be"):
        gen.generate([Candidate("x", payload={"shots": [{"prompt": "", "duration": 1}]})], [0])


def test_identity_follows_the_settings(tiny_animatediff_dir, tiny_video_generator):
    from mmopt.component import identity
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator

    cfg = tiny_video_generator.config()
    assert cfg["model"] == "local" and cfg["revision"].startswith("local-") and cfg["num_frames"] == 8
    same = DiffusersVideoGenerator(str(tiny_animatediff_dir))
    assert identity(same) == identity(tiny_video_generator)
    assert identity(DiffusersVideoGenerator(str(tiny_animatediff_dir), num_frames=4)) != identity(same)
    assert identity(DiffusersVideoGenerator(str(tiny_animatediff_dir), fps=4)) != identity(same)


def test_bad_arguments_get_one_clear_line(tiny_animatediff_dir):
    from mmopt.pipelines.diffusers_video import DiffusersVideoGenerator
    from mmopt.registry import create

    for kwargs, match in (({"num_frames": 0}, "num_frames must be a positive int"),
                          ({"vae_tiling": "yes"}, "vae_tiling must be"),
                          ({"offload": "disk"}, "offload must be one of"),
                          ({"on_unsupported": "clip"}, "on_unsupported must be one of")):
        with pytest.raises((ValueError, TypeError), match=match):
            DiffusersVideoGenerator(str(tiny_animatediff_dir), **kwargs)
    with pytest.raises(ValueError, match="got no model"):
        create("generator", "diffusers-video:")


# ----------------------------------------------------------------------------- T5-family pipelines


@pytest.mark.parametrize("config,frames,size", [("tiny_cogvideox", 9, 64), ("tiny_ltx", 9, 32), ("tiny_wan", 9, 64)])
def test_t5_family_pipelines_render_from_local_dirs(tmp_path_factory, config, frames, size):
    from mmopt.pipelines.tiny_video import build_video_pipeline
    from mmopt.registry import create

    path = build_video_pipeline(config, tmp_path_factory.mktemp(config) / "pipe")
    gen = create("generator", f"diffusers-video:{path}")
    assert gen.prompt_style == "sentences" and gen.count_tokens("a red fox") <= 5
    long = "a red fox running through deep snow under a pale winter sky " * 8
    with pytest.warns(UserWarning, match="tokens, over the"):
        g = gen.generate([long], [0])[0]
    assert g.meta["truncated_tokens"] > 0 and len(g.media) == frames and g.media[0].size == (size, size)
    assert gen.truncate(long) != long and gen.count_tokens(gen.truncate(long)) <= gen.max_prompt_tokens
    if config == "tiny_cogvideox":  # 4k+1 frames: 8 is snapped to 9
        with pytest.warns(UserWarning, match="4k\\+1"):
            assert create("generator", f"diffusers-video:{path}", num_frames=8).num_frames == 9


def test_full_size_video_configs_are_the_published_architectures():
    # parameter counts on the meta device (no memory, no download): CogVideoX-2b's 1.69 B expert
    # transformer, LTX-Video's 1.92 B, Wan2.1-1.3B's 1.42 B, T5-v1.1-XXL's 4.76 B encoder, UMT5-XXL's 5.68 B
    from mmopt.pipelines.tiny_video import count_parameters

    assert count_parameters("cogvideox_2b") == {"transformer": 1_693_783_872, "vae": 215_583_907,
                                                "text_encoder": 4_762_310_656}
    assert count_parameters("ltx_video") == {"transformer": 1_923_385_472, "vae": 419_193_649,
                                             "text_encoder": 4_762_310_656}
    assert count_parameters("wan21_t2v_1_3b") == {"transformer": 1_418_996_800, "vae": 126_892_531,
                                                  "text_encoder": 5_680_910_336}


# ----------------------------------------------------------------------------- export


def test_gif_and_mp4_exports_play_back(tmp_path, clips):
    import imageio.v2 as imageio
    from PIL import Image

    from mmopt.apps.video import export_clip

    paths = export_clip(clips[0].media, tmp_path / "clip", fps=8)
    gif = Image.open(paths["gif"])
    assert gif.n_frames == 8 and abs(gif.info["duration"] - 125) <= 10  # GIF stores centiseconds
    reader = imageio.get_reader(paths["mp4"])
    assert reader.count_frames() == 8 and reader.get_meta_data()["fps"] == 8
    with pytest.raises(ValueError, match="fps must be"):
        export_clip(clips[0].media, tmp_path / "x", fps=0)
