"""ShapesWorld core: grammar, renderer, detector, caption parser, DetectorVQA."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import ImageFilter

from mmopt import registry
from mmopt.shapesworld import detect as D
from mmopt.shapesworld import grammar as G
from mmopt.shapesworld import parse as P
from mmopt.shapesworld import render as R
from mmopt.shapesworld.vqa import DetectorVQA
from mmopt.types import DSGQuestion, Generation, VQAModel


@pytest.fixture(scope="module")
def sample():
    """200 fixed scenes with their 32 px and 64 px renders."""
    scenes = [G.sample_scene(random.Random(i)) for i in range(200)]
    return scenes, [R.render(s, 32) for s in scenes], [R.render(s, 64) for s in scenes]


def _blur(im, sigma):
    return im.filter(ImageFilter.GaussianBlur(sigma))


def _noise(im, sigma, seed):
    a = np.asarray(im, dtype=np.float32) + np.random.default_rng(seed).normal(0, sigma, (im.size[1], im.size[0], 3))
    return np.clip(a, 0, 255).astype(np.uint8)


# --- grammar -------------------------------------------------------------

def test_captions_are_deterministic_and_round_trip():
    for i in range(150):
        d = G.sample_description(random.Random(i))
        text = G.describe(d, random.Random(i))
        assert text == G.describe(d, random.Random(i))
        parsed = P.parse_caption(text)
        assert parsed.ignored_words == ()
        assert G.canonical_key(parsed.description) == G.canonical_key(d), text


def test_caption_of_scene_is_true(sample):
    vqa = DetectorVQA()
    scenes, _, imgs64 = sample
    for scene, img in list(zip(scenes, imgs64))[:60]:
        text = G.caption(scene, random.Random(7))
        qs = P.parse_caption(text).questions
        answers = vqa.answer([img] * len(qs), [q.question for q in qs])
        assert all(a.answer == "yes" for a in answers), (text, [(q.question, a.answer) for q, a in zip(qs, answers)])


def test_variety_of_captions():
    texts = [G.sample_caption(random.Random(i)) for i in range(300)]
    joined = " ".join(t.lower() for t in texts)
    for word in ("disc", "box", "to the left of", "on top of", "beneath", "2 ", "two ", "an image of"):
        assert word in joined, word
    assert len(set(texts)) > 290


def test_scene_from_caption_satisfies_caption():
    scene = P.scene_from_caption("two red circles to the left of a big blue square", random.Random(0))
    reds = [o for o in scene.objects if o.colour == "red" and o.shape == "circle"]
    (blue,) = [o for o in scene.objects if o.colour == "blue"]
    assert len(reds) == 2 and blue.size == "large"
    assert all(G.relation_holds((r.x, r.y), (blue.x, blue.y), "left of") for r in reds)


def test_benchmark_prompts_fixed_and_disjoint_from_training():
    prompts = G.benchmark_prompts(50, seed=0)
    assert prompts == G.benchmark_prompts(50, seed=0) and len(set(prompts)) == 50
    descs = [P.parse_caption(p).description for p in prompts]
    assert all(2 <= d.n_objects <= 4 and G.is_held_out(d) for d in descs)
    assert sum(bool(d.relations) for d in descs) >= 25
    assert sum(any(g.count > 1 for g in d.groups) for d in descs) >= 8
    held = {G.canonical_key(d) for d in descs}
    rng = random.Random(1)
    for _ in range(500):
        c = G.training_caption(rng)
        assert G.canonical_key(P.parse_caption(c).description) not in held
        assert not P.is_held_out(c)


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_objects"):
        G.sample_caption(random.Random(0), n_objects=7)
    with pytest.raises(TypeError, match="rng"):
        G.sample_scene("seed")
    with pytest.raises(ValueError, match="size"):
        R.render(G.Scene(), size=3)
    with pytest.raises(TypeError):
        D.detect("not an image")


# --- renderer and detector -----------------------------------------------

def test_render_deterministic():
    a = R.render_caption("a small green triangle above a purple diamond", 5, 64)
    b = R.render_caption("a small green triangle above a purple diamond", 5, 64)
    c = R.render_caption("a small green triangle above a purple diamond", 6, 64)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_detector_exact_on_renders(sample):
    scenes, imgs32, imgs64 = sample
    for scene, i32, i64 in zip(scenes, imgs32, imgs64):
        assert D.scene_matches(D.detect(i32), scene), scene
        assert D.scene_matches(D.detect(i64), scene), scene


def test_components_without_scipy_match_scipy():
    mask = np.asarray(R.render(G.sample_scene(random.Random(3), 4), 32)).max(axis=2) < 200
    la, na = D._label_components_bfs(mask)
    pytest.importorskip("scipy")
    lb, nb = D._label_components(mask)
    assert na == nb and np.array_equal(la > 0, lb > 0)


def test_detector_tolerates_blur_and_noise(sample):
    scenes, imgs32, imgs64 = sample
    n = 100
    rates = {
        "blur0.5@32": np.mean([D.scene_matches(D.detect(_blur(im, 0.5)), s) for s, im in zip(scenes[:n], imgs32)]),
        "blur1.0@64": np.mean([D.scene_matches(D.detect(_blur(im, 1.0)), s) for s, im in zip(scenes[:n], imgs64)]),
        "noise8@32": np.mean([D.scene_matches(D.detect(_noise(im, 8, i)), s)
                              for i, (s, im) in enumerate(zip(scenes[:n], imgs32))]),
    }
    print("detector rates under corruption:", rates)
    assert rates["blur0.5@32"] >= 0.95 and rates["blur1.0@64"] >= 0.97 and rates["noise8@32"] >= 0.97


# --- parser ----------------------------------------------------------------

def test_parser_questions_and_dependencies():
    r = P.parse_caption("Two red circles to the left of a small blue box.")
    assert r.ignored_words == ()
    assert all(isinstance(q, DSGQuestion) for q in r.questions)
    by_q = {q.question: q for q in r.questions}
    ent = by_q["Are there circles?"]
    assert by_q["Are the circles red?"].dependencies == (ent.id,)
    assert by_q["Are there two red circles?"].tuple == "other - count (red circles, ==2)"
    sq = by_q["Is there a square?"]
    assert by_q["Is the blue square small?"].dependencies == (sq.id,)
    rel = by_q["Are the red circles to the left of the blue square?"]
    assert rel.tuple == "relation - spatial (red circles, blue square, left of)"
    assert set(rel.dependencies) == {ent.id, sq.id}
    assert [q.id for q in r.questions] == list(range(1, len(r.questions) + 1))


def test_parser_reports_ignored_words():
    r = P.parse_caption("a shiny red circle on a wooden table next to a dog")
    assert [(g.colour, g.shape) for g in r.objects] == [("red", "circle")]
    assert r.ignored_words == ("shiny", "on", "a", "wooden", "table", "next", "to", "a", "dog")
    empty = P.parse_caption("a photograph of a cat")
    assert empty.objects == () and empty.questions == () and "cat" in empty.ignored_words


# --- DetectorVQA -----------------------------------------------------------

def test_vqa_protocol_and_registry():
    vqa = registry.create("vqa", "shapes")
    assert isinstance(vqa, VQAModel) and isinstance(vqa, DetectorVQA)
    with pytest.raises(ValueError, match="equal length"):
        vqa.answer([R.render(G.Scene(), 32)], ["Is there a circle?", "Is there a square?"])


def test_vqa_answers_true_scene_yes_and_wrong_colour_no():
    vqa = DetectorVQA()
    for i, text in enumerate(G.benchmark_prompts(12, seed=3)):
        qs = P.parse_caption(text).questions
        img = R.render_caption(text, i, 32)
        answers = vqa.answer([img] * len(qs), [q.question for q in qs])
        assert all(a.answer == "yes" and a.p_yes == 1.0 for a in answers), text
    img = R.render_caption("a red circle above a blue square", 0, 32)
    asked = ["Is the circle blue?", "Is there a green circle?", "Is the square above the circle?",
             "Are there 2 circles?", "Is the circle red?", "Is the circle on the left side of the square?"]
    got = [a.answer for a in vqa.answer([img] * len(asked), asked)]
    assert got[:4] == ["no"] * 4 and got[4] == "yes"


def test_vqa_llm_style_questions():
    scene = G.Scene((G.SceneObject("red", "circle", "small", 0.2, 0.3),
                     G.SceneObject("blue", "square", "large", 0.7, 0.7),
                     G.SceneObject("blue", "square", "small", 0.25, 0.8)))
    img = R.render(scene, 64)
    cases = {
        "Is there a red circle?": "yes", "Is the circle red?": "yes", "Are there 2 squares?": "yes",
        "Are there three squares?": "no", "Is the circle above the square?": "yes",
        "Is the circle on the left side of the large square?": "yes", "Is the square small?": "yes",
        "Are the squares blue?": "yes", "Is there a triangle?": "no", "Does the image contain a big blue box?": "yes",
        "Is the large square to the left of the circle?": "no", "Are there at least two blue objects?": "yes",
    }
    answers = DetectorVQA().answer([img] * len(cases), list(cases))
    assert [a.answer for a in answers] == list(cases.values())


def test_vqa_unanswerable_never_crashes():
    img = R.render_caption("a red circle", 0, 32)
    odd = ["How many circles are there?", "Is the circle shiny?", "Is there a star?", "Is there a dog?",
           "Is the circle next to the square?", "", "???", "Is the circle not red?"]
    answers = DetectorVQA().answer([img] * len(odd), odd)
    assert all(a.answer == "unanswerable" and a.p_yes == 0.5 for a in answers)


def test_plugs_into_dsg_scorer():
    dsg = pytest.importorskip("mmopt.scorers.dsg")
    text = "a green triangle to the right of two purple diamonds"
    scorer = dsg.DSGScorer(DetectorVQA(), questions=P.dsg_questions)
    good = Generation(text, 0, R.render_caption(text, 0, 32))
    bad = Generation(text, 0, R.render_caption("a green circle left of two purple diamonds", 0, 32))
    s_good, s_bad = scorer.score([good, bad], text)
    assert s_good.value == 1.0 and s_bad.value < 1.0
