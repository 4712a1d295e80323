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

import io
import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mmopt.cache import Cache, content_key
from mmopt.objective import Constraint, Objective
from mmopt.store import Store, media_to_pngs, pngs_to_media, to_jsonable
from mmopt.strategies import Strategy, TopKHistory
from mmopt.types import Generation, Proposer, Score, Scorer, SearchState, Trial

log = logging.getLogger("mmopt")

Callback = Callable[..., None]


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
                 callbacks: Iterable[Callback] = ()):
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
        try:
            for iteration in range(self.budget.iterations):
                # 3. budgets are checked before an iteration starts
                n_new = 1 if iteration == 0 else self.candidates
                if self.budget.images is not None:
                    n_new = min(n_new, (self.budget.images - state_info["images"]) // len(self.seeds))
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
                prompts = self._proposals(run_id, iteration, n_new, clean_intent, protected, trials, state_info)

                # 5. evaluate what is not finished yet; each trial is committed before the next
                done = {(t.iteration, t.prompt) for t in trials}
                todo = [p for p in prompts if (iteration, p["prompt"]) not in done]
                if todo:
                    for trial in self._evaluate(run_id, iteration, todo, clean_intent, trials):
                        trials.append(trial)
                        self._emit("trial", trial=trial, run_id=run_id)
                state_info["images"] = len(trials) * len(self.seeds)

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
        except KeyboardInterrupt:
            # Everything finished is committed; mark the run so `mmopt runs` shows it.
            if self.store:
                self.store.set_status(run_id, "interrupted")
            raise
        except BaseException:
            if self.store:
                self.store.set_status(run_id, "failed")
            raise

        original = next(t for t in trials if t.index == 0)
        result = Result(
            run_id=run_id, intent=intent, best=self._best(trials), original=original, trials=trials,
            trajectory=trajectory, stopped=stopped, images=state_info["images"],
            llm_calls=state_info["llm_calls"], wall_time_s=time.monotonic() - started,
            out_dir=str(self.store.root) if self.store else None, failures=state_info["failures"],
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

    def _proposals(self, run_id, iteration, n, clean_intent, protected, trials, info) -> list[dict]:
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
            )
            try:
                raw = list(self.proposer.propose(state, n))
            except Exception as e:  # an LLM outage must not lose the run: record and keep the best
                log.warning("proposer failed in iteration %d: %s", iteration, e)
                raw = []
                meta["failure"] = {"iteration": iteration, "error": f"{type(e).__name__}: {e}"}
            meta["llm_calls"] = 1
        admitted = self._admit(raw, n, trials, protected, iteration == 0)
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

    def _admit(self, raw: Sequence[str], n: int, trials, protected, is_original: bool) -> list[dict]:
        """Clean the proposer's candidates: strings, unseen, protected spans kept, within the token budget."""
        from mmopt import protect

        seen = {t.prompt for t in trials}
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

    def _render(self, prompts: Sequence[str]) -> tuple[list[list[Generation]], list[list[str]]]:
        """Every (prompt, seed) image, from the cache or from ONE generator call."""
        gen_key = self.generator.cache_key() if hasattr(self.generator, "cache_key") else {"name": self.generator.name}
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
            gens = self.generator.generate([prompts[i] for i, _ in missing], [self.seeds[j] for _, j in missing])
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

    def _evaluate(self, run_id, iteration, todo: list[dict], intent: str, trials: list[Trial]):
        """Render, score and commit the candidates of one iteration, one trial at a time."""
        prompts = [c["prompt"] for c in todo]
        t0 = time.monotonic()
        gens, keys = self._render(prompts)
        t1 = time.monotonic()
        flat = [g for row in gens for g in row]
        flat_keys = [k for row in keys for k in row]
        scores = self._score(flat, flat_keys, intent)
        t2 = time.monotonic()
        original = next((t for t in trials if t.index == 0), None)
        baseline = original.scores if original else None
        next_index = max((t.index for t in trials), default=-1) + 1
        n = len(self.seeds)
        for i, cand in enumerate(todo):
            per = {name: lst[i * n:(i + 1) * n] for name, lst in scores.items()}
            ev = self.objective.evaluate(per, baseline if iteration > 0 else None)
            trial = Trial(
                index=next_index + i, iteration=iteration, prompt=cand["prompt"], objective=ev.objective,
                scores=ev.means, feasible=ev.feasible, feedback=ev.feedback,
                meta={**cand["meta"], "violations": ev.violations, "seeds": self.seeds,
                      "render_s": (t1 - t0) / len(todo), "score_s": (t2 - t1) / len(todo)},
                details={name: [s.details for s in lst] for name, lst in per.items()},
            )
            if self.store:
                self.store.save_trial(run_id, trial, gens[i], per, keys[i])
            yield trial

    # ------------------------------------------------------------ utilities
    def evaluate_prompts(self, intent: str, prompts: Sequence[str], seeds: Sequence[int]) -> list[Trial]:
        """Score ``prompts`` on other ``seeds`` (e.g. held-out seeds) without touching the store."""
        saved = self.seeds
        try:
            self.seeds = list(seeds)
            gens, keys = self._render(list(prompts))
            flat = [g for row in gens for g in row]
            scores = self._score(flat, [k for row in keys for k in row], intent)
            n = len(self.seeds)
            out = []
            for i, p in enumerate(prompts):
                per = {name: lst[i * n:(i + 1) * n] for name, lst in scores.items()}
                ev = self.objective.evaluate(per)
                out.append(Trial(i, -1, p, ev.objective, ev.means, ev.feasible, ev.feedback))
            return out
        finally:
            self.seeds = saved
