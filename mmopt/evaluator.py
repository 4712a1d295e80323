"""The one evaluator: render (cached) -> score (cached) -> commit, for every caller.

The optimization loop, the final re-score, held-out evaluation and the
benchmarks all evaluate candidates through :meth:`Evaluator.evaluate`, so
there is one render/score/cache path and one set of cache keys:

    generation key = sha256("generation", identity(generator), candidate, seed)
    score key      = sha256("score", identity(scorer), intent, generation key)

(``identity`` is the sha256 of a component's config, :mod:`mmopt.component`),
so a changed setting recomputes exactly the entries of the component it
belongs to, and an unchanged run recomputes nothing.

How one call runs, in order:
  1. cached images and scores are read back;
  2. what is cached but unscored is scored, each scorer once for all of it;
  3. the rest is rendered chunk by chunk (``generate_chunks`` where the
     generator has it): chunk i is scored before chunk i+1 renders (or while,
     with ``overlap``), PNGs are encoded in a thread pool and cache writes go
     through ONE writer thread, in order;
  4. a candidate whose every seed is rendered and scored is evaluated by the
     objective and handed to ``commit`` on the writer thread; it is yielded
     only once that commit is done, so a caller that stores trials in
     ``commit`` never sees trial k+1 before trial k is in the store.

An evaluator holds no run state: two runs may share one (each call gets its
own buffers; pass ``executors`` to reuse threads across calls).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from mmopt.cache import Cache, content_key
from mmopt.component import identity
from mmopt.objective import Evaluation, Objective
from mmopt.store import media_to_pngs, pngs_to_media, to_jsonable
from mmopt.types import Candidate, Generation, Score


@dataclass
class Evaluated:
    """One candidate evaluated on every seed of one call.

    ``committed`` holds what the caller's ``commit`` returned (the loop: its Trial).
    """

    position: int
    candidate: Candidate
    evaluation: Evaluation
    scores: dict[str, list[Score]]
    generations: list[Generation]
    keys: list[str]
    seeds: list[int]
    render_s: float = 0.0
    score_s: float = 0.0
    committed: Any = None


class Executors:
    """The PNG pool and the single writer thread, shared by the calls of one run."""

    def __init__(self, workers: int = 4):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mmopt-png")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="mmopt-writer")

    def close(self) -> None:
        """Wait for every queued write, then stop the threads."""
        self.pool.shutdown(wait=True)
        self.writer.shutdown(wait=True)


def _without_pixels(g: Generation) -> Generation:
    """``g`` without its device copy of the image (``media`` stays): what is kept past scoring."""
    return g if g.pixels is None else dataclasses.replace(g, pixels=None)


class Evaluator:
    """Renders, scores and commits candidates through one content cache.

    Args:
        generator: the Generator of the search (``evaluate(generator=...)`` may use another,
            e.g. the full-VAE sibling for a final re-score).
        scorers: the Scorers; each judges every image against the intent.
        objective: turns per-seed scores into one number, feasibility and feedback.
        cache: the content cache (``Cache(":memory:")`` for none on disk).
        workers: PNG-encoding threads when the caller gives no ``executors``.
        overlap: render chunk i+1 on a producer thread while chunk i is scored.
    """

    def __init__(self, generator: Any, scorers: Sequence[Any], objective: Objective, *, cache: Cache,
                 workers: int = 4, overlap: bool = False):
        self.generator = generator
        self.scorers = list(scorers)
        self.objective = objective
        self.cache = cache
        self.workers = workers
        self.overlap = bool(overlap)
        self._ids: dict[int, str] = {}

    # ------------------------------------------------------------------ keys
    def _identity(self, component: Any) -> str:
        # identities are computed once per object (configs can hash model files)
        key = id(component)
        if key not in self._ids:
            self._ids[key] = identity(component)
        return self._ids[key]

    def generation_key(self, candidate: Candidate, seed: int, generator: Any = None) -> str:
        return content_key("generation", self._identity(generator or self.generator), candidate.key(), seed)

    def score_key(self, scorer: Any, intent: str, generation_key: str) -> str:
        return content_key("score", self._identity(scorer), intent, generation_key)

    # ------------------------------------------------------------------ cache
    def cached_generation(self, key: str, candidate: Candidate, seed: int) -> tuple[Generation, list[bytes]] | None:
        """The cached image (with its PNG bytes), or None when it or any frame is missing."""
        hit = self.cache.get_json(key)
        if hit is None:
            return None
        frames = [self.cache.get_bytes(fk) for fk in hit["frames"]]
        if any(b is None for b in frames):
            return None
        return Generation(candidate, seed, pngs_to_media(frames, hit["video"]), hit["meta"]), frames

    def _put_generation(self, key: str, g: Generation, frames: Any) -> None:
        """Writer thread: one generation's PNG frames and metadata into the cache."""
        frames = frames.result() if isinstance(frames, Future) else frames
        frame_keys = [f"{key}:f{k}" for k in range(len(frames))]
        for fk, data in zip(frame_keys, frames):
            self.cache.put_bytes(fk, data)
        self.cache.put_json(key, {"frames": frame_keys, "video": g.is_video, "meta": to_jsonable(g.meta)})

    # ------------------------------------------------------------------ rendering
    def _stream(self, generator: Any, candidates: list[Candidate], seeds: list[int], timings: dict):
        """Yield the generator's output chunk by chunk (``generate_chunks`` when it has one).

        With ``overlap`` and a generator that has ``generate_chunks``, a producer
        thread renders chunk i+1 while the caller scores chunk i; the queue holds
        at most one finished chunk, so memory stays bounded.
        """
        chunks = getattr(generator, "generate_chunks", None)
        if not self.overlap or not callable(chunks):
            # serial: chunk i is scored before chunk i+1 renders, so only one chunk's images
            # (and their device copies) are in flight; a generator without chunks is one chunk
            source = chunks(candidates, seeds) if callable(chunks) else iter([generator.generate(candidates, seeds)])
            while True:
                t0 = time.perf_counter()
                chunk = next(source, None)
                timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - t0
                if chunk is None:
                    return
                yield list(chunk)
        q: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def produce():
            try:
                for chunk in chunks(candidates, seeds):
                    while not stop.is_set():
                        try:
                            q.put(("chunk", list(chunk)), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(("done", None))
            except BaseException as e:  # handed to the consumer, which re-raises it
                q.put(("error", e))

        producer = threading.Thread(target=produce, name="mmopt-generate", daemon=True)
        producer.start()
        try:
            while True:
                t0 = time.perf_counter()
                kind, value = q.get()
                timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - t0
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            producer.join()

    # ------------------------------------------------------------------ the one path
    def evaluate(self, candidates: Sequence[Candidate | str], seeds: Sequence[int] | Sequence[Sequence[int]],
                 intent: str, *, baseline: dict[str, float] | None = None, generator: Any = None,
                 commit: Callable[[Evaluated, list[list[bytes]]], Any] | None = None,
                 timings: dict | None = None, executors: Executors | None = None) -> Iterator[Evaluated]:
        """Evaluate every candidate on every seed; yield them in order as they finish.

        ``seeds``: one list for every candidate, or one list per candidate (a search that
        gives survivors more seeds renders them with the newcomers in one generator call;
        seeds already rendered for a candidate come from the cache);
        ``baseline``: the original prompt's means (``max_drop`` constraints);
        ``generator``: render with this one instead of the search's;
        ``commit(evaluated, pngs)``: run on the writer thread, in order, before
        the candidate is yielded (its return value is ``evaluated.committed``);
        ``timings``: a dict the stage times are added to.
        """
        cands = [Candidate.of(c) for c in candidates]
        seeds = list(seeds)
        if seeds and all(isinstance(s, (list, tuple)) for s in seeds):
            if len(seeds) != len(cands):
                raise ValueError(f"seeds per candidate: got {len(seeds)} seed lists for {len(cands)} candidates")
            per = [list(s) for s in seeds]
        else:
            per = [seeds] * len(cands)
        if any(not s for s in per):
            raise ValueError("every candidate needs at least one seed, got an empty seed list")
        generator = generator or self.generator
        timings = timings if timings is not None else {}
        own = executors is None
        ex = executors or Executors(self.workers)
        try:
            yield from self._evaluate(cands, per, intent, baseline, generator, commit, timings, ex)
        finally:
            if own:
                ex.close()

    def _evaluate(self, cands, per_seeds, intent, baseline, generator, commit, timings, ex) -> Iterator[Evaluated]:
        # every (candidate, seed) pair in order; candidate i owns the slice spans[i]
        pairs = [(ci, s) for ci, seeds in enumerate(per_seeds) for s in seeds]
        spans, start = [], 0
        for seeds in per_seeds:
            spans.append(range(start, start + len(seeds)))
            start += len(seeds)
        keys = [self.generation_key(cands[ci], s, generator) for ci, s in pairs]
        gens: list[Generation | None] = [None] * len(keys)
        pngs: list[Any] = [None] * len(keys)  # list[bytes] per image, or a Future of it

        # 1. cached images (their PNG bytes come with them) and cached scores
        missing = []
        for idx, k in enumerate(keys):
            hit = self.cached_generation(k, cands[pairs[idx][0]], pairs[idx][1])
            if hit is None:
                missing.append(idx)
            else:
                gens[idx], pngs[idx] = hit
        score_keys, scores = {}, {}
        for scorer in self.scorers:
            score_keys[scorer.name] = [self.score_key(scorer, intent, k) for k in keys]
            row: list[Score | None] = []
            for k in score_keys[scorer.name]:
                hit = self.cache.get_json(k)
                row.append(None if hit is None else Score(scorer.name, hit["value"], hit["details"]))
            scores[scorer.name] = row

        t_render = t_score = 0.0
        done: list[tuple[Evaluated, Future]] = []

        def score_ready(indices: list[int]) -> None:
            nonlocal t_score
            t0 = time.perf_counter()
            for scorer in self.scorers:
                row = scores[scorer.name]
                need = [i for i in indices if row[i] is None and gens[i] is not None]
                if not need:
                    continue
                fresh = scorer.score([gens[i] for i in need], intent)
                if len(fresh) != len(need):
                    raise RuntimeError(f"scorer {scorer.name!r} returned {len(fresh)} scores for {len(need)} images")
                for i, sc in zip(need, fresh):
                    row[i] = Score(scorer.name, float(sc.value), to_jsonable(sc.details))
                    ex.writer.submit(self.cache.put_json, score_keys[scorer.name][i],
                                     {"value": row[i].value, "details": row[i].details})
            dt = time.perf_counter() - t0
            t_score += dt
            timings["score"] = timings.get("score", 0.0) + dt

        def finish_ready() -> None:
            # candidates whose every image is rendered and scored, in order
            while len(done) < len(cands):
                i = len(done)
                span = spans[i]
                if not all(gens[j] is not None and all(scores[s.name][j] is not None for s in self.scorers)
                           for j in span):
                    return
                per = {name: row[span.start:span.stop] for name, row in scores.items()}
                ev = Evaluated(position=i, candidate=cands[i], evaluation=self.objective.evaluate(per, baseline),
                               scores=per, generations=[gens[j] for j in span], keys=[keys[j] for j in span],
                               seeds=list(per_seeds[i]), render_s=t_render / len(cands),
                               score_s=t_score / len(cands))
                frames = [pngs[j] for j in span]
                done.append((ev, ex.writer.submit(self._commit, commit, ev, frames)))

        # 2. cached images: score what lacks a score, finish what is whole
        score_ready([i for i in range(len(keys)) if gens[i] is not None])
        finish_ready()
        # 3. render the rest chunk by chunk; encode PNGs and write the cache beside it
        t_start = time.perf_counter()
        t_scored_before = t_score
        pos = 0
        stream = self._stream(generator, [cands[pairs[i][0]] for i in missing], [pairs[i][1] for i in missing],
                              timings)
        try:
            for chunk in stream:
                if len(chunk) > len(missing) - pos:
                    raise RuntimeError(f"generator returned more generations than the {len(missing)} requested")
                idxs = missing[pos:pos + len(chunk)]
                pos += len(chunk)
                for i, g in zip(idxs, chunk):
                    gens[i] = g
                    pngs[i] = ex.pool.submit(media_to_pngs, g.media)
                    ex.writer.submit(self._put_generation, keys[i], _without_pixels(g), pngs[i])
                t_render = time.perf_counter() - t_start - (t_score - t_scored_before)
                score_ready(idxs)
                for i in idxs:  # scored: device copies are no longer needed (only one chunk's stay alive)
                    gens[i] = _without_pixels(gens[i])
                finish_ready()
        finally:
            stream.close()  # stops the producer thread, on errors too
        if pos != len(missing):
            raise RuntimeError(f"generator returned {pos} generations for {len(missing)} requests")
        # 4. a candidate is finished when its commit is done, in order
        for ev, fut in done:
            t0 = time.perf_counter()
            ev.committed = fut.result()
            timings["write_wait"] = timings.get("write_wait", 0.0) + time.perf_counter() - t0
            yield ev

    @staticmethod
    def _commit(commit, ev: Evaluated, frames: list) -> Any:
        """Writer thread: the caller's commit with the encoded PNGs."""
        if commit is None:
            return None
        frames = [f.result() if isinstance(f, Future) else f for f in frames]
        return commit(ev, frames)

    # ------------------------------------------------------------------ text-only constraints
    def text_only_constraints(self) -> list:
        """The constraints whose scorer judges only the prompt text (``scorer.text_only``):
        they can be checked before anything renders."""
        text_only = {s.name for s in self.scorers if getattr(s, "text_only", False)}
        return [c for c in self.objective.constraints if c.scorer in text_only]

    def screen(self, candidates: Sequence[Candidate | str], intent: str,
               baseline: dict[str, float] | None = None) -> list[list[str]]:
        """The violations of the text-only constraints for each candidate (empty: it passes).

        Nothing renders: each text-only scorer judges a media-less generation of the
        candidate. ``[]`` for every candidate when no constraint is text-only.
        """
        cands = [Candidate.of(c) for c in candidates]
        constraints = self.text_only_constraints()
        if not constraints or not cands:
            return [[] for _ in cands]
        names = {c.scorer for c in constraints}
        means: dict[str, list[float]] = {}
        for scorer in self.scorers:
            if scorer.name in names:
                values = scorer.score([Generation(c, 0, None) for c in cands], intent)
                means[scorer.name] = [float(v.value) for v in values]
        out = []
        for i in range(len(cands)):
            msgs = [c.violation(means[c.scorer][i], (baseline or {}).get(c.scorer)) for c in constraints]
            out.append([m for m in msgs if m])
        return out

    # ------------------------------------------------------------------ conveniences
    def evaluate_all(self, candidates: Sequence[Candidate | str], seeds: Sequence[int], intent: str,
                     **kwargs: Any) -> list[Evaluated]:
        """:meth:`evaluate`, collected into a list (held-out scores, final re-score, benchmarks)."""
        return list(self.evaluate(candidates, seeds, intent, **kwargs))

    def media_bytes(self, generation_key: str, frame: int = 0) -> bytes | None:
        """A cached image's PNG bytes (frame ``frame``), or None."""
        hit = self.cache.get_json(generation_key)
        if hit is None or frame >= len(hit["frames"]):
            return None
        return self.cache.get_bytes(hit["frames"][frame])


__all__ = ["Evaluated", "Evaluator", "Executors"]
