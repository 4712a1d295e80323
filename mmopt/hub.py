"""Fail-fast access to the Hugging Face hub for every model loader.

Loaders call :func:`check_hub_repo` before handing a hub id to diffusers,
transformers or open_clip. It answers within a few seconds whether the model
can be loaded (from the local cache or the network) and otherwise raises a
:class:`~mmopt.errors.ModelLoadError` that names the id and the reason (not
found, gated, no network, ``HF_HUB_OFFLINE=1``), so a load never hangs on an
unreachable hub. ``huggingface_hub`` is imported lazily.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from .errors import ModelLoadError

_TRUE = {"1", "true", "yes", "on"}
_REACHABLE: dict[str, tuple[float, bool]] = {}
_REACHABLE_TTL_S = 60.0


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The hub URL (``HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds.

    The answer is remembered for a minute so many loads cost one probe.
    """
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    now = time.monotonic()
    hit = _REACHABLE.get(f"{host}:{port}")
    if hit is not None and now - hit[0] < _REACHABLE_TTL_S:
        return hit[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _REACHABLE[f"{host}:{port}"] = (now, ok)
    return ok


@dataclass(frozen=True)
class HubCheck:
    """How to load a hub repo: from the cache only, and at which revision."""

    repo_id: str
    local_files_only: bool
    revision: str | None  # commit sha when the hub told us, else what the caller asked for


def check_hub_repo(repo_id: str, *, what: str = "model", revision: str | None = None,
                   probe_file: str | tuple[str, ...] | None = None,
                   timeout: float = 5.0) -> HubCheck:
    """Decide quickly whether ``repo_id`` can be loaded; raise ModelLoadError if not.

    ``probe_file`` (e.g. ``"model_index.json"``, or a tuple of names of which
    any will do) is looked up in the local cache: a cached repo loads offline. ``what`` names the kind of model in
    messages ("diffusers pipeline", "open_clip model").

    >>> check_hub_repo("stabilityai/sd-turbo", probe_file="model_index.json")  # doctest: +SKIP
    HubCheck(repo_id='stabilityai/sd-turbo', local_files_only=False, revision='b261bac6...')
    """
    try:
        import huggingface_hub as hf
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError as e:  # a dependency of diffusers/transformers, so rare
        raise ModelLoadError(f"cannot load {what} {repo_id!r}: huggingface_hub is not installed") from e

    # 1. the id must look like a hub id (a mistyped local path usually does not)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ModelLoadError(
            f"{what} {repo_id!r} is neither an existing local directory nor a valid hub id "
            f"('org/name'): {e}"
        ) from e

    # 2. a cached copy loads without network
    cached = False
    probes = (probe_file,) if isinstance(probe_file, str) else tuple(probe_file or ())
    for name in probes:
        if isinstance(hf.try_to_load_from_cache(repo_id, name, revision=revision), str):
            cached = True
            break
    offline = is_offline()
    if cached and (offline or not hub_reachable(min(timeout, 3.0))):
        return HubCheck(repo_id, True, revision)

    # 3. no cache: we need the network
    if offline:
        raise ModelLoadError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
            f"(no network): download it where the hub is reachable, or pass a local directory"
        )
    if not hub_reachable(min(timeout, 3.0)):
        raise ModelLoadError(
            f"cannot load {what} {repo_id!r}: the hub at {hub_endpoint()} is unreachable "
            f"(no network?) and the model is not in the local cache; pass a local directory "
            f"or set HF_ENDPOINT"
        )

    # 4. ask the hub whether the repo exists (with a timeout, so we never hang)
    try:
        api = hf.HfApi(endpoint=hub_endpoint())  # read HF_ENDPOINT now, not at import
        info = api.model_info(repo_id, revision=revision, timeout=timeout)
    except hf.errors.GatedRepoError as e:
        raise ModelLoadError(
            f"{what} {repo_id!r} is gated: accept its licence on the hub and log in "
            f"(`huggingface-cli login`)"
        ) from e
    except hf.errors.RepositoryNotFoundError as e:
        raise ModelLoadError(
            f"{what} {repo_id!r} was not found on the hub (typo, or a private repo without login?)"
        ) from e
    except hf.errors.RevisionNotFoundError as e:
        raise ModelLoadError(f"{what} {repo_id!r} has no revision {revision!r}") from e
    except Exception as e:  # timeouts, connection resets, HTTP 5xx
        if cached:
            return HubCheck(repo_id, True, revision)
        raise ModelLoadError(
            f"cannot load {what} {repo_id!r}: the hub did not answer ({type(e).__name__}: {e}); "
            f"no network?"
        ) from e
    return HubCheck(repo_id, False, getattr(info, "sha", None) or revision)
