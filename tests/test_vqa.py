"""VQA backends and VQAScore on a tiny BLIP-VQA with the real BERT WordPiece tokenizer."""
from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _vqa_tiny import build_tiny_blip_vqa  # noqa: E402  (also guards a broken torchvision)
from PIL import Image  # noqa: E402

from mmopt import registry  # noqa: E402
from mmopt.errors import ModelLoadError  # noqa: E402
from mmopt.scorers.vqa import BlipVQA, resolve_vqa_name, resolve_vqa_spec, vqa_aliases  # noqa: E402
from mmopt.scorers.vqascore import VQASCORE_QUESTION, VQAScorer  # noqa: E402
from mmopt.types import Generation, VQAAnswer  # noqa: E402

QUESTIONS = ["is there a cat?", "is the sky blue at noon today?", "are there two dogs?", "is it red?"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return build_tiny_blip_vqa(tmp_path_factory.mktemp("tiny-blip-vqa"))


@pytest.fixture(scope="module")
def blip(blip_dir):
    # Loaded through the registry, exactly like a hub id.
    return registry.create("vqa", f"blip:{blip_dir}")


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255)),
            Image.effect_noise((48, 48), 60).convert("RGB"), Image.new("L", (20, 24), 90)]


def test_blip_answers_batch(blip, images):
    answers = blip.answer(images, QUESTIONS)
    assert isinstance(blip, BlipVQA) and len(answers) == 4
    for a in answers:
        assert isinstance(a, VQAAnswer)
        assert 0.0 <= a.p_yes <= 1.0
        assert a.answer == ("yes" if a.p_yes >= 0.5 else "no")
    # different questions/images give different probabilities (the model is really run)
    assert len({round(a.p_yes, 7) for a in answers}) > 1


def test_blip_deterministic_and_batch_independent(blip, blip_dir, images):
    batched = [a.p_yes for a in blip.answer(images, QUESTIONS)]
    again = [a.p_yes for a in blip.answer(images, QUESTIONS)]
    alone = [blip.answer([im], [q])[0].p_yes for im, q in zip(images, QUESTIONS)]
    reloaded = BlipVQA(str(blip_dir), batch_size=3)  # other batch split, fresh load
    other = [a.p_yes for a in reloaded.answer(images, QUESTIONS)]
    assert batched == again
    assert alone == pytest.approx(batched, abs=1e-5)
    assert other == pytest.approx(batched, abs=1e-5)


def test_blip_bad_input(blip, images):
    with pytest.raises(ValueError, match="2 images and 1 questions"):
        blip.answer(images[:2], QUESTIONS[:1])
    with pytest.raises(ValueError, match="empty"):
        blip.answer([Image.new("RGB", (0, 10))], ["is there a cat?"])
    with pytest.raises(TypeError, match="PIL"):
        blip.answer(["not an image"], ["is there a cat?"])
    with pytest.raises(ValueError, match="non-empty"):
        blip.answer(images[:1], ["  "])
    # RGBA is converted, not refused
    assert 0.0 <= blip.answer([Image.new("RGBA", (16, 16))], ["is there a cat?"])[0].p_yes <= 1.0


def test_unreachable_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="blip-vqa-base"):
        BlipVQA("Salesforce/blip-vqa-base")
    assert time.monotonic() - start < 15


def test_aliases_are_data():
    aliases = vqa_aliases()
    assert resolve_vqa_name("qwen2.5-vl-7b") == "hf-vlm:Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_vqa_name("blip-vqa") == "blip:Salesforce/blip-vqa-base"
    assert resolve_vqa_name("blip:/some/dir") == "blip:/some/dir"
    assert resolve_vqa_spec("unknown")[1] == {}
    for alias, spec in aliases.items():
        assert spec["name"].split(":", 1)[0] in registry.names("vqa"), alias


def test_vqascore_is_p_yes_of_the_paper_question(blip_dir, blip, images):
    scorer = registry.create("scorer", f"vqascore:blip:{blip_dir}")
    assert isinstance(scorer, VQAScorer) and scorer.value_range == (0.0, 1.0)
    gens = [Generation(candidate="x", seed=i, media=im) for i, im in enumerate(images[:3])]
    intent = "a red cat on a mat"
    scores = scorer.score(gens, intent)
    question = VQASCORE_QUESTION.format(text=intent)
    assert question == "Does this figure show 'a red cat on a mat'? Please answer yes or no."
    expected = [a.p_yes for a in blip.answer(images[:3], [question] * 3)]
    assert [s.value for s in scores] == pytest.approx(expected, abs=1e-6)
    assert all(s.details["question"] == question for s in scores)
    with pytest.raises(ValueError):
        scorer.score(gens, "")
    with pytest.raises(ValueError, match="placeholder"):
        VQAScorer(blip, question="no placeholder")
