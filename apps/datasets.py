"""Prompt sets for ``mmopt batch``: one reader per format, one record type, bad rows counted.

Formats (``--format``; guessed from the file when not given, :func:`guess_format`):

=========  =====================================================================
parti      PartiPrompts TSV: ``Prompt, Category, Challenge, Note``
coco       COCO captions annotations JSON: ``{"images": [...], "annotations": [...]}``
drawbench  DrawBench CSV: ``Prompts, Category``
geneval    GenEval ``evaluation_metadata.jsonl``: ``tag``, ``include``/``exclude`` (class,
           count, color, position); the annotations become the DSG questions directly
dsg1k      DSG-1k annotation CSV (``item_id, text, proposition_id, dependency, tuple,
           question_natural_language``); its questions are used directly
txt        one prompt per line (blank lines and ``#`` comments skipped)
csv        a header with ``prompt`` (or ``text``/``caption``), optional ``category``, ``tags``
jsonl      one object per line: ``prompt``, optional ``category``, ``tags``, ``questions``
folder     a folder of images with sidecar prompt files (``cat.png`` + ``cat.txt``)
=========  =====================================================================

Every reader returns a :class:`PromptSet`: the good rows as :class:`PromptItem`
(with the line they came from) and the bad ones as :class:`BadRow` (line
number and reason), so a batch accounts for every line of its input.

>>> ps = load_prompts("PartiPrompts.tsv")                     # doctest: +SKIP
>>> ps = filter_prompts(ps, category=["Animals"], limit=10)   # doctest: +SKIP
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmopt.types import DSGQuestion

FORMATS = ("parti", "coco", "drawbench", "geneval", "dsg1k", "txt", "csv", "jsonl", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_PROMPT_CHARS = 2000  # a longer "prompt" is a broken row, not a prompt


@dataclass(frozen=True)
class PromptItem:
    """One input prompt. ``line`` is where it came from (1-based; the key of its result)."""

    line: int
    prompt: str
    category: str = ""
    challenge: str = ""
    tags: tuple[str, ...] = ()
    questions: tuple[DSGQuestion, ...] | None = None  # DSG questions from the annotations
    image: str | None = None                          # a reference image (folder input)
    item_id: str = ""

    @property
    def key(self) -> str:
        """A stable id of this row: its line and a hash of its text (what resume looks up)."""
        from mmopt.cache import content_key

        return f"L{self.line:06d}-{content_key(self.prompt)[:8]}"


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass
class PromptSet:
    """The rows of one input file, good and bad, and what the filters removed."""

    source: str
    format: str
    items: list[PromptItem] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    filtered_out: int = 0

    def categories(self) -> list[str]:
        return sorted({i.category for i in self.items if i.category})

    def challenges(self) -> list[str]:
        return sorted({i.challenge for i in self.items if i.challenge})

    def all_tags(self) -> list[str]:
        return sorted({t for i in self.items for t in i.tags})


# --------------------------------------------------------------------------- format guess

def guess_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its suffix and first bytes; ValueError when unknown."""
    p = Path(path)
    if p.is_dir():
        return "folder"
    if not p.is_file():
        raise ValueError(f"input {str(p)!r} does not exist (expected a prompt file or a folder of images)")
    suffix = p.suffix.lower()
    with open(p, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    first = head.splitlines()[0] if head else ""
    if suffix == ".tsv" or (first.startswith("Prompt\t") and "Category" in first):
        return "parti"
    if suffix == ".json":
        return "coco"
    if suffix == ".jsonl":
        return "geneval" if '"include"' in head and '"tag"' in head else "jsonl"
    if suffix == ".csv":
        cols = {c.strip().lower() for c in first.split(",")}
        if {"item_id", "proposition_id"} <= cols:
            return "dsg1k"
        if "prompts" in cols:
            return "drawbench"
        return "csv"
    if suffix in (".txt", ".text", ""):
        return "txt"
    raise ValueError(f"cannot tell the format of {str(p)!r} from its name; give --format "
                     f"({'|'.join(FORMATS)})")


def load_prompts(path: str | os.PathLike, fmt: str | None = None) -> PromptSet:
    """Read every row of ``path``; bad rows are kept as :class:`BadRow` (never raised)."""
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    p = Path(path)
    if fmt == "folder":
        if not p.is_dir():
            raise ValueError(f"format 'folder' needs a folder of images, got {str(p)!r}")
    elif not p.is_file():
        raise ValueError(f"input file {str(p)!r} does not exist")
    reader = _READERS[fmt]
    ps = PromptSet(source=str(p), format=fmt)
    try:
        reader(p, ps)
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                         f"is it really a {fmt} file?") from None
    return ps


