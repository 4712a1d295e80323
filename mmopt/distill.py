"""Distil the loop into a one-pass rewriter: export (intent -> best prompt) pairs, LoRA-tune SmolLM2.

The loop finds, per prompt, a rewrite that scores better; a rewriter trained on
those pairs (as Fast Prompt Alignment and Prompt-A-Video do) rewrites a new
prompt in one LLM call and no images. Three steps, each a library function and
a CLI command:

1. :func:`export_pairs` (``mmopt export-pairs``): every finished run of a store
   whose winner beat the original becomes one JSONL row, ``{"intent",
   "chosen", "rejected", "gain", "estimate", "heldout_gain", "run_id"}`` (SFT
   data is ``intent -> chosen``; DPO data adds ``rejected``, the original);
2. :func:`train_lora` (``mmopt distill``): LoRA (``peft``) on the embedded
   SmolLM2-135M, whose GGUF transformers dequantises into torch weights; the
   loss is on the rewrite's tokens only; the adapter is saved as safetensors;
3. :func:`adapted_llm` (registry ``llm`` name ``adapted:<adapter dir>``) loads
   the base plus the adapter as a chat LLM, and the ``onepass`` proposer
   (:class:`OnePassProposer`) asks it once per prompt.

``import mmopt.distill`` stays light: torch, transformers and peft load inside
the functions that need them.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmopt.component import Configurable
from mmopt.types import Candidate, SearchState

__all__ = ["ONEPASS_TEMPLATE", "export_pairs", "read_pairs", "train_lora", "adapted_llm", "OnePassProposer",
           "onepass_from_name"]

#: The one-pass request: what the distilled rewriter is trained on and asked.
ONEPASS_TEMPLATE = "Rewrite this prompt so a text-to-image model shows exactly what it asks for: {intent}"


# ----------------------------------------------------------------------------- 1. pairs

def export_pairs(store: Any, path: str | os.PathLike, *, min_gain: float = 0.0, use: str = "estimate",
                 progress: Any = None) -> dict:
    """Write one JSONL row per finished run of ``store`` whose winner beat the original.

    ``use``: which gain decides: ``"estimate"`` (the winner's score on seeds that chose
    nothing minus the original's search-seed score, when the run had an honest selection;
    else the held-out gain, else the search gain), ``"heldout"`` or ``"search"``. Rows whose
    gain is not above ``min_gain`` are skipped. Returns ``{"runs", "written", "skipped"}``.
    """
    from mmopt.store import Store

    if use not in ("estimate", "heldout", "search"):
        raise ValueError(f"use must be 'estimate', 'heldout' or 'search', got {use!r}")
    store = store if isinstance(store, Store) else Store(store, readonly=True)
    runs = [r for r in store.list_runs() if r.get("status") == "finished"]
    written = skipped = 0
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for run in runs:
            summary = run.get("summary") or {}
            gain = _gain(summary, use)
            best, original = summary.get("best_prompt"), run.get("intent")
            if progress is not None:
                progress.update(1)
            if not best or gain is None or gain <= min_gain or best == run.get("intent") or \
                    not summary.get("feasible", True):
                skipped += 1
                continue
            row = {"intent": run["intent"], "chosen": best, "chosen_negative": summary.get("best_negative"),
                   "rejected": original, "gain": gain, "estimate": summary.get("estimate"),
                   "heldout_gain": summary.get("heldout_gain"), "search_gain": summary.get("gain"),
                   "run_id": run["run_id"]}
            f.write(json.dumps(row) + "\n")
            written += 1
    return {"runs": len(runs), "written": written, "skipped": skipped}


def _gain(summary: dict, use: str) -> float | None:
    if use == "search":
        return summary.get("gain")
    if use == "heldout":
        return summary.get("heldout_gain")
    if summary.get("estimate") is not None:
        return summary["estimate"] - summary.get("original_objective", 0.0)
    return summary.get("heldout_gain", summary.get("gain"))


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """The rows of a pairs file, each with ``intent`` and ``chosen`` (a bad row is one clear error)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("intent"), str) or \
                    not isinstance(row.get("chosen"), str):
                raise ValueError(f"{path}:{n}: a pair needs 'intent' and 'chosen' strings, got {str(row)[:80]}")
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- 2. LoRA

