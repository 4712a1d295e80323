"""CLIPScoreScorer on a tiny real open_clip model with the real CLIP tokenizer.

The tiny model has random weights, so "a matching caption scores higher" is not
expected; these tests check the math against a direct open_clip computation,
the caching, batching and the error paths.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from mmopt.component import identity
import torch
from PIL import Image

from mmopt.errors import ModelLoadError
from mmopt.types import Generation, Scorer


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)) for _ in range(3)]
    return noise + [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (32, 80), (20, 40, 200))]


def direct_cosines(clip_dir, images, text) -> np.ndarray:
    """Cosine(image, text) computed straight with open_clip, independently of the scorer."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images]))
        txt = model.encode_text(tokenizer([text]))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img @ txt.T)[:, 0].numpy()


def test_loads_through_registry(tiny_clip, tiny_clip_dir):
    from mmopt.registry import create
    from mmopt.scorers.clip import CLIPScoreScorer

    assert isinstance(tiny_clip, CLIPScoreScorer) and isinstance(tiny_clip, Scorer)
    assert tiny_clip.name == f"clip:{tiny_clip_dir}"
    assert tiny_clip.value_range == (0.0, 2.5)
    assert tiny_clip.embed_dim == 32
    assert create("scorer", f"clip:{tiny_clip_dir}") is tiny_clip
    assert CLIPScoreScorer(str(tiny_clip_dir), batch_size=2).model is tiny_clip.model  # loaded once


def test_clipscore_matches_direct_computation(tiny_clip, tiny_clip_dir, images):
    intent = "a red cube on a wooden table"
    gens = [Generation(candidate=f"candidate {i}", seed=i, media=im) for i, im in enumerate(images)]
    scores = tiny_clip.score(gens, intent)
    expected = direct_cosines(tiny_clip_dir, images, intent)
    assert len(scores) == len(images)
    for s, cos in zip(scores, expected):
        assert s.scorer == tiny_clip.name
        assert s.details["cosine"] == pytest.approx(float(cos), abs=1e-5)
        assert s.value == pytest.approx(2.5 * max(float(cos), 0.0), abs=1e-5)
        assert 0.0 <= s.value <= 2.5
    assert any(s.value > 0 for s in scores)  # the tiny model is oriented to positive cosines
    # the clamp of Hessel et al.: negative cosines score 0
    assert tiny_clip.clip_score_from_cosine(torch.tensor([-0.4, 0.0, 0.3])).tolist() == pytest.approx([0.0, 0.0, 0.75])
    assert tiny_clip.clip_score_from_cosine(-0.2) == 0.0


def test_scores_against_the_intent_not_the_prompt(tiny_clip, images):
    a = Generation(candidate="a dog", seed=0, media=images[0])
    b = Generation(candidate="a completely different prompt", seed=0, media=images[0])
    sa, sb = tiny_clip.score([a, b], "a cat")
    assert sa.value == sb.value
    assert tiny_clip.score([a], "a cat")[0].value != tiny_clip.score([a], "a lighthouse at dusk")[0].value


