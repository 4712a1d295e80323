"""LLM-proposed class prompts (GLOV, Mirza et al. 2024; IPO, Du et al. 2024) in the ONE optimization loop.

A candidate is a classifier's text template (``"a photo of a {}."``); the LLM
proposes templates from the scored history, and the objective is few-shot
accuracy. Nothing here is a loop: two components plug into
:class:`mmopt.optimizer.Optimizer`:

* :class:`FewShotClassifier`, a *generator*: for a candidate template and a seed (= which
  few-shot draw), it classifies that draw's images with CLIP and returns a
  ``Generation`` with ``media=None`` and the accuracy and predictions in ``meta``;
* :class:`AccuracyScorer`, a *scorer* that reads the accuracy back (with the
  classes the template confuses most as feedback for the LLM).

The OPT2I proposer writes the templates with a meta-prompt for classifiers
(``assets/templates/glov.txt``, class names filled in): :func:`glov_proposer`.
Search seeds are few-shot draws; ``heldout_seeds`` are draws the search never saw.

>>> gen = FewShotClassifier("colour_shape", shots=4)                          # doctest: +SKIP
>>> opt = Optimizer(gen, [AccuracyScorer()], glov_proposer(gen, "smollm2"),    # doctest: +SKIP
...                 seeds=[0, 1], heldout_seeds=[100, 101])
>>> opt.run("a photo of a {}.").best_prompt                                   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from mmopt.component import Configurable, describe
from mmopt.types import Candidate, Generation, Score

#: Placeholders an LLM writes for the class name instead of ``{}``.
_PLACEHOLDER = re.compile(r"\{\s*(?:class(?:\s*name)?|classname|label|name|category|object|cls|c)?\s*\}"
                          r"|\[\s*(?:class(?:\s*name)?|classname|label|category|cls)\s*\]"
                          r"|<\s*(?:class(?:\s*name)?|classname|label|category|cls)\s*>", re.IGNORECASE)


def normalize_template(text: str) -> str:
    """A usable template from an LLM's text: ``{class}``, ``[CLASS]``, ``<label>`` ... become ``{}``;
    a text without a placeholder gets the class name at the end.

    >>> normalize_template("A blurry photo of a [CLASS].")
    'A blurry photo of a {}.'
    >>> normalize_template("a drawing of")
    'a drawing of {}'
    """
    out = _PLACEHOLDER.sub("{}", " ".join(str(text).split()))
    return out if "{}" in out else f"{out} {{}}".strip()


def _folder_fingerprint(root: Path) -> str:
    """Names and sizes of every file under ``root`` (a change of the data changes the identity)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}\n".encode())
    return "folder-" + h.hexdigest()[:16]


class FewShotClassifier(Configurable):
    """A generator whose "render" of a template is its accuracy on a few-shot draw.

    Args:
        data: a ShapesWorld task name (``"colour_shape"``, ``"count"``, ``"relation"``) or an
            ImageFolder-style directory (``root/<class>/<images>``).
        clip: an open_clip name or a :class:`~mmopt.prompt_learning.adapter.CLIPPromptAdapter`.
        shots: images per class in each draw.
        classes: class indices to classify among (default all; e.g. a task's base classes).
        classnames: a class-name file for a folder.

    ``generate(candidates, seeds)``: candidate ``i``'s template classifies draw ``seeds[i]``.
    """

    prompt_style = "sentences"

    def __init__(self, data: str = "colour_shape", *, clip: Any = "offline:clip", shots: int = 4,
                 classes: Sequence[int] | None = None, classnames: str | None = None):
        from mmopt.prompt_learning.adapter import as_adapter

        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be an int >= 1, got {shots!r}")
        self.data, self.shots = str(data), shots
        self.classes = None if classes is None else [int(c) for c in classes]
        path = Path(self.data).expanduser()
        if path.is_dir():
            from mmopt.prompt_learning.data import image_folder

            self._folder = image_folder(path, classnames)
            self.classnames = self._folder.classnames
            source = {"folder": _folder_fingerprint(path), "classnames": list(self.classnames)}
        else:
            from mmopt.shapesworld.tasks import get_task

            self._folder = None
            self.classnames = get_task(self.data).classnames
            source = {"task": self.data}
        if self.classes is not None:
            if not self.classes or any(not 0 <= c < len(self.classnames) for c in self.classes):
                raise ValueError(f"classes must be indices in 0..{len(self.classnames) - 1}, got {self.classes}")
            self.classnames = tuple(self.classnames[c] for c in self.classes)
        self.adapter = as_adapter(clip)
        self.max_prompt_tokens = self.adapter.context_length
        self.name = f"fewshot:{self.data}"
        self._draws: dict[int, tuple[Any, list[int]]] = {}
        self.register_config(**source, clip=describe(self.adapter), shots=shots, classes=self.classes)

    def _draw(self, seed: int):
        """(normalised image features, labels) of few-shot draw ``seed`` (computed once)."""
        if seed not in self._draws:
            from mmopt.prompt_learning.data import few_shot
            from mmopt.shapesworld.tasks import shapesworld_few_shot

            if self._folder is not None:
                draw = few_shot(self._folder, self.shots, seed)
                if self.classes is not None:
                    draw = draw.subset(self.classes)
            else:
                draw = shapesworld_few_shot(self.data, self.shots, seed, self.classes)
            self._draws[seed] = (self.adapter.image_features(draw.images), list(draw.labels))
        return self._draws[seed]

    def count_tokens(self, text: str) -> int:
        """Tokens of the template filled with the longest class name (start and end included)."""
        from mmopt.prompt_learning.adapter import fill_template

        template = normalize_template(text)
        return max(len(self.adapter.tokenize(fill_template(template, c))) for c in self.classnames) + 2

    def truncate(self, text: str) -> str:
        """The template cut (by words) so that every class's prompt fits the window."""
        words = text.split()
        while len(words) > 1 and self.count_tokens(" ".join(words)) > self.max_prompt_tokens:
            words.pop()
        return " ".join(words)

    def generate(self, candidates: Sequence[Candidate | str], seeds: Sequence[int]) -> list[Generation]:
        import torch

        # 1. check inputs
        cands = [Candidate.of(c) for c in candidates]
        if len(cands) != len(seeds):
            raise ValueError(f"got {len(cands)} candidates for {len(seeds)} seeds; give one seed per candidate")
        out = []
        for cand, seed in zip(cands, seeds):
            # 2. the template's class prompts, the draw's images (cached), accuracy
            template = normalize_template(cand.text)
            text = self.adapter.template_features(template, self.classnames)
            feats, labels = self._draw(int(seed))
            pred = (feats @ text.T).argmax(dim=1).cpu()
            truth = torch.tensor(labels)
            per_class = {}
            for c, name in enumerate(self.classnames):
                mask = truth == c
                per_class[name] = float((pred[mask] == c).float().mean()) if mask.any() else None
            out.append(Generation(cand, int(seed), None, {
                "accuracy": float((pred == truth).float().mean()), "template": template,
                "images": len(labels), "per_class": per_class, "predictions": pred.tolist()}))
        return out


