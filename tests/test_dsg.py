"""DSG: aggregation, DSG-1k loader, LLM output parsing, the scorer end to end."""
from __future__ import annotations

import csv
import importlib.util
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _vqa_tiny import build_tiny_blip_vqa  # noqa: E402  (also guards a broken torchvision)
from PIL import Image  # noqa: E402

from mmopt import registry  # noqa: E402
from mmopt.cache import Cache  # noqa: E402
from mmopt.scorers.dsg import (DSGQuestionGenerator, DSGScorer, dsg_aggregate, load_dsg_csv,  # noqa: E402
                               parse_dsg_output)
from mmopt.types import DSGQuestion, Generation, VQAAnswer  # noqa: E402

DSG1K = Path(os.environ.get("MMOPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "dsg" / "dsg-1k-anns.csv"

# cat (1) -> red (2), on mat (3, parents 1 and 4), mat (4) ; fur (5) is a child of red (2)
QS = [
    DSGQuestion(1, "entity - whole (cat)", "Is there a cat?"),
    DSGQuestion(2, "attribute - color (cat, red)", "Is the cat red?", (1,)),
    DSGQuestion(3, "relation - spatial (cat, mat, on)", "Is the cat on the mat?", (1, 4)),
    DSGQuestion(4, "entity - whole (mat)", "Is there a mat?"),
    DSGQuestion(5, "attribute - texture (cat, fluffy)", "Is the red cat fluffy?", (2,)),
]


# --------------------------------------------------------------- aggregation

def test_all_yes_scores_one():
    agg = dsg_aggregate(QS, {i: "yes" for i in range(1, 6)})
    assert agg["score"] == agg["score_without_dependencies"] == 1.0


def test_parent_no_zeroes_direct_children_only():
    # mat answered no: question 3 (parent 4) is zeroed although answered yes.
    agg = dsg_aggregate(QS, {1: "yes", 2: "no", 3: "yes", 4: "no", 5: "yes"})
    per = {r["id"]: r["score"] for r in agg["questions"]}
    assert per == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}
    assert agg["score"] == pytest.approx(1 / 5)
    assert agg["score_without_dependencies"] == pytest.approx(3 / 5)


def test_only_direct_parents_count():
    # cat answered no, red answered yes (its parent failed -> 0), fluffy's direct
    # parent (red) was answered yes -> fluffy keeps its point: the rule is not transitive.
    agg = dsg_aggregate(QS, {1: "no", 2: "yes", 3: "no", 4: "yes", 5: "yes"})
    per = {r["id"]: r["score"] for r in agg["questions"]}
    assert per == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0}
    assert agg["score"] == pytest.approx(2 / 5)


def test_unanswerable_counts_zero_and_fails_children():
    answers = {1: VQAAnswer("unanswerable", 0.9), 2: VQAAnswer("yes", 0.8), 3: VQAAnswer("yes", 0.7),
               4: VQAAnswer("yes", 0.6), 5: VQAAnswer("no", 0.2)}
    agg = dsg_aggregate(QS, answers)
    per = {r["id"]: r for r in agg["questions"]}
    assert per[1]["score"] == 0.0 and per[1]["p_yes"] == 0.0
    assert per[2]["score"] == 0.0 and per[3]["score"] == 0.0  # parent 1 not answered yes
    assert agg["score"] == pytest.approx(1 / 5)
    # soft: mean p_yes with the same (hard) parent rule
    assert agg["soft_score"] == pytest.approx((0 + 0 + 0 + 0.6 + 0.2) / 5)
    assert agg["soft_score_without_dependencies"] == pytest.approx((0 + 0.8 + 0.7 + 0.6 + 0.2) / 5)


def test_missing_answer_is_unanswerable_and_empty_is_refused():
    agg = dsg_aggregate(QS[:1], {})
    assert agg["score"] == 0.0 and agg["questions"][0]["answer"] == "unanswerable"
    with pytest.raises(ValueError):
        dsg_aggregate([], {})


# --------------------------------------------------------------- CSV loader

