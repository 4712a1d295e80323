"""``mmopt app``: the studio in Gradio, plus a small REST API on the same FastAPI server.

Layout of the page (elem ids in brackets, used by the browser test):
prompt [prompt], preset, Run [run-btn] / Stop / Continue; settings (iterations
[iterations], candidates, seeds, proposer, negative prompt, must-include /
must-exclude terms, protected spans, the weight of human picks, preset edits
as JSON, a preset upload, a reference image); the status [status], the best
prompt [best-prompt] with its word diff, a gallery of every candidate's images
with per-image scores [gallery], the candidates table with failed DSG
questions [candidates-table], the score curve, the same-seed comparison grid;
human picks (A vs B, thumbs); edit / pin a candidate; "rewrite only"; the run
browser [runs-table], reopen [open-run], downloads.

Programmatic use: the Gradio API (``gradio_client``)::

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    result = client.predict("a red circle left of a blue square", "offline", 2, 2, 2, "rules",
                            api_name="/optimize")
    result["best_prompt"], result["gain"]

and REST for tools that do not speak Gradio: ``POST /api/v1/optimize`` with
``{"prompt": ..., "preset": "offline", "iterations": 2}``, ``GET /api/v1/runs/{run_id}``
(the run's summary; REST runs live in their own workspace).

Files: Gradio serves only the output folder (``allowed_paths``); everything
else on the machine is refused.
"""
from __future__ import annotations

import html
import json
import threading
from pathlib import Path
from typing import Any
from mmopt.apps.studio import (MAX_UPLOAD_BYTES, RunOptions, Session, Studio, caption_from_image,
                               check_image_upload, check_preset_upload, check_token, parse_terms)

CSS = "#gallery img{image-rendering:pixelated} .mm-table td,.mm-table th{padding:2px 6px;border:1px solid #ddd}"
MAX_SESSIONS = 10_000


class Sessions:
    """Per-session state, server side; Gradio keeps only the workspace token per session."""

    def __init__(self):
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Session:
        with self._lock:
            if token and token in self._by_token:
                return self._by_token[token]
            s = Session(token=check_token(token)) if token else Session()
            if len(self._by_token) >= MAX_SESSIONS:
                self._by_token.pop(next(iter(self._by_token)))
            self._by_token[s.token] = s
            return s


# --------------------------------------------------------------------------- rendering

