"""Does a rewriter distilled from the loop recover the loop's gain in one pass?

1. Run the offline default loop (rule edits, successive halving, honest selection,
   intent constraints) on K ShapesWorld *training-distribution* captions (never a
   paraphrase of a benchmark prompt), stored in OUT/store;
2. export the (intent -> winner) pairs whose winner beat the original on seeds that chose
   nothing (``mmopt export-pairs``), and LoRA-tune the embedded SmolLM2 on them
   (``mmopt distill``);
3. on the 50 held-out benchmark prompts, rewrite each once (greedy) with the distilled
   rewriter, and with the base SmolLM2 given the same request (the control); a rewrite
   that fails the intent check counts as the original; score the result with DSG on the
   sample-efficiency benchmark's 8 held-out seeds;
4. compare with the loop's own held-out gain over best-of-N at 128 images (read from the
   sample-efficiency benchmark's results.jsonl).

    python benchmarks/distill_onepass.py --out runs/distill --loop-results runs/sample_eff/results.jsonl

One pass costs one LLM call and no search image; the loop spends 128 images per prompt.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

HELDOUT_BASE = 1_000_000  # the sample-efficiency benchmark's held-out seeds


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/distill", help="output folder (store, pairs, adapter, results)")
    p.add_argument("--train-prompts", type=int, default=40, help="training-distribution prompts for the loop")
    p.add_argument("--budget", type=int, default=64, help="images per training prompt")
    p.add_argument("--steps", type=int, default=60, help="LoRA steps")
    p.add_argument("--batch", type=int, default=4, help="LoRA batch")
    p.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate")
    p.add_argument("--prompts", type=int, default=50, help="held-out benchmark prompts to rewrite")
    p.add_argument("--heldout", type=int, default=8, help="held-out seeds")
    p.add_argument("--loop-results", default=None, help="the sample-efficiency results.jsonl to compare with")
    p.add_argument("--cache", default=None, help="a cache.sqlite to share (e.g. the sample-efficiency one)")
    p.add_argument("--torch-threads", type=int, default=1)
    return p.parse_args(argv)


def _mean_se(v):
    return statistics.fmean(v), (statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0)


def main(argv=None) -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mmopt import registry
    from mmopt.cache import Cache
    from mmopt.distill import OnePassProposer, adapted_llm, export_pairs, read_pairs, train_lora, training_prompts
    from mmopt.optimizer import Budget, Optimizer
    from mmopt.presets import build_optimizer, load_preset
    from mmopt.shapesworld.grammar import benchmark_prompts
    from mmopt.store import Store

    args = _parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = {"args": vars(args)}

    # 1. the loop on training-distribution prompts (stored: resumable, exportable)
    t0 = time.time()
    store = Store(out / "store")
    opt = build_optimizer(load_preset("offline"), store=store, max_images=args.budget, heldout_seeds=None)
    for i, prompt in enumerate(training_prompts(args.train_prompts)):
        r = opt.run(prompt)
        print(f"[train {i + 1}/{args.train_prompts}] estimate gain "
              f"{(r.estimate or r.original.objective) - r.original.objective:+.3f} {prompt!r} -> {r.best.prompt!r}",
              flush=True)
    log["loop_s"] = round(time.time() - t0, 1)

    # 2. pairs and the adapter
    info = export_pairs(store, out / "pairs.jsonl")
    pairs = read_pairs(out / "pairs.jsonl")
    log["pairs"] = info
    print(f"pairs: {info}", flush=True)
    adapter = out / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        t0 = time.time()
        log["lora"] = train_lora(pairs, adapter, steps=args.steps, batch=args.batch, lr=args.lr)
        log["lora_s"] = round(time.time() - t0, 1)
        print(f"lora: {log['lora']}", flush=True)

    # 3. one pass on the held-out benchmark prompts, distilled and base rewriters
    cache = Cache(args.cache or (out / "cache.sqlite"))
    gen = registry.create("generator", "offline:t2i", max_batch=64)
    dsg = registry.create("scorer", "offline:dsg")
    check = registry.create("scorer", "intent:shapes")
    judge = Optimizer(gen, [dsg], "edits", cache=cache, budget=Budget(iterations=1))
    heldout = list(range(HELDOUT_BASE, HELDOUT_BASE + args.heldout))
    rewriters = {"distilled": OnePassProposer(adapted_llm(str(adapter))),
                 "base": OnePassProposer(registry.create("llm", "smollm2", engine="transformers"))}
    rows = []
    for i, prompt in enumerate(benchmark_prompts(args.prompts)):
        row = {"prompt": prompt, "original": judge.evaluate_prompts(prompt, [prompt], heldout)[0].objective}
        for name, rw in rewriters.items():
            [text] = rw.rewrite(prompt)[:1] or [prompt]
            ok = check.check(text, prompt)["ok"]
            chosen = text if ok else prompt
            row[name] = {"rewrite": text, "intent_ok": ok,
                         "heldout": judge.evaluate_prompts(prompt, [chosen], heldout)[0].objective}
        rows.append(row)
        print(f"[{i + 1}/{args.prompts}] orig {row['original']:.3f} distilled {row['distilled']['heldout']:.3f} "
              f"({'ok' if row['distilled']['intent_ok'] else 'intent fails'}) {row['distilled']['rewrite']!r}",
              flush=True)
    (out / "onepass.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # 4. the comparison: one pass vs the original (= best-of-N's held-out score) and vs the loop
    summary = {}
    for name in rewriters:
        d = [r[name]["heldout"] - r["original"] for r in rows]
        summary[name] = {"gain": _mean_se(d), "wins": sum(x > 1e-9 for x in d), "ties": sum(abs(x) <= 1e-9 for x in d),
                         "losses": sum(x < -1e-9 for x in d), "intent_ok": sum(r[name]["intent_ok"] for r in rows)}
    if args.loop_results:
        loop = {}
        for line in Path(args.loop_results).read_text().splitlines():
            r = json.loads(line)
            if r["method"] == "edits/halving":
                loop[r["prompt"]] = next(row for row in r["rows"] if row["budget"] == 128)
        common = [r for r in rows if r["prompt"] in loop]
        if common:
            loop_gain = statistics.fmean(loop[r["prompt"]]["heldout"] - r["original"] for r in common)
            one = statistics.fmean(r["distilled"]["heldout"] - r["original"] for r in common)
            summary["loop_128"] = {"gain": loop_gain, "prompts": len(common),
                                   "recovered": (one / loop_gain) if loop_gain > 0 else None}
    log["summary"] = summary
    (out / "summary.json").write_text(json.dumps(log, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