def _base_model(gguf: str | None = None):
    """(tokenizer, torch model) of the embedded SmolLM2 GGUF (or ``gguf``), dequantised to fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmopt.llm.gguf import embedded_smollm2_path

    path = Path(gguf or embedded_smollm2_path())
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    return tok, model


def _example(tok, intent: str, chosen: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat example and its labels (-100 outside the rewrite)."""
    messages = [{"role": "user", "content": ONEPASS_TEMPLATE.format(intent=intent)}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(chosen + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def train_lora(pairs: Sequence[dict], out_dir: str | os.PathLike, *, steps: int = 200, batch: int = 8,
               lr: float = 1e-3, rank: int = 8, alpha: int = 16, seed: int = 0, gguf: str | None = None,
               progress: Any = None) -> dict:
    """LoRA-tune SmolLM2 on ``intent -> chosen`` pairs; save the adapter (safetensors) in ``out_dir``.

    Returns ``{"steps", "examples", "loss_first", "loss_last", "adapter"}``. Seeded: the same
    pairs and settings give the same adapter on the CPU.
    """
    import torch

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        from mmopt.errors import MissingExtraError

        raise MissingExtraError("peft", "distill", "LoRA distillation") from e
    if not pairs:
        raise ValueError("no pairs to train on: export some with mmopt export-pairs first")
    for key, v, low in (("steps", steps, 1), ("batch", batch, 1), ("rank", rank, 1), ("alpha", alpha, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{key} must be an int >= {low}, got {v!r}")
    # 1. the base model and the adapter, seeded
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok, model = _base_model(gguf)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    examples = [_example(tok, p["intent"], p["chosen"]) for p in pairs]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = []
    model.train()
    # 2. steps over shuffled mini-batches, padded on the right
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch:
            order += rng.sample(range(len(examples)), len(examples))
        idx, order = order[:batch], order[batch:]
        width = max(len(examples[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            x, y = examples[i]
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    # 3. the adapter alone, as safetensors (with what it was trained on)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    report = {"steps": steps, "examples": len(examples), "batch": batch, "lr": lr, "rank": rank, "alpha": alpha,
              "seed": seed, "loss_first": sum(losses[:10]) / len(losses[:10]),
              "loss_last": sum(losses[-10:]) / len(losses[-10:]), "adapter": str(out)}
    (out / "mmopt_distill.json").write_text(json.dumps(report, indent=1))
    return report


# ----------------------------------------------------------------------------- 3. the one-pass rewriter

def adapted_llm(rest: str, **kw: Any):
    """Registry factory ``llm`` ``"adapted:<adapter dir>"``: the embedded SmolLM2 with a LoRA adapter merged,
    as a chat LLM (transformers engine). Its identity includes the adapter's content fingerprint."""
    from mmopt.fingerprint import dir_fingerprint
    from mmopt.llm.base import ChatLLM
    from mmopt.llm.gguf import embedded_smollm2_path
    from mmopt.llm.hf import TransformersBackend

    adapter = os.path.expanduser(rest)
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise ValueError(f"no LoRA adapter in {adapter!r} (expected adapter_config.json; train one with mmopt distill)")
    try:
        from peft import PeftModel
    except ImportError as e:
        from mmopt.errors import MissingExtraError

        raise MissingExtraError("peft", "distill", "the distilled rewriter") from e

    class AdaptedBackend(TransformersBackend):
        """The transformers engine over SmolLM2 with the adapter merged in."""

        def __init__(self):
            path = Path(embedded_smollm2_path())
            super().__init__(str(path.parent), gguf_file=path.name, device=kw.get("device", "cpu"))
            self.lm = PeftModel.from_pretrained(self.lm, adapter).merge_and_unload().eval()
            self.adapter = {"adapter": dir_fingerprint(adapter)}
            self.model = self.model + f"+lora@{self.adapter['adapter']}"

        def config(self) -> dict:
            return {**super().config(), **self.adapter}

    return ChatLLM(AdaptedBackend(), cache=kw.get("cache"), max_retries=0)


class OnePassProposer(Configurable):
    """One LLM call rewrites the intent (the distilled rewriter's request, :data:`ONEPASS_TEMPLATE`).

    The first candidate is the greedy rewrite (temperature 0); with ``n > 1`` the rest are
    samples at ``temperature``. Later iterations ask again from the same request (the
    rewriter sees no history: it is meant to work in one pass).
    """

    name = "onepass"

    def __init__(self, llm: Any, *, temperature: float = 0.7, max_tokens: int = 64):
        if not callable(getattr(llm, "chat", None)):
            raise TypeError(f"llm must have a chat method (the LLM protocol), got {type(llm).__name__}")
        self.llm, self.temperature, self.max_tokens = llm, float(temperature), int(max_tokens)
        self.register_config(llm=llm, temperature=self.temperature, max_tokens=self.max_tokens,
                             template=ONEPASS_TEMPLATE)
        self.last_stats: dict = {}

    def rewrite(self, intent: str, *, n: int = 1, seed: int = 0) -> list[str]:
        """``n`` rewrites of ``intent``: the greedy one first."""
        from mmopt.llm.base import chat

        messages = [{"role": "user", "content": ONEPASS_TEMPLATE.format(intent=intent)}]
        out = chat(self.llm, messages, n=1, temperature=0.0, max_tokens=self.max_tokens, seed=seed, stop=["\n"])
        if n > 1:
            out += chat(self.llm, messages, n=n - 1, temperature=self.temperature, max_tokens=self.max_tokens,
                        seed=seed, stop=["\n"])
        return [" ".join(t.strip().strip('"').split()) for t in out if t.strip()]

    def propose(self, state: SearchState, n: int) -> list[Candidate]:
        texts = self.rewrite(state.intent, n=n, seed=state.rng.randrange(2**31))
        self.last_stats = {"llm_calls": 1 if n == 1 else 2}
        seen = state.seen_prompts()
        return [Candidate(t) for t in dict.fromkeys(texts) if t not in seen][:n]


def onepass_from_name(rest: str = "", *, context: Any = None, llm: Any = None, **kw: Any) -> OnePassProposer:
    """Registry factory: ``"onepass:<adapter dir>"`` (the distilled rewriter) or ``"onepass"`` with ``llm=``."""
    from mmopt import registry

    if rest:
        if llm is not None:
            raise ValueError("give the adapter in the name ('onepass:<dir>') or llm=, not both")
        llm = registry.create("llm", f"adapted:{rest}")
    elif llm is None:
        llm = context.get_llm("onepass") if context is not None and context.llm is not None else \
            registry.create("llm", "smollm2")
    elif isinstance(llm, (str, dict)):
        llm = registry.create("llm", llm)
    return OnePassProposer(llm, **kw)


def training_prompts(n: int, seed: int = 0, objects: Iterable[int] = (2, 3, 4)) -> list[str]:
    """``n`` distinct ShapesWorld *training-distribution* captions (never a benchmark paraphrase)."""
    from mmopt.shapesworld.grammar import training_caption

    rng = random.Random(f"distill-{seed}")
    sizes = list(objects)
    out: list[str] = []
    while len(out) < n:
        c = training_caption(rng, sizes[len(out) % len(sizes)])
        if c not in out:
            out.append(c)
    return out
