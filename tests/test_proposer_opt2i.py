"""OPT2I proposer: meta-prompt, filtering, retries (scripted LLM), and the real embedded SmolLM2."""
import random

import pytest

from mmopt import registry
from mmopt.errors import LLMError
from mmopt.proposers.opt2i import OPT2IProposer, from_name, load_template
from mmopt.protect import check
from mmopt.strategies import TopKHistory
from mmopt.types import SearchState, Trial


class ScriptedLLM:
    """Replays replies and records requests: for parsing-level tests only."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []

    def chat(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None):
        self.requests.append({"messages": messages, "n": n, "seed": seed, "max_tokens": max_tokens,
                              "temperature": temperature})
        reply = self.replies.pop(0) if self.replies else ""
        if isinstance(reply, Exception):
            raise reply
        return [reply]


def trial(i, prompt, objective, feedback=""):
    return Trial(index=i, iteration=i, prompt=prompt, objective=objective, scores={"clip": objective},
                 feedback=feedback)


def make_state(trials=(), *, intent="a red cat sitting on a blue chair", seed=0, k=10, **kw):
    """A state whose history is what the top-k strategy hands the proposer."""
    trials = list(trials)
    return SearchState(intent=intent, iteration=1, trials=trials, history=TopKHistory(k).history(trials),
                       rng=random.Random(seed), **kw)


def user_text(llm, i=-1):
    return llm.requests[i]["messages"][-1]["content"]


def test_meta_prompt_has_every_part():
    trials = [trial(0, "a red cat on a blue chair", 0.61, "Is the chair blue? no"),
              trial(1, "red cat, blue chair", 0.70),
              trial(2, "a cat", 0.20)]
    llm = ScriptedLLM(["1. a red cat curled on a blue wooden chair"])
    p = OPT2IProposer(llm)
    state = make_state(trials, intent="a <keep>red cat</keep> sitting on a blue chair", prompt_style="sentences",
                       max_prompt_tokens=120, protected=("red cat",), k=2)
    assert p.propose(state, 3) == ["a red cat curled on a blue wooden chair"]
    text = user_text(llm)
    assert "a red cat sitting on a blue chair" in text and "<keep>" not in text      # intent, tags stripped
    assert "descriptive sentences" in text and "120 tokens" in text                 # style and budget
    assert "Write 3 new prompts" in text and "numbered list" in text                # N distinct revisions
    assert '"red cat"' in text                                                      # protected spans
    # the strategy's top-2 history, ascending: 0.61 then 0.70; the 0.20 trial is beyond k
    assert text.index("a red cat on a blue chair | 0.610") < text.index("red cat, blue chair | 0.700")
    assert "a cat |" not in text and "0.200" not in text
    assert "Is the chair blue? no" in text                                          # scorer feedback
    assert llm.requests[0]["messages"][0]["role"] == "system"


def test_tags_style_and_no_history():
    llm = ScriptedLLM(["1. red cat, blue chair, studio photo"])
    OPT2IProposer(llm).propose(make_state(), 2)
    text = user_text(llm)
    assert "comma-separated keywords" in text and "not scored yet" in text and "$" not in text


def test_pending_prompts_are_listed_unscored_and_never_proposed_again():
    # lookahead: the candidates still rendering come first, marked not scored yet, before the
    # scored history (best last); a reply that repeats one of them is dropped
    trials = [trial(0, "a red cat sitting on a blue chair", 0.5)]
    llm = ScriptedLLM(["1. red cat, blue chair, soft light\n2. a red cat on a blue stool"])
    p = OPT2IProposer(llm)
    out = p.propose(make_state(trials, pending=("red cat, blue chair, soft light",)), 2)
    assert out == ["a red cat on a blue stool"] and p.last_stats["rejected_seen"] == 1
    text = user_text(llm)
    assert text.index("red cat, blue chair, soft light | not scored yet") < text.index(
        "a red cat sitting on a blue chair | 0.500")
    # with nothing scored yet, the pending prompts replace the unscored intent line
    llm = ScriptedLLM(["1. a crimson cat on a navy chair"])
    OPT2IProposer(llm).propose(make_state(pending=("red cat, blue chair",)), 1)
    lines = [ln for ln in user_text(llm).splitlines() if "not scored yet" in ln]
    assert lines == ["red cat, blue chair | not scored yet"]


def test_filters_seen_duplicates_and_limits_to_n():
    trials = [trial(0, "a red cat sitting on a blue chair", 0.5), trial(1, "red cat, blue chair", 0.6)]
    reply = ("Sure! Here are 4 prompts:\n1. Red cat, blue chair\n2. a red cat on a blue velvet chair\n"
             "3. A red cat on a blue velvet chair.\n4. a ginger cat on a cobalt chair, soft light\n"
             "5. a red cat napping on a blue chair")
    p = OPT2IProposer(ScriptedLLM([reply]))
    out = p.propose(make_state(trials), 2)
    assert out == ["a red cat on a blue velvet chair", "a ginger cat on a cobalt chair, soft light"]
    # the parser already merged the case variant; the tried prompt is dropped here
    assert p.last_stats["rejected_seen"] == 1 and p.last_stats["attempts"] == 1


def test_protected_spans_repaired():
    llm = ScriptedLLM(["1. a ginger cat on a chair\n2. <lora:film:0.7> a red cat asleep on a (blue chair:1.1)\n"
                       "3. <lora:film:0.7> a red cat on a blue chair"])
    state = make_state(intent="<lora:film:0.7> a red cat on a (blue chair:1.3)")
    p = OPT2IProposer(llm)
    out = p.propose(state, 3)
    # the third, once repaired, is the intent itself: dropped as already seen
    assert out == ["<lora:film:0.7> a ginger cat on a chair, (blue chair:1.3)",
                   "<lora:film:0.7> a red cat asleep on a (blue chair:1.3)"]
    assert all(check(c, ["<lora:film:0.7>", "(blue chair:1.3)"]) == [] for c in out)
    assert p.last_stats["repaired"] == 3 and p.last_stats["rejected_seen"] == 1


def test_retries_with_new_seeds_then_returns_empty():
    llm = ScriptedLLM(["Sure!", "<think>hmm</think>", "1. a red cat sitting on a blue chair"])
    p = OPT2IProposer(llm, max_retries=2)
    assert p.propose(make_state(seed=3), 2) == []
    seeds = [r["seed"] for r in llm.requests]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    # the seeds come from state.rng: the same run seed gives the same LLM seeds
    again = ScriptedLLM([""] * 3)
    OPT2IProposer(again, max_retries=2).propose(make_state(seed=3), 2)
    assert [r["seed"] for r in again.requests] == seeds
    expected_rng = random.Random(3)
    assert seeds == [expected_rng.randrange(2**31) for _ in range(3)]


def test_retry_succeeds_after_an_llm_error():
    llm = ScriptedLLM([LLMError("HTTP 503 after retries"), "1. a red cat on a blue armchair"])
    p = OPT2IProposer(llm)
    assert p.propose(make_state(), 2) == ["a red cat on a blue armchair"]
    assert p.last_stats["attempts"] == 2 and "503" in p.last_stats["errors"][0]


def test_rambling_reply_is_rejected():
    long = "a red cat " + "and a very long story about it " * 30
    p = OPT2IProposer(ScriptedLLM([long, long, long]), max_retries=2)
    assert p.propose(make_state(max_prompt_tokens=20), 1) == []
    assert p.last_stats["rejected_length"] == 3


def test_bad_arguments():
    with pytest.raises(TypeError, match="chat"):
        OPT2IProposer(object())
    with pytest.raises(ValueError, match="temperature"):
        OPT2IProposer(ScriptedLLM([]), temperature=9)
    p = OPT2IProposer(ScriptedLLM([]))
    with pytest.raises(ValueError, match="n must"):
        p.propose(make_state(), 0)
    with pytest.raises(TypeError, match="SearchState"):
        p.propose({"intent": "x"}, 1)


def test_templates(tmp_path):
    assert "$intent" in load_template()
    custom = "Intent: $intent\nHistory:\n$history\nGive $n prompts."
    llm = ScriptedLLM(["1. a red cat on a blue stool"])
    OPT2IProposer(llm, template=custom).propose(make_state(), 2)
    assert user_text(llm) == ("Intent: a red cat sitting on a blue chair\nHistory:\n"
                              "a red cat sitting on a blue chair | not scored yet\nGive 2 prompts.")
    path = tmp_path / "t.txt"
    path.write_text(custom)
    assert load_template(str(path)) == custom
    with pytest.raises(ValueError, match="unknown placeholders"):
        load_template("$intent $history $n $oops")
    with pytest.raises(ValueError, match="missing"):
        load_template("$intent only")
    with pytest.raises(ValueError, match="neither"):
        load_template("/no/such/template.txt")


def test_registry_and_from_name():
    llm = ScriptedLLM([])
    p = registry.create("proposer", "opt2i", llm=llm, temperature=0.5, reuse=False)
    assert isinstance(p, OPT2IProposer) and p.llm is llm and p.temperature == 0.5
    # the run's LLM reaches "opt2i" through the registry's run context
    q = registry.create("proposer", "opt2i", context=registry.RunContext(llm=llm), reuse=False)
    assert q.llm is llm
    with pytest.raises(ValueError, match="not both"):
        from_name("smollm2", llm=llm)


# ------------------------------------------------------------ the real embedded model

def test_real_smollm2_proposes_new_candidates_keeping_keep_span():
    # default LLM: the embedded SmolLM2 (135M: many replies are unusable, hence the retries)
    proposer = registry.create("proposer", "opt2i", max_retries=6, reuse=False)
    intent = "a <keep>red cat</keep> sitting on a blue chair"
    state = make_state([trial(0, "a red cat sitting on a blue chair", 0.6)], intent=intent, seed=1,
                       protected=("red cat",))
    out = proposer.propose(state, 3)
    assert 1 <= len(out) <= 3
    assert len({c.lower() for c in out}) == len(out)
    assert all("red cat" in c and c != "a red cat sitting on a blue chair" for c in out)
    # same run seed, same proposals
    again = proposer.propose(make_state([trial(0, "a red cat sitting on a blue chair", 0.6)], intent=intent,
                                        seed=1, protected=("red cat",)), 3)
    assert again == out


def test_off_topic_and_echoed_instructions_rejected():
    reply = ("1. Prompts tried so far, worst to best, with scores\n2. a dolphin named Emily in California\n"
             "3. a ginger cats lounging on a navy chair")
    p = OPT2IProposer(ScriptedLLM([reply]), min_overlap=1)
    assert p.propose(make_state(), 3) == ["a ginger cats lounging on a navy chair"]  # 'cat' shared
    assert p.last_stats["rejected_off_topic"] == 2
    lenient = OPT2IProposer(ScriptedLLM([reply]))  # default: only echoes of the instructions go
    assert lenient.propose(make_state(), 3) == ["a dolphin named Emily in California",
                                                "a ginger cats lounging on a navy chair"]
    assert lenient.last_stats["rejected_off_topic"] == 1


def test_history_remarks_keep_failed_questions_and_drop_seeds_where_nothing_failed():
    """The remarks on a history line come from the real DSG feedback as the objective
    assembles it over seeds; a seed where every question passed and the count header
    say nothing the LLM can act on, so they cost no prompt tokens."""
    from mmopt.objective import Objective
    from mmopt.scorers.dsg import _feedback
    from mmopt.types import Score

    def rows(failed):
        return [{"question": q, "score": 0.0 if q in failed else 1.0, "answer": "no" if q in failed else "yes",
                 "parent_failed": False} for q in ("Is there a circle?", "Is the circle red?", "Is it left?")]

    per_seed = [rows({"Is the circle red?"}), rows({"Is the circle red?"}), rows(set()), rows(set())]
    scores = {"dsg": [Score("dsg", 0.5, {"feedback": _feedback(r)}) for r in per_seed]}
    feedback = Objective({"dsg": 1.0}).evaluate(scores).feedback
    assert "All 3 DSG questions were answered yes. (2/4 seeds)" in feedback  # what the LLM used to read
    trial = Trial(1, 1, "a red circle on the left", 0.5, {"dsg": 0.5}, feedback=feedback)
    remarks = OPT2IProposer(ScriptedLLM([])).remarks(trial)
    assert remarks == "- Is the circle red? (answered no) (2/4)"
    assert "answered yes" not in remarks and "failed:" not in remarks


def test_parallel_requests_ask_for_spares_and_cap_each_reply_by_the_request_length():
    # spare: n + spare one-revision replies in one request; tokens_per_word: each capped at that
    # many tokens per word of the request (at least 24, within the window) instead of the roomier
    # default (4 per content word + 24)
    intent = "two small blue triangles above a cyan triangle and a red disc"  # 12 words, 8 content words
    for kw, n_asked, cap in (({}, 3, 4 * 8 + 24), ({"spare": 2}, 5, 56), ({"spare": 2, "tokens_per_word": 3}, 5, 36),
                             ({"tokens_per_word": 1}, 3, 24), ({"tokens_per_word": 20}, 3, 77 + 8)):
        llm = ScriptedLLM(["1. two small blue triangles above a cyan triangle and a red disc, flat colours"])
        OPT2IProposer(llm, mode="parallel", **kw).propose(make_state(intent=intent), 3)
        assert (llm.requests[0]["n"], llm.requests[0]["max_tokens"]) == (n_asked, cap), kw
    for bad in ({"spare": -1}, {"spare": 1.5}, {"tokens_per_word": 0.5}, {"tokens_per_word": True}):
        with pytest.raises(ValueError):
            OPT2IProposer(ScriptedLLM([]), mode="parallel", **bad)
