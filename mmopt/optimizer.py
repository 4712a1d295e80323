"""The one optimization loop: propose -> evaluate -> select. Search policy only.

Read top to bottom: ``Budget`` and ``Result`` are plain data; ``Optimizer``
validates everything in ``__init__``; ``run`` is the loop. Rendering,
scoring, caching and committing belong to :class:`mmopt.evaluator.Evaluator`
(one path for the loop, the final re-score, held-out seeds and benchmarks);
what candidates must pass before they render belongs to
:func:`mmopt.candidates.admit`; which trials the proposer sees belongs to the
strategy. A run's state (its trials, counters, threads) lives in a ``_Run``
made per call, so one optimizer, or two in two threads, can run several
prompts without sharing anything they should not.

Invariants the loop keeps (DESIGN.md):
  * the original prompt is always trial 0;
  * the best trial is the best one that meets every constraint; when none
    does, it is the original, and the result says so (``Result.feasible``);
  * scorers judge every image against the *intent*, never the candidate;
  * the generator is called once per iteration with every (candidate, seed)
    pair, and each scorer once per iteration with every image;
  * everything that costs compute is cached by content (component identity),
    and every finished trial is committed to the store before the next one
    is written, so a killed run (even ``kill -9``) resumes where it stopped
    and recomputes nothing;
  * an LLM that cannot be reached stops the run as "interrupted" (resumable),
    it is not recorded as an iteration without proposals;
  * what a strategy decides beyond the history (more seeds for survivors, its
    own candidates, honest selection on fresh seeds) happens here, through the
    strategy's optional hooks (:mod:`mmopt.strategies`); an iteration's plan is
    stored before it runs, so a resumed run re-scores exactly what it would have.
"""
from __future__ import annotations

import itertools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mmopt.cache import Cache, content_key
from mmopt.candidates import admit
from mmopt.component import describe, identity
from mmopt.device import CoreHandoff, release_free_host_memory, set_thread_handoff, torch_threads_beside
from mmopt.errors import LLMUnavailableError, StopRequested
from mmopt.evaluator import Evaluated, Evaluator, Executors
from mmopt.objective import Objective
from mmopt.store import Store, check_run_id
from mmopt.strategies import Plan, PlanView, SearchStrategy, Strategy, TopKHistory, n_seeds
from mmopt.types import Candidate, Scorer, SearchState, Trial, best_trial

log = logging.getLogger("mmopt")

Callback = Callable[..., None]

# Host RSS growth (MiB, read after each iteration) that makes the loop trim the heap
# (mmopt.device.release_free_host_memory): once per that much creep, never on a plateau.
HOST_TRIM_MB = 64
# Held-out seeds given as a count are these, far from the search seeds 0..S-1.
HELDOUT_SEED_BASE = 10_000
# Fresh seeds of the honest selection (confirmation) start here: neither search nor held-out seeds.
FRESH_SEED_BASE = 5_000
# Seeds the pool holds beyond the search seeds, for strategies that give survivors more.
POOL_EXTRA = 60


