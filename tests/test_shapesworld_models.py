"""The shipped ShapesWorld models, loaded through the normal registry names.

* ``offline:t2i`` is a StableDiffusionPipeline folder loaded by DiffusersGenerator
  (the hub-model code path); ``offline:clip`` an open_clip folder loaded by the
  CLIPScore scorer; ``offline:dsg`` detector-backed DSG.
* Quality bars on small fixed samples (the full figures are in the training
  report and the benchmark): CLIP zero-shot over colour x shape, the generator's
  single-object fidelity, multi-object DSG well below 1.
* A short optimization on ShapesWorld with the offline preset (embedded LLM).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmopt import registry  # noqa: E402
from mmopt.shapesworld import grammar as G  # noqa: E402
from mmopt.shapesworld import parse as P  # noqa: E402
from mmopt.shapesworld.render import render  # noqa: E402

CLASSES = [(c, s) for c in G.COLOURS for s in G.SHAPES]
#: Issue 4's bar for the generator: detector agrees with colour and shape on single objects.
SINGLE_OBJECT_BAR = 0.8


@pytest.fixture(scope="module")
def generator():
    return registry.create("generator", "offline:t2i", max_batch=64)


@pytest.fixture(scope="module")
def clip():
    return registry.create("scorer", "offline:clip")


@pytest.fixture(scope="module")
def dsg():
    return registry.create("scorer", "offline:dsg")


def test_shipped_weights_are_small_safetensors():
    from mmopt.pipelines.offline import shipped_model_dir

    files = [p for part in ("t2i", "clip") for p in shipped_model_dir(part).rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 4  # unet, vae, text encoder, clip
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    total = sum(p.stat().st_size for p in files)
    assert total <= 25 * 1024 * 1024, f"shipped ShapesWorld models take {total / 2**20:.1f} MiB"


def test_offline_names_use_the_normal_loaders(generator, clip, dsg):
    from mmopt.pipelines.diffusers_t2i import DiffusersGenerator
    from mmopt.scorers.clip import CLIPScoreScorer
    from mmopt.scorers.dsg import DSGScorer

    assert isinstance(generator, DiffusersGenerator)
    assert type(generator.pipe).__name__ == "StableDiffusionPipeline"
    assert Path(generator.model_id).parts[-2:] == ("shapesworld", "t2i") or "shapesworld" in generator.model_id
    assert isinstance(clip, CLIPScoreScorer) and clip.name == "offline:clip"
    assert isinstance(dsg, DSGScorer) and dsg.name == "offline:dsg"
    with pytest.raises(ValueError, match="offline:clip"):
        registry.create("scorer", "offline:nope")
    with pytest.raises(ValueError, match="offline:t2i"):
        registry.create("generator", "offline:unet")


# 12 of the 24 classes in one batch: every colour twice, every shape three times
SINGLE = [(c, G.SHAPES[(i + k) % len(G.SHAPES)]) for i, c in enumerate(G.COLOURS) for k in (0, 2)]
MULTI = G.benchmark_prompts(6, seed=0)  # 2-4 objects, held out from training


@pytest.fixture(scope="module")
def batch(generator):
    """One generator call for every image the quality tests look at."""
    prompts = [f"a {c} {s}" for c, s in SINGLE] + MULTI
    return generator.generate(prompts, list(range(100, 100 + len(prompts))))


def test_generator_is_deterministic_per_prompt_and_seed(generator, batch):
    alone = generator.generate([batch[1].prompt], [batch[1].seed])
    again = generator.generate([batch[1].prompt], [batch[1].seed])
    assert alone[0].media.size == (64, 64)
    assert np.array_equal(np.asarray(alone[0].media), np.asarray(again[0].media))
    # batch composition changes only float rounding (CPU batched kernels), not the image
    diff = np.abs(np.asarray(batch[1].media, dtype=float) - np.asarray(alone[0].media, dtype=float))
    assert diff.mean() < 1.0, f"mean |difference| {diff.mean():.2f} between batch sizes"
    assert not np.array_equal(np.asarray(batch[0].media), np.asarray(batch[1].media))
    # the shipped model renders up to OFFLINE_BATCH images per pipeline call
    from mmopt.pipelines.offline import OFFLINE_BATCH

    assert batch[0].meta["batch_size"] == min(len(batch), OFFLINE_BATCH) > 4


def test_clip_zero_shot_colour_by_shape_on_renders(clip):
    # quality bar: >= 90% top-1 over the 24 colour x shape classes
    rng = random.Random(7)
    images, labels = [], []
    for k, (c, s) in enumerate(CLASSES):
        for _ in range(3):
            desc = G.Description(groups=(G.Group(1, c, s, rng.choice(G.SIZES)),))
            images.append(render(G.layout(desc, rng), 64))
            labels.append(k)
    sims = clip.text_image_similarity(images, [f"a {c} {s}" for c, s in CLASSES])
    acc = float((sims.argmax(dim=1).numpy() == np.array(labels)).mean())
    assert acc >= 0.9, f"CLIP zero-shot top-1 {acc:.3f}"


def test_clip_prefers_the_right_caption_for_a_scene(clip):
    img = render(G.Scene((G.SceneObject("red", "circle", "large", 0.3, 0.5),
                          G.SceneObject("blue", "square", "large", 0.72, 0.5))), 64)
    sims = clip.text_image_similarity([img], ["a red circle and a blue square",
                                              "a green triangle and a yellow diamond"])
    assert sims[0, 0] > sims[0, 1]


def test_generator_single_object_fidelity(batch):
    """Quality bar: the detector agrees with colour and shape on single-object prompts."""
    from mmopt.shapesworld.detect import detect

    ok = sum(any(o.colour == c and o.shape == s for o in detect(g.media))
             for g, (c, s) in zip(batch, SINGLE))
    rate = ok / len(SINGLE)
    assert rate >= SINGLE_OBJECT_BAR, f"detector agrees with colour and shape on {rate:.2f} of prompts"


def test_multi_object_prompts_leave_room_to_optimize(batch, dsg):
    values = [dsg.score([g], g.prompt)[0].value for g in batch[len(SINGLE):]]
    assert len(values) == len(MULTI)
    mean = float(np.mean(values))
    assert 0.0 <= mean <= 0.85, f"mean DSG on 2-4 object prompts {mean:.3f}"


def test_training_data_is_deterministic_and_worker_independent():
    from mmopt.shapesworld.train import make_dataset

    a_img, a_cap = make_dataset(12, seed=3, size=32, workers=1)
    b_img, b_cap = make_dataset(12, seed=3, size=32, workers=1)
    c_img, c_cap = make_dataset(12, seed=4, size=32, workers=1)
    assert a_cap == b_cap and np.array_equal(a_img, b_img)
    assert a_cap != c_cap
    assert not any(P.is_held_out(c) for c in a_cap)


def test_short_optimization_with_the_offline_preset(tmp_path):
    from mmopt.presets import build_optimizer, load_preset

    preset = load_preset("offline")
    assert preset["generator"] == "offline:t2i" and "offline:dsg" in preset["scorers"]
    # intent-preserving by default: the intent check and the drift guard are constraints, checked first
    assert {c["scorer"] for c in preset["constraints"]} == {"intent:shapes", "drift:minilm"} and preset["prescreen"]
    opt = build_optimizer(preset, iterations=3, max_images=40, seed=0, generator_kwargs={"max_batch": 64})
    result = opt.run("two red circles to the left of a blue square")
    assert result.original.prompt == "two red circles to the left of a blue square"
    assert len(result.trials) >= 2 and result.llm_calls == 0  # rule edits: no LLM
    assert result.images <= 40 and result.selection and result.estimate is not None
    assert set(result.best.scores) == {"offline:dsg", "intent:shapes", "drift:minilm"}
    assert all(t.scores["intent:shapes"] == 1.0 for t in result.trials)  # nothing that changed the request rendered
    # the lookahead switch is preset data and a CLI flag too (mmopt optimize --lookahead)
    assert not opt.lookahead and build_optimizer({**preset, "lookahead": True, "strategy": "topk"}).lookahead


def test_demo_command_runs_offline_and_defaults_to_its_budget(tmp_path, monkeypatch):
    import subprocess
    import sys

    from mmopt import cli
    from mmopt.commands import demo, optimize

    # the demo's own budget applies with the offline preset, and only when none is given
    seen = []
    monkeypatch.setattr(optimize, "run", lambda args: seen.append(args.max_images) or 0)
    for argv in (["demo"], ["demo", "--max-images", "16"], ["demo", "--preset", "turbo"]):
        assert cli.main(argv) == 0
    assert seen == [demo.DEMO_IMAGES, 16, None]
    monkeypatch.undo()
    # the real command, small: a finished run, its report, and the quick exit's output intact
    proc = subprocess.run([sys.executable, "-m", "mmopt.cli", "demo", "--out", str(tmp_path), "--max-images", "20",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out:" in proc.stdout and proc.stdout.rstrip().splitlines()[-1].startswith("report:")
    assert list(tmp_path.glob("runs/*/report.html"))


@pytest.mark.slow
def test_training_command_runs_end_to_end(tmp_path):
    from mmopt.shapesworld.train import main

    report = main(["--out", str(tmp_path), "--steps-scale", "0.0005", "--n-images", "64",
                   "--workers", "1", "--device", "cpu"])
    assert report["steps_run"] == {"clip": 1, "vae": 1, "unet": 2}
    gen = registry.create("generator", f"diffusers:{tmp_path / 't2i'}", reuse=False)
    assert gen.generate(["a red circle"], [0])[0].media.size == (64, 64)
    assert (tmp_path / "clip" / "open_clip_model.safetensors").is_file()
