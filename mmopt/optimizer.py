"""The one optimization loop: propose -> generate -> score -> select.

Read top to bottom: ``Budget`` and ``Result`` are plain data; ``Optimizer``
validates everything in ``__init__``; ``run`` is the loop; the private
helpers below it do one step each (admit candidates, render with the cache,
score with the cache, write trials).

Invariants the loop keeps (DESIGN.md):
  * the original prompt is always trial 0, so the result is never worse than
    the input on the search seeds;
  * scorers judge every image against the *intent*, never the candidate;
  * the generator is called once per iteration with every (prompt, seed)
    pair, and each scorer once per iteration with every image;
  * everything that costs compute is cached by content, and every finished
    trial is committed to the store before the next one is written, so a
    killed run resumes where it stopped and recomputes nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mmopt.cache import Cache, content_key
from mmopt.device import release_free_host_memory
from mmopt.objective import Objective
from mmopt.store import Store, media_to_pngs, pngs_to_media, to_jsonable
from mmopt.strategies import Strategy, TopKHistory
from mmopt.types import Generation, Score, Scorer, SearchState, Trial

log = logging.getLogger("mmopt")

Callback = Callable[..., None]

# Host RSS growth (MiB, read after each iteration) that makes the loop trim the heap
# (mmopt.device.release_free_host_memory): once per that much creep, never on a plateau.
HOST_TRIM_MB = 64


def _merge_info(into: dict, extra: dict) -> None:
    """Add a lookahead proposal's LLM calls and failures to the run's tally."""
    into["llm_calls"] += extra["llm_calls"]
    into["failures"].extend(extra["failures"])


def _without_pixels(g: Generation) -> Generation:
    """``g`` without its device copy of the image (``media`` stays): what is kept past scoring."""
    return g if g.pixels is None else dataclasses.replace(g, pixels=None)


def derive_seed(base: int, *parts: Any) -> int:
    """A 31-bit seed that depends only on ``base`` and ``parts``.

    Per-iteration seeds are derived, not drawn in sequence, so a resumed run
    that skips finished iterations still gives the same later proposals.
    """
    return int(content_key("seed", base, *parts)[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class Budget:
    """When to stop. ``None`` means unlimited; ``iterations`` counts the
    original prompt's evaluation as iteration 0."""

    iterations: int = 5
    images: int | None = None
    llm_calls: int | None = None
    wall_time_s: float | None = None
    patience: int | None = None

    def __post_init__(self):
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"Budget.iterations must be an int >= 1, got {self.iterations!r}")
        for name in ("images", "llm_calls", "patience"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"Budget.{name} must be None or an int >= 1, got {v!r}")
        if self.wall_time_s is not None and not self.wall_time_s > 0:
            raise ValueError(f"Budget.wall_time_s must be None or > 0, got {self.wall_time_s!r}")


@dataclass
class Result:
    """What a run returns: the best prompt, every trial, the trajectory."""

    run_id: str
    intent: str
    best: Trial
    original: Trial
    trials: list[Trial]
    trajectory: list[float]
    stopped: str
    images: int
    llm_calls: int
    wall_time_s: float
    out_dir: str | None = None
    failures: list[dict] = field(default_factory=list)
    final: dict | None = None  # {"best": Trial, "original": Trial} re-scored with the final generator


    @property
    def best_prompt(self) -> str:
        return self.best.prompt

    @property
    def gain(self) -> float:
        """Objective of the best trial minus the original prompt's (on the search seeds)."""
        return self.best.objective - self.original.objective

    def summary(self) -> dict:
        return {
            "best_prompt": self.best.prompt, "best_objective": self.best.objective,
            "original_objective": self.original.objective, "gain": self.gain,
            "best_scores": self.best.scores, "original_scores": self.original.scores,
            "trials": len(self.trials), "images": self.images, "llm_calls": self.llm_calls,
            "stopped": self.stopped, "trajectory": self.trajectory,
            **({"final": {k: {"prompt": t.prompt, "objective": t.objective, "scores": t.scores}
                          for k, t in self.final.items()}} if self.final else {}),
        }


