"""What the LLM costs the offline loop, and what each cut saves, in one run.

On ShapesWorld (the shipped generator, detector DSG + CLIP as in the offline
preset, the embedded SmolLM2-135M through llama.cpp) every configuration gets
the same image budget per prompt and its own empty cache, interleaved prompt
by prompt so the machine's load hits all alike:

* ``best-of-N``: the original prompt on N seeds (no LLM): the yardstick;
* ``opt2i/legacy``: the OPT2I request as it was before this benchmark's
  changes (the old meta-prompt order, 60 tokens per requested prompt + 40,
  no stop strings, 400-character feedback in a block of its own, every prompt evaluated from
  scratch, llama.cpp on half the cores), on today's decoding code;
* ``opt2i/list``: today's default (stable prefix first, so it is reused; a
  token cap per revision; a stop where the list's next item would start, or
  as soon as the reply's finished items hold the revisions the proposer keeps;
  the best trials' remarks on their history lines; the free cores);
* ``opt2i/list+whole``, ``opt2i/list+append+whole``: the same, decoding every reply
  to its end (``stop_early=False``): the same proposals, more tokens;
* ``opt2i/parallel``: the same, with the n revisions asked as n one-prompt
  replies decoded together as parallel sequences;
* ``opt2i/parallel+lookahead``: the same, with the LLM writing the next
  iteration's prompts while the current ones render (``Optimizer(lookahead=True)``):
  the proposals are conditioned on a history one iteration older, so they
  differ from the serial run's;
* ``opt2i/list+append+lookahead``: lookahead where the render waits while llama.cpp reads
  the prompt on every core, then renders beside its decoding (``Optimizer(lend_cores=None)``,
  the default on a machine without an accelerator); ``...+beside`` reads the prompt on the
  one core the render leaves free (``lend_cores=False``): the same proposals either way;
* ``opt2i/parallel+append``: the parallel replies of a request decode as two batches on
  two cores at once (``LlamaCppBackend(lanes=None)``, the default);
  ``...+onelane`` as one batch on one core (``lanes=1``): the same proposals with flash
  attention; with plain attention (llama.cpp on a CPU, see ``LlamaCppEngine``) a reply
  decoded in the second lane can differ in its last bits, so the runs part ways;
* ``opt2i/list+append``, ``opt2i/parallel+append``: the same two requests under the
  ``append`` strategy (OPT2I's top-10, frozen between compactions and shown in trial
  order, so each request's meta-prompt is the last one plus new lines at its end and
  llama.cpp re-reads only those): the history differs from top-10's, so the
  proposals do too;
* ``opt2i/parallel+append+flash``: the same as ``opt2i/parallel+append`` with llama.cpp's
  flash attention on (``LlamaCppBackend(flash_attn=True)``, as before the engine chose
  plain attention on a CPU): the two kernels round differently, so the proposals differ;
* ``...+fill``: OPT2I as the offline preset runs it (``--preset offline --proposer opt2i``):
  the intent check and drift guard screen each rewrite before it renders (``prescreen``)
  and the meaning-keeping rule edits fill what the LLM left short (``fallback="edits"``),
  so every iteration renders its 4 candidates and 128 images take 8 requests, not the
  13-16 that partly usable replies cost; the proposals differ (the edits are among them);
* ``...+lookahead+fill+pending``: the prompts still rendering are listed unscored in the
  meta-prompt (``OPT2IProposer(show_pending=True)``), as before the appended layout left them
  out: each such line changes once scored, so the next request re-reads it; the proposals differ;
* ``...+spare2``: each request asks for two parallel replies more than it needs and keeps the
  first usable ones (``OPT2IProposer(spare=2)``), so fewer iterations are left short and fewer
  requests are made for the same images; the proposals differ;
* ``...+short``: each parallel reply (one revision) capped at 3 tokens per word of the request
  (``OPT2IProposer(tokens_per_word=3)``) instead of the default 4 per content word + 24: SmolLM2's
  replies mostly run to the cap, so the decode is shorter; the proposals differ (a long reply
  is cut sooner);
* ``concepts``: concept-level refinement (one list request per proposal);
* ``textgrad``: textual gradients (a critique, then an edit, then a paraphrase:
  three requests per proposal).

Per configuration it prints the wall time per prompt, the time spent waiting
on the LLM, and per LLM call the prompt tokens (and how many were reused from
the cache), the generated tokens and decode steps, and prefill/decode seconds
(llama.cpp's own share, timed around its calls). The target: OPT2I at 128
images <= 3x the wall time of best-of-N.

    python benchmarks/llm_cost.py --prompts 4                  # ~5-15 min on 2 cores
    python benchmarks/llm_cost.py --prompts 2 --budget 32      # smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# The meta-prompt as it was before the prefix-first reorder (for the legacy configuration).
LEGACY_TEMPLATE = (
    "Task: improve a prompt for a text-to-image model so that its images show exactly what the user asked for. "
    "A scorer rates each prompt's images against the user's request (higher is better).\n"
    "Style: $style, under $max_tokens tokens.\n$protected_block\nPrompts tried so far, worst to best, with scores:\n"
    "$history\n$feedback_block\nWrite $n new prompts for the image \"$intent\". Keep every object, count, colour and "
    "position of the request, add concrete visual detail, and make each prompt different from the ones above. "
    "Reply with a numbered list only.\n"
)
CONFIGS = ("best-of-N", "opt2i/legacy", "opt2i/list+whole", "opt2i/list", "opt2i/parallel", "opt2i/parallel+lookahead",
           "opt2i/list+append+whole", "opt2i/list+append", "opt2i/parallel+append+onelane", "opt2i/parallel+append",
           "opt2i/list+append+lookahead+beside", "opt2i/list+append+lookahead", "opt2i/parallel+append+fill",
           "opt2i/list+append+lookahead+fill", "opt2i/parallel+append+lookahead+fill",
           "opt2i/parallel+append+lookahead+fill+beside", "opt2i/parallel+append+lookahead+fill+pending",
           "opt2i/parallel+append+lookahead", "opt2i/parallel+append+spare2", "opt2i/parallel+append+lookahead+spare2",
           "opt2i/parallel+append+lookahead+short", "opt2i/parallel+append+lookahead+short+spare2",
           "opt2i/parallel+append+lookahead+fill+short",
           "opt2i/parallel+append+flash", "concepts", "textgrad")
# configurations that propose what their twin without the suffix does (+onelane: with flash attention only)
TWINS = ("+whole", "+beside", "+onelane")


class _NoStop:
    """The LLM without stop strings (the legacy request): ``chat`` drops ``stop``."""

    def __init__(self, llm):
        self.llm, self.name = llm, llm.name

    def config(self):
        return self.llm.config()

    def chat(self, messages, *, n=1, temperature=1.0, max_tokens=256, seed=None):
        return self.llm.chat(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)

    @property
    def last_usage(self):
        return self.llm.last_usage


def _proposer(config: str, llm, legacy_llm, candidates: int):
    from mmopt.proposers.opt2i import OPT2IProposer

    if config == "opt2i/legacy":
        return OPT2IProposer(_NoStop(legacy_llm), template=LEGACY_TEMPLATE, max_tokens=60 * candidates + 40,
                             feedback_chars=400, inline_feedback=False)
    if config == "concepts":
        from mmopt.proposers.concepts import ConceptProposer

        return ConceptProposer(llm)
    if config == "textgrad":
        from mmopt.proposers.textgrad import TextGradProposer

        return TextGradProposer(llm)
    return OPT2IProposer(llm, mode=config.split("/")[1].split("+")[0], stop_early="+whole" not in config,
                         show_pending=True if "+pending" in config else None,
                         spare=2 if "+spare2" in config else 0, tokens_per_word=3 if "+short" in config else None)


def run_one(prompt: str, config: str, args, parts: dict) -> dict:
    from mmopt import registry
    from mmopt.cache import Cache
    from mmopt.optimizer import Budget, Optimizer

    gen, scorers = parts["generator"], parts["scorers"]
    t0 = time.perf_counter()
    if config == "best-of-N":
        from mmopt.evaluator import Evaluator
        from mmopt.objective import Objective

        ev = Evaluator(gen, scorers, parts["objective"] or Objective.for_scorers(scorers), cache=Cache(":memory:"))
        ev.evaluate_all([prompt], list(range(args.budget)), prompt)
        return {"config": config, "prompt": prompt, "seconds": time.perf_counter() - t0, "llm_wait": 0.0,
                "calls": []}
    # each run its own request memo over the shared model: no configuration is answered from
    # another's replies (the model's prompt cache carries over, as in one process)
    from mmopt.llm.base import ChatLLM

    own = {k: ChatLLM(parts[k].backend, max_retries=parts[k].max_retries) for k in ("llm", "legacy_llm")}
    if "+flash" in config:  # the same model with llama.cpp's flash attention on
        if "flash_llm" not in parts:
            from mmopt.llm.gguf import LlamaCppBackend

            parts["flash_llm"] = LlamaCppBackend(parts["llm"].backend.path, flash_attn=True)
        own["llm"] = ChatLLM(parts["flash_llm"], max_retries=parts["llm"].max_retries)
    proposer = _proposer(config, own["llm"], own["legacy_llm"], args.candidates)
    calls = []
    fill = "+fill" in config  # the offline preset's screen and rule-edit fallback
    opt = Optimizer(gen, scorers, proposer, objective=parts["fill_objective" if fill else "objective"],
                    cache=Cache(":memory:"), seeds=args.seeds, candidates=args.candidates,
                    budget=Budget(iterations=1000, images=args.budget),
                    lookahead="+lookahead" in config, strategy="append" if "+append" in config else None,
                    lend_cores=False if "+beside" in config else None, prescreen=fill,
                    fallback=registry.create("proposer", "edits", reuse=False) if fill else None)
    inner = proposer.propose
    llm = own["legacy_llm"] if config == "opt2i/legacy" else own["llm"]

    def recording(state, n):  # one row per propose call: what the LLM did for it (the LLM's usage counters)
        before = dict(llm.usage)
        out = inner(state, n)
        used = {k: v - before.get(k, 0) for k, v in llm.usage.items() if k != "threads"}
        calls.append({"llm_calls": proposer.last_stats.get("llm_calls", 0), **used})
        return out

    proposer.propose = recording
    screened = [0]  # rewrites the prescreen set aside (+fill)
    screen = opt._screened

    def counting(run, admitted, fn, meta):
        kept = screen(run, admitted, fn, meta)
        screened[0] += len(admitted) - len(kept)
        return kept

    opt._screened = counting
    backend = llm.backend
    lanes = getattr(backend, "lanes", None)  # llama.cpp's: the +onelane twin decodes on one core
    if "+onelane" in config:
        backend.lanes = 1
    try:
        res = opt.run(prompt)
    finally:
        if hasattr(backend, "lanes"):
            backend.lanes = lanes
    return {"config": config, "prompt": prompt, "seconds": time.perf_counter() - t0,
            "llm_wait": res.timings["propose"], "render_waited": res.timings.get("lent_cores", 0.0),
            "images": res.images, "calls": calls,
            "trials": len(res.trials), "prompts": [t.prompt for t in res.trials],
            "fallback_trials": sum(t.meta.get("origin") == "fallback" for t in res.trials),
            "screened": screened[0]}


def summarise(rows: list[dict]) -> str:
    by = {c: [r for r in rows if r["config"] == c] for c in CONFIGS}
    base = statistics.fmean(r["seconds"] for r in by["best-of-N"]) if by["best-of-N"] else None
    out = ["| configuration | s / prompt | waiting on the LLM | x best-of-N | LLM calls / prompt | prompt tokens "
           "(reused) / call | new tokens / call | decode steps / call | prefill s / call | decode s / call |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for c, rs in by.items():
        if not rs:
            continue
        sec = statistics.fmean(r["seconds"] for r in rs)
        wait = statistics.fmean(r["llm_wait"] for r in rs)
        calls = [k for r in rs for k in r["calls"]]
        n_calls = sum(k.get("llm_calls", 1) for k in calls) / len(rs)

        def per_call(key):
            vals = [k.get(key, 0) for k in calls]
            total = sum(k.get("llm_calls", 1) for k in calls)
            return sum(vals) / total if total else 0.0

        ratio = f"x{sec / base:.1f}" if base else "-"
        if c == "best-of-N":
            out.append(f"| {c} | {sec:.1f} | - | x1.0 | 0 | - | - | - | - | - |")
        else:
            out.append(f"| {c} | {sec:.1f} | {wait:.1f} s ({100 * wait / sec:.0f}%) | {ratio} | {n_calls:.1f} | "
                       f"{per_call('prompt_tokens'):.0f} ({per_call('reused_tokens'):.0f}) | "
                       f"{per_call('completion_tokens'):.0f} | {per_call('decode_steps'):.0f} | "
                       f"{per_call('prefill_s'):.2f} | {per_call('decode_s'):.2f} |")
    # stopping early and lending cores must not change what is proposed: compare each twin pair
    for c, rs in by.items():
        for suffix in TWINS:
            twin = by.get(c.replace(suffix, ""))
            if suffix in c and rs and twin:
                pairs = list(zip(sorted(rs, key=lambda r: r["prompt"]), sorted(twin, key=lambda r: r["prompt"])))
                same = sum(a["prompts"] == b["prompts"] for a, b in pairs)
                out.append(f"\n{c.replace(suffix, '')} vs {c}: the same trials (prompts, in order) on {same} of "
                           f"{len(pairs)} prompts")
    for c, rs in by.items():
        if "+fill" in c and rs:
            new = sum(r["trials"] - 1 for r in rs)
            out.append(f"\n{c}: {sum(r['fallback_trials'] for r in rs)} of {new} rendered candidates came from the "
                       f"rule-edit fallback; {sum(r['screened'] for r in rs)} rewrites were screened out before rendering")
    for c, rs in by.items():
        if rs and "+lookahead" in c and "+beside" not in c:
            out.append(f"\n{c}: the render waited {statistics.fmean(r['render_waited'] for r in rs):.1f} s "
                       f"per prompt while llama.cpp read its prompts on every core")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4, help="ShapesWorld benchmark prompts")
    p.add_argument("--budget", type=int, default=128, help="images per prompt and configuration")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--llm", default="smollm2", help="the LLM of every configuration but the legacy one (a registry "
                   "name, e.g. gguf:/path/model.gguf)")
    p.add_argument("--out", default=None, help="write the rows (JSONL) and the table (.md) here")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise SystemExit(f"unknown configurations {bad}; expected some of {CONFIGS}")

    import os

    from mmopt import registry
    from mmopt.llm.gguf import embedded_smollm2_path, load_gguf
    from mmopt.objective import Constraint, Objective
    from mmopt.presets import load_preset
    from mmopt.shapesworld.grammar import benchmark_prompts

    preset = load_preset("offline")
    gen = registry.create("generator", preset["generator"])
    scorers = [registry.create("scorer", s) for s in preset["scorers"]]
    objective = Objective.for_scorers(scorers, preset.get("weights"))
    fill_objective = Objective.for_scorers(scorers, preset.get("weights"),
                                           [Constraint(**c) for c in preset["constraints"]])
    llm = registry.create("llm", args.llm)
    # the legacy request ran llama.cpp on half the cores
    legacy_llm = load_gguf(embedded_smollm2_path(), n_threads=max(1, (os.cpu_count() or 2) // 2), reuse_prefix=False)
    parts = {"generator": gen, "scorers": scorers, "objective": objective, "fill_objective": fill_objective,
             "llm": llm, "legacy_llm": legacy_llm}
    prompts = benchmark_prompts(args.prompts, seed=0)
    rows = []
    t_start = time.time()
    for i, prompt in enumerate(prompts):
        for c in configs:  # interleaved: a load change hits every configuration alike
            r = run_one(prompt, c, args, parts)
            rows.append(r)
            print(f"[{time.time() - t_start:6.0f}s] prompt {i + 1}/{len(prompts)} {c:15s} {r['seconds']:6.1f} s "
                  f"(LLM {r['llm_wait']:5.1f} s)", file=sys.stderr, flush=True)
    table = summarise(rows)
    print(f"{len(prompts)} ShapesWorld prompts, {args.budget} images each ({args.seeds} seeds, {args.candidates} "
          f"candidates per iteration), embedded SmolLM2-135M (llama.cpp), {os.cpu_count()} cores\n")
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
