"""Data for prompt learning: image sets, few-shot draws, image folders, class-name files, base/new splits.

No torch here: images are PIL images or file paths, labels are ints.

* :class:`ImageSet`: images + labels over class names (+ where they came from).
* :func:`image_folder`: an ImageFolder-style directory (``root/<class>/<image>``);
  class names from the folder names or a class-name file (:func:`read_classnames`).
* :func:`few_shot`: K images per class, drawn with a seeded RNG; unreadable files
  are skipped and recorded, a class with too few readable images is an error.
* :func:`base_new_split`: the first half of the classes (base) and the rest (new),
  as in CoCoOp's base-to-new protocol.
* ShapesWorld draws are rendered: ``mmopt.shapesworld.tasks.shapesworld_few_shot``.

>>> data = ImageSet(["a.png", "b.png"], [0, 1], ("cat", "dog"), {})
>>> base_new_split(("a", "b", "c"))
((0, 1), (2,))
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: File endings read as images by :func:`image_folder`.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageSet:
    """Images with integer labels over ``classnames`` (what every learner trains and tests on).

    ``images`` holds PIL images or file paths (opened by :meth:`load`); ``meta``
    records where they came from (task, split, seed, shots, skipped files).
    """

    images: list
    labels: list[int]
    classnames: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.classnames = tuple(self.classnames)
        if len(self.images) != len(self.labels):
            raise ValueError(f"ImageSet: {len(self.images)} images but {len(self.labels)} labels")
        if not self.classnames:
            raise ValueError("ImageSet: no class names")
        bad = [y for y in self.labels if isinstance(y, bool) or not isinstance(y, int)
               or not 0 <= y < len(self.classnames)]
        if bad:
            raise ValueError(f"ImageSet: labels must be ints in 0..{len(self.classnames) - 1}, got {bad[:5]}")

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self) -> dict[int, int]:
        """How many images each class has (every class, zeros included)."""
        counts = {c: 0 for c in range(len(self.classnames))}
        for y in self.labels:
            counts[y] += 1
        return counts

    def subset(self, classes: Sequence[int]) -> "ImageSet":
        """The images of ``classes`` only, relabelled 0..len(classes)-1 in that order."""
        classes = tuple(classes)
        if not classes or any(not 0 <= c < len(self.classnames) for c in classes):
            raise ValueError(f"classes must be indices in 0..{len(self.classnames) - 1}, got {classes}")
        index = {c: i for i, c in enumerate(classes)}
        keep = [k for k, y in enumerate(self.labels) if y in index]
        return ImageSet([self.images[k] for k in keep], [index[self.labels[k]] for k in keep],
                        tuple(self.classnames[c] for c in classes), {**self.meta, "classes": list(classes)})

    def load(self) -> "ImageSet":
        """The same set with every path opened as an RGB PIL image.

        An unreadable file is one clear ValueError naming it (use :func:`few_shot`
        to skip and record unreadable files instead).
        """
        images = []
        for im in self.images:
            if isinstance(im, (str, os.PathLike)):
                ok, value = _open(im)
                if not ok:
                    raise ValueError(f"cannot read image {str(im)!r}: {value}")
                im = value
            images.append(im)
        return ImageSet(images, list(self.labels), self.classnames, dict(self.meta))


def _open(path: str | os.PathLike) -> tuple[bool, Any]:
    """(True, RGB image) or (False, the reason it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.width == 0 or im.height == 0:
                return False, "the image is empty"
            return True, im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        return False, f"{type(e).__name__}: {e}"


def read_classnames(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(folder, class name), ...]`` from a class-name file, in file order.

    One class per line: ``folder<TAB>class name`` or ``folder: class name``, or a
    bare ``class name`` (its folder has the same name). Blank lines and lines
    starting with ``#`` are skipped.

    >>> import tempfile; p = tempfile.mktemp(); _ = open(p, "w").write("n01\\tgoldfish\\nred circle\\n")
    >>> read_classnames(p)
    [('n01', 'goldfish'), ('red circle', 'red circle')]
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class-name file {str(path)!r} does not exist")
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            folder, _, name = line.partition("\t")
        elif ": " in line:
            folder, _, name = line.partition(": ")
        else:
            folder = name = line
        folder, name = folder.strip(), " ".join(name.split())
        if not folder or not name:
            raise ValueError(f"{path}:{n}: expected 'folder<TAB>class name' or a class name, got {raw!r}")
        out.append((folder, name))
    if not out:
        raise ValueError(f"class-name file {str(path)!r} lists no classes")
    for what, values in (("folders", [f for f, _ in out]), ("class names", [c for _, c in out])):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"class-name file {str(path)!r} repeats {what}: {dupes}")
    return out