class Optimizer:
    """Optimizes a prompt for a generator under one or more scorers.

    Args:
        generator: a ``Generator`` (or registry name, e.g. ``"diffusers:stabilityai/sd-turbo"``).
        scorers: ``Scorer`` objects or registry names.
        proposer: a ``Proposer`` (or registry name, e.g. ``"opt2i"``).
        objective: how scores combine; default equal weights over ``scorers``.
        strategy: which trials the proposer sees; default OPT2I's top-10 history.
        budget: when to stop.
        candidates: new prompts asked of the proposer per iteration.
        seeds: the search seeds, or how many (``4`` means ``[0, 1, 2, 3]``).
        seed: the run's base seed (proposer sampling).
        store: an output folder or ``Store``; ``None`` keeps nothing on disk.
        cache: a ``Cache`` for generations and scores; default ``<store>/cache.sqlite``
            (in memory when there is no store).
        protected: extra spans every rewrite must keep verbatim (trigger words).
        callbacks: called as ``cb(event, **info)`` for "iteration", "trial", "done".
        final_rescore: re-render and re-score the best prompt and the original at the end
            with the generator's full-quality sibling (``generator.full_quality()``, e.g. the
            full VAE after a search with ``decoder="tiny"``), or with the Generator given
            here; the result is ``Result.final``. ``False`` (default) skips it.
        workers: threads that encode PNGs and write the cache and store beside the GPU work.
        overlap: render chunk i+1 in a producer thread while chunk i is scored (generators
            with ``generate_chunks``). Off by default: measured on an H100 (SD-Turbo, 512 px),
            the two threads contend for the GIL and the loop ran 20-45% slower than serial
            (benchmarks/loop_throughput.py); PNG encoding and store writes still run beside
            the GPU work either way.
        lookahead: propose iteration i+1 on a thread while iteration i renders and scores,
            so the generator does not wait on the LLM. The proposer then sees the history
            through iteration i-1, with iteration i's prompts as ``SearchState.pending``
            (tried, not scored): one iteration staler than without lookahead, so results
            differ from a run without it (it is part of the run's config), and are as
            deterministic. Off by default (benchmarks/llm_overlap.py measures both).

    Example::

        opt = Optimizer("diffusers:stabilityai/sd-turbo", ["clip:ViT-B-32/openai"], "opt2i",
                        budget=Budget(iterations=5), store="runs/")
        result = opt.run("a red cube on a blue sphere")
        print(result.best_prompt, result.gain)
    """

    def __init__(self, generator, scorers, proposer, *, objective: Objective | None = None,
                 strategy: Strategy | None = None, budget: Budget | None = None, candidates: int = 5,
                 seeds: int | Sequence[int] = 4, seed: int = 0, store: Store | str | Path | None = None,
                 cache: Cache | None = None, protected: Iterable[str] = (),
                 callbacks: Iterable[Callback] = (), final_rescore: Any = False, workers: int = 4,
                 overlap: bool = False, lookahead: bool = False):
        from mmopt import registry

        # 1. resolve registry names (models load once per process: the registry memoises)
        if isinstance(generator, str):
            generator = registry.create("generator", generator)
        if isinstance(scorers, (str, Scorer)) or not isinstance(scorers, Iterable):
            scorers = [scorers]
        scorers = [registry.create("scorer", s) if isinstance(s, str) else s for s in scorers]
        if isinstance(proposer, str):
            proposer = registry.create("proposer", proposer)
        if isinstance(strategy, str):
            strategy = registry.create("strategy", strategy)

        # 2. validate: fail here, not in iteration 3
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(f"generator must have a generate(prompts, seeds) method, got {type(generator).__name__}")
        if not scorers:
            raise ValueError("at least one scorer is required, got none")
        for s in scorers:
            if not callable(getattr(s, "score", None)) or not isinstance(getattr(s, "name", None), str):
                raise TypeError(f"scorers must have a name and a score(generations, intent) method, got {s!r}")
        names = [s.name for s in scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique, got {names}")
        if not callable(getattr(proposer, "propose", None)):
            raise TypeError(f"proposer must have a propose(state, n) method, got {type(proposer).__name__}")
        if not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"seeds must be >= 1 (or a list of seeds), got {seeds}")
            seeds = list(range(seeds))
        seeds = list(seeds)
        if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if final_rescore is True:
            full = getattr(generator, "full_quality", None)
            final_rescore = full() if callable(full) else None
            if final_rescore is None or final_rescore is generator:
                final_rescore = None  # nothing better to re-render with: the search scores stand
        elif final_rescore is False or final_rescore is None:
            final_rescore = None
        elif isinstance(final_rescore, str):
            final_rescore = registry.create("generator", final_rescore)
        if final_rescore is not None and not callable(getattr(final_rescore, "generate", None)):
            raise TypeError(f"final_rescore must be True/False or a Generator, got {type(final_rescore).__name__}")

        self.generator = generator
        self.scorers = list(scorers)
        self.proposer = proposer
        self.objective = objective or Objective.for_scorers(self.scorers)
        unknown = [n for n in self.objective.weights if n not in names]
        unknown += [c.scorer for c in self.objective.constraints if c.scorer not in names]
        if unknown:
            raise ValueError(f"objective names scorers {unknown} that are not among the scorers {names}")
        self.strategy = strategy or TopKHistory(10)
        self.budget = budget or Budget()
        self.candidates = candidates
        self.seeds = seeds
        self.seed = seed
        self.store = Store(store) if isinstance(store, (str, Path)) else store
        if cache is None:
            cache = Cache(self.store.root / "cache.sqlite") if self.store is not None else Cache(":memory:")
        self.cache = cache
        self.extra_protected = tuple(protected)
        self.callbacks = list(callbacks)
        self.final_generator = final_rescore
        self.workers = workers
        self.overlap = bool(overlap)
        self.lookahead = bool(lookahead)
        # seconds spent per stage in the last run (benchmarks read it)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """Everything that determines the run's result; its hash is the default run id."""
        gen_key = self.generator.cache_key() if hasattr(self.generator, "cache_key") else {"name": getattr(self.generator, "name", type(self.generator).__name__)}
        return {
            "generator": gen_key,
            "scorers": [s.name for s in self.scorers],
            "proposer": getattr(self.proposer, "name", type(self.proposer).__name__),
            "strategy": [getattr(self.strategy, "name", type(self.strategy).__name__), vars(self.strategy)],
            "objective": {"weights": self.objective.weights,
                          "constraints": [vars(c) for c in self.objective.constraints]},
            "budget": vars(self.budget), "candidates": self.candidates, "seeds": self.seeds,
            "seed": self.seed, "protected": list(self.extra_protected),
            **({"final": self._gen_key(self.final_generator)} if self.final_generator is not None else {}),
            **({"lookahead": True} if self.lookahead else {}),  # older run ids stay valid
        }

    def _emit(self, event: str, **info) -> None:
        for cb in self.callbacks:
            cb(event, **info)

    # -------------------------------------------------------------------- run
    def run(self, intent: str, *, run_id: str | None = None) -> Result:
        """Optimize ``intent``; resumes the run with the same id if one is stored."""
        from mmopt import protect

        # 1. check the input and work out the text the generator receives
        if not isinstance(intent, str):
            raise TypeError(f"intent must be a string, got {type(intent).__name__}")
        if not intent.strip():
            raise ValueError("intent is empty: give the prompt you want to optimize, e.g. 'a red cube on a table'")
        protected = tuple(dict.fromkeys(protect.find_protected(intent, extra=self.extra_protected)))
        clean_intent = " ".join(protect.strip_keep_tags(intent).split())
        config = self.config()
        run_id = run_id or content_key(intent, config)[:16]
        started = time.monotonic()
        self.timings = {"propose": 0.0, "generate": 0.0, "score": 0.0, "write_wait": 0.0, "final": 0.0}

        # 2. open or resume the run
        status = self.store.start_run(run_id, intent, config) if self.store else "new"
        trials: list[Trial] = self.store.load_trials(run_id) if self.store else []
        if status == "resume" and trials:
            log.info("resuming run %s with %d finished trials", run_id, len(trials))
        state_info = {"images": len(trials) * len(self.seeds), "llm_calls": 0, "failures": []}
        trajectory: list[float] = []
        stopped = "iterations"
        best_so_far = float("-inf")
        stale = 0
        ahead = None  # lookahead: (iteration, Future of its proposals, their llm_calls/failures)
        try:
            for iteration in range(self.budget.iterations):
                # 3. budgets are checked before an iteration starts
                n_new = self._n_new(iteration, state_info["images"])
                if n_new < 1:
                    stopped = "images"
                    break
                if self.budget.wall_time_s is not None and time.monotonic() - started > self.budget.wall_time_s:
                    stopped = "wall_time"
                    break
                if iteration > 0 and self.budget.llm_calls is not None and state_info["llm_calls"] >= self.budget.llm_calls:
                    stopped = "llm_calls"
                    break

                # 4. proposals: stored ones on resume, else the original or the proposer's
                #    (with lookahead, made while the previous iteration rendered: only the wait counts)
                t_prop = time.perf_counter()
                if ahead is not None and ahead[0] == iteration:
                    prompts = ahead[1].result()
                    _merge_info(state_info, ahead[2])
                else:
                    prompts = self._proposals(run_id, iteration, n_new, clean_intent, protected, trials, state_info)
                ahead = None
                self.timings["propose"] += time.perf_counter() - t_prop

                # 5. evaluate what is not finished yet; each trial is committed before the next
                done = {(t.iteration, t.prompt) for t in trials}
                todo = [p for p in prompts if (iteration, p["prompt"]) not in done]
                if self.lookahead:
                    ahead = self._propose_ahead(run_id, iteration + 1, (len(trials) + len(todo)) * len(self.seeds),
                                                clean_intent, protected, trials, prompts, state_info)
                if todo:
                    for trial in self._evaluate(run_id, iteration, todo, clean_intent, trials):
                        trials.append(trial)
                        self._emit("trial", trial=trial, run_id=run_id)
                state_info["images"] = len(trials) * len(self.seeds)
                if getattr(self, "_writer", None) is not None:
                    # hand freed image buffers back to the OS (off the main thread) once they add up
                    self._writer.submit(release_free_host_memory, HOST_TRIM_MB)

                # 6. bookkeeping: trajectory of the best feasible objective, early stopping
                best = self._best(trials)
                trajectory.append(best.objective)
                self._emit("iteration", iteration=iteration, best=best, trials=trials, run_id=run_id)
                if best.objective > best_so_far + 1e-12:
                    best_so_far, stale = best.objective, 0
                elif iteration > 0:
                    stale += 1
                    if self.budget.patience is not None and stale >= self.budget.patience:
                        stopped = "patience"
                        break
            if ahead is not None:  # proposals made for an iteration that did not run: their LLM calls were spent
                ahead[1].result()
                state_info["llm_calls"] += ahead[2]["llm_calls"]
        except KeyboardInterrupt:
            # Everything finished is committed; mark the run so `mmopt runs` shows it.
            self._close_executors()
            if self.store:
                self.store.set_status(run_id, "interrupted")
            raise
        except BaseException:
            self._close_executors()
            if self.store:
                self.store.set_status(run_id, "failed")
            raise
        self._close_executors()

        original = next(t for t in trials if t.index == 0)
        final = self._final_rescore(clean_intent, self._best(trials), original) if self.final_generator else None
        result = Result(
            run_id=run_id, intent=intent, best=self._best(trials), original=original, trials=trials,
            trajectory=trajectory, stopped=stopped, images=state_info["images"],
            llm_calls=state_info["llm_calls"], wall_time_s=time.monotonic() - started,
            out_dir=str(self.store.root) if self.store else None, failures=state_info["failures"],
            final=final,
        )
        if self.store:
            self.store.set_status(run_id, "finished", result.summary())
        self._emit("done", result=result)
        return result

    # ------------------------------------------------------------- the steps
    @staticmethod
    def _best(trials: Sequence[Trial]) -> Trial:
        feasible = [t for t in trials if t.feasible] or [t for t in trials if t.index == 0]
        return max(feasible, key=lambda t: (t.objective, -t.index))

    def _n_new(self, iteration: int, images_so_far: int) -> int:
        """How many candidates ``iteration`` may render (the image budget caps the last ones)."""
        n_new = 1 if iteration == 0 else self.candidates
        if self.budget.images is not None:
            n_new = min(n_new, (self.budget.images - images_so_far) // len(self.seeds))
        return n_new

    def _propose_ahead(self, run_id, iteration, images_after, clean_intent, protected, trials, current, info):
        """Lookahead: start proposing ``iteration`` on the proposer thread, from the trials
        finished so far plus the ``current`` candidates as pending; None when it would not run."""
        n_next = self._n_new(iteration, images_after)
        if iteration >= self.budget.iterations or n_next < 1:
            return None
        if self.budget.llm_calls is not None and info["llm_calls"] >= self.budget.llm_calls:
            return None
        if getattr(self, "_proposer_thread", None) is None:
            self._proposer_thread = ThreadPoolExecutor(1, thread_name_prefix="mmopt-propose")
        own = {"llm_calls": 0, "failures": []}  # merged into the run's when used
        pending = tuple(c["prompt"] for c in current)
        # the trials before the current iteration only: a resumed run that already finished some
        # of the current candidates proposes exactly what the uninterrupted run did
        earlier = [t for t in trials if t.iteration < iteration - 1]
        future = self._proposer_thread.submit(self._proposals, run_id, iteration, n_next, clean_intent, protected,
                                              earlier, own, pending)
        return iteration, future, own

    def _proposals(self, run_id, iteration, n, clean_intent, protected, trials, info, pending=()) -> list[dict]:
        """The candidates of ``iteration``: [{"prompt", "meta"}]. Stored before use."""
        stored = self.store.load_proposals(run_id, iteration) if self.store else None
        if stored is not None:
            prompts, meta = stored
            info["llm_calls"] += meta.get("llm_calls", 0)
            if meta.get("failure"):
                info["failures"].append(meta["failure"])
            return [{"prompt": p, "meta": m} for p, m in zip(prompts, meta.get("per_prompt", [{}] * len(prompts)))]

        meta: dict = {"llm_calls": 0}
        if iteration == 0:
            raw = [clean_intent]
        else:
            state = SearchState(
                intent=clean_intent, iteration=iteration, trials=list(trials),
                history=self.strategy.history(trials), rng=random.Random(derive_seed(self.seed, "propose", iteration)),
                prompt_style=getattr(self.generator, "prompt_style", "sentences"),
                max_prompt_tokens=getattr(self.generator, "max_prompt_tokens", 77), protected=protected,
                pending=tuple(pending),
            )
            try:
                raw = list(self.proposer.propose(state, n))
            except Exception as e:  # an LLM outage must not lose the run: record and keep the best
                log.warning("proposer failed in iteration %d: %s", iteration, e)
                raw = []
                meta["failure"] = {"iteration": iteration, "error": f"{type(e).__name__}: {e}"}
            # LLM requests this proposal cost (retries included) when the proposer reports them
            stats = getattr(self.proposer, "last_stats", None)
            meta["llm_calls"] = int(stats.get("llm_calls", 1)) if isinstance(stats, dict) else 1
            if isinstance(stats, dict):
                meta["proposer_stats"] = stats
        admitted = self._admit(raw, n, trials, protected, iteration == 0, pending)
        if iteration > 0 and not admitted and "failure" not in meta:
            meta["failure"] = {"iteration": iteration, "error": "no usable new candidate in the proposer's reply",
                               "raw": raw[:n]}
        if "failure" in meta:
            info["failures"].append(meta["failure"])
        meta["per_prompt"] = [a["meta"] for a in admitted]
        info["llm_calls"] += meta["llm_calls"]
        if self.store:
            self.store.save_proposals(run_id, iteration, [a["prompt"] for a in admitted], meta)
        return admitted

    def _admit(self, raw: Sequence[str], n: int, trials, protected, is_original: bool, pending=()) -> list[dict]:
        """Clean the proposer's candidates: strings, unseen, protected spans kept, within the token budget."""
        from mmopt import protect

        seen = {t.prompt for t in trials} | set(pending)
        out: list[dict] = []
        for cand in raw:
            if not isinstance(cand, str):
                continue
            prompt = " ".join(protect.strip_keep_tags(cand).split())
            meta: dict = {}
            if not prompt:
                continue
            if protected and not is_original:
                missing = protect.check(prompt, protected)
                if missing:
                    repaired = protect.repair(prompt, protected)
                    if repaired is None:
                        continue
                    prompt, meta["repaired"] = repaired, missing
            # The token budget: warn and record; rewrites are cut to what the encoder sees.
            count = getattr(self.generator, "count_tokens", None)
            limit = getattr(self.generator, "max_prompt_tokens", None)
            if count is not None and limit:
                tokens = count(prompt)
                if tokens > limit:
                    meta["tokens"] = tokens
                    meta["token_limit"] = limit
                    if is_original:
                        warnings.warn(f"the prompt has {tokens} tokens; the text encoder reads only {limit}: "
                                      "the rest is ignored by the generator", stacklevel=4)
                        meta["truncated"] = True
                    elif hasattr(self.generator, "truncate"):
                        prompt = self.generator.truncate(prompt)
                        meta["truncated"] = True
            if prompt in seen:
                continue
            seen.add(prompt)
            out.append({"prompt": prompt, "meta": meta})
            if len(out) >= n:
                break
        return out

    @staticmethod
    def _gen_key(generator) -> Any:
        return generator.cache_key() if hasattr(generator, "cache_key") else {"name": generator.name}

    def _render(self, prompts: Sequence[str], generator=None) -> tuple[list[list[Generation]], list[list[str]]]:
        """Every (prompt, seed) image, from the cache or from ONE generator call."""
        generator = generator or self.generator
        gen_key = self._gen_key(generator)
        keys = [[content_key("generation", gen_key, p, s) for s in self.seeds] for p in prompts]
        out: list[list[Generation | None]] = [[None] * len(self.seeds) for _ in prompts]
        missing: list[tuple[int, int]] = []
        for i, p in enumerate(prompts):
            for j, s in enumerate(self.seeds):
                hit = self.cache.get_json(keys[i][j])
                if hit is None:
                    missing.append((i, j))
                    continue
                pngs = [self.cache.get_bytes(k) for k in hit["frames"]]
                if any(b is None for b in pngs):
                    missing.append((i, j))
                    continue
                out[i][j] = Generation(p, s, pngs_to_media(pngs, hit["video"]), hit["meta"])
        if missing:
            gens = generator.generate([prompts[i] for i, _ in missing], [self.seeds[j] for _, j in missing])
            if len(gens) != len(missing):
                raise RuntimeError(f"generator returned {len(gens)} generations for {len(missing)} requests")
            for (i, j), g in zip(missing, gens):
                out[i][j] = g
                frames = media_to_pngs(g.media)
                frame_keys = [f"{keys[i][j]}:f{k}" for k in range(len(frames))]
                for fk, data in zip(frame_keys, frames):
                    self.cache.put_bytes(fk, data)
                self.cache.put_json(keys[i][j], {"frames": frame_keys, "video": isinstance(g.media, (list, tuple)),
                                                 "meta": to_jsonable(g.meta)})
        return out, keys  # type: ignore[return-value]

    def _score(self, gens: list[Generation], gen_keys: list[str], intent: str) -> dict[str, list[Score]]:
        """Each scorer's scores of ``gens``: cached ones reused, the rest in ONE call per scorer."""
        result: dict[str, list[Score]] = {}
        for scorer in self.scorers:
            skey = scorer.cache_key() if hasattr(scorer, "cache_key") else scorer.name
            keys = [content_key("score", skey, intent, g.prompt, k) for g, k in zip(gens, gen_keys)]
            scores: list[Score | None] = []
            for k in keys:
                hit = self.cache.get_json(k)
                scores.append(None if hit is None else Score(scorer.name, hit["value"], hit["details"]))
            todo = [i for i, s in enumerate(scores) if s is None]
            if todo:
                fresh = scorer.score([gens[i] for i in todo], intent)
                if len(fresh) != len(todo):
                    raise RuntimeError(f"scorer {scorer.name!r} returned {len(fresh)} scores for {len(todo)} images")
                for i, s in zip(todo, fresh):
                    s = Score(scorer.name, float(s.value), to_jsonable(s.details))
                    scores[i] = s
                    self.cache.put_json(keys[i], {"value": s.value, "details": s.details})
            result[scorer.name] = scores  # type: ignore[assignment]
        return result

    def _stream(self, prompts: list[str], seeds: list[int]):
        """Yield the generator's output chunk by chunk (``generate_chunks`` when it has one).

        With ``overlap`` and a generator that has ``generate_chunks``, a producer
        thread renders chunk i+1 while the caller scores chunk i; the queue holds
        at most one finished chunk, so memory stays bounded.
        """
        chunks = getattr(self.generator, "generate_chunks", None)
        if not self.overlap or not callable(chunks):
            # serial: chunk i is scored before chunk i+1 renders, so only one chunk's images
            # (and their device copies) are in flight; a generator without chunks is one chunk
            source = chunks(prompts, seeds) if callable(chunks) else (self.generator.generate(prompts, seeds)
                                                                       for _ in range(1))
            while True:
                t0 = time.perf_counter()
                chunk = next(source, None)
                self.timings["generate"] += time.perf_counter() - t0
                if chunk is None:
                    return
                yield list(chunk)
        q: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def produce():
            try:
                for chunk in chunks(prompts, seeds):
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
                self.timings["generate"] += time.perf_counter() - t0  # time the GPU made us wait
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            producer.join()

    def _evaluate(self, run_id, iteration, todo: list[dict], intent: str, trials: list[Trial]):
        """Render, score and commit the candidates of one iteration, one trial at a time.

        Pipelined: chunk i is scored while chunk i+1 renders; PNG encoding runs in a
        thread pool; cache and store writes run in ONE writer thread, in order, so
        trial k+1 is never committed before trial k. A trial is yielded (counts as
        finished) only once its commit is done.
        """
        prompts = [c["prompt"] for c in todo]
        n = len(self.seeds)
        gen_key = self._gen_key(self.generator)
        keys = [content_key("generation", gen_key, p, s) for p in prompts for s in self.seeds]
        gens: list[Generation | None] = [None] * len(keys)
        pngs: list[Any] = [None] * len(keys)  # list[bytes] per image, or a Future of it

        # 1. cached images (their PNG bytes come with them)
        missing = []
        for idx, k in enumerate(keys):
            hit = self.cache.get_json(k)
            frames = None if hit is None else [self.cache.get_bytes(fk) for fk in hit["frames"]]
            if frames is None or any(b is None for b in frames):
                missing.append(idx)
                continue
            gens[idx] = Generation(prompts[idx // n], self.seeds[idx % n], pngs_to_media(frames, hit["video"]),
                                   hit["meta"])
            pngs[idx] = frames

        # 2. cached scores
        score_keys, scores = {}, {}
        for scorer in self.scorers:
            skey = scorer.cache_key() if hasattr(scorer, "cache_key") else scorer.name
            score_keys[scorer.name] = [content_key("score", skey, intent, prompts[i // n], k) for i, k in enumerate(keys)]
            row: list[Score | None] = []
            for k in score_keys[scorer.name]:
                hit = self.cache.get_json(k)
                row.append(None if hit is None else Score(scorer.name, hit["value"], hit["details"]))
            scores[scorer.name] = row

        original = next((t for t in trials if t.index == 0), None)
        baseline = original.scores if (original and iteration > 0) else None
        next_index = max((t.index for t in trials), default=-1) + 1
        t_render = t_score = 0.0
        commits: list[tuple[Trial, Future]] = []

        pool, writer = self._executors()

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
                    writer.submit(self.cache.put_json, score_keys[scorer.name][i],
                                  {"value": row[i].value, "details": row[i].details})
            dt = time.perf_counter() - t0
            t_score += dt
            self.timings["score"] += dt

        def commit_ready() -> None:
            # trials whose every image is rendered and scored, in candidate order
            while len(commits) < len(todo):
                i = len(commits)
                span = range(i * n, (i + 1) * n)
                if not all(gens[j] is not None and all(scores[s.name][j] is not None for s in self.scorers)
                           for j in span):
                    return
                per = {name: row[i * n:(i + 1) * n] for name, row in scores.items()}
                ev = self.objective.evaluate(per, baseline)
                trial = Trial(
                    index=next_index + i, iteration=iteration, prompt=todo[i]["prompt"], objective=ev.objective,
                    scores=ev.means, feasible=ev.feasible, feedback=ev.feedback,
                    meta={**todo[i]["meta"], "violations": ev.violations, "seeds": self.seeds,
                          "render_s": t_render / len(todo), "score_s": t_score / len(todo)},
                    details={name: [sc.details for sc in lst] for name, lst in per.items()},
                )
                commits.append((trial, writer.submit(self._commit, run_id, trial, [gens[j] for j in span], per,
                                                     [keys[j] for j in span], [pngs[j] for j in span])))

        # 3. images and scores that were cached: score what lacks a score, commit what is whole
        score_ready([i for i in range(len(keys)) if gens[i] is not None])
        commit_ready()
        # 4. render the rest chunk by chunk; encode PNGs and write the cache beside it
        t_start = time.perf_counter()
        t_scored_before = t_score
        pos = 0
        stream = self._stream([prompts[i // n] for i in missing], [self.seeds[i % n] for i in missing])
        try:
            for chunk in stream:
                idxs = missing[pos:pos + len(chunk)]
                if len(chunk) > len(missing) - pos:
                    raise RuntimeError(f"generator returned more generations than the {len(missing)} requested")
                pos += len(chunk)
                for i, g in zip(idxs, chunk):
                    gens[i] = g
                    pngs[i] = pool.submit(media_to_pngs, g.media)
                    writer.submit(self._put_generation, keys[i], _without_pixels(g), pngs[i])
                t_render = time.perf_counter() - t_start - (t_score - t_scored_before)
                score_ready(idxs)
                for i in idxs:  # scored: device copies are no longer needed (only one chunk's stay alive)
                    gens[i] = _without_pixels(gens[i])
                commit_ready()
        finally:
            stream.close()  # stops the producer thread, on errors too
        if pos != len(missing):
            raise RuntimeError(f"generator returned {pos} generations for {len(missing)} requests")
        # 5. trials are finished when committed, in order
        for trial, done in commits:
            t0 = time.perf_counter()
            done.result()
            self.timings["write_wait"] += time.perf_counter() - t0
            yield trial

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """The PNG pool and the single writer thread, created once per run (threads and their
        allocator arenas are reused across iterations)."""
        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmopt-png")
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mmopt-writer")
        return self._pool, self._writer

    def _close_executors(self) -> None:
        """Wait for every queued write, then stop the threads."""
        proposer = getattr(self, "_proposer_thread", None)
        self._proposer_thread = None
        if proposer is not None:
            proposer.shutdown(wait=True)  # a proposal in flight finishes (and is stored) first
        pool, writer = getattr(self, "_pool", None), getattr(self, "_writer", None)
        self._pool = self._writer = None
        if pool is not None:
            pool.shutdown(wait=True)
            writer.shutdown(wait=True)

    def _put_generation(self, key: str, g: Generation, frames: Any) -> None:
        """Writer thread: one generation's PNG frames and metadata into the cache."""
        frames = frames.result() if isinstance(frames, Future) else frames
        frame_keys = [f"{key}:f{k}" for k in range(len(frames))]
        for fk, data in zip(frame_keys, frames):
            self.cache.put_bytes(fk, data)
        self.cache.put_json(key, {"frames": frame_keys, "video": isinstance(g.media, (list, tuple)),
                                  "meta": to_jsonable(g.meta)})

    def _commit(self, run_id, trial: Trial, gens, per, keys, frames) -> None:
        """Writer thread: commit one trial (media + rows in one transaction)."""
        if self.store:
            frames = [f.result() if isinstance(f, Future) else f for f in frames]
            self.store.save_trial(run_id, trial, gens, per, keys, pngs=frames)

    def _score_prompts(self, intent: str, prompts: Sequence[str], generator=None) -> list[dict[str, list[Score]]]:
        """Per prompt, each scorer's scores on the search seeds (rendered and scored through the cache)."""
        gens, keys = self._render(list(prompts), generator)
        scores = self._score([g for row in gens for g in row], [k for row in keys for k in row], intent)
        n = len(self.seeds)
        return [{name: lst[i * n:(i + 1) * n] for name, lst in scores.items()} for i in range(len(prompts))]

    def _final_rescore(self, intent: str, best: Trial, original: Trial) -> dict:
        """The best prompt and the original, re-rendered with the final generator and re-scored."""
        t0 = time.perf_counter()
        # the original first: its means are the baseline of the constraints
        prompts = list(dict.fromkeys([original.prompt, best.prompt]))
        per_prompt = self._score_prompts(intent, prompts, self.final_generator)
        evals = {original.prompt: self.objective.evaluate(per_prompt[0])}
        evals[best.prompt] = self.objective.evaluate(per_prompt[-1], evals[original.prompt].means) \
            if len(prompts) == 2 else evals[original.prompt]

        def final(t: Trial) -> Trial:
            ev = evals[t.prompt]
            return Trial(t.index, -1, t.prompt, ev.objective, ev.means, ev.feasible, ev.feedback,
                         meta={"final": True, "violations": ev.violations})

        self.timings["final"] += time.perf_counter() - t0
        return {"original": final(original), "best": final(best)}

    # ------------------------------------------------------------ utilities
    def evaluate_prompts(self, intent: str, prompts: Sequence[str], seeds: Sequence[int]) -> list[Trial]:
        """Score ``prompts`` on other ``seeds`` (e.g. held-out seeds) without touching the store."""
        saved = self.seeds
        try:
            self.seeds = list(seeds)
            evals = [self.objective.evaluate(per) for per in self._score_prompts(intent, prompts)]
        finally:
            self.seeds = saved
        return [Trial(i, -1, p, ev.objective, ev.means, ev.feasible, ev.feedback)
                for i, (p, ev) in enumerate(zip(prompts, evals))]
