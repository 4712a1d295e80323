"""The studio's logic, without the UI: sessions, runs, picks, exports (``mmopt app`` wires it to Gradio).

Everything goes through the core: a run is :func:`mmopt.presets.build_optimizer`
+ :meth:`Optimizer.run` in the one store (``OUT``), its iterations stream
through the optimizer's callbacks, Stop is a callback raising
:class:`~mmopt.errors.StopRequested` (the run is stored as interrupted and
Continue resumes it), pinned and hand-edited candidates enter through the
``queue`` proposer, human picks through the ``human`` scorer, must-include /
must-exclude terms through the ``terms`` scorer as a hard constraint.

Sessions: every browser session (or ``gradio_client``) has a workspace token;
its runs are named ``w<token>-<hash>`` and the run browser lists only the
runs of the workspace, so concurrent sessions never see each other's runs or
images (typing an earlier token reopens that workspace). Models are loaded
once per process (the registry) and shared by every session; their calls are
serialised by one lock (a pipeline's scheduler is not safe to drive from two
threads), so sessions interleave call by call.

A studio "run" may have several segments: Continue after a finished run, or
after new picks, starts a new store run whose first proposals are the
previous segment's best candidates (plus pinned and edited ones) through the
queue proposer; their images come from the cache, only the changed scores
(the new picks) are computed.
"""
from __future__ import annotations

import json
import os
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mmopt.errors import StopRequested

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PROMPT_CHARS = 1000
TOKEN_RE = re.compile(r"^[a-f0-9]{12}$")
CARRY_OVER = 3  # best candidates a new segment starts from

MODEL_LOCK = threading.RLock()  # one model call at a time in this process (see the module docstring)


# --------------------------------------------------------------------------- input checks

def check_prompt(text: Any, what: str = "prompt") -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the {what} is empty: type what you want to see, e.g. 'a red circle left of a blue square'")
    text = " ".join(text.split())
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"the {what} has {len(text)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    return text


def check_token(token: Any) -> str:
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise ValueError("a workspace token is 12 lowercase hex digits (shown under 'Workspace')")
    return token


def new_token() -> str:
    return secrets.token_hex(6)


_PATHLIKE = re.compile(r"(^[/~.\\])|(\.\.)|(^[A-Za-z]:\\)")


