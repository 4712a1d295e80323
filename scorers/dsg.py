"""Davidsonian Scene Graph (DSG) scoring (Cho et al., ICLR 2024).

A prompt is broken into atomic semantic tuples (entities, attributes,
relations, counts, ...), each with the ids of its *parent* tuples and one
yes/no question. A VQA model answers every question about every image; the
item score is the mean of the per-question scores where

* a question scores 1 when answered "yes", 0 otherwise;
* with dependencies, a question scores 0 when any of its *direct* parents
  did not score 1 (the parent was answered "no" or could not be answered),
  which removes the contradictory "no cat, but the cat is red" case.

Unanswerable answers (``VQAAnswer.answer == "unanswerable"``, e.g. the
ShapesWorld detector asked about an object it does not know) score 0, both
as questions and as parents; this is what the released DSG evaluation does
with any answer other than "yes". The soft variant replaces the 0/1 answer
by ``p_yes`` and applies the same (hard) parent rule.

Questions come from a pluggable source: DSG-1k's CSV (:func:`load_dsg_csv`),
an LLM (:class:`DSGQuestionGenerator`), or any callable
``prompt -> list[DSGQuestion]``.
"""
from __future__ import annotations

import csv
import importlib.resources
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mmopt.cache import Cache, content_key
from mmopt.component import identity
from mmopt.types import DSGQuestion, Generation, Score, VQAAnswer

from .media import check_generations, check_intent

log = logging.getLogger(__name__)

__all__ = [
    "DSGLoadStats", "DSGQuestionBank", "load_dsg_csv", "dsg_aggregate",
    "parse_dsg_output", "fallback_questions", "DSGQuestionGenerator",
    "DSGScorer", "from_name",
]

# ---------------------------------------------------------------------------
# Loading DSG-1k
# ---------------------------------------------------------------------------

_IDS = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*$")


@dataclass
class DSGLoadStats:
    """What :func:`load_dsg_csv` did: row counts and the malformed rows it met.

    ``malformed`` lists ``(line_number, item_id, reason)`` for every row that
    was repaired or skipped.
    """

    rows: int = 0
    items: int = 0
    questions: int = 0
    repaired: int = 0
    skipped: int = 0
    malformed: list[tuple[int, str, str]] = field(default_factory=list)