def image_folder(root: str | os.PathLike, classnames: str | os.PathLike | None = None, *,
                 empty: str = "error") -> ImageSet:
    """An ImageFolder-style directory ``root/<class folder>/<images>`` as an :class:`ImageSet` of paths.

    ``classnames``: a class-name file (:func:`read_classnames`) giving the classes,
    their order and display names; without one, every sub-folder is a class
    (sorted), named by its folder with ``_`` read as a space. ``empty``: what to do
    with a class that has no image files: ``"error"`` (default) or ``"skip"``
    (recorded in ``meta["skipped_classes"]``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} is not a directory")
    if empty not in ("error", "skip"):
        raise ValueError(f"empty must be 'error' or 'skip', got {empty!r}")
    if classnames is not None:
        pairs = read_classnames(classnames)
        missing = [f for f, _ in pairs if not (root / f).is_dir()]
        if missing:
            raise ValueError(f"the class-name file names folders that are not in {str(root)!r}: {missing[:5]}")
    else:
        pairs = [(p.name, " ".join(p.name.replace("_", " ").split()))
                 for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if not pairs:
            raise ValueError(f"image folder {str(root)!r} has no class sub-folders (expected root/<class>/<image>)")
    images, labels, names, skipped = [], [], [], []
    for folder, name in pairs:
        files = sorted(p for p in (root / folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            if empty == "error":
                raise ValueError(f"class {name!r} (folder {str(root / folder)!r}) has no images "
                                 f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
            skipped.append(name)
            continue
        label = len(names)
        names.append(name)
        images += [str(p) for p in files]
        labels += [label] * len(files)
    if not names:
        raise ValueError(f"no class of {str(root)!r} has images")
    return ImageSet(images, labels, tuple(names), {"source": str(root), "skipped_classes": skipped})


def few_shot(data: ImageSet, shots: int, seed: int) -> ImageSet:
    """``shots`` images per class drawn from ``data`` with ``random.Random(seed)``; paths are opened.

    Files that cannot be read are skipped (the next image of the draw takes their
    place) and recorded in ``meta["skipped_files"]`` with the reason. A class with
    fewer readable images than ``shots`` is a ValueError saying how many it has.
    The images not drawn are in ``meta["rest"]`` (their indices in ``data``), for
    testing on the rest of a folder.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = random.Random(f"few-shot/{seed}")
    by_class: dict[int, list[int]] = {c: [] for c in range(len(data.classnames))}
    for k, y in enumerate(data.labels):
        by_class[y].append(k)
    images, labels, skipped, used = [], [], [], set()
    for c, members in by_class.items():
        order = list(members)
        rng.shuffle(order)
        taken = bad = 0
        for k in order:
            if taken == shots:
                break
            item = data.images[k]
            if isinstance(item, (str, os.PathLike)):
                ok, value = _open(item)
                if not ok:
                    skipped.append({"file": str(item), "reason": value})
                    bad += 1
                    continue
                item = value
            images.append(item)
            labels.append(c)
            used.add(k)
            taken += 1
        if taken < shots:
            raise ValueError(f"class {data.classnames[c]!r} has {len(members)} images"
                             + (f" ({bad} unreadable)" if bad else "") + f"; {shots} shots were asked for")
    rest = [k for k in range(len(data)) if k not in used]
    return ImageSet(images, labels, data.classnames,
                    {**data.meta, "shots": shots, "seed": seed, "skipped_files": skipped, "rest": rest})


def rest_of(data: ImageSet, draw: ImageSet, per_class: int | None = None) -> ImageSet:
    """The images of ``data`` that ``draw`` (a :func:`few_shot` of it) did not take, at most
    ``per_class`` per class: a test set from the same folder."""
    rest = draw.meta.get("rest")
    if rest is None:
        raise ValueError("draw must come from few_shot(data, ...)")
    count: dict[int, int] = {}
    keep = []
    for k in rest:
        y = data.labels[k]
        if per_class is None or count.get(y, 0) < per_class:
            keep.append(k)
            count[y] = count.get(y, 0) + 1
    return ImageSet([data.images[k] for k in keep], [data.labels[k] for k in keep], data.classnames,
                    {**data.meta, "split": "rest"})


def base_new_split(classnames: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(base, new) class indices: the first ``ceil(C/2)`` classes and the rest (CoCoOp's split)."""
    n = len(classnames)
    if n < 2:
        raise ValueError(f"a base/new split needs at least 2 classes, got {n}")
    m = math.ceil(n / 2)
    return tuple(range(m)), tuple(range(m, n))


__all__ = ["ImageSet", "IMAGE_EXTENSIONS", "read_classnames", "image_folder", "few_shot", "rest_of",
           "base_new_split"]