def test_similarity_matrix_and_encoders(tiny_clip, images):
    texts = ["a cat", "a red cube", "a blue sky"]
    sim = tiny_clip.text_image_similarity(images, texts)
    assert sim.shape == (len(images), len(texts))
    img, txt = tiny_clip.encode_images(images), tiny_clip.encode_texts(texts)
    assert img.shape == (len(images), 32) and txt.shape == (3, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
    assert torch.allclose(sim, img @ txt.T)
    assert bool((sim.abs() <= 1 + 1e-6).all())
    assert tiny_clip.encode_texts([]).shape == (0, 32)


def test_batch_size_does_not_change_results(tiny_clip, tiny_clip_dir, images):
    from mmopt.scorers.clip import CLIPScoreScorer

    small = CLIPScoreScorer(str(tiny_clip_dir), batch_size=2)
    assert torch.allclose(small.encode_images(images), tiny_clip.encode_images(images), atol=1e-5)
    texts = ["one", "two", "three", "four", "five"]
    assert torch.allclose(small.encode_texts(texts), tiny_clip.encode_texts(texts), atol=1e-5)


def test_intent_embedding_is_cached(tiny_clip_dir, images):
    from mmopt.scorers.clip import CLIPScoreScorer

    scorer = CLIPScoreScorer(str(tiny_clip_dir))
    gens = [Generation(candidate="p", seed=0, media=im) for im in images[:2]]
    first = scorer.score(gens, "a quiet harbour at dawn")
    assert scorer.stats["texts_encoded"] == 1
    second = scorer.score(gens, "a quiet harbour at dawn")
    assert scorer.stats["texts_encoded"] == 1 and scorer.stats["text_cache_hits"] == 1
    assert [s.value for s in first] == [s.value for s in second]
    scorer.score(gens, "another intent")
    assert scorer.stats["texts_encoded"] == 2
    scorer.encode_texts(["x", "x", "y"])  # duplicates encoded once
    assert scorer.stats["texts_encoded"] == 4


def test_video_frames_average_cosine(tiny_clip, images):
    video = Generation(candidate="p", seed=0, media=images[:3])
    score = tiny_clip.score([video], "a cat")[0]
    per_frame = tiny_clip.text_image_similarity(images[:3], ["a cat"])[:, 0]
    assert score.details["cosine"] == pytest.approx(float(per_frame.mean()), abs=1e-6)


def test_non_rgb_images_are_converted(tiny_clip):
    rgb = Image.new("RGB", (40, 40), (128, 128, 128))
    gray, rgba = rgb.convert("L"), rgb.convert("RGBA")
    emb = tiny_clip.encode_images([rgb, gray, rgba, np.asarray(rgb)])
    assert torch.allclose(emb[0], emb[1], atol=1e-5) and torch.allclose(emb[0], emb[2], atol=1e-5)
    assert torch.allclose(emb[0], emb[3], atol=1e-5)


def test_bad_input(tiny_clip, images):
    g = Generation(candidate="p", seed=0, media=images[0])
    with pytest.raises(ValueError, match="empty"):
        tiny_clip.encode_images([Image.new("RGB", (0, 0))])
    with pytest.raises(ValueError, match="intent"):
        tiny_clip.score([g], "   ")
    with pytest.raises(TypeError, match="PIL"):
        tiny_clip.score([Generation(candidate="p", seed=0, media="not an image")], "a cat")
    with pytest.raises(TypeError, match="sequence"):
        tiny_clip.encode_texts("a cat")
    with pytest.raises(ValueError, match="frame"):
        tiny_clip.score([Generation(candidate="p", seed=0, media=[])], "a cat")
    assert tiny_clip.score([], "a cat") == []


def test_model_name_errors(tmp_path, tiny_clip_dir):
    from mmopt.scorers.clip import CLIPScoreScorer, parse_model_name

    assert parse_model_name("ViT-B-32/openai") == ("ViT-B-32", "openai", "tag")
    assert parse_model_name("ViT-B/32/openai") == ("ViT-B-32", "openai", "tag")
    assert parse_model_name(str(tiny_clip_dir))[2] == "local"
    with pytest.raises(ValueError, match="pretrained tag"):
        CLIPScoreScorer("ViT-B-32")
    with pytest.raises(ModelLoadError, match="not an open_clip architecture"):
        CLIPScoreScorer("NoSuchNet-9/foo")
    with pytest.raises(ModelLoadError, match="no pretrained tag"):
        CLIPScoreScorer("ViT-B-32/no_such_tag")
    with pytest.raises(ModelLoadError, match="not an open_clip model directory"):
        CLIPScoreScorer(str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(ModelLoadError, match="no weights"):
        CLIPScoreScorer(str(tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        CLIPScoreScorer(str(tiny_clip_dir), batch_size=0)


def test_hub_models_fail_fast_offline():
    from mmopt.registry import create

    for name in ("clip:ViT-B-32/openai", "clip:hf-hub:no-such-org/no-such-clip"):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError, match="no network"):
            create("scorer", name)
        assert time.perf_counter() - start < 5


@pytest.mark.gpu
def test_cuda_scores_match_cpu(tiny_clip_dir, images):
    from mmopt.scorers.clip import CLIPScoreScorer

    gpu = CLIPScoreScorer(str(tiny_clip_dir))
    cpu = CLIPScoreScorer(str(tiny_clip_dir), device="cpu")
    assert gpu.device == "cuda"
    gens = [Generation(candidate="p", seed=0, media=im) for im in images]
    a, b = gpu.score(gens, "a red cube"), cpu.score(gens, "a red cube")
    for x, y in zip(a, b):
        assert x.details["cosine"] == pytest.approx(y.details["cosine"], abs=0.02)


# --------------------------------------------------------------------------- preprocessing on the device


def test_tensor_preprocessing_agrees_with_pil_on_a_trained_clip():
    # mmopt's own trained CLIP on ShapesWorld renders of 256 px (resized to its 64 px input):
    # the tensor path may differ from open_clip's PIL transform only by resampling rounding,
    # far below the gaps between candidates, so the best of each group is the same image
    import random

    from mmopt.registry import create
    from mmopt.shapesworld import grammar
    from mmopt.shapesworld.render import render_caption

    rng = random.Random(0)
    captions = [grammar.sample_caption(rng) for _ in range(24)]
    gens = [Generation(c, i, render_caption(c, seed=i, size=256)) for i, c in enumerate(captions)]
    pil = create("scorer", "offline:clip", device="cpu", preprocess="pil")
    tensor = create("scorer", "offline:clip", device="cpu", preprocess="tensor")
    assert (pil.preprocess_mode, tensor.preprocess_mode) == ("pil", "tensor")
    a = [s.value for s in pil.score(gens, captions[0])]
    b = [s.value for s in tensor.score(gens, captions[0])]
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.01
    assert np.std(a) > 0.05  # the scores do vary, so agreement means something
    for start in range(0, 24, 4):
        assert np.argmax(a[start:start + 4]) == np.argmax(b[start:start + 4])


def test_tensor_preprocessing_handles_mixed_sizes(tiny_clip_dir, images):
    # non-square images of different sizes: resize of the shortest side + centre crop, per size
    from mmopt.scorers.clip import CLIPScoreScorer

    tensor = CLIPScoreScorer(str(tiny_clip_dir), device="cpu", preprocess="tensor", batch_size=4)
    expected = direct_cosines(tiny_clip_dir, images, "a red cube")
    got = tensor.encode_images(images) @ tensor.encode_texts(["a red cube"])[0]
    assert np.allclose(got.numpy(), expected, atol=0.02)


def test_tensor_mode_reads_generation_pixels(tiny_clip_dir):
    # a Generation whose pixels (black) differ from its media (white) reveals which one is read
    from mmopt.scorers.clip import CLIPScoreScorer

    white, black = Image.new("RGB", (48, 48), (255, 255, 255)), Image.new("RGB", (48, 48), (0, 0, 0))
    black_pixels = torch.zeros(3, 48, 48, dtype=torch.uint8)
    both = Generation("p", 0, white, pixels=black_pixels)
    pil = CLIPScoreScorer(str(tiny_clip_dir), device="cpu", preprocess="pil")
    tensor = CLIPScoreScorer(str(tiny_clip_dir), device="cpu", preprocess="tensor")
    intent = "a red cube"
    white_cos = pil.score([Generation("p", 0, white)], intent)[0].details["cosine"]
    black_cos = pil.score([Generation("p", 0, black)], intent)[0].details["cosine"]
    assert abs(white_cos - black_cos) > 1e-3
    assert pil.score([both], intent)[0].details["cosine"] == pytest.approx(white_cos, abs=1e-6)
    assert tensor.score([both], intent)[0].details["cosine"] == pytest.approx(black_cos, abs=1e-4)
    # the field never takes part in equality (it is a copy of media, not data of its own)
    assert both == Generation("p", 0, white)


def test_preprocess_option_validation_and_config(tiny_clip_dir):
    from mmopt.scorers.clip import CLIPScoreScorer

    with pytest.raises(ValueError, match="preprocess must be one of"):
        CLIPScoreScorer(str(tiny_clip_dir), device="cpu", preprocess="gpu")
    auto = CLIPScoreScorer(str(tiny_clip_dir), device="cpu")
    tensor = CLIPScoreScorer(str(tiny_clip_dir), device="cpu", preprocess="tensor")
    assert auto.preprocess_mode == "pil"  # the reference transform on the CPU
    assert auto.config()["preprocess"] == "pil" and tensor.config()["preprocess"] == "tensor"
    assert identity(tensor) != identity(auto)  # the two modes round differently: separate cache entries
    with pytest.raises(TypeError, match=r"uint8 of shape \(3, H, W\)"):
        tensor.encode_images([torch.zeros(3, 8, 8)])
    with pytest.raises(TypeError, match=r"uint8 of shape \(3, H, W\)"):
        auto.encode_images([torch.zeros(8, 8, 3, dtype=torch.uint8)])
    # a uint8 tensor is the same image as the array it was made from, in either mode
    arr = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(arr).permute(2, 0, 1)
    for scorer in (auto, tensor):
        assert torch.equal(scorer.encode_images([arr]), scorer.encode_images([as_tensor]))


def test_transform_without_a_tensor_form_is_refused(tiny_clip_dir):
    from torchvision import transforms as T

    from mmopt.scorers.clip import tensor_preprocess

    assert tensor_preprocess(T.Compose([T.Resize(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])) is not None
    assert tensor_preprocess(T.Compose([T.Grayscale(3), T.ToTensor()])) is None
    assert tensor_preprocess(lambda im: im) is None