def _check_text(text: Any) -> str | None:
    """The prompt, whitespace-normalised, or None when it is not a usable prompt."""
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    if not text or len(text) > MAX_PROMPT_CHARS:
        return None
    return text


def _add(ps: PromptSet, line: int, text: Any, **kw) -> None:
    prompt = _check_text(text)
    if prompt is None:
        why = "empty prompt" if not (isinstance(text, str) and text.strip()) else (
            f"prompt longer than {MAX_PROMPT_CHARS} characters" if isinstance(text, str) else
            f"prompt is a {type(text).__name__}, not text")
        ps.bad.append(BadRow(line, why))
        return
    ps.items.append(PromptItem(line=line, prompt=prompt, **kw))


# --------------------------------------------------------------------------- readers

def _read_parti(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if not header or header[0].strip() != "Prompt":
            raise ValueError(f"{str(p)!r} is not a PartiPrompts TSV: the first column must be 'Prompt', "
                             f"got {header[:4] if header else 'an empty file'}")
        cols = {c.strip(): i for i, c in enumerate(header)}
        for line, row in enumerate(rows, start=2):
            if len(row) < 2:
                ps.bad.append(BadRow(line, f"expected {len(header)} tab-separated columns, got {len(row)}"))
                continue
            get = lambda name: row[cols[name]].strip() if name in cols and cols[name] < len(row) else ""  # noqa: E731
            _add(ps, line, row[0], category=get("Category"), challenge=get("Challenge"))


def _read_coco(p: Path, ps: PromptSet) -> None:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid JSON (line {e.lineno}: {e.msg}); expected COCO captions "
                         "annotations") from None
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise ValueError(f"{str(p)!r} has no 'annotations' list; expected COCO captions annotations JSON")
    # the record number stands in for a line number (JSON arrays have no lines)
    for n, a in enumerate(anns, start=1):
        if not isinstance(a, dict) or "caption" not in a:
            ps.bad.append(BadRow(n, "annotation without a 'caption'"))
            continue
        _add(ps, n, a["caption"], item_id=f"{a.get('image_id', '')}:{a.get('id', n)}")


def _read_drawbench(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or ()}
        if "prompts" not in cols:
            raise ValueError(f"{str(p)!r} is not a DrawBench CSV: no 'Prompts' column (found "
                             f"{list(reader.fieldnames or [])})")
        for row in reader:
            _add(ps, reader.line_num, row.get(cols["prompts"]),
                 category=(row.get(cols.get("category", ""), "") or "").strip())


def _plural(name: str, n: int) -> str:
    if n == 1:
        return name
    return name if name.endswith("s") else (name[:-1] + "ies" if name.endswith("y") and name[-2:-1] not in "aeiou"
                                            else name + "es" if name.endswith(("sh", "ch", "x")) else name + "s")