def check_no_paths(obj: Any, where: str = "the preset") -> None:
    """ValueError when a value the user edited names a file or folder on the server, or a URL.

    Hub ids (``org/model``) and registry names are fine; ``/x``, ``~/x``, ``./x``,
    ``..`` are not: nothing typed in the studio reaches a path outside its runs.
    """
    if isinstance(obj, str):
        rest = obj.split(":", 1)[1] if ":" in obj and not obj.startswith(("/", "~", ".")) else obj
        if _PATHLIKE.search(rest) or _PATHLIKE.search(obj):
            raise ValueError(f"{where} may not name files on the server, got {obj!r}; use registry names "
                             "and hub ids (e.g. 'clip:ViT-B-32/openai')")
        if "://" in obj:  # e.g. an LLM endpoint: the server would connect wherever a visitor says
            raise ValueError(f"{where} may not name network addresses, got {obj!r}; set them in a preset "
                             "file on the server (mmopt app --preset my.json)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_no_paths(v, where)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            check_no_paths(v, where)


def check_image_upload(path: str | os.PathLike, max_bytes: int = MAX_UPLOAD_BYTES):
    """The uploaded file as a PIL image, after checking its size and its type *by content*."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"the upload is {size / 1e6:.1f} MB; at most {max_bytes / 1e6:.0f} MB are accepted")
    try:
        with Image.open(p) as im:
            fmt = im.format
            im.verify()
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"the upload is a {fmt} image; accepted: {', '.join(IMAGE_FORMATS)}")
        im = Image.open(p)
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"the image is {im.width}x{im.height}; at most {MAX_IMAGE_PIXELS} pixels are accepted")
        im.load()
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"the upload is not an image (PNG, JPEG or WebP): {type(e).__name__}") from None


def check_preset_upload(path: str | os.PathLike, max_bytes: int = 256 * 1024) -> dict:
    """An uploaded preset file: small JSON with only preset keys and no server paths."""
    from mmopt.presets import PRESET_KEYS

    p = Path(path)
    if p.stat().st_size > max_bytes:
        raise ValueError(f"the preset file is {p.stat().st_size} bytes; at most {max_bytes} are accepted")
    try:
        preset = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the preset file is not JSON text: {e}") from None
    if not isinstance(preset, dict):
        raise ValueError("a preset file is a JSON object")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"the preset has unknown keys {sorted(unknown)}; allowed: {sorted(PRESET_KEYS)}")
    check_no_paths(preset, "an uploaded preset")
    return preset


def caption_from_image(image) -> str:
    """Image-to-prompt seeding for ShapesWorld: the detector's objects as a caption."""
    from mmopt.shapesworld.detect import detect

    objs = sorted(detect(image.resize((64, 64))), key=lambda o: o.x)
    if not objs:
        raise ValueError("no ShapesWorld object was found in the image; type a prompt instead")
    words = [f"a {o.colour} {o.shape}" for o in objs[:4]]
    return words[0] if len(words) == 1 else " to the left of ".join(words[:2]) + (
        "" if len(words) == 2 else ", " + ", ".join(words[2:]))


# --------------------------------------------------------------------------- serialised models

class Serialized:
    """A component whose model calls take :data:`MODEL_LOCK`; everything else (its config,
    hence its identity and cache keys) is the wrapped component's."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def config(self) -> dict:
        from mmopt.component import describe

        return describe(self._inner)

    def generate(self, *a, **k):
        with MODEL_LOCK:
            return self._inner.generate(*a, **k)

    def generate_chunks(self, *a, **k):
        chunks = getattr(self._inner, "generate_chunks", None)
        if chunks is None:
            yield self.generate(*a, **k)
            return
        it = chunks(*a, **k)
        while True:
            with MODEL_LOCK:
                chunk = next(it, None)
            if chunk is None:
                return
            yield chunk

    def score(self, *a, **k):
        with MODEL_LOCK:
            return self._inner.score(*a, **k)

    def propose(self, *a, **k):
        with MODEL_LOCK:
            return self._inner.propose(*a, **k)


def serialize_models(opt) -> None:
    """Route ``opt``'s model calls through :data:`MODEL_LOCK` (identities unchanged)."""
    opt.generator = Serialized(opt.generator)
    opt.scorers = [Serialized(s) for s in opt.scorers]
    opt.proposer = Serialized(opt.proposer)
    opt.evaluator.generator = opt.generator
    opt.evaluator.scorers = list(opt.scorers)


# --------------------------------------------------------------------------- options and state

@dataclass
class RunOptions:
    """What the user set for a run (checked by :meth:`Studio.spec`)."""

    prompt: str
    preset: str = "offline"
    preset_edits: dict = field(default_factory=dict)   # preset keys the user edited (JSON)
    iterations: int | None = None
    candidates: int | None = None
    seeds: int | None = None
    proposer: str | None = None
    negative: str = ""
    must_include: tuple[str, ...] = ()
    must_exclude: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    human_weight: float = 0.0


@dataclass
class Session:
    """One browser session's state (kept by Gradio per session; never shared)."""

    token: str = field(default_factory=new_token)
    runs: list[str] = field(default_factory=list)        # store run ids, oldest first
    pinned: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)       # hand-edited candidates for the next run
    picks: list[dict] = field(default_factory=list)
    options: RunOptions | None = None
    active: Any = None                                   # the running QueueProposer (live edits)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def current(self) -> str | None:
        return self.runs[-1] if self.runs else None


