"""One cache: everything that costs compute, keyed by its content.

Keys are sha256 over a canonical JSON of every input that affects the result
(model id + revision + all arguments), so a resumed or repeated run
recomputes nothing. Values are JSON documents or raw bytes (PNG images),
stored in one SQLite file. Thread-safe; WAL mode so readers never block the
writer of a concurrent run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any


def content_key(*parts: Any) -> str:
    """sha256 hex digest of a canonical JSON encoding of ``parts``.

    >>> content_key("llm", {"b": 1, "a": 2}) == content_key("llm", {"a": 2, "b": 1})
    True
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``$MMOPT_CACHE`` or ``~/.cache/mmopt``."""
    env = os.environ.get("MMOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mmopt"


class Cache:
    """A content-addressed key-value store in one SQLite file.

    >>> c = Cache(":memory:")
    >>> c.put_json("k", {"x": 1}); c.get_json("k")
    {'x': 1}
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            path = default_cache_dir() / "cache.sqlite"
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, kind TEXT, value BLOB)"
        )
        self.hits = 0
        self.misses = 0

    def _get(self, key: str, kind: str):
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM cache WHERE key=? AND kind=?", (key, kind)
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0]

    def _put(self, key: str, kind: str, value) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cache (key, kind, value) VALUES (?, ?, ?)", (key, kind, value)
            )

    def get_json(self, key: str) -> Any | None:
        raw = self._get(key, "json")
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any) -> None:
        self._put(key, "json", json.dumps(value))

    def get_bytes(self, key: str) -> bytes | None:
        return self._get(key, "bytes")

    def put_bytes(self, key: str, value: bytes) -> None:
        self._put(key, "bytes", sqlite3.Binary(value))

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM cache WHERE key=?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
