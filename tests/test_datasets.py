"""Prompt-set readers of `mmopt batch`: every format, bad rows with line numbers, filters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmopt.apps.datasets import filter_prompts, geneval_questions, guess_format, load_prompts

# the project's shared data sits beside the checkout (tests only: mmopt never needs it at run time)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="the shared data folder is not beside the checkout")


def test_parti_tsv_bad_rows_are_reported_with_their_line(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tBasic\t\nonly-one-cell\n\t\t\t\n"
                 "a dog\tAnimals\tImagination\t\n", encoding="utf-8")
    ps = load_prompts(f)
    assert ps.format == "parti"
    assert [(i.line, i.prompt, i.category, i.challenge) for i in ps.items] == [
        (2, "a cat", "Animals", "Basic"), (5, "a dog", "Animals", "Imagination")]
    assert [(b.line, b.reason) for b in ps.bad] == [(3, "expected 4 tab-separated columns, got 1"), (4, "empty prompt")]


def test_every_plain_format(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\na red cube\n\nblue ball\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("prompt,category,tags\na cat,animals,\"x,y\"\n,animals,\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"prompt": "a cat", "questions": ["Is there a cat?"]}\nnot json\n[1]\n',
                                      encoding="utf-8")
    (tmp_path / "d.csv").write_text("Prompts,Category\nA red colored car.,Colors\n", encoding="utf-8")
    (tmp_path / "e.json").write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 1, "id": 7, "caption": "A man riding a horse."}, {"image_id": 2}]}), encoding="utf-8")
    txt = load_prompts(tmp_path / "a.txt")
    assert [(i.line, i.prompt) for i in txt.items] == [(2, "a red cube"), (4, "blue ball")]
    csv_ = load_prompts(tmp_path / "b.csv")
    assert csv_.items[0].tags == ("x", "y") and [b.line for b in csv_.bad] == [3]
    jl = load_prompts(tmp_path / "c.jsonl")
    assert jl.items[0].questions[0].question == "Is there a cat?"
    assert [(b.line, b.reason.split(":")[0]) for b in jl.bad] == [(2, "not JSON"), (3, "expected an object with 'prompt', got list")]
    db = load_prompts(tmp_path / "d.csv")
    assert db.format == "drawbench" and db.items[0].category == "Colors"
    coco = load_prompts(tmp_path / "e.json")
    assert coco.format == "coco" and coco.items[0].prompt == "A man riding a horse." and coco.bad[0].line == 2


def test_image_folder_with_sidecar_prompts(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    (tmp_path / "one.txt").write_text("a red circle\n", encoding="utf-8")
    Image.new("RGB", (8, 8)).save(tmp_path / "two.png")
    ps = load_prompts(tmp_path)
    assert ps.format == "folder" and ps.items[0].prompt == "a red circle" and ps.items[0].image.endswith("one.png")
    assert "no sidecar prompt file two.txt" in ps.bad[0].reason


def test_unknown_filter_lists_the_valid_ones(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tBasic\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown category \['Animalz'\]; valid category values in this file: Animals"):
        filter_prompts(load_prompts(f), category=["Animalz"])
    (tmp_path / "x.bin").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot tell the format"):
        guess_format(tmp_path / "x.bin")


def test_geneval_annotations_become_dsg_questions():
    qs = geneval_questions({"include": [{"class": "dog", "count": 1, "color": "red"},
                                        {"class": "car", "count": 1, "position": ["left of", 0]}],
                            "exclude": [{"class": "dog", "count": 2}]})
    assert [q.question for q in qs] == ["Is there a dog?", "Is the dog red?", "Is there a car?",
                                        "Is the car left of the dog?", "Are there fewer than 2 dogs?"]
    assert qs[1].dependencies == (1,) and qs[3].dependencies == (3, 1)


@needs_data
def test_shared_datasets_load_in_full():
    parti = load_prompts(DATA / "partiprompts" / "PartiPrompts.tsv")
    assert (len(parti.items), len(parti.bad)) == (1632, 0) and "Animals" in parti.categories()
    geneval = load_prompts(DATA / "geneval" / "evaluation_metadata.jsonl")
    assert geneval.format == "geneval" and len(geneval.items) == 553 and all(i.questions for i in geneval.items)
    dsg = load_prompts(DATA / "dsg" / "dsg-1k-anns.csv")
    assert dsg.format == "dsg1k" and len(dsg.items) == 1060 and all(i.questions for i in dsg.items)
    sample = filter_prompts(parti, category=["Animals"], shuffle=True, seed=3, limit=5)
    assert len(sample.items) == 5 and {i.category for i in sample.items} == {"Animals"}
    assert [i.key for i in sample.items] == [i.key for i in filter_prompts(parti, category=["Animals"], shuffle=True,
                                                                             seed=3, limit=5).items]