def run_best(trials: list, summary: dict | None):
    """A finished run's winner as the run chose it (after an honest selection on fresh seeds the
    winner need not be the best on the search seeds); while it runs, the best trial so far."""
    from mmopt.optimizer import choose_best

    index = (summary or {}).get("best_index")
    return next((t for t in trials if t.index == index), None) or choose_best(trials)


def winner_point(trials: list, summary: dict | None) -> tuple[int, float] | None:
    """(iteration, fresh-seed objective) of a run's winner after an honest selection, where the
    score curve marks it; None when the run made no selection (or has not finished)."""
    row = next((r for r in (summary or {}).get("selection") or [] if r.get("winner")), None)
    if row is None:
        return None
    return run_best(trials, summary).iteration, float(row["fresh"])


def parse_terms(text: str | None) -> tuple[str, ...]:
    """Comma- or newline-separated terms."""
    return tuple(t.strip() for t in re.split(r"[,\n]", text or "") if t.strip())


class Studio:
    """Shared by every session of one app: the output folder, its store, the presets.

    >>> studio = Studio("studio-runs")                                  # doctest: +SKIP
    >>> s = Session(); events = list(studio.run(s, RunOptions("a red circle", iterations=2)))  # doctest: +SKIP
    """

    def __init__(self, out: str | os.PathLike, preset: str = "offline"):
        from mmopt.presets import load_preset
        from mmopt.store import Store

        self.out = Path(out).resolve()
        self.store = Store(self.out)
        load_preset(preset)  # fails now on a bad name
        self.default_preset = preset
        self.studio_dir = self.out / "studio"
        self.studio_dir.mkdir(exist_ok=True)

    def presets(self) -> list[str]:
        """The shipped presets and the one the server was started with (which may be a file)."""
        from mmopt.presets import available_presets

        return list(dict.fromkeys([*available_presets(), self.default_preset]))

    # ---- what a run is ----------------------------------------------------
    def spec(self, options: RunOptions, picks: list[dict]):
        """The checked RunSpec of ``options`` (a bad value: ValueError before anything loads)."""
        from mmopt.presets import load_preset, resolve

        if options.preset not in self.presets():
            raise ValueError(f"unknown preset {options.preset!r}; available: {', '.join(self.presets())}")
        preset = load_preset(options.preset)
        check_no_paths(options.preset_edits, "the edited preset")
        preset.update(options.preset_edits)
        from mmopt import registry

        scorers = list(preset.get("scorers") or [])
        constraints = list(preset.get("constraints") or [])
        # equal weights when the preset gives none; added scorers get their own weight
        weights = dict(preset.get("weights") or {registry.parse_spec("scorer", s)[0]: 1.0 for s in scorers})
        if options.must_include or options.must_exclude:
            scorers.append({"name": "terms", "kwargs": {"include": list(options.must_include),
                                                        "exclude": list(options.must_exclude)}})
            weights["terms"] = 0.0  # a hard constraint, not a score to maximise
            constraints.append({"scorer": "terms", "min": 1.0})
        if options.human_weight > 0:
            scorers.append({"name": "human", "kwargs": {"picks": list(picks)}})
            weights["human"] = float(options.human_weight)
        generator = preset["generator"]
        if options.negative.strip():
            name, kwargs = registry.parse_spec("generator", generator)
            generator = {"name": name, "kwargs": {**kwargs, "negative_prompt": check_prompt(options.negative,
                                                                                            "negative prompt")}}
        preset.update(scorers=scorers, weights=weights, constraints=constraints, generator=generator)
        return resolve(preset, iterations=options.iterations, candidates=options.candidates, seeds=options.seeds,
                       proposer=options.proposer or None)

    def _optimizer(self, session: Session, options: RunOptions, queued: list[str], callbacks):
        from dataclasses import replace

        from mmopt.presets import build_optimizer

        spec = self.spec(options, session.picks)
        spec = replace(spec, proposer={"name": "queue", "kwargs": {"inner": spec.proposer, "queued": queued}})
        if queued:
            # a candidate the user typed or pinned is rendered and shown even when a text-only constraint
            # (the intent check, the drift guard) rejects it: it is then marked infeasible, not hidden
            spec = replace(spec, prescreen=False)
        opt = build_optimizer(spec, store=self.store, callbacks=callbacks, protected=options.protect)
        queue_proposer = opt.proposer
        serialize_models(opt)
        return opt, queue_proposer

    def run_id_for(self, session: Session, options: RunOptions, opt) -> str:
        from mmopt.cache import content_key

        return f"w{session.token}-{content_key(options.prompt, opt.config())[:12]}"

    # ---- running ----------------------------------------------------------
    def run(self, session: Session, options: RunOptions, *, carry_over: bool = False) -> Iterator[dict]:
        """Run (or continue) a search; yields ``{"event", "run_id", ...}`` as it goes.

        Events: "started", "trial", "iteration", "done" (with "result"), "stopped",
        "error" (with "message"). Runs on a worker thread; this generator relays.
        """
        options.prompt = check_prompt(options.prompt)
        queued = list(dict.fromkeys(session.edits + session.pinned))
        if carry_over and session.current:
            prev = self.store.load_trials(session.current)
            best = sorted((t for t in prev if t.feasible and t.index > 0), key=lambda t: -t.objective)[:CARRY_OVER]
            queued = list(dict.fromkeys(queued + [t.prompt for t in best]))
        events: queue.Queue = queue.Queue()
        session.stop.clear()

        def callback(event, **info):
            if event == "trial":
                events.put({"event": "trial", "index": info["trial"].index})
            elif event == "iteration":
                events.put({"event": "iteration", "iteration": info["iteration"]})
            if session.stop.is_set() and event in ("trial", "iteration"):
                raise StopRequested("stopped from the studio")

        opt, qp = self._optimizer(session, options, queued, [callback])
        run_id = self.run_id_for(session, options, opt)
        session.options = options
        session.edits = []
        if run_id not in session.runs:
            session.runs.append(run_id)
        else:  # the same run again (continue after stop): it resumes; keep it last
            session.runs.remove(run_id)
            session.runs.append(run_id)
        self._write_meta(session, run_id, options)
        session.active = qp

        def work():
            try:
                result = opt.run(options.prompt, run_id=run_id)
                events.put({"event": "done", "result": result})
            except StopRequested:
                events.put({"event": "stopped"})
            except BaseException as e:  # shown to the user; the run is stored as failed
                events.put({"event": "error", "message": f"{type(e).__name__}: {e}"})
            finally:
                events.put(None)

        thread = threading.Thread(target=work, name=f"studio-{run_id}", daemon=True)
        thread.start()
        yield {"event": "started", "run_id": run_id}
        while True:
            ev = events.get()
            if ev is None:
                break
            ev["run_id"] = run_id
            yield ev
        thread.join()
        session.active = None

    def stop(self, session: Session) -> None:
        session.stop.set()

    def add_candidate(self, session: Session, text: str) -> str:
        """Queue a hand-edited candidate: into the running search, else for the next run."""
        text = check_prompt(text, "candidate")
        if session.active is not None:
            session.active.push([text])
            return f"added to the running search: {text}"
        session.edits.append(text)
        return f"queued for the next run: {text}"

    def pin(self, session: Session, text: str) -> None:
        text = check_prompt(text, "candidate")
        if text not in session.pinned:
            session.pinned.append(text)

    def add_pick(self, session: Session, winner: str, loser: str | None = None, vote: int | None = None) -> dict:
        """A pairwise pick (``winner`` over ``loser``) or a thumb (``vote`` +1/-1 on ``winner``),
        stored with the current run (``runs/<id>/human_picks.jsonl``)."""
        from mmopt.scorers.human import _check_pick

        pick = {"winner": winner, "loser": loser} if loser is not None else {"prompt": winner, "vote": vote}
        pick = _check_pick(pick, len(session.picks))
        session.picks.append(pick)
        if session.current:
            path = self.store.run_dir(session.current) / "human_picks.jsonl"
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**pick, "time": time.time()}) + "\n")
        return pick

    def rewrite_only(self, options: RunOptions, n: int) -> list[str]:
        """N candidate prompts from the preset's proposer, before anything renders."""
        import random

        from mmopt import registry
        from mmopt.types import SearchState

        options.prompt = check_prompt(options.prompt)
        spec = self.spec(options, [])
        context = registry.RunContext(llm=spec.llm, cache=None, store=None)
        proposer = registry.create("proposer", spec.proposer, context=context, reuse=False)
        state = SearchState(intent=options.prompt, iteration=1, trials=[], history=[], rng=random.Random(0),
                            protected=tuple(options.protect))
        with MODEL_LOCK:
            raw = proposer.propose(state, n)
        from mmopt.types import Candidate

        return list(dict.fromkeys(Candidate.of(c).text for c in raw))[:n]

    # ---- the store, per workspace -----------------------------------------
    def _write_meta(self, session: Session, run_id: str, options: RunOptions) -> None:
        d = self.store.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / "studio.json").write_text(json.dumps({"workspace": session.token, "options": vars(options)},
                                                  default=list, indent=1), encoding="utf-8")

    def owner(self, run_id: str) -> str | None:
        try:
            meta = json.loads((self.store.run_dir(run_id) / "studio.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta.get("workspace")

    def runs_of(self, token: str) -> list[dict]:
        """The stored runs of workspace ``token``, newest first."""
        check_token(token)
        prefix = f"w{token}-"
        rows = [r for r in self.store.list_runs() if r["run_id"].startswith(prefix) and self.owner(r["run_id"]) == token]
        return rows[::-1]

    def check_access(self, session: Session, run_id: str) -> str:
        """``run_id`` when it belongs to the session's workspace, else ValueError."""
        from mmopt.store import check_run_id

        check_run_id(run_id)
        if not run_id.startswith(f"w{session.token}-") or self.owner(run_id) != session.token:
            raise ValueError(f"run {run_id!r} is not in this workspace")
        return run_id

    # ---- views of one run -------------------------------------------------
    def view(self, run_id: str) -> dict:
        """Everything the UI shows of a run, read from the store (so a reopened run looks the same)."""
        from mmopt.apps.report import word_diff_html

        try:
            info = self.store.get_run(run_id)
        except ValueError:  # the run's thread has not opened it in the store yet
            info = {"status": "starting", "intent": "", "summary": None}
        trials = self.store.load_trials(run_id)
        view = {"run_id": run_id, "status": info["status"], "intent": info["intent"], "trials": trials,
                "gallery": [], "best": None, "original": None, "diff": "", "summary": info.get("summary")}
        if not trials:
            return view
        best, original = run_best(trials, info.get("summary")), next(t for t in trials if t.index == 0)
        view.update(best=best, original=original, diff=word_diff_html(original.prompt, best.prompt))
        for t in trials:
            for g in self.store.load_generations(run_id, t.index):
                for p in g["paths"][:1]:
                    if p not in g["missing"]:
                        sc = ", ".join(f"{k.split(':')[-1]} {v:.2f}" for k, v in g["scores"].items())
                        view["gallery"].append((str(self.out / p), f"#{t.index} seed {g['seed']}: {sc}"))
        return view

    def trajectory_image(self, run_id: str) -> str | None:
        """The score curve as a PNG in the run's folder (None without trials or matplotlib)."""
        from mmopt.apps.report import _figure

        trials = self.store.load_trials(run_id)
        fig = _figure()
        if not trials or fig is None:
            return None
        from mmopt.optimizer import choose_best

        ax = fig.add_subplot(1, 1, 1)
        its = sorted({t.iteration for t in trials})
        ax.scatter([t.iteration for t in trials], [t.objective for t in trials], s=14, alpha=0.6,
                   label="trials (search seeds)")
        ax.plot(its, [choose_best([t for t in trials if t.iteration <= i]).objective for i in its],
                color="tab:green", marker="o", label="best so far (search seeds)")
        # after an honest selection the winner is the best on fresh seeds, which is what the star
        # in the studio marks: show it with that score, not its (optimistic) search-seed one
        try:
            point = winner_point(trials, self.store.get_run(run_id).get("summary"))
        except ValueError:
            point = None
        if point is not None:
            ax.scatter([point[0]], [point[1]], marker="*", s=160, color="tab:orange", zorder=3,
                       label="winner (fresh seeds)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective")
        ax.set_xticks(its)
        path = self.store.run_dir(run_id) / "studio" / "trajectory.png"
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path, dpi=80, bbox_inches="tight")
        return str(path)

    def comparison_grid(self, run_id: str, extra: list[str] = ()) -> str | None:
        """Original vs each candidate on the same seeds (rows: candidates, columns: seeds), a PNG."""
        from PIL import Image, ImageDraw

        trials = self.store.load_trials(run_id)
        if not trials:
            return None
        order = sorted(trials, key=lambda t: (t.index != 0, t.prompt not in extra, -t.objective))[:8]
        rows = []
        for t in order:
            gens = self.store.load_generations(run_id, t.index)
            ims = [Image.open(self.out / g["paths"][0]).convert("RGB") for g in gens if g["paths"]
                   and g["paths"][0] not in g["missing"]]
            rows.append((t, ims))
        side = 96
        ncol = max(len(ims) for _, ims in rows) or 1
        label_h = 14
        grid = Image.new("RGB", (ncol * side, len(rows) * (side + label_h)), "white")
        draw = ImageDraw.Draw(grid)
        for r, (t, ims) in enumerate(rows):
            y = r * (side + label_h)
            draw.text((2, y), f"#{t.index} {t.objective:.3f} {t.prompt[:ncol * 14]}", fill="black")
            for c, im in enumerate(ims):
                grid.paste(im.resize((side, side), Image.NEAREST), (c * side, y + label_h))
        path = self.store.run_dir(run_id) / "studio" / "compare.png"
        path.parent.mkdir(exist_ok=True)
        grid.save(path)
        return str(path)

    def export(self, run_id: str) -> list[str]:
        """The best prompt (.txt), its images with prompt and scores in the PNG metadata, and a
        JSON of the run, in ``runs/<id>/export/``; their paths."""
        from mmopt.apps.batch import export_trial_images, write_atomic

        info = self.store.get_run(run_id)
        trials = self.store.load_trials(run_id)
        if not trials:
            raise ValueError(f"run {run_id} has no finished trial to export yet")
        best = run_best(trials, info.get("summary"))
        d = self.store.run_dir(run_id) / "export"
        d.mkdir(exist_ok=True)
        write_atomic(d / "best_prompt.txt", best.prompt + "\n")
        images = export_trial_images(self.store, run_id, best, "best", d, info["intent"])
        doc = {"run_id": run_id, "intent": info["intent"], "status": info["status"], "summary": info["summary"],
               "best": {"prompt": best.prompt, "negative": best.negative, "objective": best.objective,
                        "scores": best.scores},
               "trials": [{"index": t.index, "iteration": t.iteration, "prompt": t.prompt, "negative": t.negative,
                           "objective": t.objective, "scores": t.scores, "feasible": t.feasible,
                           "failed_questions": t.failed_questions()} for t in trials]}
        write_atomic(d / "run.json", json.dumps(doc, indent=1, default=str))
        return [str(d / "best_prompt.txt"), *images, str(d / "run.json")]