def _write_csv(path: Path, rows):
    header = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
              "category_detailed", "tuple", "question_natural_language"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_loader_repairs_and_skips_malformed_rows(tmp_path):
    p = tmp_path / "anns.csv"
    _write_csv(p, [
        ["a", "a cat left of a dog", "cat", "1", "0", "entity", "whole", "entity - whole (cat)", "Is there a cat?"],
        ["a", "a cat left of a dog", "dog", "2", "0", "entity", "whole", "entity - whole (dog)", "Is there a dog?"],
        # a tuple argument leaked into the dependency column: repairable
        ["a", "a cat left of a dog", "x", "3", "1,2, dog", "relation", "spatial",
         "relation - spatial (cat, dog, left of)", "Is the cat left of the dog?"],
        # garbage dependency: skipped
        ["b", "a bird", "bird", "1", "zzz", "entity", "whole", "entity - whole (bird)", "Is there a bird?"],
        ["b", "a bird", "bird", "2", "0", "entity", "whole", "entity - whole (sky)", "Is there a sky?"],
        # no proposition id: skipped
        ["b", "a bird", "bird", "", "0", "entity", "whole", "entity - whole (x)", "Is there x?"],
    ])
    bank = load_dsg_csv(p)
    assert bank.stats.rows == 6 and bank.stats.repaired == 1 and bank.stats.skipped == 2
    assert [q.dependencies for q in bank["a"]] == [(), (), (1, 2)]
    assert [q.id for q in bank["b"]] == [2]
    assert bank.texts["a"] == "a cat left of a dog"
    skip = load_dsg_csv(p, malformed="skip")
    assert [q.id for q in skip["a"]] == [1, 2] and skip.stats.skipped == 3
    ref = load_dsg_csv(p, malformed="drop_item_dependencies")
    assert [q.dependencies for q in ref["a"]] == [(), (), ()]
    with pytest.raises(ValueError, match="malformed"):
        load_dsg_csv(p, malformed="nope")


