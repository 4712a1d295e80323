"""Performance switches on the CPU with the tiny models: the tiny decoder, static-shape
padding, the remembered chunk size, device-side uint8 conversion, fast PNGs, the
final full-decoder re-score, and the pipelined loop giving the same results."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

INTENT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def taesd_dir(tiny_dir_root):
    from mmopt.pipelines.fast import build_tiny_taesd

    return build_tiny_taesd(tiny_dir_root / "taesd", seed=0)


@pytest.fixture(scope="module")
def tiny_gen(tiny_sd_dir, taesd_dir):
    """The tiny SD with the tiny decoder; shares the loaded pipeline with the full one."""
    from mmopt.registry import create

    return create("generator", f"diffusers:{tiny_sd_dir}", decoder="tiny", tiny_decoder=str(taesd_dir), max_batch=4)


def pixels(gens):
    return [np.asarray(g.media) for g in gens]


# --------------------------------------------------------------------------- generator switches


def plain_pipeline_images(gen, pipeline_class, prompts, seeds):
    """What diffusers' own pipeline class renders with ``gen``'s modules and preset."""
    pipe = pipeline_class(**gen.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    p = gen.preset
    return pipe(prompts, num_inference_steps=p["steps"], guidance_scale=p["guidance"], height=p["height"],
                width=p["width"], generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def test_generator_decode_matches_the_plain_pipeline(tiny_generator):
    # the generator decodes SD latents itself (uint8 on the device): same pixels as diffusers'
    # own decode and postprocess, called on the same modules
    from diffusers import StableDiffusionPipeline

    ref = plain_pipeline_images(tiny_generator, StableDiffusionPipeline, ["a red cube", "a dog"], [0, 1])
    ours = tiny_generator.generate(["a red cube", "a dog"], [0, 1])
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(pixels(ours), ref))


def test_sdxl_pipeline_through_the_same_generator(tiny_sdxl_dir, taesd_dir):
    # the SDXL code path (two text encoders, pooled-text + size conditioning): the generator's
    # own decode gives exactly the pipeline's images, batch-independent, pixels kept; the tiny
    # decoder reads SDXL latents too
    from diffusers import StableDiffusionXLPipeline

    from mmopt.registry import create

    gen = create("generator", f"diffusers:{tiny_sdxl_dir}", max_batch=4)
    assert gen.pipeline_class == "StableDiffusionXLPipeline" and gen.max_prompt_tokens == 77
    ref = plain_pipeline_images(gen, StableDiffusionXLPipeline, ["a red cube", "a dog"], [0, 1])
    ours = gen.generate(["a red cube", "a dog"], [0, 1])
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(pixels(ours), ref))
    assert all(g.pixels is not None for g in ours)
    # alone, an image is the one it was in a batch (to a rounding step: CPU kernels differ by batch size)
    alone = pixels(gen.generate(["a dog"], [1]))[0].astype(int)
    assert np.abs(alone - pixels(ours)[1]).max() <= 2
    tiny = create("generator", f"diffusers:{tiny_sdxl_dir}", max_batch=4, decoder="tiny", tiny_decoder=str(taesd_dir))
    [t] = tiny.generate(["a red cube"], [0])
    assert t.media.size == (64, 64) and t.meta["decoder"] == "tiny"
    assert not np.array_equal(np.asarray(t.media), pixels(ours)[0])


def test_generations_carry_their_pixels_for_scorers_on_the_device(tiny_gen, tiny_generator):
    # both decoders leave a uint8 (3, H, W) copy of each image where it was decoded; it is
    # exactly the PIL image, so a scorer may read either
    for gen in (tiny_gen, tiny_generator):
        out = gen.generate(["a red cube", "a dog", "a cat"], [0, 1, 2])
        for g in out:
            assert g.pixels is not None and g.pixels.dtype == torch.uint8 and g.pixels.shape == (3, 64, 64)
            assert np.array_equal(g.pixels.permute(1, 2, 0).cpu().numpy(), np.asarray(g.media))


def test_tiny_decoder_renders_and_keys_differently(tiny_gen, tiny_generator):
    tiny = tiny_gen.generate(["a red cube"], [3])[0]
    full = tiny_generator.generate(["a red cube"], [3])[0]
    assert tiny.media.size == full.media.size == (64, 64)
    assert tiny.meta["decoder"] == "tiny" and "decoder" not in full.meta
    assert not np.array_equal(np.asarray(tiny.media), np.asarray(full.media))
    assert tiny_gen.config() != tiny_generator.config()
    # the full-quality sibling shares the loaded pipeline and renders what the full generator does
    twin = tiny_gen.full_quality()
    assert twin.pipe is tiny_gen.pipe and twin.fast["decoder"] == "full"
    assert twin.config() == tiny_generator.config()
    assert np.array_equal(np.asarray(twin.generate(["a red cube"], [3])[0].media), np.asarray(full.media))


def test_static_batch_padding_gives_identical_images(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    prompts, seeds = ["a cat", "a dog", "a red cube"], [0, 1, 2]
    plain = DiffusersGenerator(str(tiny_sd_dir), max_batch=2, static_batch=False)
    padded = DiffusersGenerator(str(tiny_sd_dir), max_batch=2, static_batch=True)
    calls = []
    real = padded.pipe.__class__.__call__

    def spy(self, *a, **k):
        calls.append(len(k["prompt"]))
        return real(self, *a, **k)

    padded.pipe.__class__.__call__ = spy
    try:
        got = padded.generate(prompts, seeds)
    finally:
        padded.pipe.__class__.__call__ = real
    assert calls == [2, 2]  # the last chunk of 1 was padded to the fixed batch size
    assert [g.prompt for g in got] == prompts and len(got) == 3
    want = plain.generate(prompts, seeds)
    for a, b in zip(pixels(got), pixels(want)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # same image up to batch-size rounding


def test_chunk_size_shrinks_on_oom_and_is_remembered(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    gen = DiffusersGenerator(str(tiny_sd_dir), max_batch=4)
    real_pipe = gen.pipe

    class SmallGPU:  # a pipeline that runs out of memory above 2 images per call
        def __getattr__(self, name):
            return getattr(real_pipe, name)

        def __call__(self, **kw):
            if len(kw["prompt"]) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_pipe(**kw)

    gen.pipe = SmallGPU()
    with pytest.warns(UserWarning, match="out of memory"):
        out = gen.generate(["a cat"] * 4, list(range(4)))
    assert len(out) == 4 and gen._batch == 2
    assert [len(c) for c in gen.generate_chunks(["a dog"] * 3, list(range(3)))] == [2, 1]
    assert gen._batch == 2  # remembered: no new out-of-memory probe


def test_fast_option_validation(tiny_sd_dir):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator
    from mmopt.pipelines.fast import resolve_fast_options

    with pytest.raises(ValueError, match="compile"):
        DiffusersGenerator(str(tiny_sd_dir), compile="fastest")
    with pytest.raises(ValueError, match="decoder"):
        DiffusersGenerator(str(tiny_sd_dir), decoder="medium")
    with pytest.raises(ValueError, match="max_batch"):
        DiffusersGenerator(str(tiny_sd_dir), max_batch=0)
    with pytest.raises(ValueError, match="tiny"):
        resolve_fast_options({}, {"decoder": "tiny"}, "cpu", "FluxPipelineX")
    cpu = resolve_fast_options({}, {}, "cpu", "StableDiffusionPipeline")
    assert cpu["compile"] is None and not cpu["channels_last"] and cpu["tiny_decoder"] == "madebyollin/taesd"
    gpu = resolve_fast_options({"compile": "max-autotune"}, {}, "cuda", "StableDiffusionPipeline")
    assert gpu["static_batch"] and gpu["channels_last"] and gpu["fuse_qkv"]
    assert DiffusersGenerator(str(tiny_sd_dir), max_batch="auto").max_batch == 4  # cpu


def test_tiny_decoder_hub_id_fails_fast_offline(tiny_sd_dir, monkeypatch):
    from mmopt.errors import ModelLoadError
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = DiffusersGenerator(str(tiny_sd_dir), decoder="tiny", tiny_decoder="nobody-here/no-such-taesd")
    with pytest.raises(ModelLoadError):
        gen.generate(["a cat"], [0])


# --------------------------------------------------------------------------- store and loop


def test_fast_png_is_lossless_for_every_mode():
    from mmopt.store import encode_png

    rng = np.random.default_rng(0)
    for mode, shape in (("RGB", (9, 7, 3)), ("L", (9, 7)), ("RGBA", (9, 7, 4))):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        back = Image.open(io.BytesIO(encode_png(Image.fromarray(a, mode))))
        assert back.mode == mode and np.array_equal(np.asarray(back), a)
    p = Image.new("P", (4, 4), 3)  # other modes go through PIL
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(p))).convert("RGB")),
                          np.asarray(p.convert("RGB")))


class Counting:
    """Counts the images a generator renders (the loop must not re-render cached ones)."""

    def __init__(self, gen):
        self.gen, self.images = gen, 0
        self.name, self.prompt_style, self.max_prompt_tokens = gen.name, gen.prompt_style, gen.max_prompt_tokens

    def config(self):
        return self.gen.config()

    def count_tokens(self, p):
        return self.gen.count_tokens(p)

    def generate_chunks(self, prompts, seeds):
        for chunk in self.gen.generate_chunks(prompts, seeds):
            self.images += len(chunk)
            yield chunk

    def generate(self, prompts, seeds):
        return [g for c in self.generate_chunks(prompts, seeds) for g in c]

    def full_quality(self):
        return Counting(self.gen.full_quality())


def run_loop(gen, clip, store, **kw):
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.proposers.fixed import FixedProposer

    sched = [[f"{INTENT}, bright", f"{INTENT}, flat", f"{INTENT}, vivid"]]
    opt = Optimizer(gen, [clip], FixedProposer(sched), budget=Budget(iterations=2), candidates=3, seeds=2,
                    store=store, **kw)
    return opt, opt.run(INTENT)


def test_pipelined_loop_final_rescore_and_resume(tiny_gen, tiny_clip, tmp_path):
    gen = Counting(tiny_gen)
    opt, res = run_loop(gen, tiny_clip, tmp_path / "a", final_rescore=True)
    assert len(res.trials) == 4 and gen.images == 8
    # the best prompt and the original re-rendered with the full decoder, objective recomputed
    assert set(res.final) == {"best", "original"}
    assert res.final["best"].prompt == res.best.prompt and res.final["original"].prompt == INTENT
    assert res.final["best"].scores != res.best.scores or res.best.prompt == INTENT
    assert "final" in res.summary()
    # every trial was committed with its media
    stored = opt.store.load_trials(res.run_id)
    assert [t.prompt for t in stored] == [t.prompt for t in res.trials]
    assert len(list(opt.store.media_dir(res.run_id).glob("*.png"))) == 8
    # same run again on the same store: nothing is rendered (cache), same results
    gen2 = Counting(tiny_gen)
    _, again = run_loop(gen2, tiny_clip, tmp_path / "a", final_rescore=True)
    assert gen2.images == 0
    assert [t.objective for t in again.trials] == [t.objective for t in res.trials]
    # the overlap thread renders the same images and scores (CPU: bit-identical), fresh store
    _, over = run_loop(Counting(tiny_gen), tiny_clip, tmp_path / "b", final_rescore=True, overlap=True)
    assert [(t.prompt, t.objective) for t in over.trials] == [(t.prompt, t.objective) for t in res.trials]
    assert over.final["best"].objective == res.final["best"].objective


def test_generator_error_in_the_overlap_thread_reaches_the_caller(tiny_gen, tiny_clip, tmp_path):
    class Broken(Counting):
        def generate_chunks(self, prompts, seeds):
            yield from self.gen.generate_chunks(prompts[:1], seeds[:1])
            raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError, match="renderer died"):
        run_loop(Broken(tiny_gen), tiny_clip, tmp_path / "c", overlap=True)


def test_memory_planner_keeps_cpu_pipelines_resident(tiny_generator):
    from mmopt.pipelines.fast import module_bytes, plan_memory

    assert plan_memory(tiny_generator.pipe, "cpu", "auto") == "resident"
    assert module_bytes(tiny_generator.pipe.unet) > 0 and module_bytes("not a module") == 0


@pytest.mark.slow
def test_compiled_generator_and_clip_tower_match_eager(tiny_sd_dir, taesd_dir, tiny_clip_dir, tmp_path):
    # torch.compile (inductor, on the CPU here) of the UNet, the tiny decoder and the CLIP image
    # tower gives the eager results; the tower sees one padded batch shape.
    # Slow (compiles for a minute or two): python -m pytest -m slow tests/test_performance.py -k compiled
    import shutil

    from mmopt.registry import create
    from mmopt.scorers.clip import CLIPScoreScorer

    eager = create("generator", f"diffusers:{tiny_sd_dir}", decoder="tiny", tiny_decoder=str(taesd_dir), max_batch=4)
    compiled = create("generator", f"diffusers:{tiny_sd_dir}", decoder="tiny", tiny_decoder=str(taesd_dir),
                      max_batch=4, compile="default")
    assert compiled.fast["static_batch"] and compiled._tiny_decoder() is not eager._tiny_decoder()
    prompts, seeds = ["a red cube", "a dog", "a cat"], [0, 1, 2]
    a, b = eager.generate(prompts, seeds), compiled.generate(prompts, seeds)
    for x, y in zip(a, b):
        assert np.abs(np.asarray(x.media, dtype=int) - np.asarray(y.media, dtype=int)).max() <= 2

    own = tmp_path / "clip"  # a model of its own: compiling the shared tiny tower would touch other tests
    shutil.copytree(tiny_clip_dir, own)
    plain = CLIPScoreScorer(str(tiny_clip_dir), device="cpu", batch_size=4)
    fast = CLIPScoreScorer(str(own), device="cpu", batch_size=4, compile="default")
    assert fast.model.visual._mmopt_compile == "default" and plain.model is not fast.model
    gens = a + b  # 6 images: one full batch of 4 and one padded batch of 2
    for x, y in zip(plain.score(gens, INTENT), fast.score(gens, INTENT)):
        assert x.value == pytest.approx(y.value, abs=1e-4)
    with pytest.raises(ValueError, match="compile must be"):
        CLIPScoreScorer(str(own), device="cpu", compile="fastest")


@pytest.mark.gpu
def test_pixels_stay_on_the_gpu_and_score_like_the_pil_path(tiny_sd_dir, taesd_dir, tiny_clip_dir):
    # on a GPU the decoded uint8 images stay there and CLIPScore preprocesses them in place
    # (preprocess="auto" -> "tensor"); scores match the host-side PIL transform.
    # Run on a machine with CUDA: python -m pytest -m gpu tests/test_performance.py
    from mmopt.registry import create
    from mmopt.scorers.clip import CLIPScoreScorer

    gen = create("generator", f"diffusers:{tiny_sd_dir}", device="cuda", decoder="tiny",
                 tiny_decoder=str(taesd_dir), max_batch=4, reuse=False)
    gens = gen.generate(["a red cube", "a dog", "a cat"], [0, 1, 2])
    assert all(g.pixels.is_cuda for g in gens)
    on_device = CLIPScoreScorer(str(tiny_clip_dir))
    assert on_device.device.startswith("cuda") and on_device.preprocess_mode == "tensor"
    host = CLIPScoreScorer(str(tiny_clip_dir), preprocess="pil")
    for a, b in zip(on_device.score(gens, INTENT), host.score(gens, INTENT)):
        assert a.details["cosine"] == pytest.approx(b.details["cosine"], abs=0.02)


def test_the_loop_scores_device_pixels_and_lets_them_go(tiny_generator, tiny_clip_dir, tmp_path):
    # a scorer in tensor mode reads each new image's pixels; once scored, nothing the loop keeps
    # (trials, cache and store writes) holds the device copies any more
    import gc
    import weakref

    from mmopt.scorers.clip import CLIPScoreScorer

    class Watching(Counting):
        refs: list = []

        def generate_chunks(self, prompts, seeds):
            for chunk in super().generate_chunks(prompts, seeds):
                self.refs += [weakref.ref(g.pixels) for g in chunk]
                yield chunk

    class Recording(CLIPScoreScorer):
        with_pixels: list = []
        earlier_alive: list = []  # per call: device copies of earlier chunks still held

        def score(self, generations, intent):
            self.with_pixels += [g.pixels is not None for g in generations]
            gc.collect()
            mine = {id(g.pixels) for g in generations}
            self.earlier_alive.append(sum(1 for r in Watching.refs if r() is not None and id(r()) not in mine))
            return super().score(generations, intent)

    clip = Recording(str(tiny_clip_dir), device="cpu", preprocess="tensor")
    gen = Watching(tiny_generator)  # batches of 4: the 6 images of iteration 1 come in two chunks
    _, result = run_loop(gen, clip, tmp_path)
    assert len(Watching.refs) == gen.images == len(result.trials) * 2 == 8
    assert Recording.with_pixels == [True] * 8
    assert Recording.earlier_alive == [0, 0, 0]
    gc.collect()
    assert all(ref() is None for ref in Watching.refs)