def candidates_html(trials, best=None) -> str:
    """The candidates table: every prompt escaped, its scores and its failed questions; a star on
    ``best`` (the run's winner; default: the best trial so far)."""
    if not trials:
        return "<p>No candidate yet.</p>"
    from mmopt.apps.studio import run_best

    best = best or run_best(trials, None)
    e = html.escape
    rows = ["<table class='mm-table'><tr><th>#</th><th>iter</th><th>prompt</th><th>objective</th><th>scores</th>"
            "<th>failed questions</th></tr>"]
    for t in trials:
        mark = " &#9733;" if t.index == best.index else ""
        failed = "<br>".join(f"{e(q)} ({f:.0%})" for q, f in t.failed_questions()[:6])
        bad = "" if t.feasible else "<br><i>breaks: " + e("; ".join(t.meta.get("violations", []))) + "</i>"
        scores = ", ".join(f"{e(k)} {v:.3f}" for k, v in t.scores.items())
        rows.append(f"<tr><td>{t.index}{mark}</td><td>{t.iteration}</td><td>{e(t.prompt)}{bad}</td>"
                    f"<td>{t.objective:.4f}</td><td>{scores}</td><td>{failed}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def runs_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>No runs in this workspace yet.</p>"
    e = html.escape
    out = ["<table class='mm-table'><tr><th>run id</th><th>status</th><th>trials</th><th>gain</th><th>prompt</th></tr>"]
    for r in rows:
        g = (r["summary"] or {}).get("gain")
        out.append(f"<tr><td><code>{e(r['run_id'])}</code></td><td>{e(r['status'])}</td><td>{r['trials']}</td>"
                   f"<td>{'' if g is None else f'{g:+.4f}'}</td><td>{e(r['intent'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def status_line(view: dict, note: str = "") -> str:
    t = view["trials"]
    best = view["best"]
    text = f"**{view['status']}** · run `{view['run_id']}` · {len(t)} candidates"
    if best is not None:
        text += f" · best objective {best.objective:.4f} (original {view['original'].objective:.4f})"
    return text + (f" · {note}" if note else "")


# --------------------------------------------------------------------------- the Gradio app

def build_app(studio: Studio):
    """The Gradio Blocks of the studio (launch it with :func:`serve`)."""
    import gradio as gr

    sessions = Sessions()

    def options_from(prompt, preset, iterations, candidates, seeds, proposer, negative, include, exclude, protect,
                     human_w, edits_json):
        try:
            edits = json.loads(edits_json) if (edits_json or "").strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"the preset edits are not JSON: {e.msg} (line {e.lineno})") from None
        if not isinstance(edits, dict):
            raise ValueError("the preset edits must be a JSON object, e.g. {\"seeds\": 2}")
        return RunOptions(prompt=prompt or "", preset=preset, preset_edits=edits,
                          iterations=int(iterations) if iterations else None,
                          candidates=int(candidates) if candidates else None, seeds=int(seeds) if seeds else None,
                          proposer=None if proposer in (None, "", "preset") else proposer,
                          negative=negative or "", must_include=parse_terms(include),
                          must_exclude=parse_terms(exclude), protect=parse_terms(protect),
                          human_weight=float(human_w or 0.0))

    def outputs_for(run_id: str | None, note: str = ""):
        if not run_id:
            return [note or "", "", "", [], "", None, None, "", gr.update(), gr.update()]
        v = studio.view(run_id)
        prompts = [t.prompt for t in v["trials"]]
        return [status_line(v, note), v["best"].prompt if v["best"] else "", v["diff"], v["gallery"],
                candidates_html(v["trials"], v["best"]), studio.trajectory_image(run_id), studio.comparison_grid(run_id),
                run_id, gr.update(choices=prompts), gr.update(choices=prompts)]

    def stream(token, carry, *fields):
        session = sessions.get(token)
        try:
            opts = options_from(*fields)
            events = studio.run(session, opts, carry_over=carry)
            first = next(events)
        except (ValueError, TypeError) as e:
            yield [f"**error:** {html.escape(str(e))}", *outputs_for(session.current)[1:], session.token]
            return
        run_id = first["run_id"]
        yield [*outputs_for(run_id, "started"), session.token]
        for ev in events:
            if ev["event"] in ("trial", "iteration"):
                yield [*outputs_for(run_id, f"iteration {ev.get('iteration', '…')}" if ev["event"] == "iteration"
                                    else f"candidate #{ev['index']} scored"), session.token]
            elif ev["event"] == "done":
                r = ev["result"]
                note = f"finished: gain {r.gain:+.4f}" + (f", held-out {r.heldout_gain:+.4f}" if r.heldout else "")
                yield [*outputs_for(run_id, note), session.token]
            elif ev["event"] == "stopped":
                yield [*outputs_for(run_id, "stopped (Continue resumes it)"), session.token]
            elif ev["event"] == "error":
                yield [*outputs_for(run_id, "error: " + html.escape(ev["message"])), session.token]

    def run_fn(token, *fields):
        yield from stream(token, False, *fields)

    def continue_fn(token, *fields):
        session = sessions.get(token)
        carry = not (session.current and studio.store.get_run(session.current)["status"] == "interrupted")
        yield from stream(token, carry, *fields)

    def stop_fn(token):
        if token:
            studio.stop(sessions.get(token))
        return "stopping after the current candidate…"

    def api_optimize(prompt, preset="offline", iterations=2, candidates=2, seeds=2, proposer="", token=None):
        """Run one search to the end; returns its summary as JSON (for gradio_client)."""
        session = sessions.get(token)
        opts = RunOptions(prompt=prompt, preset=preset, iterations=int(iterations), candidates=int(candidates),
                          seeds=int(seeds), proposer=proposer or None)
        result = None
        for ev in studio.run(session, opts):
            if ev["event"] == "done":
                result = ev["result"]
            elif ev["event"] == "error":
                raise gr.Error(ev["message"])
        v = studio.view(result.run_id)
        return {"run_id": result.run_id, "workspace": session.token, "intent": result.intent,
                "best_prompt": result.best_prompt, "gain": result.gain, "heldout_gain": result.heldout_gain,
                "trials": len(result.trials), "images": [Path(p).relative_to(studio.out).as_posix()
                                                          for p, _ in v["gallery"]]}, session.token

    def pick_fn(token, a, b, which):
        session = sessions.get(token)
        try:
            if which in ("A", "B"):
                if not a or not b or a == b:
                    raise ValueError("choose two different candidates as A and B")
                win, lose = (a, b) if which == "A" else (b, a)
                studio.add_pick(session, win, lose)
            else:
                if not a:
                    raise ValueError("choose candidate A first")
                studio.add_pick(session, a, vote=1 if which == "up" else -1)
        except ValueError as e:
            return f"**error:** {html.escape(str(e))}"
        return (f"{len(session.picks)} judgement(s) stored with the run; they enter the objective of the next "
                "run or Continue at the weight set under Settings")

    def add_fn(token, text):
        try:
            return html.escape(studio.add_candidate(sessions.get(token), text))
        except ValueError as e:
            return f"**error:** {html.escape(str(e))}"

    def pin_fn(token, text):
        session = sessions.get(token)
        try:
            studio.pin(session, text)
        except ValueError as e:
            return f"**error:** {html.escape(str(e))}"
        return "pinned: " + html.escape("; ".join(session.pinned))

    def rewrite_fn(token, n, *fields):
        try:
            opts = options_from(*fields)
            return "\n".join(studio.rewrite_only(opts, int(n or 4))), ""
        except (ValueError, TypeError) as e:
            return "", f"**error:** {html.escape(str(e))}"

    def queue_rewrites_fn(token, text):
        session = sessions.get(token)
        lines = [x for x in (text or "").splitlines() if x.strip()]
        try:
            for x in lines:
                studio.add_candidate(session, x)
        except ValueError as e:
            return f"**error:** {html.escape(str(e))}"
        return f"{len(lines)} candidate(s) queued: press Run to render them"

    def refresh_fn(token, typed):
        session = sessions.get(token)
        if typed and typed != session.token:
            try:
                session = sessions.get(check_token(typed.strip()))
            except ValueError as e:
                return f"**error:** {html.escape(str(e))}", gr.update(), token
        rows = studio.runs_of(session.token)
        return runs_html(rows), gr.update(choices=[r["run_id"] for r in rows]), session.token

    def open_fn(token, run_id):
        session = sessions.get(token)
        try:
            studio.check_access(session, run_id or "")
        except ValueError as e:
            return [f"**error:** {html.escape(str(e))}", *outputs_for(None)[1:]]
        if run_id in session.runs:
            session.runs.remove(run_id)
        session.runs.append(run_id)
        return outputs_for(run_id, "reopened")

    def export_fn(token):
        session = sessions.get(token)
        if not session.current:
            return None, "**error:** no run yet"
        try:
            return studio.export(session.current), "exported"
        except ValueError as e:
            return None, f"**error:** {html.escape(str(e))}"

    def upload_preset_fn(path):
        if not path:
            return gr.update(), ""
        try:
            preset = check_preset_upload(path)
        except (ValueError, OSError) as e:
            return gr.update(), f"**error:** {html.escape(str(e))}"
        return json.dumps(preset, indent=1), "preset loaded into the edits"

    def upload_image_fn(path):
        if not path:
            return gr.update(), ""
        try:
            image = check_image_upload(path)
            return caption_from_image(image), "prompt seeded from the image"
        except (ValueError, OSError) as e:
            return gr.update(), f"**error:** {html.escape(str(e))}"

    def init_fn(token):
        session = sessions.get(token)
        return session.token, session.token

    with gr.Blocks(title="mmopt studio") as demo:
        token = gr.State(None)
        gr.Markdown("# mmopt studio\nType a prompt, pick a preset, run: every candidate is rendered on the same "
                    "seeds and judged against what you typed.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", elem_id="prompt", scale=4,
                                placeholder="a red circle to the left of a blue square")
            preset = gr.Dropdown(studio.presets(), value=studio.default_preset, label="Preset", scale=1)
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary", elem_id="run-btn")
            stop_btn = gr.Button("Stop", elem_id="stop-btn")
            cont_btn = gr.Button("Continue", elem_id="continue-btn")
        with gr.Row():
            iterations = gr.Number(value=3, precision=0, minimum=1, maximum=50, label="Iterations",
                                   elem_id="iterations")
            candidates = gr.Number(value=None, precision=0, minimum=1, maximum=16, label="Candidates / iteration",
                                   elem_id="candidates")
            seeds = gr.Number(value=None, precision=0, minimum=1, maximum=16, label="Seeds", elem_id="seeds")
            proposer = gr.Radio(["preset", "opt2i", "rules"], value="preset", label="Proposer", elem_id="proposer")
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                negative = gr.Textbox(label="Negative prompt")
                include = gr.Textbox(label="Must include (comma separated)")
                exclude = gr.Textbox(label="Must exclude")
                protect = gr.Textbox(label="Protected spans")
            human_w = gr.Slider(0, 2, value=0, step=0.05, label="Weight of human picks in the objective")
            edits = gr.Code(label="Preset edits (JSON, e.g. {\"seeds\": 2, \"heldout_seeds\": 2})", language="json",
                            value="")
            with gr.Row():
                preset_file = gr.File(label="Preset file (.json)", file_types=[".json"], type="filepath")
                ref_image = gr.File(label="Reference image (seeds the prompt)", file_types=["image"],
                                    type="filepath")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            best = gr.Textbox(label="Best prompt", elem_id="best-prompt", interactive=False, scale=3)
            run_id = gr.Textbox(label="Run id", elem_id="run-id", interactive=False, scale=1)
        diff = gr.HTML(elem_id="diff")
        gallery = gr.Gallery(label="Candidates' images (#candidate seed: scores)", elem_id="gallery", columns=8,
                             height="auto", object_fit="contain")
        cands = gr.HTML(elem_id="candidates-table")
        with gr.Row():
            curve = gr.Image(label="Score curve", type="filepath", elem_id="curve")
            compare = gr.Image(label="Same seeds: original and candidates", type="filepath", elem_id="compare")
        with gr.Accordion("Human in the loop", open=False):
            with gr.Row():
                cand_a = gr.Dropdown([], label="Candidate A", allow_custom_value=True)
                cand_b = gr.Dropdown([], label="Candidate B", allow_custom_value=True)
            with gr.Row():
                a_btn, b_btn = gr.Button("A is better"), gr.Button("B is better")
                up_btn, down_btn = gr.Button("👍 A"), gr.Button("👎 A")
            pick_msg = gr.Markdown()
        with gr.Accordion("Edit, pin, rewrite only", open=False):
            with gr.Row():
                edit = gr.Textbox(label="A candidate (edit one by hand)", scale=3)
                add_btn, pin_btn = gr.Button("Add to the search"), gr.Button("Pin")
            with gr.Row():
                n_rewrites = gr.Number(value=4, precision=0, minimum=1, maximum=16, label="N")
                rewrite_btn = gr.Button("Rewrite only (no rendering)")
            rewrites = gr.Textbox(label="Candidate prompts (edit, then queue them)", lines=4)
            queue_btn = gr.Button("Queue these for the next run")
            edit_msg = gr.Markdown()
        with gr.Accordion("Runs", open=True):
            with gr.Row():
                workspace = gr.Textbox(label="Workspace (type an earlier one to reopen its runs)", elem_id="workspace")
                refresh_btn = gr.Button("Refresh runs", elem_id="refresh-btn")
            runs_table = gr.HTML(elem_id="runs-table")
            with gr.Row():
                open_id = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="open-id")
                open_btn = gr.Button("Open", elem_id="open-run")
            with gr.Row():
                export_btn = gr.Button("Download best prompt, images and run JSON", elem_id="export-btn")
                files = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        api_out = gr.JSON(visible=False)

        fields = [prompt, preset, iterations, candidates, seeds, proposer, negative, include, exclude, protect,
                  human_w, edits]
        view_outs = [status, best, diff, gallery, cands, curve, compare, run_id, cand_a, cand_b]
        demo.load(init_fn, [token], [token, workspace], api_visibility="private")
        run_btn.click(run_fn, [token, *fields], [*view_outs, token], api_name="run",
                               concurrency_id="runs")
        prompt.submit(run_fn, [token, *fields], [*view_outs, token], api_visibility="private", concurrency_id="runs")
        cont_btn.click(continue_fn, [token, *fields], [*view_outs, token], api_name="continue", concurrency_id="runs")
        stop_btn.click(stop_fn, [token], [status], api_name="stop", concurrency_limit=None)
        a_btn.click(lambda t, a, b: pick_fn(t, a, b, "A"), [token, cand_a, cand_b], [pick_msg], api_name="pick_a")
        b_btn.click(lambda t, a, b: pick_fn(t, a, b, "B"), [token, cand_a, cand_b], [pick_msg], api_name="pick_b")
        up_btn.click(lambda t, a: pick_fn(t, a, None, "up"), [token, cand_a], [pick_msg], api_visibility="private")
        down_btn.click(lambda t, a: pick_fn(t, a, None, "down"), [token, cand_a], [pick_msg], api_visibility="private")
        add_btn.click(add_fn, [token, edit], [edit_msg], api_name="add_candidate", concurrency_limit=None)
        pin_btn.click(pin_fn, [token, edit], [edit_msg], api_visibility="private")
        rewrite_btn.click(rewrite_fn, [token, n_rewrites, *fields], [rewrites, edit_msg], api_name="rewrite_only")
        queue_btn.click(queue_rewrites_fn, [token, rewrites], [edit_msg], api_visibility="private")
        refresh_btn.click(refresh_fn, [token, workspace], [runs_table, open_id, token], api_name="runs")
        open_btn.click(open_fn, [token, open_id], view_outs, api_name="open")
        export_btn.click(export_fn, [token], [files, status], api_name="export")
        preset_file.upload(upload_preset_fn, [preset_file], [edits, status], api_visibility="private")
        ref_image.upload(upload_image_fn, [ref_image], [prompt, status], api_visibility="private")
        with gr.Row(visible=False):
            a_prompt, a_preset = gr.Textbox(), gr.Textbox()
            a_it, a_cand, a_seeds, a_prop = gr.Number(), gr.Number(), gr.Number(), gr.Textbox()
            a_btn_api = gr.Button()
        a_btn_api.click(api_optimize, [a_prompt, a_preset, a_it, a_cand, a_seeds, a_prop, token], [api_out, token],
                        api_name="optimize", concurrency_id="runs")
    demo.queue(default_concurrency_limit=8)
    return demo


