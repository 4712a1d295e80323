"""Prompt learning on open_clip: the adapter, CoOp / CoCoOp / KgCoOp, TPT, PEZ, GLOV, data, CLI.

Math checks run on a tiny random open_clip model built from a config (and on an
open_clip ``CustomTextCLIP`` and a non-causal text tower built in the test);
behaviour checks run on the shipped ShapesWorld CLIP (``offline:clip``) and the
ShapesWorld task suite; the GLOV loop runs with the embedded SmolLM2.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the models here are tiny: one thread is several times faster than two on a busy 2-core box
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir):
    from mmopt.prompt_learning.adapter import CLIPPromptAdapter

    return CLIPPromptAdapter(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def sw():
    from mmopt.prompt_learning.adapter import CLIPPromptAdapter

    return CLIPPromptAdapter("offline:clip")


NAMES = ["red circle", "blue square", "a purple diamond with four sides"]


# --------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("position,written", [("end", "a photo of a {}."), ("front", "{} a photo of a."),
                                              ("middle", "a photo {} of a.")])
def test_adapter_identity_when_context_is_the_phrase(tiny, position, written):
    """Learned vectors equal to the phrase's own embeddings give exactly encode_text of the phrase."""
    batch = tiny.prompts(NAMES, 4, position)
    feats = tiny.text_features(batch, tiny.phrase_embeddings("a photo of a"), normalize=False)
    with torch.no_grad():
        ref = tiny.model.encode_text(tiny.tokenizer([written.format(n) for n in NAMES])).float()
    assert (feats - ref).abs().max().item() < 1e-5
    # the sequences were cut after the end token (exact for a causal tower), not padded to 77
    assert batch.ids.shape[1] < tiny.context_length


def test_adapter_gradients_reach_only_the_context(tiny):
    batch = tiny.prompts(NAMES, 4)
    ctx = torch.nn.Parameter(tiny.phrase_embeddings("a photo of a"))
    tiny.text_features(batch, ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())
    # class-specific contexts and per-image contexts have their own shapes
    csc = tiny.phrase_embeddings("a photo of a")[None].repeat(3, 1, 1)
    assert torch.allclose(tiny.text_features(batch, csc), tiny.text_features(batch, ctx.detach()), atol=1e-6)
    per_image = tiny.text_features(batch, csc[:2], per_image=True)
    assert per_image.shape == (2, 3, tiny.embed_dim)


def test_adapter_identity_on_custom_text_clip_and_non_causal_tower(tmp_path):
    """open_clip's CustomTextCLIP (model.text) and a bidirectional text tower (no cut) hold too."""
    import open_clip
    from safetensors.torch import save_file

    from mmopt.pipelines.tiny import load_config
    from mmopt.prompt_learning.adapter import CLIPPromptAdapter

    cfg = load_config("tiny_clip")
    for name, extra in (("custom", {}), ("bidir", {"no_causal_mask": True})):
        model_cfg = {**cfg["model_cfg"], "custom_text": True,
                     "text_cfg": {**cfg["model_cfg"]["text_cfg"], **extra}}
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = open_clip.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
        out = tmp_path / name
        out.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
        (out / "open_clip_config.json").write_text(json.dumps({**cfg, "model_cfg": model_cfg}))
        a = CLIPPromptAdapter(str(out))
        batch = a.prompts(NAMES, 4)
        assert (batch.ids.shape[1] == a.context_length) == (name == "bidir")
        feats = a.text_features(batch, a.phrase_embeddings("a photo of a"), normalize=False)
        with torch.no_grad():
            ref = a.model.encode_text(a.tokenizer([f"a photo of a {n}." for n in NAMES])).float()
        assert (feats - ref).abs().max().item() < 1e-5, name


