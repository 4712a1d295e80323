"""Fetching and loading scorer weights safely: one code path for hub, URL and local files.

Small scorer heads (the LAION aesthetic MLP, the HPS checkpoint) come as
single files. ``fetch_weights`` resolves a spec to a local path:

* a local file path                                   -> used as is;
* ``"https://..."`` / ``"http://..."``                -> downloaded once into
  ``$MMOPT_CACHE/weights/`` (30 s socket timeout, never hangs);
* ``"hf-hub:org/repo/path/in/repo.pth"``              -> ``huggingface_hub``.

``verify_sha256`` checks the file against an expected digest and refuses a
mismatch with ``ChecksumMismatchError`` naming both digests. When no digest is
known, the first load records the file's digest under its source
(trust on first use, ``$MMOPT_CACHE/weights/digests.json``) and later loads of
the same source must match it.

``load_state_dict`` never unpickles code: ``.safetensors`` through safetensors,
anything else through ``torch.load(weights_only=True)``, which accepts plain
tensor dicts (and the ``{"state_dict": {...}}`` wrapper checkpoints use).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

import torch

from mmopt.cache import content_key, default_cache_dir
from mmopt.errors import ModelLoadError
from mmopt.fingerprint import sha256_file  # noqa: F401  (re-exported: checksums of fetched weights)

_DIGEST_LOCK = threading.Lock()


class ChecksumMismatchError(ModelLoadError):
    """A weights file's sha256 differs from the expected one; the file is not used."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str):
        super().__init__(
            f"sha256 mismatch for weights {str(path)!r}: expected {expected}, got {actual}. "
            "Refusing to load it; the file is corrupt, truncated or not the published one"
        )
        self.path = str(path)
        self.expected = expected
        self.actual = actual


def weights_dir() -> Path:
    """Where downloaded weights and recorded digests live (``$MMOPT_CACHE/weights``)."""
    return default_cache_dir() / "weights"


def fetch_weights(spec: str | os.PathLike, *, revision: str | None = None,
                  timeout: float = 30.0) -> Path:
    """Resolve a weights spec (local path, URL or ``hf-hub:org/repo/file``) to a local file.

    Raises ``ModelLoadError`` when the file cannot be obtained (no network, unknown repo).

    >>> fetch_weights("/tmp/mlp.safetensors")    # doctest: +SKIP
    PosixPath('/tmp/mlp.safetensors')
    """
    # 1. a local file
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a weights spec must be a path, URL or 'hf-hub:org/repo/file', got {spec!r}")
    local = Path(spec).expanduser()
    if local.is_file():
        return local

    # 2. a URL: download once into the cache
    if spec.startswith(("http://", "https://")):
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(spec).path)).name or "weights"
        target = weights_dir() / content_key("url", spec)[:16] / name
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(spec, timeout=timeout) as resp, \
                    tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                shutil.copyfileobj(resp, tmp)
            os.replace(tmp.name, target)
        except Exception as e:  # URLError, socket timeout, HTTP errors
            raise ModelLoadError(f"could not download weights from {spec!r}: {e}") from e
        return target

    # 3. a hub file
    if spec.startswith("hf-hub:"):
        parts = spec[len("hf-hub:"):].strip("/").split("/")
        if len(parts) < 3:
            raise ValueError(f"expected 'hf-hub:org/repo/path/to/file', got {spec!r}")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id, filename, revision=revision,
                                        etag_timeout=timeout))
        except Exception as e:  # offline, unknown repo/file, HTTP errors
            raise ModelLoadError(
                f"could not fetch {filename!r} from hub repo {repo_id!r}: {e}. "
                "Download the file yourself and pass its local path") from e

    raise ModelLoadError(
        f"weights {spec!r} not found: not a local file, not an http(s) URL and not "
        "'hf-hub:org/repo/file'")


def verify_sha256(path: str | os.PathLike, expected: str | None, *, source: str | None = None) -> str:
    """Check ``path`` against ``expected`` (hex sha256); return the actual digest.

    With ``expected=None`` and a ``source`` (the spec it came from), the first call
    records the digest for that source and later calls must match it.
    """
    actual = sha256_file(path)
    if expected:
        if not isinstance(expected, str) or len(expected.strip()) != 64:
            raise ValueError(f"sha256 must be 64 hex characters, got {expected!r}")
        if actual != expected.strip().lower():
            raise ChecksumMismatchError(path, expected.strip().lower(), actual)
        return actual
    if source is None:
        return actual
    # Trust on first use: remember what this source gave us the first time.
    record = weights_dir() / "digests.json"
    with _DIGEST_LOCK:
        known = json.loads(record.read_text()) if record.is_file() else {}
        if source in known and known[source] != actual:
            raise ChecksumMismatchError(path, known[source], actual)
        if source not in known:
            known[source] = actual
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
            os.replace(tmp, record)
    return actual


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file without unpickling code.

    ``.safetensors`` -> safetensors; other suffixes -> ``torch.load(weights_only=True)``.
    A ``{"state_dict": {...}}`` wrapper is unwrapped and a ``module.`` prefix
    (DataParallel) stripped. Non-tensor entries are dropped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Mapping = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"could not load weights {str(path)!r} safely: {e}. Only safetensors files and "
            "plain tensor state dicts (torch.load(weights_only=True)) are accepted") from e
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise ModelLoadError(
            f"weights {str(path)!r} hold a {type(raw).__name__}, expected a state dict "
            "(a mapping of names to tensors)")
    out = {}
    for key, value in raw.items():
        if isinstance(value, torch.Tensor):
            out[key[len("module."):] if key.startswith("module.") else key] = value
    if not out:
        raise ModelLoadError(f"weights {str(path)!r} contain no tensors")
    return out
