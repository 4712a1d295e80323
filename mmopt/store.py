"""One store: runs, proposals, trials, generations and scores in SQLite, media on disk.

Layout of an output folder::

    OUT/mmopt.sqlite            every run in this folder
    OUT/runs/<run_id>/media/    one PNG per (trial, seed); frames as <...>_fNNN.png

Every trial is written in one transaction together with its generations and
scores, before the loop starts the next trial, so a killed run loses no
finished trial and a resumed run finds exactly the trials that finished.
"""
from __future__ import annotations

import io
import json
import math
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

from mmopt.types import Generation, Score, Trial

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, intent TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, summary TEXT
);
CREATE TABLE IF NOT EXISTS proposals (
    run_id TEXT NOT NULL, iteration INTEGER NOT NULL, prompts TEXT NOT NULL, meta TEXT,
    PRIMARY KEY (run_id, iteration)
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, iteration INTEGER NOT NULL, prompt TEXT NOT NULL,
    objective REAL NOT NULL, feasible INTEGER NOT NULL, scores TEXT NOT NULL, feedback TEXT,
    meta TEXT, details TEXT, created REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS generations (
    run_id TEXT NOT NULL, trial_idx INTEGER NOT NULL, seed INTEGER NOT NULL, path TEXT,
    cache_key TEXT, meta TEXT, PRIMARY KEY (run_id, trial_idx, seed)
);
CREATE TABLE IF NOT EXISTS scores (
    run_id TEXT NOT NULL, trial_idx INTEGER NOT NULL, seed INTEGER NOT NULL, scorer TEXT NOT NULL,
    value REAL NOT NULL, details TEXT, PRIMARY KEY (run_id, trial_idx, seed, scorer)
);
"""


def to_jsonable(obj: Any) -> Any:
    """Make scorer details and metadata JSON-safe (numbers, tensors, tuples, NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return repr(obj)


PNG_LEVEL = 1  # zlib level of stored PNGs: lossless at any level; 1 is several times faster than PIL's 6


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(image: Any, level: int = PNG_LEVEL) -> bytes:
    """Lossless PNG bytes of a PIL image.

    8-bit L/RGB/RGBA images take a fast path (numpy rows + ``zlib``), which
    releases the GIL while compressing, so several threads encode in parallel
    (PIL's encoder holds it); other modes go through PIL. Decoding gives back
    exactly the same pixels either way.

    >>> from PIL import Image; import io
    >>> im = Image.new("RGB", (4, 3), (255, 0, 0))
    >>> Image.open(io.BytesIO(encode_png(im))).getpixel((0, 0))
    (255, 0, 0)
    """
    import numpy as np

    color_type = {"L": 0, "RGB": 2, "RGBA": 6}.get(getattr(image, "mode", None))
    if color_type is None or image.info.get("transparency") is not None:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=level)
        return buf.getvalue()
    pixels = np.asarray(image, dtype=np.uint8)
    h, w = pixels.shape[:2]
    rows = np.empty((h, 1 + pixels[0].size), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" on every row: cheap, and zlib does the rest
    rows[:, 1:] = pixels.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _png_chunk(b"IEND", b""))


def media_to_pngs(media: Any, level: int = PNG_LEVEL) -> list[bytes]:
    """PNG bytes of an image, or of each frame of a video (a list of images)."""
    frames = media if isinstance(media, (list, tuple)) else [media]
    return [encode_png(frame, level) for frame in frames]


def pngs_to_media(pngs: Sequence[bytes], video: bool) -> Any:
    from PIL import Image

    frames = []
    for b in pngs:
        im = Image.open(io.BytesIO(b))
        im.load()
        frames.append(im)
    return frames if video else frames[0]


class Store:
    """SQLite run store under ``root`` (created if missing).

    >>> import tempfile; s = Store(tempfile.mkdtemp())
    >>> s.start_run("r1", "a cat", {"seeds": [0]})
    'new'
    >>> s.list_runs()[0]["run_id"]
    'r1'
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"store root must be a directory, got a file: {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "mmopt.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    # ---- runs -------------------------------------------------------------
    def start_run(self, run_id: str, intent: str, config: dict) -> str:
        """Create the run, or reopen it. Returns "new", "resume" or "finished"."""
        cfg = json.dumps(to_jsonable(config), sort_keys=True)
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT intent, config, status FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO runs (run_id, intent, config, status, created, updated) VALUES (?,?,?,?,?,?)",
                    (run_id, intent, cfg, "running", now, now),
                )
                return "new"
            if row[0] != intent or row[1] != cfg:
                raise ValueError(
                    f"run {run_id!r} already exists with a different intent or configuration; "
                    f"choose another run id or output folder (stored intent: {row[0]!r})"
                )
            if row[2] == "finished":
                return "finished"
            self._db.execute("UPDATE runs SET status='running', updated=? WHERE run_id=?", (now, run_id))
            return "resume"

    def set_status(self, run_id: str, status: str, summary: dict | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status=?, updated=?, summary=COALESCE(?, summary) WHERE run_id=?",
                (status, time.time(), None if summary is None else json.dumps(to_jsonable(summary)), run_id),
            )

    def list_runs(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT r.run_id, r.intent, r.status, r.created, r.updated, r.summary, "
                "(SELECT COUNT(*) FROM trials t WHERE t.run_id=r.run_id) FROM runs r ORDER BY r.created"
            ).fetchall()
        return [
            {"run_id": r[0], "intent": r[1], "status": r[2], "created": r[3], "updated": r[4],
             "summary": json.loads(r[5]) if r[5] else None, "trials": r[6]}
            for r in rows
        ]

    def get_run(self, run_id: str) -> dict:
        with self._lock:
            row = self._db.execute(
                "SELECT run_id, intent, config, status, created, updated, summary FROM runs WHERE run_id=?", (run_id,)
            ).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r} in {self.path}")
        return {"run_id": row[0], "intent": row[1], "config": json.loads(row[2]), "status": row[3],
                "created": row[4], "updated": row[5], "summary": json.loads(row[6]) if row[6] else None}

    # ---- proposals ---------------------------------------------------------
    def save_proposals(self, run_id: str, iteration: int, prompts: Sequence[str], meta: dict | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO proposals (run_id, iteration, prompts, meta) VALUES (?,?,?,?)",
                (run_id, iteration, json.dumps(list(prompts)), json.dumps(to_jsonable(meta or {}))),
            )

    def load_proposals(self, run_id: str, iteration: int) -> tuple[list[str], dict] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT prompts, meta FROM proposals WHERE run_id=? AND iteration=?", (run_id, iteration)
            ).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1] or "{}"))

    # ---- trials ------------------------------------------------------------
    def media_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id / "media"

    def save_trial(self, run_id: str, trial: Trial, generations: Sequence[Generation],
                   scores: dict[str, Sequence[Score]], cache_keys: Sequence[str] = (),
                   pngs: Sequence[Sequence[bytes]] | None = None) -> None:
        """Write a finished trial with its media, generations and scores, atomically.

        ``pngs`` (optional): the PNG bytes of each generation's frames, already
        encoded (the loop encodes once for the cache and the store).
        """
        # 1. media first: a crash after this but before the commit only leaves
        #    orphan files, which the resumed run overwrites.
        if pngs is not None and len(pngs) != len(generations):
            raise ValueError(f"pngs must hold one list of frames per generation: got {len(pngs)} "
                             f"for {len(generations)} generations")
        mdir = self.media_dir(run_id)
        mdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for gi, g in enumerate(generations):
            pngs_g = list(pngs[gi]) if pngs is not None else media_to_pngs(g.media)
            names = ([f"t{trial.index:04d}_s{g.seed}.png"] if len(pngs_g) == 1 and not isinstance(g.media, (list, tuple))
                     else [f"t{trial.index:04d}_s{g.seed}_f{i:03d}.png" for i in range(len(pngs_g))])
            for name, data in zip(names, pngs_g):
                (mdir / name).write_bytes(data)
            paths.append([str(Path("runs") / run_id / "media" / n) for n in names])
        # 2. rows, in one transaction
        now = time.time()
        keys = list(cache_keys) or [None] * len(generations)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO trials (run_id, idx, iteration, prompt, objective, feasible, scores, "
                    "feedback, meta, details, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, trial.index, trial.iteration, trial.prompt, float(trial.objective), int(trial.feasible),
                     json.dumps(to_jsonable(trial.scores)), trial.feedback, json.dumps(to_jsonable(trial.meta)),
                     json.dumps(to_jsonable(trial.details)), now),
                )
                for g, p, k in zip(generations, paths, keys):
                    self._db.execute(
                        "INSERT OR REPLACE INTO generations (run_id, trial_idx, seed, path, cache_key, meta) "
                        "VALUES (?,?,?,?,?,?)",
                        (run_id, trial.index, g.seed, json.dumps(p), k, json.dumps(to_jsonable(g.meta))),
                    )
                for scorer, lst in scores.items():
                    for g, s in zip(generations, lst):
                        self._db.execute(
                            "INSERT OR REPLACE INTO scores (run_id, trial_idx, seed, scorer, value, details) "
                            "VALUES (?,?,?,?,?,?)",
                            (run_id, trial.index, g.seed, scorer, float(s.value), json.dumps(to_jsonable(s.details))),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load_trials(self, run_id: str) -> list[Trial]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, iteration, prompt, objective, feasible, scores, feedback, meta, details "
                "FROM trials WHERE run_id=? ORDER BY idx", (run_id,)
            ).fetchall()
        return [Trial(index=r[0], iteration=r[1], prompt=r[2], objective=r[3], scores=json.loads(r[5]),
                      feasible=bool(r[4]), feedback=r[6] or "", meta=json.loads(r[7] or "{}"),
                      details=json.loads(r[8] or "{}")) for r in rows]

    def load_generations(self, run_id: str, trial_idx: int) -> list[dict]:
        """[{seed, paths (relative to root), meta, scores: {scorer: value}}] of one trial."""
        with self._lock:
            gens = self._db.execute(
                "SELECT seed, path, meta FROM generations WHERE run_id=? AND trial_idx=? ORDER BY seed",
                (run_id, trial_idx)).fetchall()
            srows = self._db.execute(
                "SELECT seed, scorer, value FROM scores WHERE run_id=? AND trial_idx=?", (run_id, trial_idx)).fetchall()
        by_seed: dict[int, dict] = {}
        for seed, scorer, value in srows:
            by_seed.setdefault(seed, {})[scorer] = value
        return [{"seed": g[0], "paths": json.loads(g[1] or "[]"), "meta": json.loads(g[2] or "{}"),
                 "scores": by_seed.get(g[0], {})} for g in gens]

    def close(self) -> None:
        with self._lock:
            self._db.close()