def test_adapter_rejects_class_names_longer_than_the_window(tiny):
    with pytest.raises(ValueError, match=r"has \d+ tokens; with 16 context vectors only \d+ fit"):
        tiny.prompts(["red " * 70], 16)
    with pytest.raises(ValueError, match="non-empty"):
        tiny.prompts(["red circle", "  "], 4)
    with pytest.raises(ValueError, match="position"):
        tiny.prompts(NAMES, 4, "top")
    # the hand-written (zero-shot) path refuses too, instead of cutting the prompt short
    with pytest.raises(ValueError, match="window holds 75"):
        tiny.template_features("a photo of a {}.", ["red " * 80])
    assert tiny.encode_texts(["red " * 80], truncate=True).shape == (1, tiny.embed_dim)


def test_scorer_inference_path_is_untouched(tiny_clip_dir, tiny):
    """CLIPScore on the same (shared, now frozen) model gives the same values as before."""
    from mmopt.scorers.clip import CLIPScoreScorer

    scorer = CLIPScoreScorer(str(tiny_clip_dir), device="cpu")
    assert scorer.model is tiny.model
    text = scorer.encode_texts(["a red circle"])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny.model.encode_text(tiny.tokenizer(["a red circle"])).float(), dim=-1)
    assert torch.allclose(text, ref, atol=1e-6)


# --------------------------------------------------------------------------- TPT math


def test_confidence_selection_keeps_exactly_the_lowest_entropy_tenth():
    from mmopt.prompt_learning.tpt import select_confident

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen) * torch.rand(64, 1, generator=gen) * 6
    p = torch.softmax(logits.double(), dim=-1).numpy()
    ent = -(p * np.log(p)).sum(axis=1)
    kept = select_confident(logits, 0.1)
    assert len(kept) == 6  # int(64 * 0.1), as TPT
    assert set(kept.tolist()) == set(np.argsort(ent)[:6].tolist())
    assert max(ent[kept.numpy()]) <= min(np.delete(ent, kept.numpy()))
    assert len(select_confident(logits[:5], 0.1)) == 1  # never empty
    with pytest.raises(ValueError):
        select_confident(logits, 0.0)


def test_averaged_prediction_entropy_matches_a_direct_computation():
    from mmopt.prompt_learning.tpt import avg_entropy

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 24, generator=gen) * 5
    mean_p = torch.softmax(logits.double(), dim=-1).mean(dim=0)
    direct = float(-(mean_p * mean_p.log()).sum())
    assert abs(float(avg_entropy(logits)) - direct) < 1e-5
    # confident, agreeing views have a low averaged entropy; disagreeing ones a high one
    agree = torch.tensor([[9.0, 0, 0], [9.0, 0, 0]])
    disagree = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])
    assert avg_entropy(agree) < 0.01 < math.log(2) - 0.01 < avg_entropy(disagree)


def test_views_are_seeded_and_keep_the_original_first():
    from mmopt.prompt_learning.tpt import augment_views

    image = torch.randn(3, 32, 32)
    a = augment_views(image, 63, torch.Generator().manual_seed(3))
    b = augment_views(image, 63, torch.Generator().manual_seed(3))
    c = augment_views(image, 63, torch.Generator().manual_seed(4))
    assert a.shape == (64, 3, 32, 32) and torch.equal(a[0], image)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tpt_batches_its_views_in_one_forward_and_resets(sw):
    from mmopt.prompt_learning.tpt import TPT
    from mmopt.shapesworld.tasks import get_task

    task = get_task("colour_shape")
    data = task.images("shift", 1)
    data.images, data.labels = data.images[:3], data.labels[:3]
    tpt = TPT(sw, init="a picture of a", suffix="", seed=0)
    calls = []
    encode = sw.model.encode_image
    sw.model.encode_image = lambda x, **kw: (calls.append(len(x)), encode(x, **kw))[1]
    try:
        ctx0 = tpt.ctx0.clone()
        r = tpt.evaluate(data)
    finally:
        sw.model.encode_image = encode
    assert calls.count(64) == 3  # one forward of all 64 views per test image
    assert torch.equal(tpt.ctx0, ctx0)  # reset: the start never changes
    assert 0 <= r["accuracy"] <= 1 and r["images_per_s"] > 0
    # the untuned prediction is the zero-shot prediction of the hand prompt
    zero = (sw.image_features(data.images) @ sw.template_features(task.hand_template, task.classnames).T).argmax(1)
    assert r["start_accuracy"] == float((zero == torch.tensor(data.labels)).float().mean())
    # seeded views: the same predictions twice
    again = TPT(sw, init="a picture of a", suffix="", seed=0).predict(data.images, task.classnames)
    first = TPT(sw, init="a picture of a", suffix="", seed=0).predict(data.images, task.classnames)
    assert again["pred"] == first["pred"]


