"""The rewrite parser on messy LLM outputs (no model needed)."""
import pytest

from mmopt.llm.parsing import clean_item, normalize_for_dedup, parse_prompts


@pytest.mark.parametrize("marker", ["1.", "1)", "(1)", "1:", "#1", "1 -"])
def test_numbered_markers(marker):
    second = marker.replace("1", "2")
    text = f"{marker} a red cat on a mat\n{second} a blue dog in the park"
    assert parse_prompts(text) == ["a red cat on a mat", "a blue dog in the park"]


@pytest.mark.parametrize("bullet", ["-", "*", "•", "+"])
def test_bullets(bullet):
    text = f"{bullet} a red cat on a mat\n{bullet} a blue dog in the park\n"
    assert parse_prompts(text) == ["a red cat on a mat", "a blue dog in the park"]


def test_preamble_and_closing_chatter_are_dropped():
    text = (
        "Sure! Here are 3 revised prompts:\n\n"
        "1. A majestic lion at sunrise, golden light, highly detailed\n"
        "2. A majestic lion resting on a rock, cinematic lighting\n"
        "3. Close-up portrait of a lion, sharp focus\n\n"
        "I hope these help! Let me know if you want more."
    )
    assert parse_prompts(text) == [
        "A majestic lion at sunrise, golden light, highly detailed",
        "A majestic lion resting on a rock, cinematic lighting",
        "Close-up portrait of a lion, sharp focus",
    ]


def test_json_list_and_object_and_fenced():
    assert parse_prompts('["a cat in a hat", "a dog on a log"]') == ["a cat in a hat", "a dog on a log"]
    assert parse_prompts('{"prompts": ["a cat in a hat", "a dog on a log"]}') == [
        "a cat in a hat", "a dog on a log"]
    fenced = 'Here you go:\n```json\n{"revised_prompts": ["a cat in a hat", "a dog on a log"]}\n```\nDone.'
    assert parse_prompts(fenced) == ["a cat in a hat", "a dog on a log"]
    objs = '[{"prompt": "a cat in a hat", "reason": "more detail"}, {"prompt": "a dog on a log"}]'
    assert parse_prompts(objs) == ["a cat in a hat", "a dog on a log"]


def test_invalid_json_falls_back_to_lines():
    # a reply cut off inside JSON: the complete strings are salvaged, keys are not prompts
    assert parse_prompts('["a cat in a hat", "a dog on a log",') == ["a cat in a hat", "a dog on a log"]
    assert parse_prompts('{"prompts": ["a cat in a hat", "a dog') == ["a cat in a hat"]
    # a weighting bracket that is not JSON stays a prompt
    assert parse_prompts("a castle, [foggy], (moat:1.3)") == ["a castle, [foggy], (moat:1.3)"]


def test_code_fence_without_json():
    text = "```\n1. a lighthouse in a storm\n2. a lighthouse at night, stars\n```"
    assert parse_prompts(text) == ["a lighthouse in a storm", "a lighthouse at night, stars"]


def test_quotes_are_removed_and_explanations_after_quotes_dropped():
    text = (
        '1. "a red bicycle leaning on a brick wall" - This prompt emphasises texture.\n'
        "2. “a red bicycle in the rain”\n"
        "3. 'a red bicycle, studio photo'\n"
    )
    assert parse_prompts(text) == [
        "a red bicycle leaning on a brick wall",
        "a red bicycle in the rain",
        "a red bicycle, studio photo",
    ]


def test_reasoning_blocks_removed():
    text = "<think>The user wants a cat. Maybe: a cat sleeping.</think>\n1. a tabby cat asleep on a sofa"
    assert parse_prompts(text) == ["a tabby cat asleep on a sofa"]
    # template opened the block already: only the closing tag appears
    assert parse_prompts("considering options...\n</think>\n- a snowy owl at night") == [
        "a snowy owl at night"]
    # reply cut inside reasoning: the unfinished reasoning is no prompt
    assert parse_prompts("- a snowy owl at night\n<think>maybe also an eagle flying high") == [
        "a snowy owl at night"]


def test_special_tokens_removed_but_prompt_syntax_kept():
    text = "<|im_start|>assistant\n1. <lora:film:0.8> a harbour at dawn, (mist:1.2)<|im_end|>\n2. a harbour, [boats]</s>"
    assert parse_prompts(text) == ["<lora:film:0.8> a harbour at dawn, (mist:1.2)", "a harbour, [boats]"]
    assert parse_prompts("<keep>a blue vase</keep> on a table<|endoftext|>") == [
        "<keep>a blue vase</keep> on a table"]


