"""``mmopt distill PAIRS.jsonl ADAPTER_DIR``: LoRA-tune the embedded SmolLM2 into a one-pass rewriter."""
from __future__ import annotations

from mmopt.commands._options import positive_float, positive_int

HELP = "LoRA-tune the embedded SmolLM2 on exported pairs (a one-pass rewriter: --proposer onepass:DIR)"


def add_arguments(p) -> None:
    p.add_argument("pairs", help="a JSONL file from mmopt export-pairs")
    p.add_argument("adapter", help="the folder to write the adapter (safetensors) into")
    p.add_argument("--steps", type=positive_int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch", type=positive_int, default=8, help="examples per step (default 8)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from mmopt.commands._options import progress_bar
    from mmopt.distill import read_pairs, train_lora

    pairs = read_pairs(args.pairs)
    if not pairs:
        raise ValueError(f"{args.pairs} holds no pairs; export some with mmopt export-pairs")
    bar = progress_bar(args.steps, "distilling", unit="step", disable=args.no_progress)
    report = train_lora(pairs, args.adapter, steps=args.steps, batch=args.batch, lr=args.lr, rank=args.rank,
                        seed=args.seed, progress=bar)
    bar.close()
    print(f"adapter:   {report['adapter']} ({report['examples']} pairs, {report['steps']} steps, loss "
          f"{report['loss_first']:.3f} -> {report['loss_last']:.3f})")
    print(f"use it:    mmopt optimize PROMPT --preset offline --proposer onepass:{report['adapter']}")
    return 0