# --------------------------------------------------------------------------- PEZ


def test_projection_returns_vocabulary_tokens(tiny):
    from mmopt.prompt_learning.pez import project

    table = tiny.token_embedding_matrix.float()
    ids = torch.tensor([320, 1929, 2368, 49406 - 1])
    assert torch.equal(project(table[ids], table), ids)  # a token's own embedding projects to it
    noisy = table[ids] + 1e-3 * torch.randn(4, table.shape[1], generator=torch.Generator().manual_seed(0))
    allowed = torch.tensor([5, 320, 1929, 7000])
    got = project(noisy, table, allowed)
    assert set(got.tolist()) <= set(allowed.tolist())
    sims = torch.nn.functional.normalize(noisy, dim=-1) @ torch.nn.functional.normalize(table[allowed], dim=-1).T
    assert torch.equal(got, allowed[sims.argmax(1)])


def test_pez_inverts_an_image_into_allowed_tokens_better_than_random(sw):
    from mmopt.prompt_learning.pez import PEZ
    from mmopt.shapesworld.render import render_caption
    from mmopt.shapesworld.tasks import world_words

    image = render_caption("a red circle to the left of a blue square", 0, 64)
    pez = PEZ(sw, length=8, steps=60, vocabulary=world_words(), seed=0)
    r = pez.invert([image])
    assert set(r["token_ids"]) <= set(pez.allowed.tolist()) and len(r["token_ids"]) == 8
    target = sw.image_features([image])
    assert r["similarity"] > pez.similarity_of_text(pez.random_prompt(seed=5), target)
    assert r["projected_similarity"] >= pez.similarity_of_ids(torch.tensor(r["token_ids"]), target) - 1e-5
    with pytest.raises(ValueError, match="window"):
        PEZ(sw, length=80)