_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def geneval_questions(meta: dict) -> tuple[DSGQuestion, ...]:
    """DSG questions from one GenEval record's annotations (what its evaluator checks).

    ``include`` objects give an entity question, then (depending on it) count,
    colour and position questions; ``exclude`` gives "fewer than N" questions.

    >>> [q.question for q in geneval_questions({"include": [{"class": "cat", "count": 2, "color": "red"}]})]
    ['Is there a cat?', 'Are there two cats?', 'Are the cats red?']
    """
    qs: list[DSGQuestion] = []
    entity_id: list[int] = []
    include = meta.get("include") or []
    for obj in include:
        cls, count = obj["class"], int(obj.get("count", 1))
        qs.append(DSGQuestion(len(qs) + 1, f"entity - whole ({cls})", f"Is there a {cls}?"))
        root = len(qs)
        entity_id.append(root)
        word = _NUMBERS.get(count, str(count))
        if count > 1:
            qs.append(DSGQuestion(len(qs) + 1, f"attribute - count ({cls}, ==={count})",
                                  f"Are there {word} {_plural(cls, count)}?", (root,)))
        if obj.get("color"):
            text = f"Is the {cls} {obj['color']}?" if count == 1 else f"Are the {_plural(cls, count)} {obj['color']}?"
            qs.append(DSGQuestion(len(qs) + 1, f"attribute - color ({cls}, {obj['color']})", text, (root,)))
    for k, obj in enumerate(include):
        pos = obj.get("position")
        if pos:
            relation, other = pos[0], int(pos[1])
            if not 0 <= other < len(include):
                raise ValueError(f"position refers to object {other}, but there are {len(include)}")
            ocls = include[other]["class"]
            qs.append(DSGQuestion(len(qs) + 1, f"relation - spatial ({obj['class']}, {ocls}, {relation})",
                                  f"Is the {obj['class']} {relation} the {ocls}?",
                                  (entity_id[k], entity_id[other])))
    for obj in meta.get("exclude") or []:
        cls, count = obj["class"], int(obj.get("count", 1))
        text = f"Is there no {cls}?" if count <= 1 else f"Are there fewer than {count} {_plural(cls, count)}?"
        qs.append(DSGQuestion(len(qs) + 1, f"attribute - count ({cls}, <{count})", text))
    return tuple(qs)