def test_trailing_explanations_removed():
    text = (
        "1. a knight on a horse, dramatic sky - This version emphasises the sky.\n"
        "2. a knight on a horse at dusk (emphasises mood)\n"
        "3. a knight on a horse in armour. This prompt adds detail to the armour.\n"
        "4. a knight on a horse — focuses on motion\n"
    )
    assert parse_prompts(text) == [
        "a knight on a horse, dramatic sky",
        "a knight on a horse at dusk",
        "a knight on a horse in armour.",
        "a knight on a horse",
    ]


def test_explanation_lines_between_items_are_ignored():
    text = (
        "1. a koi pond in autumn\n"
        "This prompt highlights the season.\n"
        "2. a koi pond under cherry blossoms\n"
        "Explanation: adds flowers.\n"
    )
    assert parse_prompts(text) == ["a koi pond in autumn", "a koi pond under cherry blossoms"]


def test_labels():
    text = (
        "Prompt 1: a glass teapot on a wooden table\n"
        "**Revised:** a glass teapot, soft window light\n"
        "**Prompt 3:** a glass teapot, macro photo\n"
        "Revised prompt 4 - a glass teapot with steam\n"
        "Option 5. a glass teapot at night\n"
    )
    assert parse_prompts(text) == [
        "a glass teapot on a wooden table",
        "a glass teapot, soft window light",
        "a glass teapot, macro photo",
        "a glass teapot with steam",
        "a glass teapot at night",
    ]


def test_stacked_marker_label_and_bold():
    assert clean_item('2) **Prompt 2:** "a red fox in snow" - This prompt emphasises colour.') == "a red fox in snow"
    assert clean_item("1. **a red fox in snow**") == "a red fox in snow"


def test_dedup_is_case_and_whitespace_insensitive():
    text = "1. A red cat\n2. a  red   cat.\n3. a red dog\n4. A RED DOG"
    assert parse_prompts(text) == ["A red cat", "a red dog"]
    assert normalize_for_dedup("A  Red Cat.") == normalize_for_dedup("a red cat")


def test_empty_and_too_short_items_removed():
    text = "1. \n2. ok\n3. ...\n4. a lamp on a desk\n5. **\n"
    assert parse_prompts(text) == ["a lamp on a desk"]
    assert parse_prompts("") == []
    assert parse_prompts("   \n  ") == []
    assert parse_prompts("<think>only thoughts</think>") == []
    assert parse_prompts(None) == []


def test_max_items():
    text = "\n".join(f"{i}. prompt number {i} with words" for i in range(1, 9))
    assert len(parse_prompts(text, max_items=3)) == 3
    assert parse_prompts(text, max_items=0) == []


def test_inline_preamble_and_commentary():
    assert parse_prompts("Here is the revised prompt: a fox in the snow, detailed") == [
        "a fox in the snow, detailed"]
    assert parse_prompts("Note: (cat:1.2) keeps the weight\n- a cat, (cat:1.2)") == ["a cat, (cat:1.2)"]
    assert parse_prompts("Here are 3 prompts:") == []


def test_plain_lines_without_markers():
    text = "Here are some ideas:\na cabin in snowy woods, warm light\na cabin by a lake at dawn"
    assert parse_prompts(text) == ["a cabin in snowy woods, warm light", "a cabin by a lake at dawn"]
    assert parse_prompts("A single rewritten prompt about a fox.") == ["A single rewritten prompt about a fox."]


def test_indented_continuation_joins_item():
    text = "1. a very long prompt about a city\n   at night with neon signs\n2. a second prompt here"
    assert parse_prompts(text) == ["a very long prompt about a city at night with neon signs",
                                   "a second prompt here"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="str"):
        parse_prompts(123)
    with pytest.raises(ValueError, match="max_items"):
        parse_prompts("a cat", max_items=-1)
    with pytest.raises(ValueError, match="min_chars"):
        parse_prompts("a cat", min_chars=0)