# --------------------------------------------------------------------------- REST + server

def build_server(studio: Studio, demo=None):
    """A FastAPI app: the REST routes under ``/api/v1`` and the studio mounted at ``/``."""
    import gradio as gr
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool

    from mmopt.store import check_run_id

    api = FastAPI(title="mmopt", docs_url="/api/v1/docs", openapi_url="/api/v1/openapi.json")
    rest_session = Session()
    lock = threading.Lock()

    def options_of(body: Any) -> RunOptions:
        """The request body as RunOptions; ValueError (HTTP 422) naming the bad field."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object like {\"prompt\": \"a red cube\", \"iterations\": 2}")
        unknown = set(body) - {"prompt", "preset", "iterations", "candidates", "seeds", "proposer"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; allowed: prompt, preset, iterations, candidates, "
                             "seeds, proposer")
        ints = {}
        for k, hi in (("iterations", 50), ("candidates", 16), ("seeds", 16)):
            v = body.get(k, 2 if k == "iterations" else None)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi):
                raise ValueError(f"{k} must be a whole number from 1 to {hi}, got {v!r}")
            ints[k] = v
        if body.get("proposer") not in (None, "", "opt2i", "rules"):
            raise ValueError(f"proposer must be 'opt2i' or 'rules', got {body.get('proposer')!r}")
        return RunOptions(prompt=body.get("prompt") or "", preset=str(body.get("preset") or "offline"),
                          proposer=body.get("proposer") or None, **ints)

    def optimize_sync(opts: RunOptions) -> dict:
        with lock:  # REST runs share one workspace and run one at a time
            result, error = None, None
            for ev in studio.run(rest_session, opts):
                if ev["event"] == "done":
                    result = ev["result"]
                elif ev["event"] == "error":
                    error = ev["message"]
        if result is None:
            raise HTTPException(500, error or "the run did not finish")
        return {"run_id": result.run_id, "best_prompt": result.best_prompt, "gain": result.gain,
                "heldout_gain": result.heldout_gain, "trials": len(result.trials), "stopped": result.stopped}

    @api.post("/api/v1/optimize")
    async def optimize(body: Any = Body(...)) -> dict:
        try:
            opts = options_of(body)
            return await run_in_threadpool(optimize_sync, opts)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @api.get("/api/v1/runs/{run_id}")
    async def get_run(run_id: str) -> dict:
        try:
            studio.check_access(rest_session, check_run_id(run_id))
            info = studio.store.get_run(run_id)
        except ValueError as e:
            raise HTTPException(404, str(e)) from None
        return {k: v for k, v in info.items() if k != "config"}

    @api.get("/api/v1/health")
    async def health() -> dict:
        return {"ok": True}

    demo = demo or build_app(studio)
    # only the run folders are served: not the store's database, its cache, or anything else
    runs = studio.out / "runs"
    runs.mkdir(exist_ok=True)
    return gr.mount_gradio_app(api, demo, path="/", allowed_paths=[str(runs)],
                               blocked_paths=[str(studio.out / "mmopt.sqlite"), str(studio.out / "cache.sqlite")],
                               css=CSS,
                               max_file_size=MAX_UPLOAD_BYTES, footer_links=["api"])


def serve(out: str, preset: str = "offline", host: str = "127.0.0.1", port: int = 7860):
    """Run the studio server until interrupted (``mmopt app``)."""
    import uvicorn

    studio = Studio(out, preset)
    app = build_server(studio)
    uvicorn.run(app, host=host, port=port, log_level="warning")

