"""One store: runs, proposals, trials, generations and scores in SQLite, media on disk.

Layout of an output folder::

    OUT/mmopt.sqlite            every run in this folder
    OUT/runs/<run_id>/media/    one PNG per (trial, seed); frames as <...>_fNNN.png
    OUT/runs/<run_id>/.lock     held (flock) by the process writing the run

Every trial is written in one transaction together with its generations and
scores, before the loop starts the next trial, so a killed run loses no
finished trial and a resumed run finds exactly the trials that finished.

What the store guards against:
  * several processes opening one folder at once (a busy timeout; the WAL
    switch is retried), and two processes writing one run (``lock_run``: the
    second is told the run is busy);
  * run ids that would leave the folder (``check_run_id``);
  * a damaged or foreign ``mmopt.sqlite``: a :class:`~mmopt.errors.StoreError`
    that names the file and says what to do; the file is never overwritten;
  * a read-only folder: ``Store(root, readonly=True)`` reads it; a write that
    is impossible is one clear error;
  * a run killed with ``kill -9``: it keeps status "running" in the database,
    but nobody holds its lock, so it is listed as "interrupted".
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmopt.errors import StoreError
from mmopt.types import Candidate, Generation, Score, Trial

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, intent TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, summary TEXT
);
CREATE TABLE IF NOT EXISTS proposals (
    run_id TEXT NOT NULL, iteration INTEGER NOT NULL, prompts TEXT NOT NULL, meta TEXT,
    PRIMARY KEY (run_id, iteration)
);
CREATE TABLE IF NOT EXISTS plans (
    run_id TEXT NOT NULL, iteration INTEGER NOT NULL, plan TEXT NOT NULL,
    PRIMARY KEY (run_id, iteration)
);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, iteration INTEGER NOT NULL, prompt TEXT NOT NULL,
    objective REAL NOT NULL, feasible INTEGER NOT NULL, scores TEXT NOT NULL, feedback TEXT,
    meta TEXT, details TEXT, created REAL NOT NULL, negative TEXT, payload TEXT,
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
    """PNG bytes of an image, or of each frame of a video (a list of images); none for a
    generation without media (a result that is all in ``meta``, e.g. a classifier's accuracy)."""
    if media is None:
        return []
    frames = media if isinstance(media, (list, tuple)) else [media]
    return [encode_png(frame, level) for frame in frames]


def pngs_to_media(pngs: Sequence[bytes], video: bool) -> Any:
    """The inverse of :func:`media_to_pngs` (``None`` for no frames of a non-video)."""
    from PIL import Image

    if not pngs and not video:
        return None
    frames = []
    for b in pngs:
        im = Image.open(io.BytesIO(b))
        im.load()
        frames.append(im)
    return frames if video else frames[0]


RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
BUSY_TIMEOUT_S = 60.0  # how long a connection waits for another process's write


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is a safe folder name (letters, digits, ``_ . -``; no ``..``), else ValueError.

    >>> check_run_id("a1b2c3")
    'a1b2c3'
    """
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} is not allowed: expected 1-128 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit and without '..'")
    return run_id


def _lock_file_held(path: Path) -> bool:
    """Whether some process holds the flock on ``path`` (False when the file is absent)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class Store:
    """SQLite run store under ``root`` (created if missing, unless ``readonly``).

    >>> import tempfile; s = Store(tempfile.mkdtemp())
    >>> s.start_run("r1", "a cat", {"seeds": [0]})
    'new'
    >>> s.list_runs()[0]["run_id"]
    'r1'
    """

    def __init__(self, root: str | os.PathLike, *, readonly: bool = False):
        self.root = Path(root)
        self.readonly = bool(readonly)
        self.path = self.root / "mmopt.sqlite"
        self._lock = threading.Lock()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"the output folder must be a directory, got a file: {self.root}")
        if self.readonly:
            if not self.path.is_file():
                raise StoreError(f"no run store at {self.path}")
            self._db = self._open_readonly()
        else:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the output folder {self.root}: {e.strerror or e}") from e
            if not os.access(self.root, os.W_OK):
                raise StoreError(f"the output folder {self.root} is not writable; choose another --out "
                                 "(read-only commands such as `mmopt runs` still work on it)")
            self._db = self._open_writable()

    # ---- opening ----------------------------------------------------------
    def _damaged(self, e: Exception) -> StoreError:
        return StoreError(f"{self.path} is damaged or not an mmopt store ({e}); it was left as it is: "
                          "move it aside (or restore a copy) and run again, or choose another --out")

    def _open_readonly(self) -> sqlite3.Connection:
        # mode=ro needs to create the WAL index beside the file; a read-only folder cannot,
        # and then immutable=1 reads the file as it is
        for query in ("mode=ro", "immutable=1"):
            try:
                db = sqlite3.connect(f"file:{self.path}?{query}", uri=True, check_same_thread=False,
                                     isolation_level=None, timeout=BUSY_TIMEOUT_S)
                db.execute("SELECT name FROM sqlite_master").fetchall()
            except sqlite3.OperationalError as e:
                if "unable to open" in str(e) and query == "mode=ro":
                    continue
                if "no such table" in str(e) or "not a database" in str(e):
                    raise self._damaged(e) from e
                raise StoreError(f"cannot read {self.path}: {e}") from e
            except sqlite3.DatabaseError as e:
                raise self._damaged(e) from e
            self._check_schema(db)
            return db
        raise StoreError(f"cannot open {self.path} for reading")

    def _open_writable(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            # several processes may open a new folder at once: the WAL switch needs a moment
            # alone with the file, so it is retried rather than failed ("database is locked")
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while True:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._check_schema(db)
            self._migrate(db)
        except sqlite3.OperationalError as e:
            if "readonly" in str(e) or "read-only" in str(e) or "unable to open" in str(e):
                raise StoreError(f"cannot write the run store {self.path}: {e}; choose another --out") from e
            if "not a database" in str(e):
                raise self._damaged(e) from e
            raise StoreError(f"cannot open {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from e
        return db

    def _check_schema(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"runs", "trials"} <= tables:
            raise self._damaged(sqlite3.DatabaseError(f"tables {sorted(tables)} are not mmopt's"))
        db.execute("SELECT COUNT(*) FROM runs").fetchone()  # reads a page: a truncated file fails here

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns a store written by an older mmopt lacks."""
        cols = {r[1] for r in db.execute("PRAGMA table_info(trials)")}
        for col in ("negative", "payload"):
            if col not in cols:
                db.execute(f"ALTER TABLE trials ADD COLUMN {col} TEXT")

    @contextmanager
    def _sql(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; sqlite errors become one clear StoreError."""
        if write and self.readonly:
            raise StoreError(f"{self.path} was opened read-only")
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as e:
                if "readonly" in str(e) or "read-only" in str(e):
                    raise StoreError(f"cannot write the run store {self.path}: {e}") from e
                if "malformed" in str(e) or "not a database" in str(e):
                    raise self._damaged(e) from e
                raise StoreError(f"{self.path}: {e}") from e
            except sqlite3.DatabaseError as e:
                if isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
                    raise
                raise self._damaged(e) from e

    # ---- run locks --------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / check_run_id(run_id)

    @contextmanager
    def lock_run(self, run_id: str, *, wait: bool = False) -> Iterator[None]:
        """Hold the run's lock while writing it: one process per run.

        A second process on the same run waits (``wait=True``) or gets a
        StoreError naming the holder. The lock dies with its process, so a run
        killed with ``kill -9`` is free again (and listed as "interrupted").
        """
        import fcntl

        folder = self.run_dir(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot lock run {run_id} in {self.root}: {e.strerror or e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise StoreError(f"run {run_id} in {self.root} is being written by another process "
                                 f"(pid {holder}); wait for it to finish or choose another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    def run_locked(self, run_id: str) -> bool:
        """Whether some process is writing ``run_id`` now."""
        return _lock_file_held(self.run_dir(run_id) / ".lock")

    # ---- runs -------------------------------------------------------------
    def start_run(self, run_id: str, intent: str, config: dict) -> str:
        """Create the run, or reopen it. Returns "new", "resume" or "finished"."""
        check_run_id(run_id)
        cfg = json.dumps(to_jsonable(config), sort_keys=True)
        now = time.time()
        with self._sql(write=True) as db:
            row = db.execute("SELECT intent, config, status FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                db.execute(
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
            db.execute("UPDATE runs SET status='running', updated=? WHERE run_id=?", (now, run_id))
            return "resume"

    def set_status(self, run_id: str, status: str, summary: dict | None = None) -> None:
        with self._sql(write=True) as db:
            db.execute(
                "UPDATE runs SET status=?, updated=?, summary=COALESCE(?, summary) WHERE run_id=?",
                (status, time.time(), None if summary is None else json.dumps(to_jsonable(summary)), run_id),
            )

    def _shown_status(self, run_id: str, status: str) -> str:
        # "running" in the database but nobody holds the lock: the writer died (kill -9, power)
        if status == "running" and not self.run_locked(run_id):
            return "interrupted"
        return status

    def list_runs(self) -> list[dict]:
        with self._sql() as db:
            rows = db.execute(
                "SELECT r.run_id, r.intent, r.status, r.created, r.updated, r.summary, "
                "(SELECT COUNT(*) FROM trials t WHERE t.run_id=r.run_id) FROM runs r ORDER BY r.created"
            ).fetchall()
        return [
            {"run_id": r[0], "intent": r[1], "status": self._shown_status(r[0], r[2]), "created": r[3],
             "updated": r[4], "summary": json.loads(r[5]) if r[5] else None, "trials": r[6]}
            for r in rows
        ]

    def get_run(self, run_id: str) -> dict:
        with self._sql() as db:
            row = db.execute(
                "SELECT run_id, intent, config, status, created, updated, summary FROM runs WHERE run_id=?", (run_id,)
            ).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r} in {self.path}")
        return {"run_id": row[0], "intent": row[1], "config": json.loads(row[2]),
                "status": self._shown_status(row[0], row[3]),
                "created": row[4], "updated": row[5], "summary": json.loads(row[6]) if row[6] else None}

    # ---- proposals ---------------------------------------------------------
    def save_proposals(self, run_id: str, iteration: int, candidates: Sequence[Candidate | str],
                       meta: dict | None = None) -> None:
        records = [Candidate.of(c).key() for c in candidates]
        with self._sql(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO proposals (run_id, iteration, prompts, meta) VALUES (?,?,?,?)",
                (run_id, iteration, json.dumps(records), json.dumps(to_jsonable(meta or {}))),
            )

    def load_proposals(self, run_id: str, iteration: int) -> tuple[list[Candidate], dict] | None:
        with self._sql() as db:
            row = db.execute(
                "SELECT prompts, meta FROM proposals WHERE run_id=? AND iteration=?", (run_id, iteration)
            ).fetchone()
        if row is None:
            return None
        return [Candidate.of(c) for c in json.loads(row[0])], json.loads(row[1] or "{}")

    # ---- a strategy's plans ----------------------------------------------
    def save_plan(self, run_id: str, iteration: int, plan: dict) -> None:
        """What the strategy planned for ``iteration`` (re-scores, new candidates, their seeds),
        stored before it runs so a resumed run follows the same plan."""
        with self._sql(write=True) as db:
            db.execute("INSERT OR REPLACE INTO plans (run_id, iteration, plan) VALUES (?,?,?)",
                       (run_id, iteration, json.dumps(to_jsonable(plan))))

    def load_plan(self, run_id: str, iteration: int) -> dict | None:
        with self._sql() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "plans" not in tables:  # a store written before plans existed (opened read-only)
                return None
            row = db.execute("SELECT plan FROM plans WHERE run_id=? AND iteration=?", (run_id, iteration)).fetchone()
        return None if row is None else json.loads(row[0])

    # ---- trials ------------------------------------------------------------
    def media_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "media"

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
            names = ([f"t{trial.index:04d}_s{g.seed}.png"] if len(pngs_g) == 1 and not g.is_video
                     else [f"t{trial.index:04d}_s{g.seed}_f{i:03d}.png" for i in range(len(pngs_g))])
            for name, data in zip(names, pngs_g):
                (mdir / name).write_bytes(data)
            paths.append([str(Path("runs") / run_id / "media" / n) for n in names])
        # 2. rows, in one transaction
        now = time.time()
        keys = list(cache_keys) or [None] * len(generations)
        with self._sql(write=True) as db:
            db.execute("BEGIN")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO trials (run_id, idx, iteration, prompt, objective, feasible, scores, "
                    "feedback, meta, details, created, negative, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, trial.index, trial.iteration, trial.prompt, float(trial.objective), int(trial.feasible),
                     json.dumps(to_jsonable(trial.scores)), trial.feedback, json.dumps(to_jsonable(trial.meta)),
                     json.dumps(to_jsonable(trial.details)), now, trial.negative,
                     None if trial.payload is None else json.dumps(trial.payload, sort_keys=True)),
                )
                for g, p, k in zip(generations, paths, keys):
                    db.execute(
                        "INSERT OR REPLACE INTO generations (run_id, trial_idx, seed, path, cache_key, meta) "
                        "VALUES (?,?,?,?,?,?)",
                        (run_id, trial.index, g.seed, json.dumps(p), k, json.dumps(to_jsonable(g.meta))),
                    )
                for scorer, lst in scores.items():
                    for g, s in zip(generations, lst):
                        db.execute(
                            "INSERT OR REPLACE INTO scores (run_id, trial_idx, seed, scorer, value, details) "
                            "VALUES (?,?,?,?,?,?)",
                            (run_id, trial.index, g.seed, scorer, float(s.value), json.dumps(to_jsonable(s.details))),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def load_trials(self, run_id: str) -> list[Trial]:
        with self._sql() as db:
            rows = db.execute(
                "SELECT idx, iteration, prompt, objective, feasible, scores, feedback, meta, details, negative, "
                "payload FROM trials WHERE run_id=? ORDER BY idx", (run_id,)
            ).fetchall()
        return [Trial(index=r[0], iteration=r[1], prompt=r[2], objective=r[3], scores=json.loads(r[5]),
                      feasible=bool(r[4]), feedback=r[6] or "", meta=json.loads(r[7] or "{}"),
                      details=json.loads(r[8] or "{}"), negative=r[9],
                      payload=json.loads(r[10]) if r[10] else None) for r in rows]

    def load_generations(self, run_id: str, trial_idx: int) -> list[dict]:
        """[{seed, paths (relative to root), meta, scores: {scorer: value}}] of one trial."""
        with self._sql() as db:
            gens = db.execute(
                "SELECT seed, path, meta, cache_key FROM generations WHERE run_id=? AND trial_idx=? ORDER BY seed",
                (run_id, trial_idx)).fetchall()
            srows = db.execute(
                "SELECT seed, scorer, value FROM scores WHERE run_id=? AND trial_idx=?", (run_id, trial_idx)).fetchall()
        by_seed: dict[int, dict] = {}
        for seed, scorer, value in srows:
            by_seed.setdefault(seed, {})[scorer] = value
        return [{"seed": g[0], "paths": json.loads(g[1] or "[]"), "meta": json.loads(g[2] or "{}"),
                 "cache_key": g[3], "scores": by_seed.get(g[0], {}),
                 "missing": [p for p in json.loads(g[1] or "[]") if not (self.root / p).is_file()]}
                for g in gens]

    def missing_media(self, run_id: str) -> list[dict]:
        """Stored media files of ``run_id`` that are gone from disk: [{trial, seed, path, cache_key}]."""
        with self._sql() as db:
            rows = db.execute("SELECT trial_idx, seed, path, cache_key FROM generations WHERE run_id=? "
                              "ORDER BY trial_idx, seed", (run_id,)).fetchall()
        out = []
        for trial_idx, seed, paths, key in rows:
            for k, p in enumerate(json.loads(paths or "[]")):
                if not (self.root / p).is_file():
                    out.append({"trial": trial_idx, "seed": seed, "path": p, "frame": k, "cache_key": key})
        return out

    def restore_media(self, path: str, data: bytes) -> None:
        """Write one media file back (a resume restores deleted media from the cache)."""
        target = (self.root / path).resolve()
        if self.root.resolve() not in target.parents:
            raise ValueError(f"media path {path!r} leaves the store folder {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def close(self) -> None:
        with self._lock:
            self._db.close()
