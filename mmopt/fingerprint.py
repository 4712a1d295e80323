"""Content fingerprints of model files and folders: the "revision" of local weights.

One place for them: a local model's identity (``mmopt.component``) holds its
fingerprint, so replacing the weights invalidates what was computed with the
old ones, without reading gigabytes on every start.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["dir_fingerprint", "file_fingerprint", "sha256_file", "weights_record", "weights_revision"]

_MIB = 1 << 20


def _hash_weights(h, path: Path, size: int) -> None:
    """Size plus the first and last MiB: changes whenever a weights file does."""
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_MIB))
        if size > 2 * _MIB:
            f.seek(-_MIB, 2)
            h.update(f.read())


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"file-<16 hex>"`` of one weights file (size, first and last MiB).

    >>> file_fingerprint(__file__) == file_fingerprint(__file__)
    True
    """
    path = Path(path)
    h = hashlib.sha256()
    _hash_weights(h, path, path.stat().st_size)
    return "file-" + h.hexdigest()[:16]


def dir_fingerprint(root: str | os.PathLike) -> str:
    """``"local-<16 hex>"`` of a model directory.

    Small config files (json/txt) are hashed whole; weight files by size plus
    their first and last MiB. Hidden files (build stamps, locks) are skipped.

    >>> dir_fingerprint("/tmp/mmopt-tiny/sd")   # doctest: +SKIP
    'local-3f1c...'
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        h.update(p.relative_to(root).as_posix().encode())
        size = p.stat().st_size
        if p.suffix in (".json", ".txt", ".model") and size < 8 * _MIB:
            h.update(str(size).encode())
            h.update(p.read_bytes())
        else:
            _hash_weights(h, p, size)
    return "local-" + h.hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = _MIB) -> str:
    """Hex sha256 of a file's bytes (for checksums of downloaded weights).

    >>> sha256_file(__file__) == sha256_file(__file__)
    True
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_revision(model: str | os.PathLike, revision: str | None = None) -> str:
    """What identifies a model's weights: a local folder's or file's fingerprint, else the
    hub revision asked for (``"main"`` when none).

    >>> weights_revision("org/some-model", "v1")
    'v1'
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return dir_fingerprint(path)
    if path.is_file():
        return file_fingerprint(path)
    return revision or "main"


def weights_record(model: str | os.PathLike, revision: str | None = None) -> dict:
    """The part of a component's config that names its weights.

    A hub id keeps its id and revision; a local folder or file is named by its
    content alone, so moving it (another checkout, another machine) keeps every
    cached result, and replacing its weights invalidates them.

    >>> weights_record("stabilityai/sd-turbo", "abc")
    {'model': 'stabilityai/sd-turbo', 'revision': 'abc'}
    """
    path = Path(model).expanduser()
    if path.exists():
        return {"model": "local", "revision": weights_revision(path)}
    return {"model": str(model), "revision": revision or "main"}