def _hook(strategy: Any, name: str) -> Callable | None:
    """``strategy``'s hook ``name`` when it has one of its own (the base class's default is none)."""
    fn = getattr(strategy, name, None)
    if not callable(fn):
        return None
    default = getattr(SearchStrategy, name, None)
    if default is not None and getattr(type(strategy), name, None) is default:
        return None
    return fn


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
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"Budget.iterations must be an int >= 1, got {self.iterations!r}")
        for name in ("images", "llm_calls", "patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"Budget.{name} must be None or an int >= 1, got {v!r}")
        if self.wall_time_s is not None and not (isinstance(self.wall_time_s, (int, float)) and self.wall_time_s > 0):
            raise ValueError(f"Budget.wall_time_s must be None or > 0, got {self.wall_time_s!r}")

    def check_affordable(self, seeds_per_candidate: int) -> None:
        """ValueError when the budget cannot pay for iteration 0 (the original on every seed)."""
        if self.images is not None and self.images < seeds_per_candidate:
            raise ValueError(f"Budget(images={self.images}) cannot afford one iteration: the original prompt "
                             f"alone needs {seeds_per_candidate} images (one per search seed); give images >= "
                             f"{seeds_per_candidate} or fewer seeds")


@dataclass
class Result:
    """What a run returns.

    ``best`` is the best trial that meets every constraint (the original
    when none does: ``feasible`` is then False). ``gain`` is ``best`` minus
    the original on the search seeds; it is >= 0 whenever the original meets
    the constraints, and may be negative when the original itself broke one
    (``original_feasible`` False: a constraint-meeting prompt was preferred).
    The search seeds flatter the winner (it was chosen on them): with
    ``heldout_seeds`` the best and the original are re-scored on seeds the
    search never saw (``heldout``, ``heldout_gain``), the number to trust.
    """

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
    final: dict | None = None     # {"best", "original"}: re-rendered with the final generator
    heldout: dict | None = None   # {"best", "original"}: scored on the held-out seeds
    timings: dict = field(default_factory=dict)
    # honest selection: the finalists with their search-seed and fresh-seed scores (None: not asked for)
    selection: list[dict] | None = None
    llm_tokens: int = 0
    scorers: int = 1

    @property
    def ledger(self) -> dict:
        """What the run spent, in one place: images, LLM calls and tokens, scores computed,
        seconds per stage (rendering and scoring are the device's), wall time."""
        t = self.timings
        return {"images": self.images, "llm_calls": self.llm_calls, "llm_tokens": self.llm_tokens,
                "scores": self.images * self.scorers,
                "device_s": round(t.get("generate", 0.0) + t.get("score", 0.0), 2),
                "propose_s": round(t.get("propose", 0.0), 2), "wall_s": round(self.wall_time_s, 2)}

    @property
    def best_prompt(self) -> str:
        return self.best.prompt

    @property
    def feasible(self) -> bool:
        """Whether the best trial meets every constraint."""
        return bool(self.best.feasible)

    @property
    def original_feasible(self) -> bool:
        return bool(self.original.feasible)

    @property
    def gain(self) -> float:
        """Best (feasible) objective minus the original's, on the search seeds."""
        return self.best.objective - self.original.objective

    @property
    def estimate(self) -> float | None:
        """The winner's objective on seeds that took no part in choosing it (honest selection only):
        the report seeds, or the original's search seeds when the original won. None without it."""
        if not self.selection:
            return None
        return next(row["estimate"] for row in self.selection if row["winner"])

    @property
    def confirmed_gain(self) -> float | None:
        """Best minus original on the fresh seeds of the honest selection (None when not asked for)."""
        if not self.selection:
            return None
        fresh = {row["index"]: row["fresh"] for row in self.selection}
        return fresh[self.best.index] - fresh[self.original.index]

    @property
    def heldout_gain(self) -> float | None:
        """The same difference on the held-out seeds (None when not asked for)."""
        if not self.heldout:
            return None
        return self.heldout["best"].objective - self.heldout["original"].objective

    def summary(self) -> dict:
        def short(t: Trial) -> dict:
            return {"prompt": t.prompt, "negative": t.negative, "objective": t.objective, "scores": t.scores,
                    "feasible": t.feasible}

        return {
            "best_prompt": self.best.prompt, "best_negative": self.best.negative,
            "best_objective": self.best.objective, "original_objective": self.original.objective,
            "gain": self.gain, "feasible": self.feasible, "original_feasible": self.original_feasible,
            "best_scores": self.best.scores, "original_scores": self.original.scores, "best_index": self.best.index,
            "trials": len(self.trials), "images": self.images, "llm_calls": self.llm_calls,
            "stopped": self.stopped, "trajectory": self.trajectory, "ledger": self.ledger,
            **({"final": {k: short(t) for k, t in self.final.items()}} if self.final else {}),
            **({"heldout": {k: short(t) for k, t in self.heldout.items()}, "heldout_gain": self.heldout_gain,
                "heldout_seeds": self.heldout["best"].meta.get("seeds")} if self.heldout else {}),
            **({"selection": self.selection, "confirmed_gain": self.confirmed_gain, "estimate": self.estimate}
               if self.selection else {}),
        }


def choose_best(trials: Sequence[Trial]) -> Trial:
    """The run's best: the best feasible trial, else the original (trial 0)."""
    best = best_trial(trials)
    if best is None:
        raise ValueError("no trials to choose from")
    if best.feasible:
        return best
    return next((t for t in trials if t.index == 0), best)


@dataclass
class _Tally:
    """LLM calls and tokens, and recorded proposer failures (a run's, or one lookahead proposal's)."""

    llm_calls: int = 0
    failures: list[dict] = field(default_factory=list)
    llm_tokens: int = 0

    def add(self, other: "_Tally") -> None:
        self.llm_calls += other.llm_calls
        self.llm_tokens += other.llm_tokens
        self.failures.extend(other.failures)


def _tokens(meta: dict) -> int:
    """The LLM tokens (prompt and completion) a stored proposal reports having cost."""
    usage = ((meta.get("proposer_stats") or {}).get("llm_usage")) or {}
    return int(sum(v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens")
                   and isinstance(v, (int, float))))


@dataclass
class _Run:
    """Everything one call of ``Optimizer.run`` owns (nothing of it lives on the optimizer)."""

    run_id: str
    intent: str            # what the user typed (keep tags included)
    clean_intent: str      # the text the generator and scorers receive
    protected: tuple[str, ...]
    trials: list[Trial]
    started: float
    executors: Executors
    images: int = 0
    tally: _Tally = field(default_factory=_Tally)
    rejected: list = field(default_factory=list)  # (prompt, violations) screened out before rendering
    timings: dict = field(default_factory=lambda: {"propose": 0.0, "generate": 0.0, "score": 0.0,
                                                   "write_wait": 0.0, "final": 0.0, "heldout": 0.0})
    proposer_thread: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self.proposer_thread is not None:
            self.proposer_thread.shutdown(wait=True)  # a proposal in flight finishes (and is stored) first
            self.proposer_thread = None
        self.executors.close()


def _top_finalists(trials: Sequence[Trial], k: int) -> list[Trial]:
    """The ``k`` best feasible rendered trials besides the original (strategies without ``finalists``)."""
    pool = [t for t in trials if t.feasible and t.index != 0 and n_seeds(t) > 0]
    return sorted(pool, key=lambda t: (t.objective, -t.index), reverse=True)[:k]


class _Offspring:
    """The strategy's ``offspring`` hook seen as a proposer (so one code path asks both)."""

    name = "strategy"

    def __init__(self, fn: Callable):
        self.fn = fn

    def propose(self, state: SearchState, n: int) -> list:
        return self.fn(state, n)


class Optimizer:
    """Optimizes a prompt for a generator under one or more scorers.

    Args:
        generator: a ``Generator`` (or registry spec, e.g. ``"diffusers:stabilityai/sd-turbo"``).
        scorers: ``Scorer`` objects or registry specs.
        proposer: a ``Proposer`` (or registry spec, e.g. ``"opt2i"``).
        objective: how scores combine; default equal weights over ``scorers``.
        strategy: which trials the proposer sees (and in which order); default OPT2I's top-10.
        budget: when to stop.
        candidates: new candidates asked of the proposer per iteration.
        seeds: the search seeds, or how many (``4`` means ``[0, 1, 2, 3]``).
        seed: the run's base seed (proposer sampling).
        store: an output folder or ``Store``; ``None`` keeps nothing on disk.
        cache: a ``Cache`` for generations and scores; default ``<store>/cache.sqlite``
            (in memory when there is no store).
        llm: the run's LLM (object or registry name), handed to components given by
            name that ask for it (``dsg:<vqa>`` writes its questions with it; ``opt2i`` rewrites).
        protected: extra spans every rewrite must keep verbatim (trigger words).
        callbacks: called as ``cb(event, **info)`` for "iteration", "trial", "done".
        final_rescore: re-render and re-score the best prompt and the original at the end
            with the generator's full-quality sibling (``generator.full_quality()``, e.g. the
            full VAE after a search with ``decoder="tiny"``), or with the Generator given
            here; the result is ``Result.final``. ``False`` (default) skips it.
        heldout_seeds: re-score the best prompt and the original on these seeds (or this
            many, ``10000, 10001, ...``) after the search: ``Result.heldout``.
        workers: threads that encode PNGs beside the GPU work.
        overlap: render chunk i+1 in a producer thread while chunk i is scored. Off by
            default: measured on an H100 (SD-Turbo, 512 px) the two threads contended for
            the GIL and the loop ran 20-45% slower than serial (benchmarks/loop_throughput.py).
        prescreen: check the constraints of text-only scorers (the drift guard, the intent
            check) before rendering: a candidate that breaks one is never rendered (it is
            recorded in the iteration's proposals, and proposers see it in
            ``SearchState.rejected``); proposers get ``SearchState.screen`` to check their own.
        fallback: a Proposer (or spec, e.g. ``"edits"``) asked when the proposer's reply
            leaves the iteration short of new candidates (nothing usable, only duplicates,
            screened out): the search does not stall, and the fallback is recorded.
        lookahead: propose iteration i+1 on a thread while iteration i renders and scores,
            so the generator does not wait on the LLM. The proposer then sees the history
            through iteration i-1, with iteration i's prompts as ``SearchState.pending``;
            results differ from a run without it (it is part of the run's config), and are
            as deterministic (benchmarks/llm_overlap.py measures both).
        lend_cores: with lookahead, the render waits while the proposal's local LLM reads
            its prompt on every core, then renders beside its decoding
            (``mmopt.device.CoreHandoff``); None (default) lends them when the machine has
            no accelerator (the render is on the CPU). The proposals are the same either way.

    Example::

        opt = Optimizer("diffusers:stabilityai/sd-turbo", ["clip:ViT-B-32/openai"], "opt2i",
                        llm="hf:Qwen/Qwen2.5-1.5B-Instruct", budget=Budget(iterations=5), store="runs/")
        result = opt.run("a red cube on a blue sphere")
        print(result.best_prompt, result.gain)
    """

    def __init__(self, generator, scorers, proposer, *, objective: Objective | None = None,
                 strategy: Strategy | str | None = None, budget: Budget | None = None, candidates: int = 5,
                 seeds: int | Sequence[int] = 4, seed: int = 0, store: Store | str | Path | None = None,
                 cache: Cache | None = None, llm: Any = None, protected: Iterable[str] = (),
                 callbacks: Iterable[Callback] = (), final_rescore: Any = False,
                 heldout_seeds: int | Sequence[int] | None = None, workers: int = 4,
                 overlap: bool = False, lookahead: bool = False, prescreen: bool = False, fallback: Any = None,
                 lend_cores: bool | None = None):
        from mmopt import registry

        # 1. validate what needs no model first: fail here, not in iteration 3
        budget = budget or Budget()
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
        seeds = self._check_seeds(seeds, "seeds")
        budget.check_affordable(len(seeds))
        if heldout_seeds is not None:
            if isinstance(heldout_seeds, int) and not isinstance(heldout_seeds, bool):
                if heldout_seeds < 1:
                    raise ValueError(f"heldout_seeds must be >= 1 (or a list of seeds), got {heldout_seeds}")
                heldout_seeds = list(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + heldout_seeds))
            heldout_seeds = self._check_seeds(heldout_seeds, "heldout_seeds")
            overlap_seeds = sorted(set(heldout_seeds) & set(seeds))
            if overlap_seeds:
                raise ValueError(f"heldout_seeds must not repeat search seeds, got {overlap_seeds} in both")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        self.store = Store(store) if isinstance(store, (str, Path)) else store
        if cache is None:
            cache = Cache(self.store.root / "cache.sqlite") if self.store is not None else Cache(":memory:")
        self.cache = cache

        # 2. resolve registry specs (models load once per process: the registry memoises),
        #    with the run's context for factories that ask for it
        context = registry.RunContext(llm=llm, cache=self.cache, store=self.store)
        if isinstance(generator, (str, dict)):
            generator = registry.create("generator", generator, context=context)
        if isinstance(scorers, (str, dict, Scorer)) or not isinstance(scorers, Iterable):
            scorers = [scorers]
        scorers = [registry.create("scorer", s, context=context) if isinstance(s, (str, dict)) else s
                   for s in scorers]
        if isinstance(proposer, (str, dict)):
            proposer = registry.create("proposer", proposer, context=context, reuse=False)
        if isinstance(strategy, (str, dict)):
            strategy = registry.create("strategy", strategy, reuse=False)
        if isinstance(fallback, (str, dict)):
            fallback = registry.create("proposer", fallback, context=context, reuse=False)

        # 3. validate the components
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(f"generator must have a generate(candidates, seeds) method, got {type(generator).__name__}")
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
        if strategy is not None and not callable(getattr(strategy, "history", None)):
            raise TypeError(f"strategy must have a history(trials) method, got {type(strategy).__name__}")
        if fallback is not None and not callable(getattr(fallback, "propose", None)):
            raise TypeError(f"fallback must be a proposer (a propose(state, n) method) or None, "
                            f"got {type(fallback).__name__}")
        if lookahead and strategy is not None and _hook(strategy, "plan") is not None:
            raise ValueError(f"lookahead cannot be combined with the {getattr(strategy, 'name', 'given')!r} "
                             "strategy: it plans each iteration from the finished one")
        if final_rescore is True:
            full = getattr(generator, "full_quality", None)
            final_rescore = full() if callable(full) else None
            if final_rescore is None or final_rescore is generator:
                final_rescore = None  # nothing better to re-render with: the search scores stand
        elif final_rescore is False or final_rescore is None:
            final_rescore = None
        elif isinstance(final_rescore, (str, dict)):
            final_rescore = registry.create("generator", final_rescore, context=context)
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
        self.budget = budget
        self.candidates = candidates
        self.seeds = seeds
        self.heldout_seeds = heldout_seeds
        self.seed = seed
        self.extra_protected = tuple(protected)
        self.callbacks = list(callbacks)
        self.final_generator = final_rescore
        self.lookahead = bool(lookahead)
        if lend_cores is not None and not isinstance(lend_cores, bool):
            raise TypeError(f"lend_cores must be True, False or None (lend them on a machine without an "
                            f"accelerator), got {lend_cores!r}")
        self.lend_cores = lend_cores
        self.prescreen = bool(prescreen)
        self.fallback = fallback
        confirm = getattr(self.strategy, "confirm", None)
        if confirm:
            cs = int(getattr(self.strategy, "confirm_seeds", 4))
            rs = getattr(self.strategy, "report_seeds", None)
            self.confirm: tuple[int, int, int] | None = (int(confirm), cs, cs if rs is None else int(rs))
        else:
            self.confirm = None
        # the seed pool: the search seeds, then more for strategies that give survivors more;
        # fresh seeds (the confirmation's, then the report's) are neither
        taken = set(self.seeds) | set(self.heldout_seeds or ())
        fresh = list(itertools.islice((s for s in itertools.count(FRESH_SEED_BASE) if s not in taken),
                                      (self.confirm[1] + self.confirm[2]) if self.confirm else 0))
        self.fresh_seeds = fresh[:self.confirm[1]] if self.confirm else []
        self.report_seeds = fresh[self.confirm[1]:] if self.confirm else []
        taken |= set(fresh)
        self.pool = self.seeds + list(itertools.islice(
            (s for s in itertools.count(max(self.seeds) + 1) if s not in taken), POOL_EXTRA))
        if self.confirm and budget.images is not None:
            reserve = self._reserve()
            if budget.images < reserve + len(self.seeds):
                raise ValueError(f"Budget(images={budget.images}) cannot pay for the search and its confirmation: "
                                 f"the original needs {len(self.seeds)} images and the confirmation "
                                 f"{reserve} ({self.confirm[0]} finalists and the original on {self.confirm[1]} "
                                 f"fresh seeds, the winner on {self.confirm[2]} more); give more images or a "
                                 "smaller confirm")
        self.evaluator = Evaluator(generator, self.scorers, self.objective, cache=self.cache, workers=workers,
                                   overlap=overlap)
        self.workers = workers
        self.timings: dict[str, float] = {}  # the last finished run's stage times (benchmarks read them)

    @staticmethod
    def _check_seeds(seeds: Any, what: str) -> list[int]:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ValueError(f"{what} must be >= 1 (or a list of seeds), got {seeds}")
            return list(range(seeds))
        seeds = list(seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ValueError(f"{what} must be distinct non-negative ints, got {seeds}")
        return seeds

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """Everything that determines the run's result (each component's full config);
        its hash with the intent is the default run id."""
        return {
            "generator": describe(self.generator),
            "scorers": [describe(s) for s in self.scorers],
            "proposer": describe(self.proposer),
            "strategy": describe(self.strategy),
            "objective": describe(self.objective),
            "budget": vars(self.budget), "candidates": self.candidates, "seeds": self.seeds,
            "seed": self.seed, "protected": list(self.extra_protected),
            **({"final": describe(self.final_generator)} if self.final_generator is not None else {}),
            **({"heldout_seeds": self.heldout_seeds} if self.heldout_seeds else {}),
            **({"lookahead": True} if self.lookahead else {}),
            **({"prescreen": True} if self.prescreen else {}),
            **({"fallback": describe(self.fallback)} if self.fallback is not None else {}),
        }

    def projection(self) -> dict:
        """The budget a run may spend, known before it starts (what ``mmopt optimize`` prints first):
        images (and the share kept for the confirmation), iterations, LLM calls."""
        reserve = self._reserve()
        if self.budget.images is not None:
            images = self.budget.images
        else:
            images = len(self.seeds) + (self.budget.iterations - 1) * self.candidates * len(self.seeds) + reserve
        return {"images": images, "confirmation_images": reserve, "iterations": self.budget.iterations,
                "llm_calls": self.budget.llm_calls, "proposals": self.budget.iterations - 1,
                "wall_time_s": self.budget.wall_time_s, "seeds": len(self.seeds),
                "heldout_images": 2 * len(self.heldout_seeds or ())}

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
        if run_id is not None:
            check_run_id(run_id)
        protected = tuple(dict.fromkeys(protect.find_protected(intent, extra=self.extra_protected)))
        clean_intent = " ".join(protect.strip_keep_tags(intent).split())
        run_id = run_id or content_key(intent, self.config())[:16]
        if self.store is None:
            return self._run(intent, clean_intent, protected, run_id)
        with self.store.lock_run(run_id):  # one writer per run: a second process is told it is busy
            return self._run(intent, clean_intent, protected, run_id)

    def _run(self, intent: str, clean_intent: str, protected: tuple[str, ...], run_id: str) -> Result:
        # 2. open or resume the run (finished trials come back from the store)
        status = self.store.start_run(run_id, intent, self.config()) if self.store else "new"
        trials: list[Trial] = self.store.load_trials(run_id) if self.store else []
        if status != "new" and trials:
            log.info("resuming run %s with %d finished trials", run_id, len(trials))
        run = _Run(run_id=run_id, intent=intent, clean_intent=clean_intent, protected=protected, trials=trials,
                   started=time.monotonic(), executors=Executors(self.workers))
        run.images = self._images(run.trials)
        if self.store and status != "new":
            self._restore_media(run)
        trajectory: list[float] = []
        stopped = "iterations"
        best_so_far = float("-inf")
        stale = 0
        ahead = None  # lookahead: (iteration, Future of its proposals, their _Tally, CoreHandoff or None)
        selection = None
        try:
            for iteration in range(self.budget.iterations):
                # 3. budgets are checked before an iteration starts; the strategy plans it
                #    (stored first: a resumed run re-scores what the uninterrupted one did)
                plan = self._plan(run, iteration)
                rescore = self._affordable_rescores(run, plan)
                n_new, n_seeds_new = self._n_new(iteration, run.images + self._rescore_cost(run, rescore), plan)
                if n_new < 1 and not rescore:
                    stopped = "images"
                    break
                if self.budget.wall_time_s is not None and time.monotonic() - run.started > self.budget.wall_time_s:
                    stopped = "wall_time"
                    break
                if iteration > 0 and self.budget.llm_calls is not None and run.tally.llm_calls >= self.budget.llm_calls:
                    stopped = "llm_calls"
                    break

                # 4. proposals: stored ones on resume, else the original or the proposer's
                #    (with lookahead, made while the previous iteration rendered: only the wait counts)
                t_prop = time.perf_counter()
                if n_new < 1:
                    proposals = []
                elif ahead is not None and ahead[0] == iteration:
                    proposals = ahead[1].result()
                    run.tally.add(ahead[2])
                else:
                    proposals = self._proposals(run, iteration, n_new, list(run.trials), run.tally)
                ahead = None
                run.timings["propose"] += time.perf_counter() - t_prop

                # 5. evaluate what is not finished yet (survivors' extra seeds and new candidates,
                #    in one generator call); each trial is committed before the next
                done = {(t.iteration, t.candidate) for t in run.trials}
                todo = [p for p in proposals if (iteration, p[0]) not in done]
                if self.lookahead:
                    ahead = self._propose_ahead(run, iteration + 1, run.images + len(todo) * n_seeds_new,
                                                proposals)
                if todo or rescore:
                    # a lookahead proposal reads its prompt on every core first (on the CPU), then
                    # decodes on a core of its own while this renders
                    if ahead is not None and ahead[3] is not None:
                        run.timings["lent_cores"] = run.timings.get("lent_cores", 0.0) + ahead[3].wait()
                    with torch_threads_beside(ahead is not None):
                        for trial, updated in self._evaluate(run, iteration, todo, self.pool[:n_seeds_new],
                                                             rescore):
                            if updated:
                                pos = next(i for i, t in enumerate(run.trials) if t.index == trial.index)
                                run.trials[pos] = trial
                                self._emit("rescore", trial=trial, run_id=run_id)
                            else:
                                run.trials.append(trial)
                                self._emit("trial", trial=trial, run_id=run_id)
                run.images = self._images(run.trials)
                # hand freed image buffers back to the OS (off the main thread) once they add up
                run.executors.writer.submit(release_free_host_memory, HOST_TRIM_MB)

                # 6. bookkeeping: trajectory of the leader (the best feasible objective), early stopping
                best = self._leader(run.trials)
                trajectory.append(best.objective)
                self._emit("iteration", iteration=iteration, best=best, trials=run.trials, run_id=run_id,
                           images=run.images)
                if best.objective > best_so_far + 1e-12:
                    best_so_far, stale = best.objective, 0
                elif iteration > 0:
                    stale += 1
                    if self.budget.patience is not None and stale >= self.budget.patience:
                        stopped = "patience"
                        break
            if ahead is not None:  # proposals made for an iteration that did not run: their LLM calls were spent
                ahead[1].result()
                run.tally.llm_calls += ahead[2].llm_calls

            # 7. the winner: the best on the search seeds, or (honest selection) the best of the
            #    finalists on fresh seeds; then re-judged where asked: full quality, unseen seeds
            original = next(t for t in run.trials if t.index == 0)
            if self.confirm:
                best, selection = self._confirm(run)
                original = next(t for t in run.trials if t.index == 0)
                run.images = self._images(run.trials)
            else:
                best = choose_best(run.trials)
            run.close()
            final = self._rescore(run, [original, best], self.seeds, self.final_generator, "final") \
                if self.final_generator is not None else None
            heldout = self._rescore(run, [original, best], self.heldout_seeds, None, "heldout") \
                if self.heldout_seeds else None
        except (KeyboardInterrupt, LLMUnavailableError, StopRequested):
            # Everything finished is committed; the rerun resumes here.
            run.close()
            if self.store:
                self.store.set_status(run_id, "interrupted")
            raise
        except BaseException:
            run.close()
            if self.store:
                self.store.set_status(run_id, "failed")
            raise

        result = Result(
            run_id=run_id, intent=intent, best=best, original=original, trials=run.trials,
            trajectory=trajectory, stopped=stopped, images=run.images, llm_calls=run.tally.llm_calls,
            wall_time_s=time.monotonic() - run.started, out_dir=str(self.store.root) if self.store else None,
            failures=run.tally.failures, final=final, heldout=heldout, timings=dict(run.timings),
            selection=selection, llm_tokens=run.tally.llm_tokens, scorers=len(self.scorers),
        )
        self.timings = dict(run.timings)
        if self.store:
            self.store.set_status(run_id, "finished", result.summary())
        self._emit("done", result=result)
        return result

    # ------------------------------------------------------------- the steps
    def _images(self, trials: Sequence[Trial]) -> int:
        """Images the run has paid for: every trial's seeds, and its fresh (confirmation) seeds."""
        total = 0
        for t in trials:
            seeds = t.meta.get("seeds")
            total += len(seeds) if isinstance(seeds, list) else len(self.seeds)
            total += len((t.meta.get("confirm") or {}).get("seeds") or [])
            total += len((t.meta.get("report") or {}).get("seeds") or [])
        return total

    def _reserve(self) -> int:
        """Images set aside for the confirmation (the finalists and the original on fresh seeds)."""
        return (self.confirm[0] + 1) * self.confirm[1] + self.confirm[2] if self.confirm else 0

    def _images_left(self, images_so_far: int) -> int | None:
        if self.budget.images is None:
            return None
        return max(0, self.budget.images - self._reserve() - images_so_far)

    def _plan(self, run: _Run, iteration: int) -> Plan:
        """The strategy's plan of ``iteration`` (stored before it runs; the stored one on resume)."""
        plan_fn = _hook(self.strategy, "plan")
        if iteration == 0 or plan_fn is None:
            return Plan()
        stored = self.store.load_plan(run.run_id, iteration) if self.store else None
        if stored is not None:
            return Plan.from_json(stored)
        view = PlanView(trials=tuple(run.trials), iteration=iteration, search_seeds=len(self.seeds),
                        pool=len(self.pool), images_left=self._images_left(run.images), candidates=self.candidates)
        plan = plan_fn(view)
        if not isinstance(plan, Plan):
            raise TypeError(f"strategy {getattr(self.strategy, 'name', '?')!r}: plan() must return a "
                            f"mmopt.strategies.Plan, got {type(plan).__name__}")
        if self.store:
            self.store.save_plan(run.run_id, iteration, plan.to_json())
        return plan

    def _affordable_rescores(self, run: _Run, plan: Plan) -> list[tuple[Trial, int]]:
        """The plan's re-scores still to do, in order, as far as the image budget pays for them."""
        by_index = {t.index: t for t in run.trials}
        left = self._images_left(run.images)
        out = []
        for idx, k in plan.rescore:
            t = by_index.get(idx)
            k = min(k, len(self.pool))
            if t is None or n_seeds(t) == 0 or n_seeds(t) >= k:
                continue  # unknown, never rendered, or already done (a resumed run)
            cost = k - n_seeds(t)
            if left is not None and cost > left:
                continue
            out.append((t, k))
            left = None if left is None else left - cost
        return out

    @staticmethod
    def _rescore_cost(run: _Run, rescore: list[tuple[Trial, int]]) -> int:
        return sum(k - n_seeds(t) for t, k in rescore)

    def _n_new(self, iteration: int, images_so_far: int, plan: Plan | None = None) -> tuple[int, int]:
        """How many candidates ``iteration`` may render and on how many seeds each
        (the plan asks; the image budget caps the last ones)."""
        plan = plan or Plan()
        if iteration == 0:
            n_new, seeds = 1, len(self.seeds)  # the original: every search seed
        else:
            n_new = self.candidates if plan.new is None else plan.new
            seeds = len(self.seeds) if plan.seeds is None else min(plan.seeds, len(self.pool))
        left = self._images_left(images_so_far)
        if left is not None:
            n_new = min(n_new, left // seeds)
        return n_new, seeds

    def _leader(self, trials: Sequence[Trial]) -> Trial:
        """The best trial so far as the strategy ranks them (its estimate; plainly: ``choose_best``)."""
        estimate = _hook(self.strategy, "estimate")
        if estimate is None:
            return choose_best(trials)
        feasible = [t for t in trials if t.feasible and n_seeds(t) > 0]
        if not feasible:
            return choose_best(trials)
        return max(feasible, key=lambda t: (estimate(t, trials), -t.index))

    def _propose_ahead(self, run: _Run, iteration: int, images_after: int, current: list):
        """Lookahead: start proposing ``iteration`` on the proposer thread, from the trials
        finished before the current iteration plus its ``current`` candidates as pending;
        None when that iteration would not run."""
        n_next, _ = self._n_new(iteration, images_after)
        if iteration >= self.budget.iterations or n_next < 1:
            return None
        if self.budget.llm_calls is not None and run.tally.llm_calls >= self.budget.llm_calls:
            return None
        if run.proposer_thread is None:
            run.proposer_thread = ThreadPoolExecutor(1, thread_name_prefix="mmopt-propose")
        own = _Tally()  # merged into the run's when used
        pending = tuple(c.text for c, _ in current)
        # the trials before the current iteration only: a resumed run that already finished some
        # of the current candidates proposes exactly what the uninterrupted run did
        earlier = [t for t in run.trials if t.iteration < iteration - 1]
        handoff = CoreHandoff() if self._lends_cores() else None

        def propose():
            set_thread_handoff(handoff)
            try:
                return self._proposals(run, iteration, n_next, earlier, own, pending)
            finally:
                set_thread_handoff(None)
                if handoff is not None:
                    handoff.release()

        return iteration, run.proposer_thread.submit(propose), own, handoff

    def _lends_cores(self) -> bool:
        """Whether a lookahead proposal's LLM may borrow the render's cores for its prompt."""
        if self.lend_cores is not None:
            return self.lend_cores
        from mmopt.device import pick_device

        return pick_device() == "cpu"

    def _screen_fn(self, run: _Run, trials: Sequence[Trial]):
        """``candidate -> violations`` of the text-only constraints (prescreen), else None."""
        if not self.prescreen or not self.evaluator.text_only_constraints():
            return None
        original = next((t for t in trials if t.index == 0), None)
        baseline = original.scores if original else None

        def screen(candidate) -> list[str]:
            return self.evaluator.screen([candidate], run.clean_intent, baseline)[0]

        # what the screen's verdicts depend on, for a proposer's stop rule (it enters LLM cache keys)
        names = {c.scorer for c in self.evaluator.text_only_constraints()}
        screen.key = content_key("screen", identity(self.evaluator.objective),
                                 [identity(s) for s in self.evaluator.scorers if s.name in names],
                                 run.clean_intent, baseline)
        return screen

    def _ask(self, who: Any, state: SearchState, n: int, meta: dict, label: str) -> list:
        """``who.propose(state, n)``; a failure other than an unreachable LLM is recorded, not raised."""
        try:
            raw = list(who.propose(state, n))
        except LLMUnavailableError:
            raise  # infrastructure, not a result: the run stops as interrupted and resumes later
        except Exception as e:  # a proposer bug or a bad reply must not lose the run: record it
            log.warning("%s failed in iteration %d: %s", label, state.iteration, e)
            prefix = "" if label == "proposer" else f"{label}: "
            meta.setdefault("errors", []).append(f"{prefix}{type(e).__name__}: {e}")
            return []
        return raw

    def _proposals(self, run: _Run, iteration: int, n: int, trials: list[Trial], tally: _Tally,
                   pending: tuple[str, ...] = ()) -> list[tuple[Candidate, dict]]:
        """The candidates of ``iteration`` with their admission meta. Stored before use.

        ``tally`` receives the LLM calls and failures (the run's, or a lookahead proposal's own).
        The strategy's own candidates (``offspring``) come first, then the proposer's; with
        ``prescreen`` those that break a text-only constraint are set aside (recorded,
        never rendered); a short iteration is filled by the ``fallback`` proposer.
        """
        stored = self.store.load_proposals(run.run_id, iteration) if self.store else None
        if stored is not None:
            cands, meta = stored
            tally.llm_calls += meta.get("llm_calls", 0)
            tally.llm_tokens += _tokens(meta)
            if meta.get("failure"):
                tally.failures.append(meta["failure"])
            self._remember_rejected(run, meta)
            per = meta.get("per_prompt") or [{}] * len(cands)
            return list(zip(cands, per))

        meta: dict = {"llm_calls": 0}
        screen = self._screen_fn(run, trials) if iteration > 0 else None
        seen = [t.candidate for t in trials] + [Candidate(p) for p in pending] + \
            [Candidate(p) for p, _ in run.rejected]
        if iteration == 0:
            admitted = admit([run.clean_intent], n, seen=seen, generator=self.generator, is_original=True)
        else:
            state = SearchState(
                intent=run.clean_intent, iteration=iteration, trials=list(trials),
                history=self.strategy.history(trials), rng=random.Random(derive_seed(self.seed, "propose", iteration)),
                prompt_style=getattr(self.generator, "prompt_style", "sentences"),
                max_prompt_tokens=getattr(self.generator, "max_prompt_tokens", 77), protected=run.protected,
                pending=tuple(pending), media_kind=getattr(self.generator, "media_kind", "image"), screen=screen,
                rejected=tuple(run.rejected), layout=getattr(self.strategy, "layout", "ranked"),
            )
            # 1. the strategy's own candidates (crossover), then the proposer's
            offspring_fn = _hook(self.strategy, "offspring")
            raw_own = self._ask(_Offspring(offspring_fn), state, n, meta, "strategy") if offspring_fn else []
            raw: list = []
            if len(raw_own) < n:
                raw = self._ask(self.proposer, state, n - len(raw_own), meta, "proposer")
                # LLM requests this proposal cost (retries included) when the proposer reports them
                stats = getattr(self.proposer, "last_stats", None)
                meta["llm_calls"] = int(stats.get("llm_calls", 1)) if isinstance(stats, dict) else 1
                if isinstance(stats, dict):
                    meta["proposer_stats"] = stats
            if meta.get("errors"):
                meta["failure"] = {"iteration": iteration, "error": "; ".join(meta["errors"])}
            # the strategy's candidates may carry their own meta, (candidate, dict): kept with the trial
            admitted = []
            for item in raw_own:
                cand, extra = item if isinstance(item, tuple) and len(item) == 2 else (item, {})
                got = admit([cand], 1, seen=seen + [c for c, _ in admitted], protected=run.protected,
                            generator=self.generator)
                for c, m in got:
                    admitted.append((c, {**m, **(extra if isinstance(extra, dict) else {}), "origin": "strategy"}))
            admitted += admit(raw, n - len(admitted), seen=seen + [c for c, _ in admitted], protected=run.protected,
                              generator=self.generator)
            admitted = self._screened(run, admitted, screen, meta)
            # 2. a short iteration is filled by the fallback proposer (recorded)
            if len(admitted) < n and self.fallback is not None:
                fb_raw = self._ask(self.fallback, state, n - len(admitted), meta, "fallback")
                fb_stats = getattr(self.fallback, "last_stats", None)
                meta["llm_calls"] += int(fb_stats.get("llm_calls", 0)) if isinstance(fb_stats, dict) else 0
                fb = admit(fb_raw, n - len(admitted), seen=seen + [c for c, _ in admitted], protected=run.protected,
                           generator=self.generator)
                fb = self._screened(run, fb, screen, meta)
                for _, m in fb:
                    m["origin"] = "fallback"
                if fb:
                    meta["fallback"] = {"proposer": getattr(self.fallback, "name", type(self.fallback).__name__),
                                        "candidates": len(fb), "short_by": n - len(admitted)}
                admitted += fb
            if not admitted and "failure" not in meta:
                meta["failure"] = {"iteration": iteration, "error": "no usable new candidate in the proposer's reply",
                                   "raw": [str(r)[:300] for r in raw[:n]]}
        if "failure" in meta:
            tally.failures.append(meta["failure"])
        meta["per_prompt"] = [m for _, m in admitted]
        tally.llm_calls += meta["llm_calls"]
        tally.llm_tokens += _tokens(meta)
        if self.store:
            self.store.save_proposals(run.run_id, iteration, [c for c, _ in admitted], meta)
        return admitted

    def _screened(self, run: _Run, admitted: list, screen, meta: dict) -> list:
        """``admitted`` without the candidates that break a text-only constraint (recorded in ``meta``)."""
        if screen is None or not admitted:
            return admitted
        kept = []
        for cand, m in admitted:
            violations = screen(cand)
            if violations:
                meta.setdefault("screened", []).append({**cand.key(), "violations": violations})
                run.rejected.append((cand.text, tuple(violations)))
            else:
                kept.append((cand, m))
        return kept

    @staticmethod
    def _remember_rejected(run: _Run, meta: dict) -> None:
        """A resumed run knows the candidates stored iterations screened out."""
        for item in meta.get("screened") or []:
            entry = (item.get("text", ""), tuple(item.get("violations") or ()))
            if entry not in run.rejected:
                run.rejected.append(entry)

    def _per_seed(self, ev: Evaluated, baseline: dict | None) -> list[float]:
        """The objective of each seed of ``ev`` alone (their mean is the trial's objective)."""
        return [self.objective.evaluate({name: [lst[i]] for name, lst in ev.scores.items()}, baseline).objective
                for i in range(len(ev.seeds))]

    def _evaluate(self, run: _Run, iteration: int, todo: list[tuple[Candidate, dict]], seeds: list[int],
                  rescore: Sequence[tuple[Trial, int]] = ()):
        """Render, score and commit one iteration: the re-scored trials (brought up to their
        planned seeds) and the new candidates (on ``seeds``), in one evaluator call.
        Yields ``(trial, updated)`` once each is stored."""
        original = next((t for t in run.trials if t.index == 0), None)
        baseline = original.scores if (original and iteration > 0) else None
        next_index = max((t.index for t in run.trials), default=-1) + 1
        n_old = len(rescore)

        def commit(ev: Evaluated, pngs: list) -> tuple[Trial, bool]:
            c = ev.candidate
            per_seed = self._per_seed(ev, baseline)
            if ev.position < n_old:  # a trial re-scored on more seeds: same index, merged scores
                old = rescore[ev.position][0]
                have = set(old.meta.get("seeds") or [])
                meta = {**old.meta, "violations": ev.evaluation.violations, "seeds": ev.seeds, "per_seed": per_seed,
                        "rescored": [*old.meta.get("rescored", []), iteration]}
                trial = Trial(old.index, old.iteration, c.text, ev.evaluation.objective, ev.evaluation.means,
                              ev.evaluation.feasible, ev.evaluation.feedback, meta=meta,
                              details={name: [sc.details for sc in lst] for name, lst in ev.scores.items()},
                              negative=c.negative, payload=c.payload)
                fresh = [i for i, s in enumerate(ev.seeds) if s not in have]
                if self.store:  # only the new seeds' images and scores join the stored ones
                    self.store.save_trial(run.run_id, trial, [ev.generations[i] for i in fresh],
                                          {k: [v[i] for i in fresh] for k, v in ev.scores.items()},
                                          [ev.keys[i] for i in fresh], pngs=[pngs[i] for i in fresh])
                return trial, True
            pos = ev.position - n_old
            trial = Trial(
                index=next_index + pos, iteration=iteration, prompt=c.text,
                objective=ev.evaluation.objective, scores=ev.evaluation.means, feasible=ev.evaluation.feasible,
                feedback=ev.evaluation.feedback, negative=c.negative, payload=c.payload,
                meta={**todo[pos][1], "violations": ev.evaluation.violations, "seeds": ev.seeds,
                      "render_s": ev.render_s, "score_s": ev.score_s, "per_seed": per_seed},
                details={name: [sc.details for sc in lst] for name, lst in ev.scores.items()},
            )
            if self.store:
                self.store.save_trial(run.run_id, trial, ev.generations, ev.scores, ev.keys, pngs=pngs)
            return trial, False

        cands = [t.candidate for t, _ in rescore] + [c for c, _ in todo]
        per = [self.pool[:k] for _, k in rescore] + [list(seeds)] * len(todo)
        for ev in self.evaluator.evaluate(cands, per, run.clean_intent, baseline=baseline,
                                          commit=commit, timings=run.timings, executors=run.executors):
            yield ev.committed

    def _confirm(self, run: _Run) -> tuple[Trial, list[dict]]:
        """Honest selection: the original and the strategy's finalists on fresh seeds; the best there wins.

        Fresh-seed results are kept in each finalist's ``meta["confirm"]`` (and stored), so a
        resumed run re-renders nothing; the winner ranks by (feasible on both, fresh objective,
        earlier index): the original wins ties.
        """
        k = self.confirm[0]
        original = next(t for t in run.trials if t.index == 0)
        picks = getattr(self.strategy, "finalists", None)
        chosen = (picks if callable(picks) else _top_finalists)(run.trials, k)
        finalists = [original] + [t for t in chosen if t.index != 0][:k]
        seeds = list(self.fresh_seeds)
        todo = [t for t in finalists if (t.meta.get("confirm") or {}).get("seeds") != seeds]
        if todo:
            t0 = time.perf_counter()
            self._confirm_eval(run, todo, seeds, original)
            run.timings["confirm"] = run.timings.get("confirm", 0.0) + time.perf_counter() - t0
        by_index = {t.index: t for t in run.trials}
        finalists = [by_index[t.index] for t in finalists]

        def key(t: Trial) -> tuple:
            c = t.meta["confirm"]
            return (bool(t.feasible and c["feasible"]), c["objective"], -t.index)

        winner = max(finalists, key=key)
        # the winner's score on seeds that chose nothing (the original's search seeds chose nothing)
        if winner.index != 0 and self.report_seeds and \
                (winner.meta.get("report") or {}).get("seeds") != self.report_seeds:
            self._report_eval(run, winner, original)
            winner = next(t for t in run.trials if t.index == winner.index)
        selection = [{"index": t.index, "prompt": t.prompt, "negative": t.negative, "search": t.objective,
                      "search_seeds": n_seeds(t), "fresh": t.meta["confirm"]["objective"],
                      "fresh_seeds": len(seeds), "feasible": bool(t.feasible and t.meta["confirm"]["feasible"]),
                      "winner": t.index == winner.index} for t in finalists]
        for row in selection:
            if row["winner"]:
                report = winner.meta.get("report")
                row["estimate"] = report["objective"] if (report and winner.index != 0) else winner.objective
                row["estimate_seeds"] = len(report["seeds"]) if (report and winner.index != 0) else n_seeds(winner)
        return winner, selection

    def _report_eval(self, run: _Run, winner: Trial, original: Trial) -> None:
        """The winner on the report seeds (stored in its ``meta["report"]``)."""
        t0 = time.perf_counter()
        ev = self.evaluator.evaluate_all([winner.candidate], self.report_seeds, run.clean_intent,
                                         baseline=original.scores, timings=run.timings)[0]
        report = {"seeds": list(self.report_seeds), "objective": ev.evaluation.objective, "scores": ev.evaluation.means,
                  "feasible": ev.evaluation.feasible}
        trial = Trial(winner.index, winner.iteration, winner.prompt, winner.objective, winner.scores, winner.feasible,
                      winner.feedback, meta={**winner.meta, "report": report}, details=winner.details,
                      negative=winner.negative, payload=winner.payload)
        if self.store:
            self.store.save_trial(run.run_id, trial, ev.generations, ev.scores, ev.keys)
        pos = next(i for i, x in enumerate(run.trials) if x.index == winner.index)
        run.trials[pos] = trial
        run.timings["confirm"] = run.timings.get("confirm", 0.0) + time.perf_counter() - t0

    def _confirm_eval(self, run: _Run, todo: list[Trial], seeds: list[int], original: Trial) -> None:
        """Evaluate ``todo`` on the fresh ``seeds`` (the original first: its means are the baseline)."""
        base_ev = None
        if any(t.index == 0 for t in todo):
            base_ev = self.evaluator.evaluate_all([original.candidate], seeds, run.clean_intent,
                                                  timings=run.timings)[0]
        baseline = (base_ev.evaluation.means if base_ev is not None
                    else (original.meta.get("confirm") or {}).get("scores"))
        others = [t for t in todo if t.index != 0]
        evs = ([(original, base_ev)] if base_ev is not None else []) + list(zip(others, self.evaluator.evaluate_all(
            [t.candidate for t in others], seeds, run.clean_intent, baseline=baseline, timings=run.timings)))
        for t, ev in evs:
            confirm = {"seeds": seeds, "objective": ev.evaluation.objective, "scores": ev.evaluation.means,
                       "feasible": ev.evaluation.feasible, "violations": ev.evaluation.violations,
                       "per_seed": self._per_seed(ev, baseline)}
            trial = Trial(t.index, t.iteration, t.prompt, t.objective, t.scores, t.feasible, t.feedback,
                          meta={**t.meta, "confirm": confirm}, details=t.details, negative=t.negative,
                          payload=t.payload)
            if self.store:
                self.store.save_trial(run.run_id, trial, ev.generations, ev.scores, ev.keys)
            pos = next(i for i, x in enumerate(run.trials) if x.index == t.index)
            run.trials[pos] = trial

    def _rescore(self, run: _Run, trials: list[Trial], seeds: list[int], generator: Any, label: str) -> dict:
        """``{"original", "best"}`` re-evaluated on ``seeds`` (and/or with ``generator``).

        The original is evaluated first: its means are the baseline of ``max_drop`` constraints.
        """
        t0 = time.perf_counter()
        original, best = trials
        cands = list(dict.fromkeys([original.candidate, best.candidate]))
        evs = self.evaluator.evaluate_all(cands[:1], seeds, run.clean_intent, generator=generator,
                                          timings=run.timings)
        if len(cands) == 2:
            evs += self.evaluator.evaluate_all(cands[1:], seeds, run.clean_intent, generator=generator,
                                               baseline=evs[0].evaluation.means, timings=run.timings)
        by_cand = {ev.candidate: ev for ev in evs}

        def as_trial(t: Trial) -> Trial:
            ev = by_cand[t.candidate].evaluation
            return Trial(t.index, -1, t.prompt, ev.objective, ev.means, ev.feasible, ev.feedback,
                         meta={label: True, "violations": ev.violations, "seeds": list(seeds)},
                         negative=t.negative, payload=t.payload)

        run.timings[label] = run.timings.get(label, 0.0) + time.perf_counter() - t0
        return {"original": as_trial(original), "best": as_trial(best)}

    def _restore_media(self, run: _Run) -> None:
        """Put back media files deleted from a stored run: from the cache, else re-rendered."""
        missing = self.store.missing_media(run.run_id)
        if not missing:
            return
        by_index = {t.index: t for t in run.trials}
        rerender = []
        for m in missing:
            data = self.evaluator.media_bytes(m["cache_key"], m["frame"]) if m["cache_key"] else None
            if data is not None:
                self.store.restore_media(m["path"], data)
            elif m["trial"] in by_index:
                rerender.append(m)
        if rerender:
            from mmopt.store import media_to_pngs

            gens = self.generator.generate([by_index[m["trial"]].candidate for m in rerender],
                                           [m["seed"] for m in rerender])
            for m, g in zip(rerender, gens):
                self.store.restore_media(m["path"], media_to_pngs(g.media)[m["frame"]])
        log.warning("run %s: restored %d missing media file(s)", run.run_id, len(missing))

    # ------------------------------------------------------------ utilities
    def evaluate_prompts(self, intent: str, prompts: Sequence[Candidate | str], seeds: Sequence[int]) -> list[Trial]:
        """Score ``prompts`` on ``seeds`` (e.g. held-out seeds) through the cache, without the store."""
        seeds = self._check_seeds(seeds, "seeds")
        evs = self.evaluator.evaluate_all(list(prompts), seeds, intent)
        return [Trial(i, -1, ev.candidate.text, ev.evaluation.objective, ev.evaluation.means,
                      ev.evaluation.feasible, ev.evaluation.feedback, negative=ev.candidate.negative,
                      payload=ev.candidate.payload, meta={"seeds": seeds}) for i, ev in enumerate(evs)]