def test_pez_templates_write_a_sentence_with_the_rendered_objects(sw, tmp_path):
    import re

    from mmopt.prompt_learning.pez import PEZ, load_templates, reverse_relations
    from mmopt.shapesworld.render import render_caption

    shipped = load_templates("shapesworld")
    image = render_caption("a red circle above a blue square", 0, 64)
    pez = PEZ(sw, steps=150, seed=0)
    r = pez.invert_templates([image], ["a {colour} {shape} {rel} a {colour} {shape}", "{count} {colour} {shapes}"],
                             shipped["slots"])
    # the prompt is a sentence of a template, its places filled with slot words
    words = "|".join(w for ws in shipped["slots"].values() for w in ws)
    assert re.fullmatch(rf"a ({words}) ({words}) ({words}) a ({words}) ({words})|({words}) ({words}) ({words})",
                        r["prompt"]), r["prompt"]
    # and it names what was drawn: the two colours and the two shapes (this small CLIP binds a colour to
    # its shape weakly: "a blue circle above a red square" is as close to it as the true caption)
    said = set(r["prompt"].split())
    assert {"red", "blue"} <= said and {"circle", "square"} <= said, r["prompt"]
    # "tried": each template's sentence, then up to 2 runners-up of each (what a choice by rendering picks among)
    assert r["similarity"] == max(t["similarity"] for t in r["tried"][:2])
    assert 2 < len(r["tried"]) <= 6 and len({t["prompt"] for t in r["tried"]}) == len(r["tried"])
    assert r["similarity"] > pez.similarity_of_text("a green triangle above a yellow diamond", sw.image_features([image]))
    with pytest.raises(ValueError, match="slot"):
        pez.invert_template([image], "a {colour} {thing}", shipped["slots"])
    bad = tmp_path / "t.json"
    bad.write_text('{"slots": {"colour": ["red"]}, "templates": ["a {colour} {shape}"]}')
    with pytest.raises(ValueError, match="shape"):
        load_templates(bad)
    bad.write_text('{"slots": {"c": ["red"]}, "templates": ["a {c} cube"], "opposites": ["above", "below"]}')
    with pytest.raises(ValueError, match="opposites"):
        load_templates(bad)
    # with the set's opposites, each tried sentence that has a relation is tried reversed too, scored as text
    rev = pez.invert_templates([image], ["a {colour} {shape} {rel} a {colour} {shape}", "{count} {colour} {shapes}"],
                               shipped["slots"], steps=150, opposites=shipped["opposites"])
    own = [t for t in rev["tried"] if not t.get("reversed")]
    assert [t["prompt"] for t in own] == [t["prompt"] for t in r["tried"]]  # the same search as without
    flipped = [t for t in rev["tried"] if t.get("reversed")]
    assert flipped and all((" above " in t["prompt"]) != (" below " in t["prompt"]) for t in flipped)
    assert {reverse_relations(t["prompt"], shipped["opposites"]) for t in flipped} <= {t["prompt"] for t in own}
    assert flipped[0]["similarity"] == pez.similarity_of_text(flipped[0]["prompt"], sw.image_features([image]))


# --------------------------------------------------------------------------- CoOp family


@pytest.fixture(scope="module")
def count_data():
    from mmopt.shapesworld.tasks import get_task

    task = get_task("count")
    return task, task.images("train", 4, seed=1), task.images("test", 15)


def test_coop_beats_zero_shot_on_count_and_round_trips(sw, count_data, tmp_path):
    from mmopt.prompt_learning.coop import CoOp, zero_shot_accuracy

    task, train, test = count_data
    coop = CoOp(sw, seed=1).fit(train)
    zero = zero_shot_accuracy(sw, task.hand_template, test)
    learned = coop.accuracy(test)
    assert coop.fit_info["epochs"] == 100 and coop.history[0]["lr"] == 1e-5  # CoOp's schedule and warm-up
    assert learned > zero + 0.02, f"CoOp {learned:.3f} vs zero-shot {zero:.3f}"
    path = coop.save(tmp_path / "ctx.safetensors")
    back = CoOp.load(path)
    assert torch.equal(back.ctx, coop.ctx) and back.classnames == coop.classnames
    assert torch.equal(back.logits(test.images), coop.logits(test.images))
    # the same seed learns the same context; another seed another one
    assert torch.equal(CoOp(sw, seed=1).fit(train).ctx, coop.ctx)
    assert not torch.equal(CoOp(sw, seed=2).fit(train).ctx, coop.ctx)


def test_coop_options_and_bad_input(sw, count_data):
    from mmopt.prompt_learning.coop import CoOp
    from mmopt.prompt_learning.data import ImageSet

    task, train, test = count_data
    with pytest.raises(ValueError, match="has 3 tokens but n_ctx=16"):
        CoOp(sw, init="a picture of", n_ctx=16)
    csc = CoOp(sw, csc=True, n_ctx=4, epochs=2, seed=0).fit(train)
    assert csc.ctx.shape == (4, 4, sw.width)
    with pytest.raises(ValueError, match="class-specific"):
        csc.logits(test.images[:2], ["five objects", "six objects"])
    missing = ImageSet(train.images[:4], [0, 0, 1, 1], train.classnames)
    with pytest.raises(ValueError, match="classes without training images"):
        CoOp(sw, epochs=1).fit(missing)
    with pytest.raises(ValueError, match="no learned context"):
        CoOp(sw).logits(test.images[:1])
    # a phrase start with the hand prompt's words is exactly zero-shot before training
    zero_shot_start = CoOp(sw, init="a picture of", suffix="", epochs=1, lr=1e-12, warmup_epochs=0).fit(train)
    text = sw.template_features(task.hand_template, task.classnames)
    assert torch.allclose(sw.text_features(zero_shot_start._eval_prompts(None), zero_shot_start.ctx), text, atol=1e-5)


