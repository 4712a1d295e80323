"""``mmopt batch``: optimize every prompt of a file, crash-safe, resumable, sharded.

Each input prompt is an ordinary optimizer run (:func:`mmopt.presets.build_optimizer`
and :meth:`Optimizer.run`) in one run store shared by every process
(``OUT/store``, SQLite in WAL mode; one content cache per process beside it).
What the batch adds is bookkeeping:

* ``OUT/parts/rank-R.jsonl``: one line per finished prompt, appended and
  fsync'd by the process that ran it. This is what a rerun reads back: every
  prompt with a line is skipped, so a batch killed at any point (``kill -9``
  included) resumes where it stopped; a half-finished prompt resumes inside
  its own optimizer run. A torn last line (killed mid-write) is cut off;
* ``OUT/.batch.lock``: held by the batch (its process 0) while it runs; a
  second batch on the same folder is refused with a message;
* ``OUT/batch.json``: the batch's configuration; a rerun with a different one
  is refused instead of mixing results;
* at the end, the parts are merged in input order into ``results.jsonl``
  (one line per input prompt), ``results.csv``, ``summary.json`` and
  ``summary.txt``; ``prompts/<key>.txt`` and ``images/<key>/*.png`` (the
  original's and the best prompt's images, with prompt and scores in the PNG
  metadata) are written per prompt.

Scale: one process per GPU with ``accelerate launch`` (or ``torchrun``); process
R of W takes prompts R, R+W, R+2W, ... of those not finished yet. On CPU,
``torchrun --nproc_per_node 2 -m mmopt.cli batch ...`` gives two processes
(``accelerate launch --cpu --num_processes 2`` starts one). Multi-node: the same
command on every node (``accelerate launch --num_machines N --machine_rank R
--main_process_ip HOST ...``, e.g. from a Slurm script) with ``OUT`` on a shared
file system.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmopt.apps.datasets import PromptItem, PromptSet, filter_prompts, load_prompts

log = logging.getLogger("mmopt.batch")

# fields of a result that depend on the machine and the moment, not on the computation
VOLATILE_FIELDS = ("wall_s", "rank", "finished_at")
BOOTSTRAP_SAMPLES = 2000


class BatchBusyError(RuntimeError):
    """Another batch is writing the same output folder."""


# --------------------------------------------------------------------------- processes

@dataclass
class Process:
    """This process's place in the batch: ``index`` of ``count`` (1 when not launched)."""

    index: int = 0
    count: int = 1
    state: Any = None  # accelerate.PartialState when launched

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def broadcast(self, value: Any) -> Any:
        """Process 0's ``value`` on every process."""
        if self.count == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def barrier(self) -> None:
        if self.count > 1:
            self.state.wait_for_everyone()


def set_cpu_threads(threads: int | None) -> None:
    """torch's CPU threads: ``threads``, or the cores shared out among the local processes.

    On a CPU that other work also uses, one thread per process avoids threads waiting on
    each other (``import mmopt`` also sets ``OMP_WAIT_POLICY=PASSIVE`` for that reason).
    """
    import torch

    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local <= 1:
            return
        threads = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)


def current_process() -> Process:
    """The process of a launched batch (``accelerate launch``/``torchrun`` set WORLD_SIZE), else one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Process()
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    # a long batch: processes that finish their share early wait for the others at the end
    state = PartialState(cpu=cpu, timeout=timedelta(hours=48))
    if not cpu:
        torch.cuda.set_device(state.local_process_index)  # "cuda" means this process's GPU
    return Process(index=state.process_index, count=state.num_processes, state=state)


# --------------------------------------------------------------------------- files

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it: once this returns, the record survives a crash."""
    line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_tail(path: Path) -> int:
    """Cut a torn last line (a process killed mid-write) off ``path``; returns the bytes cut."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep


def read_records(parts_dir: Path) -> dict[str, dict]:
    """Every finished record in ``parts_dir`` by key (the first of duplicates wins); unreadable
    lines (a torn tail) are skipped."""
    out: dict[str, dict] = {}
    for part in sorted(parts_dir.glob("rank-*.jsonl")):
        with open(part, encoding="utf-8", errors="replace") as f:
            for raw in f:
                if not raw.endswith("\n"):
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                    out.setdefault(rec["key"], rec)
    return out


@contextmanager
def flock(path: Path, *, wait: bool, message: str = "") -> Iterator[None]:
    """Hold an exclusive flock on ``path``; BatchBusyError when not ``wait`` and it is taken."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise BatchBusyError(message.format(holder=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- statistics

