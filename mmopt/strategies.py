"""Strategies: which trials the proposer sees, and what else the one loop should do.

The loop evaluates every candidate; a strategy decides what the next
proposal is conditioned on, and owns that history completely: proposers show
it as it is and never re-sort or re-filter it. The order is the one the
OPT2I meta-prompt uses: worst first, best last, with every infeasible trial
before every feasible one (so the last line is always the best trial that
meets the constraints, and a trial that broke one is never presented as the
best). Each trial carries its label (``Trial.status``) and feedback. A strategy may
also ask for another *layout* of the same trials in a text prompt (``layout``:
``"appended"`` shows them in the order they were tried; the default ``"ranked"``
shows the history's own order).

A strategy may decide more than the history. The loop in
:mod:`mmopt.optimizer` asks it, through optional hooks whose defaults keep the
plain behaviour (every new candidate on every search seed, the best by
:func:`mmopt.types.rank_key`):

* ``plan(view) -> Plan``: at the start of each iteration, which finished
  trials get more seeds (successive halving's survivors, a bandit's pulls),
  how many new candidates to ask for, and on how many seeds of the seed pool
  they are rendered;
* ``offspring(state, n)``: candidates the strategy makes itself (crossover of
  two parents), evaluated beside the proposer's;
* ``confirm`` / ``finalists(trials, k)``: honest selection. After the search
  the top ``k`` trials and the original are re-scored on *fresh* seeds
  (counted in the image budget) and the winner is the best on those.

Every trial draws its seeds from one pool in order (the search seeds first,
then further ones), so two trials with ``n`` seeds were rendered on the same
``n`` seeds and compare paired; ``Trial.meta["per_seed"]`` holds the
objective of each seed.

OPT2I conditions on the top-k trials so far (``TopKHistory``; ``AppendedHistory``
freezes that set between compactions so that a local LLM's meta-prompt only grows,
and sets ``layout = "appended"``: the proposer shows it in trial order); a beam keeps
fewer, stronger parents and forgets the rest (``BeamHistory``); successive
halving (``SuccessiveHalving``), a UCB bandit (``UCBBandit``) and an
evolutionary search (``Evolution``) spend seeds where they tell most. New
search methods are new strategies, not new loops.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from mmopt.clauses import clauses, join_clauses
from mmopt.component import Configurable
from mmopt.types import Candidate, SearchState, Trial, rank_key


@runtime_checkable
class Strategy(Protocol):
    name: str

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        """Trials to show the proposer, in display order (infeasible first, then feasible ascending)."""
        ...

    def config(self) -> dict: ...


# ----------------------------------------------------------------------------- what the loop asks

@dataclass(frozen=True)
class Plan:
    """What one iteration does besides asking the proposer.

    ``rescore``: ``(trial index, seeds)`` pairs: that trial is brought up to the first
    ``seeds`` seeds of the pool (only the missing ones render); ``new``: how many new
    candidates to ask for (None: the optimizer's ``candidates``); ``seeds``: how many
    seeds of the pool each new candidate gets (None: every search seed).

    >>> Plan.from_json(Plan(((3, 4),), new=8, seeds=1).to_json())
    Plan(rescore=((3, 4),), new=8, seeds=1)
    """

    rescore: tuple[tuple[int, int], ...] = ()
    new: int | None = None
    seeds: int | None = None

    def __post_init__(self):
        for item in self.rescore:
            if (not isinstance(item, tuple) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item) or item[1] < 1):
                raise ValueError(f"Plan.rescore must hold (trial index, seeds >= 1) pairs, got {item!r}")
        for name in ("new", "seeds"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "new" else 1)):
                raise ValueError(f"Plan.{name} must be None or an int >= {0 if name == 'new' else 1}, got {v!r}")

    def to_json(self) -> dict:
        return {"rescore": [list(r) for r in self.rescore], "new": self.new, "seeds": self.seeds}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(tuple((int(i), int(k)) for i, k in data.get("rescore", ())), data.get("new"), data.get("seeds"))


@dataclass(frozen=True)
class PlanView:
    """What ``Strategy.plan`` is told: the finished trials, the iteration, the sizes it plans within.

    ``search_seeds``: how many seeds a plain candidate gets; ``pool``: how many seeds the
    pool holds (the search seeds first); ``images_left``: images the search may still
    render (the confirmation's share is already set aside); ``candidates``: the
    optimizer's new candidates per iteration.
    """

    trials: tuple[Trial, ...]
    iteration: int
    search_seeds: int
    pool: int
    images_left: int | None
    candidates: int


def n_seeds(trial: Trial) -> int:
    """How many seeds ``trial`` was evaluated on (0 for a candidate screened out before rendering)."""
    seeds = trial.meta.get("seeds")
    return len(seeds) if isinstance(seeds, list) else 0


def per_seed(trial: Trial) -> list[float]:
    """The objective of each of ``trial``'s seeds, in pool order (the mean when not recorded)."""
    values = trial.meta.get("per_seed")
    if isinstance(values, list) and values:
        return [float(v) for v in values]
    return [float(trial.objective)] * max(1, n_seeds(trial))


def display_order(trials: Sequence[Trial]) -> list[Trial]:
    """``trials`` worst first, best last, infeasible before feasible (``rank_key`` ascending)."""
    return sorted(trials, key=rank_key)


def _top(trials: Sequence[Trial], k: int) -> list[Trial]:
    return sorted(trials, key=rank_key, reverse=True)[:k]


def _check_int(value: Any, name: str, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{' or None' if allow_none else ''}, got {value!r}")


class SearchStrategy(Configurable):
    """Base of the built-in strategies: the default hooks, and honest selection for any of them.

    ``confirm``: re-score the ``confirm`` best trials and the original on ``confirm_seeds``
    fresh seeds after the search and return the best on those (None: no confirmation,
    the best on the search seeds wins). The winner's own score is then measured on
    ``report_seeds`` further seeds (default: ``confirm_seeds``; 0: none), which picked
    nothing, so the score a run reports for its choice is not flattered by the choice
    (``Result.estimate``; when the original wins, its search-seed score, which chose
    nothing either). Subclasses call :meth:`_register` with their own
    settings; the confirmation settings join the record only when set, so a strategy
    without them keeps its identity (and its runs their ids).
    """

    name = "strategy"
    #: how the proposer should lay the history out in a text prompt: "ranked" (its own order,
    #: worst to best) or "appended" (the same trials in the order they were tried; see AppendedHistory)
    layout = "ranked"

    def __init__(self, *, confirm: int | None = None, confirm_seeds: int = 4, report_seeds: int | None = None):
        _check_int(confirm, "confirm (trials re-scored on fresh seeds)", 1, allow_none=True)
        _check_int(confirm_seeds, "confirm_seeds", 1)
        _check_int(report_seeds, "report_seeds", 0, allow_none=True)
        self.confirm = confirm
        self.confirm_seeds = confirm_seeds
        self.report_seeds = confirm_seeds if report_seeds is None else report_seeds

    def _register(self, **values: Any) -> None:
        if self.confirm is not None:
            values.update(confirm=self.confirm, confirm_seeds=self.confirm_seeds, report_seeds=self.report_seeds)
        self.register_config(**values)

    # the hooks, with the plain behaviour
    def plan(self, view: PlanView) -> Plan:
        """Every new candidate on every search seed; nothing re-scored."""
        return Plan()

    def offspring(self, state: SearchState, n: int) -> list[Candidate]:
        """No candidates of the strategy's own."""
        return []

    def estimate(self, trial: Trial, trials: Sequence[Trial]) -> float:
        """The value the strategy ranks ``trial`` by (its mean objective)."""
        return float(trial.objective)

    def finalists(self, trials: Sequence[Trial], k: int) -> list[Trial]:
        """The ``k`` feasible trials to confirm on fresh seeds (the original is added by the loop)."""
        pool = [t for t in trials if t.feasible and t.index != 0 and n_seeds(t) > 0]
        return sorted(pool, key=lambda t: (self.estimate(t, trials), -t.index), reverse=True)[:k]


class TopKHistory(SearchStrategy):
    """OPT2I's history: the ``k`` best trials so far (feasible ones rank first).

    OPRO's greedy search is the same with ``k=20`` (registry name ``greedy``).

    >>> ts = [Trial(i, 0, f"p{i}", o, {}) for i, o in enumerate([0.1, 0.5, 0.3])]
    >>> [t.prompt for t in TopKHistory(2).history(ts)]
    ['p2', 'p1']
    """

    name = "topk"

    def __init__(self, k: int = 10, **confirm: Any):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"history size k must be an int >= 1, got {k!r}")
        super().__init__(**confirm)
        self.k = k
        self._register(k=k)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        return display_order(_top(trials, self.k))


class AppendedHistory(SearchStrategy):
    """OPT2I's top-k history, chosen so that the meta-prompt only grows: best for a local LLM.

    A local LLM spends much of a rewrite request re-reading the meta-prompt, and it
    can reuse its cache only for the part that has not changed since the last
    request. A top-k history sorted worst to best changes from its first line as soon
    as a new trial ranks anywhere, so nearly all of it is read again each iteration.
    This strategy freezes the set instead: it shows the ``k`` best trials at the last
    *compaction* plus every trial since, and compacts each time ``k`` more trials have
    been scored (so it shows fewer than ``2k``; it depends on trial counts only, hence the same
    on resume). ``layout = "appended"`` asks the proposer to show these trials in the
    order they were tried: between compactions each request's history is the previous
    one with the new trials' lines at the end, and only those lines are read anew.

    The history is still returned in display order (worst to best, best last), as every
    strategy's is; only its layout in the meta-prompt differs.

    >>> ts = [Trial(i, 0, f"p{i}", o, {}) for i, o in enumerate([0.1, 0.5, 0.3, 0.2, 0.9])]
    >>> [t.prompt for t in AppendedHistory(2).history(ts)]      # the best 2 of the first 4, then p4
    ['p2', 'p1', 'p4']
    """

    name = "append"
    layout = "appended"

    def __init__(self, k: int = 10, **confirm: Any):
        _check_int(k, "history size k", 1)
        super().__init__(**confirm)
        self.k = k
        self._register(k=k)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        trials = sorted(trials, key=lambda t: t.index)
        cut = self.k * (len(trials) // self.k)  # the last compaction: the last multiple of k trials
        return display_order(_top(trials[:cut], self.k) + trials[cut:])


class BeamHistory(SearchStrategy):
    """A beam: only the ``width`` best trials of the *latest two iterations*.

    Older trials drop out even if good, so the proposer keeps moving away from
    the start instead of re-polishing the same early winners.
    """

    name = "beam"

    def __init__(self, width: int = 3, **confirm: Any):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"beam width must be an int >= 1, got {width!r}")
        super().__init__(**confirm)
        self.width = width
        self._register(width=width)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        if not trials:
            return []
        last = max(t.iteration for t in trials)
        recent = [t for t in trials if t.iteration >= last - 1]
        return display_order(_top(recent, self.width))


# ----------------------------------------------------------------------------- seeds where they tell most

def shrunk_mean(trial: Trial, prior: float, strength: float) -> float:
    """``trial``'s mean objective pulled towards ``prior`` as if ``strength`` seeds had scored it.

    One lucky seed must not outrank a candidate measured on four: with strength 4, a
    1-seed 1.0 against a prior of 0.6 counts as 0.68 (per-image scores vary far more
    between seeds than prompts differ, so a few seeds say little).
    """
    n = n_seeds(trial)
    return (n * float(trial.objective) + strength * prior) / (n + strength)


class _SeedAllocating(SearchStrategy):
    """Shared by the strategies that give trials different numbers of seeds.

    Ranks by the shrunk mean (``prior_strength`` pseudo-seeds at the mean of the
    feasible trials), shows the proposer the ``k`` best by that rank, and confirms
    on fresh seeds by default (a 1-seed score is no winner's score).
    """

    def __init__(self, *, k: int = 10, prior_strength: float = 4.0, confirm: int | None = 2,
                 confirm_seeds: int = 4, report_seeds: int | None = None):
        super().__init__(confirm=confirm, confirm_seeds=confirm_seeds, report_seeds=report_seeds)
        _check_int(k, "history size k", 1)
        if isinstance(prior_strength, bool) or not isinstance(prior_strength, (int, float)) or prior_strength < 0:
            raise ValueError(f"prior_strength must be a number >= 0, got {prior_strength!r}")
        self.k = k
        self.prior_strength = float(prior_strength)

    @staticmethod
    def _prior(trials: Sequence[Trial]) -> float:
        rendered = [t for t in trials if t.feasible and n_seeds(t) > 0]
        return sum(t.objective for t in rendered) / len(rendered) if rendered else 0.0

    def estimate(self, trial: Trial, trials: Sequence[Trial]) -> float:
        return shrunk_mean(trial, self._prior(trials), self.prior_strength)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        prior = self._prior(trials)

        def key(t: Trial) -> tuple:
            return (bool(t.feasible), shrunk_mean(t, prior, self.prior_strength), -t.index)

        return sorted(sorted(trials, key=key, reverse=True)[:self.k], key=key)



class SuccessiveHalving(_SeedAllocating):
    """Successive halving on seeds (asynchronous, as ASHA): a first look on few seeds, more for survivors.

    Rungs are ``min_seeds * eta**r`` seeds up to ``max_seeds`` (default: the search
    seeds). New candidates start on ``min_seeds``; at each iteration every trial in the
    top ``1/eta`` of those that reached its rung (compared on the same seeds: the rung's
    first seeds of each) is promoted to the next rung. ``new``: new candidates per
    iteration (None: the optimizer's ``candidates``). Promotions are paid first, then new
    candidates from what is left.

    >>> SuccessiveHalving(eta=2, min_seeds=1).rungs(4)
    [1, 2, 4]
    """

    name = "halving"

    def __init__(self, eta: int = 2, min_seeds: int = 1, max_seeds: int | None = None, new: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        _check_int(eta, "eta", 2)
        _check_int(min_seeds, "min_seeds", 1)
        _check_int(max_seeds, "max_seeds", 1, allow_none=True)
        _check_int(new, "new (candidates per iteration)", 1, allow_none=True)
        if max_seeds is not None and max_seeds < min_seeds:
            raise ValueError(f"max_seeds ({max_seeds}) must be >= min_seeds ({min_seeds})")
        self.eta, self.min_seeds, self.max_seeds, self.new = eta, min_seeds, max_seeds, new
        self._register(eta=eta, min_seeds=min_seeds, max_seeds=max_seeds, new=new, k=self.k,
                       prior_strength=self.prior_strength)

    def rungs(self, search_seeds: int) -> list[int]:
        top = self.max_seeds or search_seeds
        out, r = [], self.min_seeds
        while r < top:
            out.append(r)
            r *= self.eta
        return out + [top]

    def plan(self, view: PlanView) -> Plan:
        rungs = self.rungs(view.search_seeds)
        live = [t for t in view.trials if t.feasible and n_seeds(t) > 0]
        promote: dict[int, int] = {}
        # 1. per rung, the top 1/eta of the trials that reached it move up (best rung first)
        for r_low, r_high in reversed(list(zip(rungs, rungs[1:]))):
            reached = [t for t in live if n_seeds(t) >= r_low]
            quota = len(reached) // self.eta
            ranked = sorted(reached, key=lambda t: (sum(per_seed(t)[:r_low]) / r_low, -t.index), reverse=True)
            for t in ranked[:quota]:
                if n_seeds(t) < r_high and t.index not in promote:
                    promote[t.index] = r_high
        # 2. pay promotions first (best rung first), within the images left
        left = view.images_left
        by_index = {t.index: t for t in live}
        rescore = []
        for idx, k in sorted(promote.items(), key=lambda kv: (-kv[1], kv[0])):
            cost = k - n_seeds(by_index[idx])
            if left is not None and cost > left:
                continue
            rescore.append((idx, k))
            left = None if left is None else left - cost
        # 3. newcomers only while the best of them could still be brought to the top rung;
        #    near the end of the budget the best unfinished trials are finished instead
        new = self.new if self.new is not None else view.candidates
        start = min(self.min_seeds, view.pool)
        if left is not None:
            finish = self.eta * (rungs[-1] - start)
            new = min(new, max(0, (left - finish) // start))
            if new == 0:
                prior = self._prior(view.trials)
                planned = {idx for idx, _ in rescore}
                unfinished = sorted((t for t in live if n_seeds(t) < rungs[-1] and t.index not in planned),
                                    key=lambda t: (shrunk_mean(t, prior, self.prior_strength), -t.index),
                                    reverse=True)
                for t in unfinished:
                    cost = rungs[-1] - n_seeds(t)
                    if cost <= left:
                        rescore.append((t.index, rungs[-1]))
                        left -= cost
        return Plan(tuple(rescore), new=new, seeds=start)

    def finalists(self, trials: Sequence[Trial], k: int) -> list[Trial]:
        """The best trials that reached the top rung first (a 1-seed score is a first look only)."""
        top = max((n_seeds(t) for t in trials if t.index == 0), default=1)
        top = self.max_seeds or top
        pool = [t for t in trials if t.feasible and t.index != 0 and n_seeds(t) > 0]
        return sorted(pool, key=lambda t: (n_seeds(t) >= top, self.estimate(t, trials), -t.index), reverse=True)[:k]


class UCBBandit(_SeedAllocating):
    """A UCB1 bandit over candidates: each iteration ``pulls`` trials get one more seed.

    A trial's index is its shrunk mean plus ``c * sqrt(ln N / n)`` (``N`` seeds spent on
    all trials, ``n`` on this one); the ``pulls`` highest go up by one seed (up to
    ``max_seeds``, default twice the search seeds). New candidates start on ``min_seeds``.

    >>> UCBBandit(c=1.0).c
    1.0
    """

    name = "ucb"

    def __init__(self, c: float = 1.0, pulls: int = 4, min_seeds: int = 1, max_seeds: int | None = None,
                 new: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0:
            raise ValueError(f"c (exploration weight) must be a number >= 0, got {c!r}")
        _check_int(pulls, "pulls", 0)
        _check_int(min_seeds, "min_seeds", 1)
        _check_int(max_seeds, "max_seeds", 1, allow_none=True)
        _check_int(new, "new (candidates per iteration)", 1, allow_none=True)
        self.c, self.pulls, self.min_seeds, self.max_seeds, self.new = float(c), pulls, min_seeds, max_seeds, new
        self._register(c=self.c, pulls=pulls, min_seeds=min_seeds, max_seeds=max_seeds, new=new, k=self.k,
                       prior_strength=self.prior_strength)

    def plan(self, view: PlanView) -> Plan:
        cap = min(self.max_seeds or 2 * view.search_seeds, view.pool)
        arms = [t for t in view.trials if t.feasible and 0 < n_seeds(t) < cap]
        total = sum(n_seeds(t) for t in view.trials if t.feasible) or 1
        prior = self._prior(view.trials)

        def ucb(t: Trial) -> float:
            return shrunk_mean(t, prior, self.prior_strength) + self.c * math.sqrt(math.log(total) / n_seeds(t))

        budget = self.pulls if view.images_left is None else min(self.pulls, view.images_left)
        chosen = sorted(arms, key=lambda t: (ucb(t), -t.index), reverse=True)[:budget]
        new = self.new if self.new is not None else view.candidates
        return Plan(tuple((t.index, n_seeds(t) + 1) for t in chosen), new=new, seeds=min(self.min_seeds, view.pool))


# ----------------------------------------------------------------------------- evolution

def crossover(a: str, b: str, rng: random.Random) -> list[str]:
    """Children of two prompts that mix their clauses: uniform when they have as many
    clauses (slot by slot), one cut point in each otherwise. Distinct from both parents.

    >>> kids = crossover("a red circle, a blue square", "a scarlet disc and a blue box", random.Random(0))
    >>> all(k not in ("a red circle, a blue square", "a scarlet disc and a blue box") for k in kids)
    True
    """
    ca, cb = clauses(a), clauses(b)
    if not ca or not cb:
        return []
    kids: list[str] = []
    if len(ca) == len(cb):
        for _ in range(4):
            mask = [rng.random() < 0.5 for _ in ca]
            kids.append(join_clauses([x if m else y for x, y, m in zip(ca, cb, mask)]))
    else:
        for _ in range(4):
            i, j = rng.randint(1, len(ca)), rng.randint(0, len(cb) - 1)
            kids.append(join_clauses(ca[:i] + cb[j:]))
    parents = {" ".join(a.split()).rstrip("."), " ".join(b.split()).rstrip(".")}
    return [k for k in dict.fromkeys(kids) if k and k not in parents]


class Evolution(SearchStrategy):
    """An evolutionary search (as SPRIG, Plum, PromptQuine): a population, tournaments,
    mutation by the proposer, crossover of clauses by the strategy.

    The population is the ``population`` best feasible trials. The proposer's history
    is ``parents`` tournament winners (``tournament`` trials drawn, the best kept), so a
    history-editing proposer mutates them; ``offspring`` makes up to ``crossover``
    children per iteration from two tournament winners (clauses mixed, each child
    checked with ``state.screen`` when the loop provides one). Tournaments draw from an
    RNG seeded by ``seed`` and the number of trials: the same trials give the same parents.
    """

    name = "evolve"

    def __init__(self, population: int = 8, parents: int = 4, tournament: int = 2, crossover: int = 1,
                 seed: int = 0, **confirm: Any):
        super().__init__(**confirm)
        _check_int(population, "population", 2)
        _check_int(parents, "parents", 1)
        _check_int(tournament, "tournament", 1)
        _check_int(crossover, "crossover (children per iteration)", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.population, self.parents, self.tournament = population, parents, tournament
        self.n_crossover, self.seed = crossover, seed
        self._register(population=population, parents=parents, tournament=tournament, crossover=crossover, seed=seed)

    def _pop(self, trials: Sequence[Trial]) -> list[Trial]:
        return _top([t for t in trials if t.feasible and n_seeds(t) > 0], self.population)

    def _rng(self, trials: Sequence[Trial], what: str) -> random.Random:
        return random.Random(f"{self.seed}/{what}/{len(trials)}")

    def _winner(self, pop: list[Trial], rng: random.Random) -> Trial:
        drawn = [pop[rng.randrange(len(pop))] for _ in range(min(self.tournament, len(pop)))]
        return max(drawn, key=rank_key)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        pop = self._pop(trials)
        if not pop:
            return display_order(_top(trials, self.parents))
        rng = self._rng(trials, "parents")
        chosen = {self._winner(pop, rng).index: None for _ in range(self.parents)}
        by_index = {t.index: t for t in pop}
        return display_order([by_index[i] for i in chosen])

    def offspring(self, state: SearchState, n: int) -> list[Candidate]:
        pop = self._pop(state.trials)
        if len(pop) < 2 or self.n_crossover == 0:
            return []
        rng = self._rng(state.trials, "crossover")
        seen = state.seen_prompts()
        out: list[Candidate] = []
        for _ in range(4 * self.n_crossover):
            if len(out) >= min(n, self.n_crossover):
                break
            a, b = self._winner(pop, rng), self._winner(pop, rng)
            if a.index == b.index:
                continue
            for child in crossover(a.prompt, b.prompt, rng):
                cand = Candidate(child, a.negative)
                if child in seen or cand in out:
                    continue
                if state.screen is not None and state.screen(cand):
                    continue  # would break a constraint the loop checks on the text
                out.append(cand)
                break
        return out


# ----------------------------------------------------------------------------- TPE over discrete choices

class TPESearch(SearchStrategy):
    """Tree-structured Parzen estimation (optuna's TPE) over discrete edit choices, as DSPy's MIPRO
    searches instructions x demonstrations.

    Each candidate is a choice of *which* meaning-keeping rule edits
    (:mod:`mmopt.proposers.edits`) to apply, and to *which* of the ``parents`` best
    feasible trials; TPE learns from the scored choices which ones pay. The strategy
    makes every candidate itself (``offspring``); the proposer is asked only when TPE
    could not make enough new ones. The study is rebuilt from the stored trials at every
    iteration (their choices are in ``Trial.meta["tpe"]``) with a sampler seeded by
    ``seed`` and the iteration, so a resumed run asks exactly what the uninterrupted one
    did. ``startup``: random choices before TPE models them. Needs ``optuna``
    (``pip install 'mmopt[search]'``).
    """

    name = "tpe"

    def __init__(self, parents: int = 4, startup: int = 8, edits: Sequence[str] | None = None, seed: int = 0,
                 k: int = 10, **confirm: Any):
        super().__init__(**confirm)
        _check_int(parents, "parents", 1)
        _check_int(startup, "startup", 1)
        _check_int(k, "history size k", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        from mmopt.proposers.edits import EDITS, EditsProposer

        self.edit_names = tuple(e for e in (edits or EDITS) if e != "weight")
        bad = [e for e in self.edit_names if e not in EDITS]
        if bad or not self.edit_names:
            raise ValueError(f"edits must be a non-empty subset of {EDITS}, got {list(edits or [])}")
        self.editor = EditsProposer(edits=self.edit_names)
        self.parents, self.startup, self.seed, self.k = parents, startup, seed, k
        self._register(parents=parents, startup=startup, edits=list(self.edit_names), seed=seed, k=k,
                       editor=self.editor)

    def history(self, trials: Sequence[Trial]) -> list[Trial]:
        return display_order(_top(trials, self.k))

    def _space(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        space = {"parent": CategoricalDistribution(list(range(self.parents)))}
        space.update({e: CategoricalDistribution([0, 1]) for e in self.edit_names})
        return space

    def _study(self, trials: Sequence[Trial], iteration: int):
        try:
            import optuna
        except ImportError as e:
            from mmopt.errors import MissingExtraError

            raise MissingExtraError("optuna", "search", "the TPE strategy") from e
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=int(f"{self.seed}{iteration}") % (2**31),
                                             n_startup_trials=self.startup, multivariate=True, constant_liar=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        space = self._space()
        for t in trials:
            params = t.meta.get("tpe")
            if isinstance(params, dict) and n_seeds(t) > 0 and set(params) == set(space):
                study.add_trial(optuna.trial.create_trial(params=params, distributions=space,
                                                          value=float(t.objective) if t.feasible else 0.0))
        return study

    def offspring(self, state: SearchState, n: int) -> list:
        study = self._study(state.trials, state.iteration)
        space = self._space()
        parents = [t for t in reversed(state.history) if t.feasible] or [None]
        seen = set(state.seen_prompts())
        out: list = []
        for attempt in range(4 * n):
            if len(out) >= n:
                break
            trial = study.ask(space)
            params = dict(trial.params)
            parent = parents[min(params["parent"], len(parents) - 1)]
            text = parent.prompt if parent is not None else state.intent
            rng = random.Random(f"{self.seed}/{state.iteration}/{attempt}")
            applied = 0
            for e in self.edit_names:
                if params[e]:
                    new = self.editor.apply(e, text, rng)
                    if new is not None:
                        text, applied = new, applied + 1
            cand = Candidate(text, parent.negative if parent is not None else None)
            # a choice that made nothing new is told to TPE as worthless, so it asks elsewhere
            if not applied or text in seen or any(c == cand for c, _ in out) or \
                    (state.screen is not None and state.screen(cand)):
                study.tell(trial, 0.0)
                continue
            out.append((cand, {"tpe": params}))  # left running: the loop scores it, the next study learns it
        return out


STRATEGIES = {"topk": TopKHistory, "append": AppendedHistory, "beam": BeamHistory, "halving": SuccessiveHalving, "ucb": UCBBandit,
              "evolve": Evolution, "tpe": TPESearch}


def _int_arg(rest: str, what: str) -> int | None:
    if not rest:
        return None
    try:
        return int(rest)
    except ValueError as e:
        raise ValueError(f"{what} must be an integer, got {rest!r}") from e


def topk(rest: str = "", **kwargs) -> TopKHistory:
    """Registry factory for ``"topk"`` / ``"topk:5"``."""
    k = _int_arg(rest, "topk history size")
    return TopKHistory(k, **kwargs) if k is not None else TopKHistory(**kwargs)


def greedy(rest: str = "", **kwargs) -> TopKHistory:
    """Registry factory for ``"greedy"``: OPRO's sorted history of the 20 best (``"greedy:K"`` for K)."""
    k = _int_arg(rest, "greedy history size")
    return TopKHistory(k or kwargs.pop("k", 20), **kwargs)


def append(rest: str = "", **kwargs) -> AppendedHistory:
    """Registry factory for ``"append"`` / ``"append:10"`` (k)."""
    k = _int_arg(rest, "append history size")
    return AppendedHistory(k, **kwargs) if k is not None else AppendedHistory(**kwargs)


def beam(rest: str = "", **kwargs) -> BeamHistory:
    """Registry factory for ``"beam"`` / ``"beam:3"``."""
    w = _int_arg(rest, "beam width")
    return BeamHistory(w, **kwargs) if w is not None else BeamHistory(**kwargs)


def halving(rest: str = "", **kwargs) -> SuccessiveHalving:
    """Registry factory for ``"halving"`` / ``"halving:3"`` (eta)."""
    eta = _int_arg(rest, "successive halving's eta")
    return SuccessiveHalving(eta, **kwargs) if eta is not None else SuccessiveHalving(**kwargs)


def ucb(rest: str = "", **kwargs) -> UCBBandit:
    """Registry factory for ``"ucb"`` / ``"ucb:0.5"`` (the exploration weight c)."""
    if rest:
        try:
            kwargs["c"] = float(rest)
        except ValueError as e:
            raise ValueError(f"the UCB exploration weight must be a number, got {rest!r}") from e
    return UCBBandit(**kwargs)


def evolve(rest: str = "", **kwargs) -> Evolution:
    """Registry factory for ``"evolve"`` / ``"evolve:8"`` (population)."""
    pop = _int_arg(rest, "population size")
    return Evolution(pop, **kwargs) if pop is not None else Evolution(**kwargs)


def tpe(rest: str = "", **kwargs) -> TPESearch:
    """Registry factory for ``"tpe"`` / ``"tpe:4"`` (parents)."""
    parents = _int_arg(rest, "TPE parents")
    return TPESearch(parents, **kwargs) if parents is not None else TPESearch(**kwargs)