def test_cocoop_and_kgcoop_fit_classify_new_classes_and_round_trip(sw, count_data, tmp_path):
    from mmopt.prompt_learning.cocoop import CoCoOp
    from mmopt.prompt_learning.coop import CoOp
    from mmopt.prompt_learning.kgcoop import KgCoOp

    task, train, test = count_data
    base, new = train.subset(task.base), test.subset(task.new)
    cocoop = CoCoOp(sw, init="a picture of", suffix="", epochs=1, seed=0).fit(base)
    assert cocoop.batch_size == 1 and cocoop.n_ctx == 3
    assert 0 <= cocoop.accuracy(new) <= 1
    back = CoOp.load(cocoop.save(tmp_path / "cocoop.safetensors"))
    assert type(back).__name__ == "CoCoOp"
    assert torch.allclose(back.logits(new.images, new.classnames), cocoop.logits(new.images, new.classnames))
    # KgCoOp with a huge weight stays on the hand prompt; with weight 0 it is CoOp
    hand = task.hand_template
    anchored = KgCoOp(sw, init="a picture of", suffix="", hand_template=hand, weight=1e4, epochs=20, seed=0).fit(base)
    free = KgCoOp(sw, init="a picture of", suffix="", hand_template=hand, weight=0.0, epochs=20, seed=0).fit(base)
    coop = CoOp(sw, init="a picture of", suffix="", epochs=20, seed=0).fit(base)
    assert torch.allclose(free.ctx, coop.ctx, atol=1e-6)
    anchor = sw.template_features(hand, base.classnames)

    def drift(learner):
        feats = sw.text_features(learner._eval_prompts(None), learner.ctx)
        return float(1 - torch.nn.functional.cosine_similarity(feats, anchor, dim=-1).mean())

    assert drift(anchored) < drift(free)
    with pytest.raises(ValueError, match="CoOp's option"):
        CoCoOp(sw, csc=True)


# --------------------------------------------------------------------------- data


def _folder(tmp_path, layout):
    from PIL import Image

    root = tmp_path / "data"
    for cls, n in layout.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(root / cls / f"{i}.png")
    return root


def test_image_folder_few_shot_and_bad_input(tmp_path):
    from mmopt.prompt_learning.data import base_new_split, few_shot, image_folder, read_classnames, rest_of

    root = _folder(tmp_path, {"red_circle": 5, "blue_square": 3})
    (root / "blue_square" / "broken.png").write_bytes(b"not a png")
    data = image_folder(root)
    assert data.classnames == ("blue square", "red circle") and len(data) == 9
    draw = few_shot(data, 3, seed=0)
    assert draw.per_class() == {0: 3, 1: 3} and all(hasattr(im, "size") for im in draw.images)
    # the unreadable file is skipped and recorded (or, when there are not enough images, an error)
    again = [few_shot(data, 3, seed=s) for s in range(6)]
    assert any(d.meta["skipped_files"] for d in again) or draw.meta["skipped_files"] == []
    with pytest.raises(ValueError, match=r"'blue square' has 4 images \(1 unreadable\); 4 shots"):
        few_shot(data, 4, seed=0)
    assert few_shot(data, 3, seed=0).labels == draw.labels  # seeded
    assert len(rest_of(data, draw)) == len(data) - 6
    names = tmp_path / "names.txt"
    names.write_text("# classes\nred_circle\tthe red circle\nblue_square: a blue box\n")
    named = image_folder(root, names)
    assert named.classnames == ("the red circle", "a blue box")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        image_folder(root)
    assert image_folder(root, empty="skip").meta["skipped_classes"] == ["empty"]
    names.write_text("red_circle\nred_circle\n")
    with pytest.raises(ValueError, match="repeats"):
        read_classnames(names)
    assert base_new_split(("a", "b", "c", "d", "e")) == ((0, 1, 2), (3, 4))