def test_loader_refuses_wrong_format(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_dsg_csv(p)


@pytest.mark.skipif(not DSG1K.is_file(), reason="DSG-1k not present")
def test_loader_on_dsg1k():
    bank = load_dsg_csv(DSG1K)
    assert len(bank) == 1060 and bank.stats.rows == 8182
    assert bank.stats.repaired == 10 and bank.stats.skipped == 0
    q = bank["tifa160_0"]
    assert q[0].question == "Is there a Christmas tree?" and q[3].dependencies == (1, 2)


# --------------------------------------------------------------- parsing + generator

SCRIPTED = """Sure! Here are the facts:
1 | entity - whole (cat) | 0 | Is there a cat?
2. | attribute - color (cat, red) | 1 | Is the cat red
- 3 | relation - spatial (cat, mat, on) | 1,4 | Is the cat on the mat?
4 | entity - whole (mat) | - | Is there a mat?
4 | entity - whole (rug) | 0 | Is there a rug?
7 | entity - whole (cat) | 0 | Is there a cat?
this line is junk | with pipes
5 | other - count (cat, ==1) | [1] | Is there one cat?
"""


def test_parse_tolerates_junk_and_renumbers():
    qs = parse_dsg_output(SCRIPTED)
    assert [q.question for q in qs] == ["Is there a cat?", "Is the cat red?", "Is the cat on the mat?",
                                        "Is there a mat?", "Is there one cat?"]
    assert [q.id for q in qs] == [1, 2, 3, 4, 5]
    # parent 4 of question 3 is listed after it: dropped (no forward edges, no cycles)
    assert [q.dependencies for q in qs] == [(), (1,), (1,), (), (1,)]
    assert parse_dsg_output("nothing useful here") == []


class ScriptedLLM:
    """Returns a fixed text; counts calls (tests parsing and caching only)."""

    name = "scripted"

    def __init__(self, text):
        self.text, self.calls = text, 0

    def chat(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None):
        self.calls += 1
        assert "a red cat on a mat" in messages[-1]["content"]
        return [self.text] * n


def test_generator_caches_and_falls_back():
    cache = Cache(":memory:")
    llm = ScriptedLLM(SCRIPTED)
    gen = DSGQuestionGenerator(llm, cache=cache)
    qs, info = gen.generate_with_info("a red cat on a mat")
    assert len(qs) == 5 and info == {"fallback": False, "cached": False, "raw": SCRIPTED}
    assert gen("a red cat on a mat") == qs and llm.calls == 1  # second call from the cache
    junk = DSGQuestionGenerator(ScriptedLLM("I cannot help with that."), cache=cache)
    qs, info = junk.generate_with_info("a red cat on a mat.")
    assert info["fallback"] and [q.question for q in qs] == ["Does the image show a red cat on a mat?"]
    with pytest.raises(ValueError, match="placeholder"):
        DSGQuestionGenerator(llm, template="no placeholder", cache=cache)


# --------------------------------------------------------------- scorer

class CountingVQA:
    """Answers by a rule on the question text; counts calls (tests batching/aggregation)."""

    name = "rule"

    def __init__(self):
        self.calls = []

    def answer(self, images, questions):
        self.calls.append(len(questions))
        return [VQAAnswer("no" if "red" in q else "yes", 0.1 if "red" in q else 0.9) for q in questions]


def test_scorer_one_batched_call_and_feedback():
    vqa = CountingVQA()
    scorer = DSGScorer(vqa, questions={"a red fluffy cat on a mat": QS})
    gens = [Generation("p", s, Image.new("RGB", (8, 8))) for s in range(3)]
    scores = scorer.score(gens, "a red fluffy cat on a mat")
    assert vqa.calls == [15]  # 3 images x 5 questions in ONE call
    s = scores[0]
    assert s.scorer == "dsg:rule" and s.value == pytest.approx(3 / 5)
    assert s.details["score_without_dependencies"] == pytest.approx(3 / 5)
    assert "Is the cat red? (answered no)" in s.details["feedback"]
    assert "Is the red cat fluffy? (answered no)" in s.details["feedback"]
    assert {"id", "question", "tuple", "answer", "p_yes", "score"} <= set(s.details["questions"][0])
    # an intent the mapping does not know falls back to one whole-prompt question
    other = scorer.score(gens[:1], "a dog")[0]
    assert other.details["fallback"] is True and other.details["n_questions"] == 1
    with pytest.raises(ValueError, match="question source"):
        DSGScorer(vqa)


def test_dsg_with_tiny_blip_end_to_end(tmp_path):
    blip_dir = build_tiny_blip_vqa(tmp_path / "blip")
    scorer = registry.create("scorer", f"dsg:blip:{blip_dir}", questions={"a red cat on a mat": QS[:4]})
    gens = [Generation("p", 0, Image.new("RGB", (32, 32), (200, 30, 30))),
            Generation("p", 1, Image.effect_noise((32, 32), 50).convert("RGB"))]
    scores = scorer.score(gens, "a red cat on a mat")
    assert scores == scorer.score(gens, "a red cat on a mat")  # deterministic
    for s in scores:
        assert 0.0 <= s.value <= 1.0 and 0.0 <= s.details["soft_score"] <= 1.0
        assert s.value <= s.details["score_without_dependencies"]
        assert all(q["answer"] in ("yes", "no") for q in s.details["questions"])


_HAS_SMOLLM2_BACKEND = importlib.util.find_spec("mmopt.llm.gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2_BACKEND, reason="mmopt.llm.gguf (embedded SmolLM2) not available")
def test_generator_with_real_smollm2():
    llm = registry.create("llm", "smollm2")
    gen = DSGQuestionGenerator(llm, cache=Cache(":memory:"), max_tokens=200)
    start = time.monotonic()
    qs, info = gen.generate_with_info("a red cat on a mat")
    elapsed = time.monotonic() - start
    assert qs and all(isinstance(q, DSGQuestion) and q.question.endswith("?") for q in qs)
    assert all(d < q.id for q in qs for d in q.dependencies)
    assert gen.generate_with_info("a red cat on a mat")[0] == qs  # cached, same questions
    print(f"SmolLM2 DSG generation: {elapsed:.1f}s, fallback={info['fallback']}, {len(qs)} questions")
