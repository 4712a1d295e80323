"""Rule-based proposer: seeded modifier edits, styles, budget, user words untouched."""
import random

import pytest

from mmopt import registry
from mmopt.llm.parsing import normalize_for_dedup
from mmopt.proposers.rules import RulesProposer, load_vocabulary
from mmopt.protect import check
from mmopt.types import SearchState, Trial


def state(intent, trials=(), seed=0, **kw):
    trials = list(trials)
    return SearchState(intent=intent, iteration=1, trials=trials, history=trials, rng=random.Random(seed), **kw)


def all_tags():
    return {e["tag"] for entries in load_vocabulary().values() for e in entries}


def test_tags_style_adds_known_modifiers_and_is_seeded():
    p = RulesProposer()
    out = p.propose(state("a red fox in the snow"), 5)
    assert len(out) == 5 and len({normalize_for_dedup(o) for o in out}) == 5
    tags = all_tags()
    for cand in out:
        assert cand.startswith("a red fox in the snow, ")
        added = cand[len("a red fox in the snow, "):].split(", ")
        assert added and all(a in tags for a in added)
    assert p.propose(state("a red fox in the snow"), 5) == out          # same seed, same edits
    assert p.propose(state("a red fox in the snow", seed=1), 5) != out  # another seed, other edits


def test_sentence_style_uses_clauses_and_keeps_final_period():
    out = RulesProposer().propose(state("A red fox in the snow.", prompt_style="sentences"), 3)
    clauses = {e["sentence"] for entries in load_vocabulary().values() for e in entries}
    for cand in out:
        assert cand.startswith("A red fox in the snow, ") and cand.endswith(".")
        assert any(c in cand for c in clauses) and not any(f", {t}," in cand + "," for t in all_tags())


def test_hill_climbs_from_best_and_swaps_or_removes_only_its_own_modifiers():
    trials = [Trial(0, 0, "a fox, watercolor", 0.4, {}), Trial(1, 1, "a fox, watercolor, soft lighting, 4k", 0.8, {})]
    out = RulesProposer(max_edits=3).propose(state("a fox, watercolor", trials, seed=2), 8)
    assert out and all(o.startswith("a fox, watercolor") for o in out)  # the user's words and style stay
    assert not any("oil painting" in o or "digital painting" in o for o in out)  # the user chose the medium
    assert all(o not in {t.prompt for t in trials} for o in out)


def test_token_budget_and_protected_spans():
    intent = "<lora:film:0.8> a (red:1.2) fox"
    st = state(intent, max_prompt_tokens=30, protected=("<lora:film:0.8>", "(red:1.2)"))
    out = RulesProposer(max_edits=3).propose(st, 6)
    assert out
    for cand in out:
        assert check(cand, st.protected) == []
        assert len(cand.replace(",", " , ").split()) <= 40
    # no room at all: nothing new is possible, an empty list rather than an over-long prompt
    assert RulesProposer().propose(state("a red fox in the snow", max_prompt_tokens=8), 3) == []


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="max_edits"):
        RulesProposer(max_edits=0)
    with pytest.raises(ValueError, match="base"):
        RulesProposer(base="worst")
    with pytest.raises(ValueError, match="category"):
        RulesProposer({"categories": {"lighting": [{"tag": "x"}]}})
    with pytest.raises(ValueError, match="not found"):
        RulesProposer(str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="n must"):
        RulesProposer().propose(state("a fox"), 0)


def test_registry_with_custom_vocabulary(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"categories": {"light": [{"tag": "neon glow", "sentence": "lit by neon"}]}}')
    p = registry.create("proposer", f"rules:{path}", reuse=False)
    assert p.propose(state("a street at night"), 3) == ["a street at night, neon glow"]