class DSGQuestionBank(dict):
    """``item_id -> list[DSGQuestion]`` plus ``texts`` (item_id -> prompt) and ``stats``."""

    def __init__(self, *args, texts: dict[str, str] | None = None,
                 stats: DSGLoadStats | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.texts = texts or {}
        self.stats = stats or DSGLoadStats()


def _parse_dependency(raw: str, tuple_text: str) -> tuple[tuple[int, ...] | None, str]:
    """Parent ids of one DSG-1k cell; returns (ids or None when hopeless, note).

    A known defect of DSG-1k: for a few relation tuples the object argument
    of the tuple leaked into the dependency column (``"5, right"`` for
    ``relation - spatial (face, right, looking)``). Such a token is dropped
    when it is one of the tuple's arguments; the numeric ids are kept.
    """
    raw = (raw or "").strip()
    if _IDS.match(raw):
        return tuple(int(x) for x in raw.split(",") if int(x) != 0), ""
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    args_match = re.search(r"\((.*)\)", tuple_text or "")
    args = {a.strip().lower() for a in args_match.group(1).split(",")} if args_match else set()
    ids, dropped = [], []
    for tok in tokens:
        if tok.isdigit():
            ids.append(int(tok))
        elif tok.lower() in args:
            dropped.append(tok)
        else:
            return None, f"dependency {raw!r} has a token that is neither an id nor a tuple argument"
    if not ids:
        return None, f"dependency {raw!r} has no parent id"
    return tuple(i for i in ids if i != 0), f"dropped tuple argument(s) {dropped} from dependency {raw!r}"


_MALFORMED_MODES = ("repair", "skip", "drop_item_dependencies")


def load_dsg_csv(path: str | os.PathLike, *, malformed: str = "repair") -> DSGQuestionBank:
    """Read DSG-1k's annotation CSV into ``{item_id: [DSGQuestion, ...]}``.

    Columns used: ``item_id, text, proposition_id, dependency, tuple`` and the
    question (``question_natural_language`` or ``question``). Malformed rows
    never stop the loader; ``malformed`` says what to do with a dependency
    cell into which a tuple argument leaked:

    * ``"repair"`` (default): drop the leaked argument, keep the parent ids;
    * ``"skip"``: skip the row;
    * ``"drop_item_dependencies"``: keep the row but drop the dependencies of
      *every* question of that item, which is what the released DSG
      evaluation code ends up doing (use it to reproduce the paper exactly).

    Rows that cannot be repaired are skipped. The counts are in
    ``result.stats`` and a warning is logged.

    >>> bank = load_dsg_csv("dsg-1k-anns.csv")  # doctest: +SKIP
    >>> bank["tifa160_0"][0].question, bank.stats.repaired  # doctest: +SKIP
    ('Is there a Christmas tree?', 10)
    """
    # 1. read rows
    if malformed not in _MALFORMED_MODES:
        raise ValueError(f"malformed must be one of {_MALFORMED_MODES}, got {malformed!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DSG annotation file not found: {path!r}")
    stats = DSGLoadStats()
    texts: dict[str, str] = {}
    items: dict[str, dict[int, DSGQuestion]] = {}
    no_deps_items: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        qcol = "question_natural_language" if "question_natural_language" in fields else "question"
        missing = {"item_id", "proposition_id", "dependency", "tuple", qcol} - fields
        if missing:
            raise ValueError(
                f"{path!r} is not in DSG-1k format: missing columns {sorted(missing)}; "
                f"found {sorted(fields)}"
            )
        # 2. parse each row; bad rows are repaired or skipped, never fatal
        for row in reader:
            stats.rows += 1
            line = reader.line_num
            item = (row.get("item_id") or "").strip()
            tup = (row.get("tuple") or "").strip()
            question = (row.get(qcol) or "").strip()
            pid = (row.get("proposition_id") or "").strip()
            if not item or not pid.isdigit() or not question:
                stats.skipped += 1
                stats.malformed.append((line, item, "missing item_id, proposition_id or question"))
                continue
            deps, note = _parse_dependency(row.get("dependency", ""), tup)
            if note:
                if deps is not None and malformed != "skip":
                    stats.repaired += 1
                    stats.malformed.append((line, item, f"{malformed}: " + note))
                    if malformed == "drop_item_dependencies":
                        no_deps_items.add(item)
                else:
                    stats.skipped += 1
                    stats.malformed.append((line, item, "skipped: " + (note or "malformed")))
                    continue
            qid = int(pid)
            bucket = items.setdefault(item, {})
            if qid in bucket:
                stats.skipped += 1
                stats.malformed.append((line, item, f"skipped: duplicate proposition_id {qid}"))
                continue
            bucket[qid] = DSGQuestion(id=qid, tuple=tup, question=question, dependencies=deps)
            if row.get("text"):
                texts.setdefault(item, row["text"].strip())
    # 3. order questions by id
    bank = DSGQuestionBank(
        {k: [v[i] for i in sorted(v)] for k, v in items.items()}, texts=texts, stats=stats
    )
    for item in no_deps_items:
        bank[item] = [DSGQuestion(q.id, q.tuple, q.question, ()) for q in bank[item]]
    stats.items = len(bank)
    stats.questions = sum(len(v) for v in bank.values())
    if stats.repaired or stats.skipped:
        log.warning("DSG CSV %s: %d malformed rows (%d repaired, %d skipped)",
                    path, stats.repaired + stats.skipped, stats.repaired, stats.skipped)
    return bank


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------

def _as_answer(a: Any) -> tuple[str, float, str]:
    """(normalised answer, p_yes, raw) of a VQAAnswer, a plain string or None."""
    if isinstance(a, VQAAnswer):
        ans = a.answer.strip().lower()
        if ans not in ("yes", "no"):
            ans = "unanswerable"
        p = float(a.p_yes) if ans != "unanswerable" else 0.0
        return ans, p, a.raw or a.answer
    if a is None:
        return "unanswerable", 0.0, ""
    raw = str(a)
    ans = raw.strip().lower()
    # A plain string (e.g. a released VQA answer) counts as yes only when it is exactly "yes".
    if ans == "yes":
        return "yes", 1.0, raw
    if ans == "no":
        return "no", 0.0, raw
    return "unanswerable", 0.0, raw


def dsg_aggregate(questions: Sequence[DSGQuestion], answers: Mapping[int, Any]) -> dict:
    """Aggregate answers into DSG scores, exactly as the paper.

    ``answers`` maps question id -> :class:`VQAAnswer` or a plain answer
    string; a missing answer counts as unanswerable (0). A parent id that is
    not among ``questions`` (or 0, DSG-1k's "root") is ignored. Returns
    ``{"score", "score_without_dependencies", "soft_score",
    "soft_score_without_dependencies", "questions": [per-question dicts]}``;
    every score is in [0, 1].

    >>> qs = [DSGQuestion(1, "entity - whole (cat)", "Is there a cat?"),
    ...       DSGQuestion(2, "attribute - color (cat, red)", "Is the cat red?", (1,))]
    >>> dsg_aggregate(qs, {1: "no", 2: "yes"})["score"]
    0.0
    """
    if not questions:
        raise ValueError("dsg_aggregate needs at least one question, got none")
    # 1. per-question answers without dependencies
    per: dict[int, dict] = {}
    for q in questions:
        ans, p, raw = _as_answer(answers.get(q.id))
        per[q.id] = {"id": q.id, "question": q.question, "tuple": q.tuple,
                     "dependencies": list(q.dependencies), "answer": ans, "raw": raw,
                     "p_yes": p, "score_without_dependencies": 1.0 if ans == "yes" else 0.0}
    # 2. zero out questions any of whose *direct* parents did not score 1
    for q in questions:
        failed = [d for d in q.dependencies
                  if d in per and d != q.id and per[d]["score_without_dependencies"] == 0.0]
        d = per[q.id]
        d["parent_failed"] = failed
        d["score"] = 0.0 if failed else d["score_without_dependencies"]
        d["soft_score"] = 0.0 if failed else d["p_yes"]
    # 3. mean over all questions
    rows = [per[q.id] for q in questions]
    n = len(rows)
    return {
        "score": sum(r["score"] for r in rows) / n,
        "score_without_dependencies": sum(r["score_without_dependencies"] for r in rows) / n,
        "soft_score": sum(r["soft_score"] for r in rows) / n,
        "soft_score_without_dependencies": sum(r["p_yes"] for r in rows) / n,
        "questions": rows,
    }


def _feedback(rows: list[dict]) -> str:
    """Human-readable list of the failed questions, for a rewriter."""
    failed = []
    for r in rows:
        if r["score"] == 1.0:
            continue
        if r["parent_failed"] and r["answer"] == "yes":
            why = "its parent question failed"
        elif r["answer"] == "unanswerable":
            why = "unanswerable"
        else:
            why = f"answered {r['answer']}"
        failed.append(f"- {r['question']} ({why})")
    if not failed:
        return f"All {len(rows)} DSG questions were answered yes."
    return f"{len(failed)} of {len(rows)} DSG questions failed:\n" + "\n".join(failed)


# ---------------------------------------------------------------------------
# Question generation with an LLM
# ---------------------------------------------------------------------------

_LINE = re.compile(r"^\s*(?:[-*•]\s*)?(?:q(?:uestion)?\s*)?#?(\d+)\s*[.):]?\s*\|(.*)$", re.I)
_NONE_DEPS = {"", "0", "-", "none", "root", "n/a", "na", "[]"}


def _parse_deps(cell: str) -> list[int] | None:
    cell = cell.strip().strip("[](){}").strip()
    if cell.lower() in _NONE_DEPS:
        return []
    nums = re.findall(r"\d+", cell)
    if not nums or re.search(r"[A-Za-z]{3,}", cell):
        return None
    return [int(x) for x in nums if int(x) != 0]


def parse_dsg_output(text: str) -> list[DSGQuestion]:
    """Parse an LLM's DSG output into questions; junk lines are ignored.

    One line per tuple: ``<id> | <tuple> | <parent ids or 0> | <question>``
    (``<id> | <tuple> | <question>`` is accepted as a root). Ids are
    renumbered 1..n in order of appearance; a parent must appear before its
    child (this also rules out cycles), other parent ids are dropped;
    duplicate ids and duplicate questions are dropped.

    >>> parse_dsg_output("1 | entity - whole (cat) | 0 | Is there a cat?\\nblah")[0].question
    'Is there a cat?'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_dsg_output expects the LLM's text, got {type(text).__name__}")
    parsed: list[tuple[int, str, list[int], str]] = []
    seen_ids: set[int] = set()
    seen_q: set[str] = set()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        qid = int(m.group(1))
        cells = [c.strip() for c in m.group(2).split("|")]
        cells = [c for c in cells if c != ""] if len(cells) > 3 else cells
        if len(cells) >= 3:
            tup, deps_cell, question = cells[0], cells[1], " | ".join(cells[2:])
            deps = _parse_deps(deps_cell)
            if deps is None:  # the "deps" cell was text: treat as a 3-field line
                continue
        elif len(cells) == 2:
            tup, deps, question = cells[0], [], cells[1]
        else:
            continue
        question = question.strip().strip('"').strip()
        if not tup or len(question) < 3 or qid in seen_ids:
            continue
        if not question.endswith("?"):
            question = question.rstrip(".") + "?"
        key = question.lower()
        if key in seen_q:
            continue
        seen_ids.add(qid)
        seen_q.add(key)
        parsed.append((qid, tup, deps, question))
    # renumber 1..n; keep only parents listed earlier
    new_id: dict[int, int] = {}
    out: list[DSGQuestion] = []
    for i, (qid, tup, deps, question) in enumerate(parsed, start=1):
        parents = tuple(dict.fromkeys(new_id[d] for d in deps if d in new_id))
        new_id[qid] = i
        out.append(DSGQuestion(id=i, tuple=tup, question=question, dependencies=parents))
    return out


def fallback_questions(prompt: str) -> list[DSGQuestion]:
    """The single whole-prompt question used when no question can be extracted.

    >>> fallback_questions("a red cat.")[0].question
    'Does the image show a red cat?'
    """
    text = " ".join(prompt.split()).rstrip(" .!?")
    return [DSGQuestion(id=1, tuple=f"global - whole ({text})",
                        question=f"Does the image show {text}?", dependencies=())]


def _default_template() -> str:
    return (importlib.resources.files("mmopt.assets") / "templates" / "dsg_questions.txt").read_text(
        encoding="utf-8")


class DSGQuestionGenerator:
    """DSG questions from a prompt with an LLM (tuples, parents, questions in one call).

    ``template`` is the prompt text with a ``{prompt}`` placeholder (default:
    ``assets/templates/dsg_questions.txt``). Results are cached in ``cache``
    (a :class:`mmopt.cache.Cache`, default the user cache) under
    llm name + template + prompt + seed + decoding settings.

    >>> gen = DSGQuestionGenerator(create("llm", "smollm2"))  # doctest: +SKIP
    >>> [q.question for q in gen("a red cat on a mat")]  # doctest: +SKIP
    ['Is there a cat?', 'Is there a mat?', 'Is the cat red?', 'Is the cat on the mat?']
    """

    def __init__(self, llm: Any, template: str | None = None, *, cache: Cache | None = None,
                 seed: int = 0, temperature: float = 0.0, max_tokens: int = 512):
        if not callable(getattr(llm, "chat", None)):
            raise TypeError(f"llm must implement mmopt.types.LLM (a .chat method), got {type(llm).__name__}")
        template = _default_template() if template is None else template
        if not isinstance(template, str) or "{prompt}" not in template:
            raise ValueError("template must be a string containing the placeholder '{prompt}'")
        self.llm = llm
        self.template = template
        self.cache = cache if cache is not None else Cache(":memory:")
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.name = f"dsg-qg:{getattr(llm, 'name', type(llm).__name__)}"

    def config(self) -> dict:
        return {"component": "mmopt.scorers.dsg.DSGQuestionGenerator", "llm": self.llm, "template": self.template,
                "seed": self.seed, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def generate_with_info(self, prompt: str) -> tuple[list[DSGQuestion], dict]:
        """Questions for ``prompt`` and info ``{"fallback", "cached", "raw"}``."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        # 1. cache lookup
        key = content_key("dsg-questions", identity(self), prompt)
        hit = self.cache.get_json(key)
        cached = hit is not None
        if cached:
            raw = hit["raw"]
        else:
            # 2. ask the LLM (str.replace: the template may contain other braces)
            messages = [{"role": "user", "content": self.template.replace("{prompt}", prompt.strip())}]
            raw = self.llm.chat(messages, n=1, temperature=self.temperature,
                                max_tokens=self.max_tokens, seed=self.seed)[0]
            self.cache.put_json(key, {"raw": raw})
        # 3. parse, or fall back to one whole-prompt question
        questions = parse_dsg_output(raw)
        fallback = not questions
        if fallback:
            questions = fallback_questions(prompt)
        return questions, {"fallback": fallback, "cached": cached, "raw": raw}

    def __call__(self, prompt: str) -> list[DSGQuestion]:
        return self.generate_with_info(prompt)[0]


# ---------------------------------------------------------------------------
# The scorer
# ---------------------------------------------------------------------------

QuestionSource = Callable[[str], Sequence[DSGQuestion]]


class QuestionFile:
    """Questions read from a DSG-1k style CSV, looked up by prompt text.

    Its identity is the file's content fingerprint, so an edited file re-scores.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(self.path):
            raise ValueError(f"DSG question file not found: {self.path!r} (expected a DSG-1k style CSV)")
        bank = load_dsg_csv(self.path)
        self.questions = {bank.texts[k]: v for k, v in bank.items() if k in bank.texts}

    def config(self) -> dict:
        from mmopt.fingerprint import file_fingerprint

        return {"component": "mmopt.scorers.dsg.QuestionFile", "file": file_fingerprint(self.path)}

    def __call__(self, prompt: str) -> list[DSGQuestion]:
        return list(self.questions.get(prompt, ()))


def _check_questions(qs: Any, source: str) -> list[DSGQuestion]:
    qs = list(qs or [])
    for q in qs:
        if not isinstance(q, DSGQuestion):
            raise TypeError(f"{source} must give mmopt.types.DSGQuestion items, got {type(q).__name__}")
    ids = [q.id for q in qs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source} gave duplicate question ids: {ids}")
    return qs


def _frame(media: Any, frames: int | None = None) -> Any:
    """What to ask about: the image itself, or of a video its middle frame, or (``frames``
    given: a VQA that takes frame sets) that many frames sampled uniformly."""
    if isinstance(media, (list, tuple)):
        if not media:
            raise ValueError("a generation's media is an empty frame list")
        if frames:
            from .video import sample_indices

            return [media[j] for j in sample_indices(len(media), frames)]
        return media[len(media) // 2]
    return [media] if frames else media


class DSGScorer:
    """DSG score of each generation against the intent (Scorer protocol; range 0..1).

    ``questions`` is where the questions come from: a callable
    ``prompt -> list[DSGQuestion]`` (e.g. a :class:`DSGQuestionGenerator` or
    the ShapesWorld parser), a mapping ``prompt -> list[DSGQuestion]`` (e.g.
    DSG-1k loaded with :func:`load_dsg_csv`, keyed by prompt text), or
    ``None`` with ``llm`` given (a :class:`DSGQuestionGenerator` is built).
    All images x all questions go to ONE ``vqa.answer`` call per ``score``.
    A VQA model with ``takes_frames = True`` (``shapes-video``, ``hf-video:...``)
    is asked about ``frames`` frames sampled uniformly from each clip (questions about
    actions and motion need several); any other sees a clip's middle frame.

    ``Score.value`` is the DSG score with dependencies; ``details`` holds
    ``questions`` (id, question, tuple, answer, p_yes, score, ...),
    ``score_without_dependencies``, ``soft_score``,
    ``soft_score_without_dependencies``, ``fallback`` and ``feedback``.

    >>> scorer = DSGScorer(create("vqa", "blip:Salesforce/blip-vqa-base"), llm=llm)  # doctest: +SKIP
    >>> scorer.score(generations, "a red cat on a mat")[0].value  # doctest: +SKIP
    0.75
    """

    value_range = (0.0, 1.0)
    config_version = 1  # bump when dsg_aggregate or the feedback changes

    def __init__(self, vqa: Any, *, questions: QuestionSource | Mapping[str, Sequence[DSGQuestion]] | None = None,
                 llm: Any = None, name: str | None = None, cache: Cache | None = None, frames: int = 8):
        if not callable(getattr(vqa, "answer", None)):
            raise TypeError(f"vqa must implement mmopt.types.VQAModel (.answer), got {type(vqa).__name__}")
        if questions is None and llm is None:
            raise ValueError("DSGScorer needs a question source: questions=<callable or mapping> or llm=<LLM>")
        if questions is not None and not (callable(questions) or isinstance(questions, Mapping)):
            raise TypeError(
                f"questions must be a callable prompt -> list[DSGQuestion] or a mapping, got {type(questions).__name__}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        self.vqa = vqa
        self.frames = frames if getattr(vqa, "takes_frames", False) else None
        self.source = questions if questions is not None else DSGQuestionGenerator(llm, cache=cache)
        self.name = name or f"dsg:{getattr(vqa, 'name', type(vqa).__name__)}"
        self._memo: dict[str, tuple[list[DSGQuestion], bool]] = {}

    def config(self) -> dict:
        source = self.source
        if isinstance(source, Mapping):  # an in-memory bank: identified by its content
            source = {k: [vars(q) for q in v] for k, v in sorted(source.items())}
        frames = {"frames": self.frames} if self.frames else {}  # frame-set VQAs only: other identities stay
        return {"component": "mmopt.scorers.dsg.DSGScorer", "version": self.config_version,
                "vqa": self.vqa, "questions": source, **frames}

    def questions_for(self, intent: str) -> tuple[list[DSGQuestion], bool]:
        """(questions, fallback) for ``intent``; memoised per scorer."""
        if intent in self._memo:
            return self._memo[intent]
        src = self.source
        if isinstance(src, Mapping):
            qs = _check_questions(src.get(intent), "the question mapping")
            fallback = False
        elif hasattr(src, "generate_with_info"):
            qs, info = src.generate_with_info(intent)
            qs, fallback = _check_questions(qs, "the question generator"), bool(info.get("fallback"))
        else:
            qs, fallback = _check_questions(src(intent), "the question source"), False
        if not qs:
            qs, fallback = fallback_questions(intent), True
        self._memo[intent] = (qs, fallback)
        return qs, fallback

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        # 1. check inputs
        check_intent(intent)
        generations = check_generations(generations)
        if not generations:
            return []
        # 2. questions for the intent (never for the candidate prompt)
        questions, fallback = self.questions_for(intent)
        # 3. one batched VQA call over all images x all questions
        images = [_frame(g.media, self.frames) for g in generations for _ in questions]
        texts = [q.question for _ in generations for q in questions]
        answers = list(self.vqa.answer(images, texts))
        if len(answers) != len(texts):
            raise RuntimeError(f"VQA backend {self.vqa!r} returned {len(answers)} answers for {len(texts)} questions")
        # 4. aggregate per generation
        out = []
        nq = len(questions)
        for i, _g in enumerate(generations):
            chunk = answers[i * nq:(i + 1) * nq]
            agg = dsg_aggregate(questions, {q.id: a for q, a in zip(questions, chunk)})
            details = {
                "questions": agg["questions"],
                "score_without_dependencies": agg["score_without_dependencies"],
                "soft_score": agg["soft_score"],
                "soft_score_without_dependencies": agg["soft_score_without_dependencies"],
                "n_questions": nq,
                "n_unanswerable": sum(r["answer"] == "unanswerable" for r in agg["questions"]),
                "fallback": fallback,
                "feedback": _feedback(agg["questions"]),
            }
            out.append(Score(scorer=self.name, value=agg["score"], details=details))
        return out


def from_name(rest: str, *, context: Any = None, questions: Any = None, llm: Any = None,
              **vqa_kwargs: Any) -> DSGScorer:
    """Registry factory: ``"dsg:<vqa name>"``, e.g. ``dsg:blip-vqa``, ``dsg:qwen2.5-vl-3b``, ``dsg:shapes``.

    ``<vqa name>`` is a VQA registry name or an alias from assets/vqa_models.json.
    Where the questions come from (``questions=``):
      * ``None`` / ``"llm"`` (default): written by an LLM, ``llm=`` (object or registry
        name) or else the run's LLM (``--llm``);
      * ``"shapes"``: the ShapesWorld caption parser (exact, no LLM);
      * a path to a DSG-1k style CSV (looked up by prompt text);
      * a callable ``prompt -> list[DSGQuestion]`` or a mapping prompt -> questions.
    """
    from mmopt import registry
    from mmopt.scorers.vqa import resolve_vqa_spec

    if not rest:
        raise ValueError("dsg needs a VQA backend: 'dsg:<vqa>', e.g. 'dsg:blip-vqa' or 'dsg:qwen2.5-vl-3b'")
    # 1. where the questions come from (checked before any model loads)
    if questions == "shapes":
        from mmopt.shapesworld.parse import dsg_questions

        questions = dsg_questions
    elif isinstance(questions, (str, os.PathLike)) and questions != "llm":
        questions = QuestionFile(questions)
    elif questions is None or questions == "llm":
        questions = None
        if isinstance(llm, (str, dict)):
            llm = registry.create("llm", llm)
        if llm is None:
            if context is None or context.llm is None:
                raise ValueError(
                    f"dsg:{rest} needs a question source: give the run an LLM to write the DSG questions "
                    "(--llm, e.g. --llm smollm2), or questions='shapes' (the ShapesWorld caption parser) "
                    "or questions='<path to a DSG-1k CSV>' in the scorer's kwargs")
            llm = context.get_llm(f"dsg:{rest}")
    # 2. the VQA model answering them (shared through the registry)
    vqa_name, alias_kwargs = resolve_vqa_spec(rest)
    vqa = registry.create("vqa", vqa_name, **{**alias_kwargs, **vqa_kwargs})
    return DSGScorer(vqa, questions=questions, llm=llm, cache=getattr(context, "cache", None), name=f"dsg:{rest}")