class AccuracyScorer(Configurable):
    """Reads a classifier generation's accuracy (``value_range`` (0, 1)); the feedback names the
    classes the template gets wrong most often."""

    value_range = (0.0, 1.0)

    def __init__(self, name: str = "accuracy", worst: int = 3):
        if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
            raise ValueError(f"worst must be an int >= 0, got {worst!r}")
        self.name, self.worst = name, worst
        self.register_config(worst=worst)

    def score(self, generations: Sequence[Generation], intent: str) -> list[Score]:
        out = []
        for i, g in enumerate(generations):
            acc = (g.meta or {}).get("accuracy")
            if not isinstance(acc, (int, float)):
                raise ValueError(f"generations[{i}] has no accuracy in its meta: AccuracyScorer reads a "
                                 "FewShotClassifier's output (fewshot:<task or folder>)")
            per = {k: v for k, v in (g.meta.get("per_class") or {}).items() if v is not None}
            worst = sorted(per.items(), key=lambda kv: kv[1])[: self.worst]
            worst = [(k, v) for k, v in worst if v < 1.0]
            feedback = ("often wrong on: " + ", ".join(f"{k} ({v:.2f})" for k, v in worst)) if worst else ""
            out.append(Score(self.name, float(acc), {"feedback": feedback, "template": g.meta.get("template")}))
        return out


def glov_template(classnames: Sequence[str]) -> str:
    """The OPT2I meta-prompt for classifier templates, with the class names written in."""
    text = (resources.files("mmopt.assets") / "templates" / "glov.txt").read_text("utf-8")
    names = ", ".join(classnames[:40]) + (f" (and {len(classnames) - 40} more)" if len(classnames) > 40 else "")
    return text.replace("$classes", names.replace("$", "$$"))


def glov_proposer(generator: FewShotClassifier, llm: Any = "smollm2", **kwargs: Any):
    """The OPT2I proposer with the classifier meta-prompt for ``generator``'s classes."""
    from mmopt import registry
    from mmopt.proposers.opt2i import OPT2IProposer

    llm = registry.create("llm", llm) if isinstance(llm, (str, dict)) else llm
    return OPT2IProposer(llm, template=glov_template(generator.classnames), **kwargs)


def generator_from_name(rest: str, **kwargs: Any) -> FewShotClassifier:
    """Registry factory: ``"fewshot:<task>"`` (``colour_shape``, ``count``, ``relation``) or
    ``"fewshot:/path/to/image/folder"``; kwargs as :class:`FewShotClassifier`."""
    if not rest:
        raise ValueError("give the data: 'fewshot:colour_shape' (a ShapesWorld task) or 'fewshot:/path/to/folder'")
    return FewShotClassifier(rest, **kwargs)


def accuracy_from_name(rest: str = "", **kwargs: Any) -> AccuracyScorer:
    """Registry factory for ``"accuracy"``."""
    if rest:
        raise ValueError(f"the accuracy scorer takes no name suffix, got 'accuracy:{rest}'")
    return AccuracyScorer(**kwargs)


__all__ = ["FewShotClassifier", "AccuracyScorer", "normalize_template", "glov_template", "glov_proposer",
           "generator_from_name", "accuracy_from_name"]