def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def bootstrap_ci(diffs: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of paired differences (best minus original per prompt).

    Resampling prompts keeps each prompt's pair together (a paired bootstrap).

    >>> lo, hi = bootstrap_ci([0.1, 0.2, 0.0, 0.3])
    >>> lo <= 0.15 <= hi
    True
    """
    xs = list(diffs)
    if len(xs) < 2:
        return None
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = means[int(math.floor((1 - level) / 2 * samples))]
    hi = means[min(samples - 1, int(math.ceil((1 + level) / 2 * samples)) - 1)]
    return lo, hi


def _group_stats(recs: list[dict]) -> dict:
    gains = [r["gain"] for r in recs]
    held = [r["heldout_gain"] for r in recs if r.get("heldout_gain") is not None]
    ci = bootstrap_ci(gains)
    hci = bootstrap_ci(held)
    return {"n": len(recs), "mean_gain": mean(gains), "gain_ci95": list(ci) if ci else None,
            "mean_original": mean([r["original_objective"] for r in recs]),
            "mean_best": mean([r["best_objective"] for r in recs]),
            "n_heldout": len(held), "mean_heldout_gain": mean(held), "heldout_gain_ci95": list(hci) if hci else None,
            "mean_heldout_original": mean([r["heldout_original"] for r in recs if r.get("heldout_original") is not None]),
            "mean_heldout_best": mean([r["heldout_best"] for r in recs if r.get("heldout_best") is not None])}


def summarize(items: Sequence[PromptItem], prompt_set: PromptSet, records: dict[str, dict]) -> dict:
    """Counts and gains of a batch: every input row is a result, a bad row or a counted reason."""
    done = [records[i.key] for i in items if i.key in records and records[i.key]["status"] == "done"]
    failed = [records[i.key] for i in items if i.key in records and records[i.key]["status"] != "done"]
    missing = [i for i in items if i.key not in records]
    by_cat: dict[str, list[dict]] = {}
    for r in done:
        by_cat.setdefault(r.get("category") or "(none)", []).append(r)
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    return {
        "source": prompt_set.source, "format": prompt_set.format,
        "rows_read": len(prompt_set.items) + len(prompt_set.bad), "bad_rows": len(prompt_set.bad),
        "bad_row_list": [{"line": b.line, "reason": b.reason} for b in prompt_set.bad],
        "filtered_out": prompt_set.filtered_out, "selected": len(items), "done": len(done), "failed": len(failed),
        "failure_reasons": reasons, "not_finished": len(missing),
        "overall": _group_stats(done) if done else None,
        "per_category": {k: _group_stats(v) for k, v in sorted(by_cat.items())},
        "images": sum(r.get("images", 0) for r in done + failed),
        "wall_s_sum": sum(r.get("wall_s", 0.0) for r in done + failed),
    }


def format_summary(s: dict) -> str:
    def fmt(x, spec="+.4f"):
        return "-" if x is None else format(x, spec)

    def ci(c):
        return "" if not c else f" [{c[0]:+.4f}, {c[1]:+.4f}]"

    lines = [f"input: {s['source']} ({s['format']}): {s['rows_read']} rows read, {s['bad_rows']} bad rows "
             f"skipped, {s['filtered_out']} filtered out, {s['selected']} selected",
             f"results: {s['done']} done, {s['failed']} failed, {s['not_finished']} not finished; "
             f"{s['images']} images"]
    for reason, n in s["failure_reasons"].items():
        lines.append(f"  failed ({n}): {reason}")
    for b in s["bad_row_list"][:20]:
        lines.append(f"  bad row line {b['line']}: {b['reason']}")
    if len(s["bad_row_list"]) > 20:
        lines.append(f"  ... and {len(s['bad_row_list']) - 20} more bad rows (summary.json lists them all)")
    o = s["overall"]
    if o:
        lines.append(f"mean gain (search seeds): {fmt(o['mean_gain'])}{ci(o['gain_ci95'])} over {o['n']} prompts "
                     f"(original {fmt(o['mean_original'], '.4f')} -> best {fmt(o['mean_best'], '.4f')})")
        if o["n_heldout"]:
            lines.append(f"mean gain (held-out seeds): {fmt(o['mean_heldout_gain'])}{ci(o['heldout_gain_ci95'])} "
                         f"(original {fmt(o['mean_heldout_original'], '.4f')} -> best "
                         f"{fmt(o['mean_heldout_best'], '.4f')})")
        lines.append("per category: n  gain(search) [95% CI]  gain(held-out)")
        for cat, g in s["per_category"].items():
            lines.append(f"  {cat:<22} {g['n']:>5}  {fmt(g['mean_gain'])}{ci(g['gain_ci95'])}  "
                         f"{fmt(g['mean_heldout_gain'])}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- one prompt

def _with_questions(scorers: list, item: PromptItem, intent: str) -> list:
    """The preset's scorers, with DSG scorers asking the row's own questions (GenEval, DSG-1k)."""
    if not item.questions:
        return scorers
    from mmopt import registry

    out = []
    for s in scorers:
        name, kwargs = registry.parse_spec("scorer", s)
        if name.startswith("dsg:") or name == "offline:dsg":
            s = {"name": name, "kwargs": {**kwargs, "questions": {intent: list(item.questions)}}}
        out.append(s)
    return out


def _png_with_text(src: Path, dst: Path, text: dict) -> None:
    """Copy a PNG, adding ``text`` as tEXt chunks (prompt, scores) that viewers and tools read."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v if isinstance(v, str) else json.dumps(v, sort_keys=True))
    with Image.open(src) as im:
        im.load()
        buf = io.BytesIO()
        im.save(buf, format="PNG", pnginfo=info)
    dst.write_bytes(buf.getvalue())


def export_trial_images(store, run_id: str, trial, role: str, dest: Path, intent: str) -> list[str]:
    """``dest/<role>_s<seed>.png`` for every image of ``trial``, with metadata; their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for g in store.load_generations(run_id, trial.index):
        for k, rel in enumerate(g["paths"]):
            src = store.root / rel
            if not src.is_file():
                continue
            name = f"{role}_s{g['seed']}" + (f"_f{k:03d}" if len(g["paths"]) > 1 else "") + ".png"
            _png_with_text(src, dest / name, {"prompt": trial.prompt, "intent": intent, "role": role,
                                              "seed": str(g["seed"]), "scores": g["scores"],
                                              "objective": f"{trial.objective:.6f}", "run_id": run_id,
                                              "software": "mmopt"})
            out.append(str(dest / name))
    return out


def optimize_item(item: PromptItem, spec, *, store, cache, out: Path, seed: int) -> dict:
    """Run one prompt through the optimizer; its result record (written by the caller)."""
    from dataclasses import replace

    from mmopt.cache import content_key
    from mmopt.presets import build_optimizer

    t0 = time.monotonic()
    intent = item.prompt
    spec_i = replace(spec, scorers=_with_questions(list(spec.scorers), item, " ".join(intent.split())))
    opt = build_optimizer(spec_i, store=store, cache=cache, seed=seed)
    run_id = f"{item.key}-{content_key(intent, opt.config())[:12]}"
    result = opt.run(intent, run_id=run_id)
    # outputs beside the record: the best prompt as text, the original's and the best's images
    (out / "prompts").mkdir(exist_ok=True)
    write_atomic(out / "prompts" / f"{item.key}.txt", result.best_prompt + "\n")
    img_dir = out / "images" / item.key
    if img_dir.exists():
        shutil.rmtree(img_dir)  # a resumed prompt rewrites its images
    images = export_trial_images(store, run_id, result.original, "original", img_dir, intent)
    if result.best.index != result.original.index:
        images += export_trial_images(store, run_id, result.best, "best", img_dir, intent)
    h = result.heldout
    return {
        "key": item.key, "line": item.line, "prompt": intent, "category": item.category,
        "challenge": item.challenge, "tags": list(item.tags), "item_id": item.item_id, "status": "done",
        "run_id": run_id, "best_prompt": result.best_prompt, "best_negative": result.best.negative,
        "original_objective": result.original.objective, "best_objective": result.best.objective,
        "gain": result.gain, "original_scores": result.original.scores, "best_scores": result.best.scores,
        "feasible": result.feasible, "original_feasible": result.original_feasible,
        "heldout_original": h["original"].objective if h else None, "heldout_best": h["best"].objective if h else None,
        "heldout_gain": result.heldout_gain, "heldout_seeds": h["best"].meta.get("seeds") if h else None,
        "search_seeds": list(opt.seeds), "trials": len(result.trials), "images": result.images,
        "stopped": result.stopped, "llm_calls": result.llm_calls, "failures": len(result.failures),
        "questions": len(item.questions) if item.questions else None,
        "image_files": [os.path.relpath(p, out) for p in images],
        "wall_s": round(time.monotonic() - t0, 3),
    }


# --------------------------------------------------------------------------- the batch

@dataclass
class BatchResult:
    out: Path
    summary: dict
    results: list[dict] = field(default_factory=list)
    ran: int = 0          # prompts this process ran now
    skipped: int = 0      # prompts found finished
    processes: int = 1    # the world size the batch really ran with


def batch_config(prompt_set: PromptSet, spec, *, filters: dict, seed: int) -> dict:
    """What makes two batches the same (a rerun must match it to resume)."""
    from mmopt.component import describe

    fields = {k: describe(getattr(spec, k)) for k in ("generator", "scorers", "proposer", "strategy", "llm",
                                                         "weights", "candidates", "seeds", "heldout_seeds",
                                                         "lookahead", "final_rescore")}
    fields["budget"] = vars(spec.budget)
    fields["constraints"] = [vars(c) for c in spec.constraints]
    return {"source": os.path.abspath(prompt_set.source), "format": prompt_set.format, "filters": filters,
            "seed": seed, "spec": fields}


def run_batch(input_path: str | os.PathLike, *, out: str | os.PathLike, preset: str | dict = "offline",
              fmt: str | None = None, categories: Sequence[str] = (), challenges: Sequence[str] = (),
              tags: Sequence[str] = (), limit: int | None = None, shuffle: bool = False, seed: int = 0,
              overrides: dict | None = None, progress: bool = True, process: Process | None = None,
              drop_heldout: bool = False, threads: int | None = None) -> BatchResult:
    """Optimize every selected prompt of ``input_path`` under ``preset``; see the module docstring.

    ``overrides`` are preset keys (``iterations``, ``seeds``, ``proposer``, ...);
    ``drop_heldout`` removes the preset's held-out seeds; ``threads``: torch CPU threads
    (default: torch's choice, or the cores shared out among launched processes).

    >>> r = run_batch("PartiPrompts.tsv", out="batch-out", preset="offline",
    ...               overrides={"iterations": 1}, limit=10)          # doctest: +SKIP
    >>> r.summary["done"]                                               # doctest: +SKIP
    10
    """
    from mmopt.cache import Cache
    from mmopt.errors import LLMUnavailableError, StopRequested
    from mmopt.presets import load_preset, resolve
    from mmopt.store import Store

    # 1. everything that can be wrong with the input fails here, before a model loads
    prompt_set = load_prompts(input_path, fmt)
    filters = {"category": sorted(categories), "challenge": sorted(challenges), "tag": sorted(tags),
               "limit": limit, "shuffle": bool(shuffle), "shuffle_seed": seed if shuffle else None}
    selected = filter_prompts(prompt_set, category=categories, challenge=challenges, tag=tags, limit=limit,
                              shuffle=shuffle, seed=seed)
    preset_dict = dict(load_preset(preset) if isinstance(preset, str) else preset)
    if drop_heldout:
        preset_dict.pop("heldout_seeds", None)
    spec = resolve(preset_dict, **(overrides or {}))
    out = Path(out)
    config = batch_config(prompt_set, spec, filters=filters, seed=seed)
    proc = process or current_process()
    set_cpu_threads(threads)

    # 2. one batch per folder: process 0 holds the lock for the whole batch
    out.mkdir(parents=True, exist_ok=True)
    lock_msg = (f"another mmopt batch (pid {{holder}}) is writing {out}; wait for it to finish or choose "
                "another --out (rerun the same command afterwards to resume)")
    with _batch_lock(proc, out, lock_msg):
        # 3. the configuration must match the folder's (a rerun resumes; another batch is refused)
        problem = None
        if proc.is_main:
            problem = _check_manifest(out, config)
        problem = proc.broadcast(problem)
        if problem:
            raise ValueError(problem)
        parts = out / "parts"
        parts.mkdir(exist_ok=True)
        part = parts / f"rank-{proc.index}.jsonl"
        repair_tail(part)  # this process appends here; a torn line from a kill must not glue to the next
        proc.barrier()

        # 4. this process's share of what is not finished yet
        finished = read_records(parts)
        todo = [i for i in selected.items if i.key not in finished]
        mine = todo[proc.index::proc.count]
        skipped = len(selected.items) - len(todo)
        store = Store(out / "store")
        cache = Cache(out / "store" / f"cache-rank{proc.index}.sqlite")
        bar = _Progress(len(mine), desc=f"batch[{proc.index}/{proc.count}]" if proc.count > 1 else "batch",
                        disable=not progress)
        ran = 0
        try:
            for item in mine:
                try:
                    rec = optimize_item(item, spec, store=store, cache=cache, out=out, seed=seed)
                except (KeyboardInterrupt, LLMUnavailableError, StopRequested):
                    raise  # infrastructure or the user: the batch stops, a rerun resumes here
                except Exception as e:  # this prompt failed; the batch goes on and counts it
                    log.warning("prompt at line %d failed: %s: %s", item.line, type(e).__name__, e)
                    rec = {"key": item.key, "line": item.line, "prompt": item.prompt, "category": item.category,
                           "challenge": item.challenge, "tags": list(item.tags), "status": "failed",
                           "reason": f"{type(e).__name__}: {str(e)[:300]}", "images": 0, "wall_s": 0.0}
                rec["rank"] = proc.index
                rec["finished_at"] = time.time()
                append_record(part, rec)
                ran += 1
                bar.update(rec)
        finally:
            bar.close()
            store.close()

        # 5. merge (every process merges what is there; the last to finish sees everything)
        _merge(out, selected, prompt_set, config)
        proc.barrier()
        summary = _merge(out, selected, prompt_set, config) if proc.is_main else {}
    records = read_records(out / "parts")
    return BatchResult(out=out, summary=summary, ran=ran, skipped=skipped, processes=proc.count,
                       results=[records[i.key] for i in selected.items if i.key in records])


@contextmanager
def _batch_lock(proc: Process, out: Path, message: str) -> Iterator[None]:
    """Process 0 takes ``OUT/.batch.lock``; every process learns whether it got it."""
    if not proc.is_main:
        ok = proc.broadcast(None)
        if ok is not True:
            raise BatchBusyError(ok)
        yield
        return
    try:
        with flock(out / ".batch.lock", wait=False, message=message):
            proc.broadcast(True)
            yield
    except BatchBusyError as e:
        if proc.count > 1 and "another mmopt batch" in str(e):
            proc.broadcast(str(e))
        raise


def _check_manifest(out: Path, config: dict) -> str | None:
    path = out / "batch.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return f"{path} is damaged; move it aside to start over"
        if old != json.loads(json.dumps(config, sort_keys=True)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config.get(k))))
            return (f"{out} holds a batch with a different configuration (differs in: {', '.join(diff)}); "
                    "rerun it with the same input, preset and options to resume, or choose another --out")
        return None
    write_atomic(path, json.dumps(config, sort_keys=True, indent=1))
    return None


def _merge(out: Path, selected: PromptSet, prompt_set: PromptSet, config: dict) -> dict:
    """results.jsonl / results.csv / summary.json / summary.txt from the parts, in input order."""
    with flock(out / ".merge.lock", wait=True):
        records = read_records(out / "parts")
        rows = [records[i.key] for i in selected.items if i.key in records]
        write_atomic(out / "results.jsonl", "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                                     for r in rows))
        cols = ["line", "key", "status", "category", "challenge", "prompt", "best_prompt", "original_objective",
                "best_objective", "gain", "heldout_original", "heldout_best", "heldout_gain", "trials", "images",
                "wall_s", "reason", "run_id"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in cols})
        write_atomic(out / "results.csv", buf.getvalue())
        summary = summarize(selected.items, PromptSet(prompt_set.source, prompt_set.format, prompt_set.items,
                                                      prompt_set.bad, selected.filtered_out), records)
        write_atomic(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
        write_atomic(out / "summary.txt", format_summary(summary))
    return summary


class _Progress:
    """One bar over this process's prompts: running mean gain, ETA (tqdm's) and images/s."""

    def __init__(self, total: int, desc: str, disable: bool):
        from mmopt.commands._options import progress_bar

        self.bar = progress_bar(total, desc, unit="prompt", disable=disable)
        self.t0 = time.monotonic()
        self.gains: list[float] = []
        self.images = 0

    def update(self, rec: dict) -> None:
        if rec.get("status") == "done":
            self.gains.append(rec["gain"])
        self.images += rec.get("images", 0)
        dt = max(time.monotonic() - self.t0, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(gain=f"{mean(self.gains) or 0.0:+.4f}", img_s=f"{self.images / dt:.2f}")

    def close(self) -> None:
        self.bar.close()


def comparable(records: Sequence[dict]) -> list[dict]:
    """Records without the fields that depend on the machine and the moment (to compare two batches)."""
    return [{k: v for k, v in r.items() if k not in VOLATILE_FIELDS} for r in records]
