"""Protected spans: finding, stripping keep tags, checking and repairing rewrites."""
import pytest

from mmopt.protect import check, find_protected, repair, strip_keep_tags


def test_find_all_kinds_in_order():
    prompt = "<lora:filmgrain:0.8> <keep>a sks dog</keep> on a beach, (sunset:1.3), [blurry], (two words:0.7)"
    assert find_protected(prompt) == [
        "<lora:filmgrain:0.8>", "a sks dog", "(sunset:1.3)", "[blurry]", "(two words:0.7)"]


def test_find_extra_trigger_words_and_dedup():
    assert find_protected("a photo of ohwx man", extra=["ohwx", "ohwx"]) == ["ohwx"]
    assert find_protected("plain prompt", extra="trigger") == ["trigger"]  # one word, not chars
    assert find_protected("plain prompt") == []
    assert find_protected("(cat:1.2) and (cat:1.2)") == ["(cat:1.2)"]


def test_keep_content_not_split_into_inner_spans():
    assert find_protected("<keep>a (red:1.2) car</keep>, night") == ["a (red:1.2) car"]
    assert find_protected("<KEEP>Tower Bridge</KEEP> at dawn") == ["Tower Bridge"]


def test_plain_parentheses_are_not_weights():
    assert find_protected("a cat (a tabby) on a mat") == []


def test_find_bad_input():
    with pytest.raises(TypeError, match="str"):
        find_protected(None)
    with pytest.raises(ValueError, match="unbalanced"):
        find_protected("<keep>a cat on a mat")
    with pytest.raises(ValueError, match="trigger"):
        find_protected("a cat", extra=["  "])


def test_strip_keep_tags():
    assert strip_keep_tags("<keep>a red car</keep>, studio light") == "a red car, studio light"
    assert strip_keep_tags("<lora:x:1> (a:1.1)") == "<lora:x:1> (a:1.1)"


def test_check_reports_missing():
    spans = ["<lora:x:0.5>", "(sunset:1.3)", "sks dog"]
    assert check("<lora:x:0.5> a sks dog at (sunset:1.3)", spans) == []
    assert check("a sks dog at sunset", spans) == ["<lora:x:0.5>", "(sunset:1.3)"]
    assert check("<keep>sks dog</keep> <lora:x:0.5> (sunset:1.3)", spans) == []


def test_repair_noop_when_complete():
    cand = "a sks dog at (sunset:1.3)"
    assert repair(cand, ["(sunset:1.3)", "sks dog"]) == cand


def test_repair_restores_weight_in_place():
    assert repair("a dog on a beach at sunset", ["(sunset:1.3)"]) == "a dog on a beach at (sunset:1.3)"
    assert repair("a dog at (sunset:1.1)", ["(sunset:1.3)"]) == "a dog at (sunset:1.3)"
    assert repair("a dog, blurry background", ["[blurry]"]) == "a dog, [blurry] background"


def test_repair_fixes_case_variant_and_appends_missing():
    assert repair("a photo of a Sks Dog running", ["sks dog"]) == "a photo of a sks dog running"
    assert repair("a dog on a beach.", ["a sks dog"]) == "a dog on a beach, a sks dog"
    assert repair("a cat on a mat", ["<lora:film:0.8>"]) == "<lora:film:0.8> a cat on a mat"


def test_repair_impossible():
    assert repair("   ", ["sks"]) is None
    assert repair("a very long candidate prompt", ["a trigger phrase"], max_chars=30) is None


def test_repair_result_always_passes_check():
    spans = find_protected("<lora:a:1> <keep>the Eiffel Tower</keep> at (night:1.2), [fog]")
    for cand in ["paris at night with fog", "a tower", "", "THE EIFFEL TOWER, night, fog, (night:0.9)"]:
        fixed = repair(cand, spans)
        if cand.strip():
            assert fixed is not None and check(fixed, spans) == []
        else:
            assert fixed is None


def test_repair_bad_input():
    with pytest.raises(TypeError, match="sequence"):
        repair("a cat", "cat")
    with pytest.raises(ValueError, match="max_chars"):
        repair("a cat", ["cat"], max_chars=0)