def test_shapesworld_suite_is_deterministic_with_a_shifted_split():
    from mmopt.shapesworld.tasks import TASKS, get_task

    assert set(TASKS) == {"colour_shape", "count", "relation"}
    assert [len(get_task(t).classnames) for t in TASKS] == [24, 4, 4]
    for name in TASKS:
        task = get_task(name)
        a, b = task.images("test", 2), task.images("test", 2)
        assert [np.asarray(x).tobytes() for x in a.images] == [np.asarray(x).tobytes() for x in b.images]
        shift = task.images("shift", 2)
        assert not np.array_equal(np.asarray(a.images[0]), np.asarray(shift.images[0]))
        d1, d2 = task.images("train", 1, seed=1), task.images("train", 1, seed=2)
        assert not np.array_equal(np.asarray(d1.images[0]), np.asarray(d2.images[0]))
        assert len(task.base) + len(task.new) == len(task.classnames)
    # the shifted background is never the training grey
    corner = np.asarray(get_task("colour_shape").images("shift", 3).images[1])[0, 0]
    assert tuple(corner) != (235, 235, 235)
    assert not get_task("relation").flip_safe


# --------------------------------------------------------------------------- GLOV in the one loop


def test_known_better_template_wins_on_heldout_draws_in_the_loop(tmp_path):
    from mmopt import registry
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.proposers.fixed import FixedProposer
    from mmopt.store import Store

    gen = registry.create("generator", "fewshot:colour_shape", shots=2)
    scorer = registry.create("scorer", "accuracy")
    opt = Optimizer(gen, [scorer], FixedProposer([["a picture of a {}"]]), budget=Budget(iterations=2),
                    seeds=[0, 1], heldout_seeds=[100, 101, 102], store=tmp_path)
    result = opt.run("a photo of a {}.")
    assert result.best_prompt == "a picture of a {}"
    assert result.heldout_gain > 0.03, result.heldout_gain
    stored = Store(tmp_path).load_trials(result.run_id)
    assert [t.prompt for t in stored] == ["a photo of a {}.", "a picture of a {}"]
    gens = Store(tmp_path).load_generations(result.run_id, 1)
    assert gens and gens[0]["meta"]["template"] == "a picture of a {}" and gens[0]["paths"] == []


def test_glov_loop_runs_with_the_embedded_llm():
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.prompt_learning.glov import AccuracyScorer, FewShotClassifier, glov_proposer, normalize_template

    gen = FewShotClassifier("count", shots=2)
    opt = Optimizer(gen, [AccuracyScorer()], glov_proposer(gen, "smollm2"), budget=Budget(iterations=2),
                    candidates=3, seeds=[0])
    result = opt.run("a picture of {}")
    assert result.llm_calls >= 1 and len(result.trials) >= 2
    assert all(0 <= t.objective <= 1 for t in result.trials)
    assert result.best.objective >= result.original.objective
    assert normalize_template("a {CLASS} shape") == "a {} shape"
    assert normalize_template("a drawing") == "a drawing {}"


# --------------------------------------------------------------------------- CLI