def _read_geneval(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                meta = json.loads(raw)
                if not isinstance(meta, dict):
                    raise ValueError(f"expected an object, got {type(meta).__name__}")
                if not isinstance(meta.get("include"), list) or not meta["include"]:
                    raise ValueError("no 'include' list")
                questions = geneval_questions(meta)
            except json.JSONDecodeError as e:
                ps.bad.append(BadRow(line, f"not JSON: {e.msg}"))
                continue
            except (ValueError, KeyError, TypeError) as e:
                ps.bad.append(BadRow(line, f"bad GenEval annotation: {e}"))
                continue
            tag = str(meta.get("tag") or "")
            _add(ps, line, meta.get("prompt"), category=tag, tags=(tag,) if tag else (), questions=questions)


def _read_dsg1k(p: Path, ps: PromptSet) -> None:
    from mmopt.scorers.dsg import load_dsg_csv

    bank = load_dsg_csv(p)
    for line, item, reason in bank.stats.malformed:
        if reason.startswith("skipped") or reason.startswith("missing"):
            ps.bad.append(BadRow(line, f"{item}: {reason}"))
    # one prompt per item, at the line of its first row; category = the item id's source (tifa160, whoops, ...)
    first_line: dict[str, int] = {}
    category: dict[str, str] = {}
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            item = (row.get("item_id") or "").strip()
            if item and item not in first_line:
                first_line[item] = reader.line_num
                category[item] = item.rsplit("_", 1)[0]
    for item, questions in bank.items():
        if item not in bank.texts:
            ps.bad.append(BadRow(first_line.get(item, 0), f"{item}: no prompt text"))
            continue
        _add(ps, first_line.get(item, 0), bank.texts[item], category=category.get(item, ""),
             questions=tuple(questions), item_id=item)
    ps.items.sort(key=lambda i: i.line)


def _read_txt(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if raw.strip() and not raw.lstrip().startswith("#"):
                _add(ps, line, raw)


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    if isinstance(value, str):
        return tuple(t.strip() for t in value.replace(";", ",").split(",") if t.strip())
    return ()


def _read_csv(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or ()}
        col = next((cols[c] for c in ("prompt", "text", "caption", "prompts") if c in cols), None)
        if col is None:
            raise ValueError(f"{str(p)!r} has no 'prompt' column (found {list(reader.fieldnames or [])}); "
                             "name the prompt column 'prompt'")
        for row in reader:
            if None in row:  # more cells than the header has
                ps.bad.append(BadRow(reader.line_num, f"more cells than the {len(cols)} header columns"))
                continue
            _add(ps, reader.line_num, row.get(col), category=(row.get(cols.get("category", "")) or "").strip(),
                 tags=_tags(row.get(cols.get("tags", ""))))


def _questions_from_json(value: Any) -> tuple[DSGQuestion, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("'questions' must be a non-empty list")
    out = []
    for k, q in enumerate(value, start=1):
        if isinstance(q, str):
            out.append(DSGQuestion(k, "", q))
        elif isinstance(q, dict) and isinstance(q.get("question"), str):
            out.append(DSGQuestion(int(q.get("id", k)), str(q.get("tuple", "")), q["question"],
                                   tuple(int(d) for d in q.get("dependencies", ()))))
        else:
            raise ValueError(f"question {k} must be a string or {{'question': ...}}")
    return tuple(out)


def _read_jsonl(p: Path, ps: PromptSet) -> None:
    with open(p, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                ps.bad.append(BadRow(line, f"not JSON: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                ps.bad.append(BadRow(line, f"expected an object with 'prompt', got {type(obj).__name__}"))
                continue
            try:
                questions = _questions_from_json(obj.get("questions"))
            except (ValueError, TypeError) as e:
                ps.bad.append(BadRow(line, str(e)))
                continue
            _add(ps, line, obj.get("prompt"), category=str(obj.get("category") or ""), tags=_tags(obj.get("tags")),
                 questions=questions)


def _read_folder(p: Path, ps: PromptSet) -> None:
    images = sorted(x for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES and x.is_file())
    for n, img in enumerate(images, start=1):
        side = img.with_suffix(".txt")
        if not side.is_file():
            ps.bad.append(BadRow(n, f"{img.name}: no sidecar prompt file {side.name}"))
            continue
        _add(ps, n, side.read_text(encoding="utf-8", errors="replace"), image=str(img), item_id=img.stem)


_READERS = {"parti": _read_parti, "coco": _read_coco, "drawbench": _read_drawbench, "geneval": _read_geneval,
            "dsg1k": _read_dsg1k, "txt": _read_txt, "csv": _read_csv, "jsonl": _read_jsonl,
            "folder": _read_folder}


# --------------------------------------------------------------------------- filters

def _check_choice(asked: Sequence[str], valid: Sequence[str], what: str) -> set[str]:
    unknown = sorted(set(asked) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid {what} values in this file: "
                         f"{', '.join(valid) if valid else '(none)'}")
    return set(asked)


def filter_prompts(ps: PromptSet, *, category: Iterable[str] = (), challenge: Iterable[str] = (),
                   tag: Iterable[str] = (), limit: int | None = None, shuffle: bool = False,
                   seed: int = 0) -> PromptSet:
    """The rows that match every filter (unknown filter values: ValueError listing the valid ones),
    shuffled with ``seed`` if asked, then the first ``limit``."""
    category, challenge, tag = list(category), list(challenge), list(tag)
    cats = _check_choice(category, ps.categories(), "category") if category else None
    chals = _check_choice(challenge, ps.challenges(), "challenge") if challenge else None
    tags = _check_choice(tag, ps.all_tags(), "tag") if tag else None
    items = [i for i in ps.items
             if (cats is None or i.category in cats) and (chals is None or i.challenge in chals)
             and (tags is None or tags & set(i.tags))]
    if shuffle:
        random.Random(seed).shuffle(items)
    if limit is not None:
        items = items[:limit]
    return PromptSet(ps.source, ps.format, items, list(ps.bad), filtered_out=len(ps.items) - len(items))