def test_small_model_style_output():
    # The shape SmolLM2-135M tends to produce: a label, repeats, chatter.
    text = (
        "Revised prompts:\n"
        "1. A cat sitting on a windowsill, sunlight\n"
        "2. A cat sitting on a windowsill, sunlight\n"
        "3. A cat sitting on a windowsill in the morning sun, detailed fur\n"
        "Note: these prompts keep the original meaning.<|im_end|>"
    )
    assert parse_prompts(text) == [
        "A cat sitting on a windowsill, sunlight",
        "A cat sitting on a windowsill in the morning sun, detailed fur",
    ]


def test_scores_copied_from_the_history_are_removed():
    text = "1. a couch, blue chair, photo score: 0.980, red cat\n2. a cat on a sofa (score 0.7)\n3. a dog  Score: 12/100"
    assert parse_prompts(text) == ["a couch, blue chair, photo, red cat", "a cat on a sofa", "a dog"]


def test_answer_labels_of_small_models():
    assert parse_prompts("A: a jaguar in the arctic, red cat") == ["a jaguar in the arctic, red cat"]
    assert parse_prompts("Assistant: a cat on a mat\nA cat on a sofa") == ["a cat on a mat", "A cat on a sofa"]


def test_small_model_residue():
    text = ("1. A red cat sitting on a blue chair | 10\n2. A **red cat** by a **blue chair**\n"
            "*A Red Cat, Blue Chair\n4. Sentence: 'A red cat lies on a blue chair.'")
    assert parse_prompts(text) == ["A red cat sitting on a blue chair", "A red cat by a blue chair",
                                   "A Red Cat, Blue Chair", "A red cat lies on a blue chair."]
    assert parse_prompts("*a moody harbour*") == ["a moody harbour"]
    assert parse_prompts("a (red:1.2) cat, <lora:x:1>, [blue] chair | score 0.5") == [
        "a (red:1.2) cat, <lora:x:1>, [blue] chair"]


def test_history_entries_run_together_on_one_line_are_split_at_their_scores():
    # a small LLM echoing the "prompt | score" history without line breaks
    text = "a red cat | 0.900 a red cat at dusk, warm light | not scored yet"
    assert parse_prompts(text) == ["a red cat", "a red cat at dusk, warm light"]
    assert parse_prompts("1. a blue dog | score: 0.7 a blue dog in snow") == ["a blue dog", "a blue dog in snow"]
    # a bar that is not followed by a score stays part of the prompt
    assert parse_prompts("a cat with 3 | legs") == ["a cat with 3 | legs"]


def test_unbalanced_quotes():
    assert parse_prompts('"A red cat sitting on a blue chair') == ["A red cat sitting on a blue chair"]
    assert parse_prompts('a red cat on a blue chair"') == ["a red cat on a blue chair"]
    assert parse_prompts("a cat's toy on a chair") == ["a cat's toy on a chair"]


# --- ListStop: ending a list reply once it holds what the caller keeps -------------------------

def test_list_stop_waits_for_finished_lines_and_enough_usable_items():
    from mmopt.llm.parsing import ListStop

    keep_cats = ListStop(2, lambda items: [i for i in items if "cat" in i], key="cats")
    assert keep_cats("1. a red cat\n2. a blue cat") is None         # the second line may still grow
    assert keep_cats("1. a red cat\n2. a blue cat\n") is None       # ... or be continued by an indented line
    assert keep_cats("1. a red cat\n2. a blue cat\n   at dusk\n") is None
    text = "1. a red cat\n2. a blue cat\n   at dusk\n3"
    end = keep_cats(text)
    assert text[:end] == "1. a red cat\n2. a blue cat\n   at dusk"
    assert parse_prompts(text[:end]) == ["a red cat", "a blue cat at dusk"]
    # items the caller would not keep do not count
    assert keep_cats("1. a red cat\n2. a green dog\n3. a dog\n4") is None
    assert keep_cats("1. a red cat\n2. a green dog\n3. a fat cat\n\n") is not None
    # lines with no list item never stop a reply: the rest may hold the list that wins
    assert keep_cats("a red cat\na blue cat\nand then") is None
    assert "cats" in keep_cats.key and keep_cats.key != ListStop(3, len, key="cats").key


def test_list_stop_rejects_bad_settings_with_one_line():
    from mmopt.llm.parsing import ListStop

    with pytest.raises(ValueError, match="need must be an int >= 1, got 0"):
        ListStop(0, list, key="k")
    with pytest.raises(TypeError, match="usable must be a callable"):
        ListStop(1, "all", key="k")
    with pytest.raises(ValueError, match="key must be a non-empty str"):
        ListStop(1, list, key="")