def test_cli_coop_tpt_invert_write_runs(tmp_path, capsys):
    from mmopt.cli import main
    from mmopt.shapesworld.render import render_caption

    out = str(tmp_path / "runs")
    assert main(["coop", "--task", "count", "--shots", "1", "--epochs", "3", "--eval-per-class", "3",
                 "--out", out, "--no-progress"]) == 0
    ctx = list((tmp_path / "runs" / "runs").glob("*/context.safetensors"))
    assert len(ctx) == 1
    assert main(["coop", "--task", "count", "--method", "kgcoop", "--base-to-new", "--shots", "1", "--epochs", "2",
                 "--eval-per-class", "3", "--out", out, "--no-progress"]) == 0
    assert "hm" in capsys.readouterr().out
    assert main(["tpt", "--task", "count", "--per-class", "1", "--views", "8", "--context", str(ctx[0]),
                 "--out", out, "--no-progress"]) == 0
    image = tmp_path / "target.png"
    render_caption("a red circle", 0, 64).save(image)
    assert main(["invert", str(image), "--steps", "5", "--length", "4", "--out", out, "--no-progress"]) == 0
    assert main(["invert", str(image), "--steps", "20", "--templates", "shapesworld", "--out", out,
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["runs", "--out", out]) == 0
    listed = capsys.readouterr().out
    assert listed.count("finished") == 5 and "coop 1-shot on count" in listed and "invert 1 image" in listed


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from mmopt.cli import main

    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert main(["coop", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no images" in err and "Traceback" not in err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["invert", str(tmp_path / "bad.png"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["coop", "--task", "count", "--csc", "--method", "kgcoop", "--out", str(tmp_path / "o")]) == 2
    assert main(["coop", "--task", "count", "--hand-template", "no placeholder", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_cli_coop_on_an_image_folder_tests_on_the_rest(tmp_path, capsys):
    from mmopt.cli import main
    from mmopt.shapesworld.tasks import get_task

    data = get_task("colour_shape").images("train", 4, seed=9, classes=[0, 5])
    for k, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = tmp_path / "folder" / data.classnames[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{k}.png")
    assert main(["coop", "--data", str(tmp_path / "folder"), "--shots", "2", "--epochs", "2",
                 "--hand-template", "a picture of a {}", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "coop" in out
    with pytest.raises(SystemExit):  # argparse: --task and --data exclude each other
        main(["coop", "--data", str(tmp_path / "folder"), "--task", "count"])


def test_pez_prompt_seeds_the_optimization_loop(sw, tmp_path):
    from mmopt.prompt_learning.pez import PEZ, invert_and_optimize
    from mmopt.proposers.fixed import FixedProposer
    from mmopt.shapesworld.render import render_caption
    from mmopt.shapesworld.tasks import world_words

    image = render_caption("a red circle", 0, 64)
    pez = PEZ(sw, length=6, steps=30, vocabulary=world_words(), seed=0)
    inverted, result = invert_and_optimize([image], pez=pez, proposer=FixedProposer([["a red circle"]]),
                                           iterations=2, seeds=1, store=tmp_path)
    assert result.original.prompt == inverted["prompt"]  # image -> prompt: the inverted prompt is trial 0
    assert [t.prompt for t in result.trials] == [inverted["prompt"], "a red circle"]
    assert result.best.objective >= result.original.objective
    assert list(result.best.scores) == ["imagesim:offline:clip"]


def test_pez_tried_sentences_are_chosen_by_how_the_generator_renders_them(sw, tmp_path, capsys):
    """The generator, not CLIP's text match, picks among the templates' sentences; the pick wins on unseen seeds."""
    from mmopt import registry
    from mmopt.cli import main
    from mmopt.prompt_learning.pez import invert_and_optimize
    from mmopt.shapesworld.render import render_caption

    truth = "a red circle to the left of a blue square"
    image = render_caption(truth, 0, 64)
    # PEZ's answer (its best text match) names the wrong shapes; another template wrote the true caption
    # (this small CLIP barely binds colours to shapes, so swapped colours would render as close as the truth)
    wrong = "a red square to the left of a blue triangle"
    inverted = {"prompt": wrong, "similarity": 0.9,
                "tried": [{"template": "t1", "prompt": wrong, "similarity": 0.9},
                          {"template": "t2", "prompt": "two green triangles", "similarity": 0.2},
                          {"template": "t3", "prompt": truth, "similarity": 0.8}]}
    _, result = invert_and_optimize([image], inverted=inverted, proposer="tried", seeds=[100, 101])
    assert [t.prompt for t in result.trials] == [inverted["prompt"], truth, "two green triangles"]
    assert result.best_prompt == truth
    gen = registry.create("generator", "offline:t2i")
    target = sw.image_features([image])[0]

    def regenerated(prompt):  # seeds the choice never saw
        images = [g.media for g in gen.generate([prompt] * 4, [0, 1, 2, 3])]
        return float((sw.image_features(images) @ target).mean())

    assert regenerated(truth) > regenerated(wrong) + 0.1  # measured: 0.78 against 0.52
    with pytest.raises(ValueError, match="invert_templates"):
        invert_and_optimize([image], inverted={"prompt": "a red circle", "similarity": 0.5}, proposer="tried")
    # the command: --proposer tried needs --templates (one line), and runs with them
    path = tmp_path / "target.png"
    image.save(path)
    out = str(tmp_path / "runs")
    assert main(["invert", str(path), "--optimize", "--proposer", "tried", "--out", out]) == 2
    assert "needs --templates" in capsys.readouterr().err
    assert main(["invert", str(path), "--steps", "20", "--templates", "shapesworld", "--optimize", "--proposer",
                 "tried", "--seeds", "2", "--out", out]) == 0  # with its progress bar
    assert "optimized:" in capsys.readouterr().out
    assert main(["invert", str(path), "--steps", "20", "--templates", "shapesworld", "--optimize", "--proposer",
                 "slots", "--iterations", "1", "--seeds", "1", "--out", out]) == 0  # and the one-word edits after
    assert "optimized:" in capsys.readouterr().out


def test_slot_edits_propose_one_word_neighbours_within_the_template():
    from mmopt.proposers.slots import SlotEdits

    edits = SlotEdits("shapesworld")
    near = edits.neighbours("a red circle above a  blue square")  # spacing does not matter
    # 5 other colours + 3 other shapes, twice, and the reversed relation ('below'; the rel slot's other word)
    assert len(near) == 17 and len(set(near)) == 17
    assert "a green circle above a blue square" in near and "a red circle below a blue square" in near
    assert "a red circle above a blue square" not in near
    assert edits.neighbours("a photo of a cat") == []  # fits no template: nothing to propose
    with pytest.raises(ValueError, match="slots"):
        SlotEdits({"templates": ["a {c} cube"]})


def test_pez_slot_edits_climb_to_a_better_sentence_that_wins_on_unseen_seeds(sw):
    """From an inverted sentence with a wrong colour, one round of one-word edits judged by the
    generator's renders (search seeds 100-101) finds a sentence that renders closer to the target
    on seeds the search never saw."""
    from mmopt import registry
    from mmopt.prompt_learning.pez import invert_and_optimize
    from mmopt.shapesworld.render import render_caption

    truth = "a red circle to the left of a blue square"
    image = render_caption(truth, 0, 64)
    wrong = "a red circle to the left of a green square"
    inverted = {"prompt": wrong, "similarity": 0.9, "tried": [{"prompt": "two green triangles", "similarity": 0.2}]}
    _, result = invert_and_optimize([image], inverted=inverted, proposer="slots", seeds=[100, 101],
                                    iterations=1, candidates=32)
    prompts = [t.prompt for t in result.trials]
    assert prompts[:2] == [wrong, "two green triangles"]  # the inverted sentence, then the tried ones,
    assert truth in prompts[2:19] and len(set(prompts)) == len(prompts)  # filled with its 17 neighbours
    assert {t.iteration for t in result.trials} == {0, 1, 2}  # then one round from the best of those
    gen = registry.create("generator", "offline:t2i")
    target = sw.image_features([image])[0]

    def regenerated(prompt):  # seeds the search never saw
        images = [g.media for g in gen.generate([prompt] * 4, [0, 1, 2, 3])]
        return float((sw.image_features(images) @ target).mean())

    best = result.best_prompt
    assert regenerated(best) > regenerated(wrong) + 0.05
    assert regenerated(best) > regenerated(truth) - 0.03
