"""A small self-contained HTML page of one run: images (clips play as GIFs) and scores per iteration.

The page lives in the run's folder (``OUT/runs/<run_id>/report.html``) and
links the PNGs beside it by relative path, so the folder can be zipped or
served as it is.
"""
from __future__ import annotations

import html
from pathlib import Path

from mmopt.optimizer import choose_best
from mmopt.store import Store


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else html.escape(str(x))


def clip_cell(store: Store, run_id: str, generation: dict, title: str) -> str:
    """HTML of one stored clip: an animated GIF that plays in any browser (written beside the
    frames when missing), linking the MP4 when there is one; ``title`` is escaped here."""
    from mmopt.apps.video import ensure_exports

    rel = ensure_exports(store.root, generation["paths"], generation["meta"].get("fps", 8), ("gif", "mp4"))
    base = Path("runs") / run_id
    src = html.escape(str(Path(rel["gif"]).relative_to(base)))
    img = f"<img src='{src}' title='{html.escape(title)}'>"
    if "mp4" in rel:
        return f"<a href='{html.escape(str(Path(rel['mp4']).relative_to(base)))}'>{img}</a>"
    return img


def _selection_table(selection: list) -> str:
    """The honest selection: each finalist's score on the search seeds beside its score on fresh seeds."""
    if not selection:
        return ""
    rows = ["<p><b>Honest selection</b> (the winner is the best on fresh seeds; its estimate is measured on "
            "seeds that chose nothing):</p><table><tr><th>#</th><th>prompt</th><th>search seeds</th>"
            "<th>fresh seeds</th><th>estimate</th></tr>"]
    for r in selection:
        cls = " class='best'" if r.get("winner") else ""
        est = _fmt(r["estimate"]) + f" ({r.get('estimate_seeds')} seeds)" if r.get("winner") else ""
        neg = f"<br>negative: <code>{html.escape(r['negative'])}</code>" if r.get("negative") else ""
        rows.append(f"<tr{cls}><td>{int(r['index'])}</td><td><code>{html.escape(r['prompt'])}</code>{neg}</td>"
                    f"<td>{_fmt(r['search'])} ({int(r['search_seeds'])})</td><td>{_fmt(r['fresh'])} "
                    f"({int(r['fresh_seeds'])})</td><td>{est}</td></tr>")
    return "".join(rows) + "</table><p></p>"


def write_report(store: Store, run_id: str) -> Path:
    """Write ``report.html`` for ``run_id`` and return its path.

    >>> write_report(Store("runs"), "3f2a...")  # doctest: +SKIP
    """
    run = store.get_run(run_id)
    trials = store.load_trials(run_id)
    if not trials:
        raise ValueError(f"run {run_id!r} has no finished trials to report")
    summary = run.get("summary") or {}
    # the run's own winner (an honest selection may pick another than the best on the search seeds)
    best = next((t for t in trials if t.index == summary.get("best_index")), None) or choose_best(trials)
    original = next(t for t in trials if t.index == 0)
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    scorers = list(original.scores)
    heldout = summary.get("heldout")
    selection = summary.get("selection") or []
    missing_total = 0

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmopt run ",
        html.escape(run_id), "</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        ".best{background:#e8f6e8}.bad{color:#a00}img{image-rendering:pixelated;width:96px;height:96px;margin:1px}"
        "code{white-space:pre-wrap}",
        "</style></head><body>",
        f"<h1>mmopt run <code>{html.escape(run_id)}</code></h1>",
        f"<p><b>Intent:</b> <code>{html.escape(run['intent'])}</code><br>",
        f"<b>Best prompt:</b> <code>{html.escape(best.prompt)}</code>",
        (f" &middot; negative <code>{html.escape(best.negative)}</code>" if best.negative else ""), "<br>",
        f"<b>Objective on the search seeds:</b> {_fmt(original.objective)} &rarr; {_fmt(best.objective)} "
        f"(gain {best.objective - original.objective:+.3f}) &middot; status {html.escape(run['status'])}",
        ("" if original.feasible else " &middot; <span class='bad'>the original breaks a constraint</span>"),
        ("" if best.feasible else " &middot; <span class='bad'>no candidate met the constraints</span>"),
        (f"<br><b>Held-out seeds:</b> {_fmt(heldout['original']['objective'])} &rarr; "
         f"{_fmt(heldout['best']['objective'])} (gain {summary.get('heldout_gain', 0.0):+.3f})" if heldout else ""),
        "</p>",
        _selection_table(selection),
        "<table><tr><th>iter</th><th>#</th><th>prompt</th><th>objective</th>",
        "".join(f"<th>{html.escape(s)}</th>" for s in scorers),
        "<th>images (seed: score)</th></tr>",
    ]
    for t in trials:
        gens = store.load_generations(run_id, t.index)
        cls = " class='best'" if t.index == best.index else ""
        cells = []
        for g in gens:
            raw_title = f"seed {g['seed']}: " + ", ".join(f"{k}={v:.3f}" for k, v in g["scores"].items())
            title = html.escape(raw_title)
            if (len(g["paths"]) > 1 or "fps" in g["meta"]) and not g["missing"]:  # a clip: it plays
                cells.append(clip_cell(store, run_id, g, raw_title))
                continue
            for p in g["paths"][:1]:
                if p in g["missing"]:  # deleted from disk: say so (a rerun of the run restores it)
                    missing_total += 1
                    cells.append(f"<span class='bad' title='{title}'>missing: {html.escape(Path(p).name)}</span>")
                else:
                    cells.append(f"<img src='{html.escape(str(Path(p).relative_to(Path('runs') / run_id)))}' "
                                 f"title='{title}'>")
        imgs = "".join(cells)
        note = "" if t.feasible else "<br><span class='bad'>" + html.escape("; ".join(t.meta.get("violations", []))) + "</span>"
        if t.negative:
            note = f"<br>negative: <code>{html.escape(t.negative)}</code>" + note
        parts.append(
            f"<tr{cls}><td>{t.iteration}</td><td>{t.index}</td><td><code>{html.escape(t.prompt)}</code>{note}</td>"
            f"<td>{_fmt(t.objective)}</td>" + "".join(f"<td>{_fmt(t.scores.get(s))}</td>" for s in scorers)
            + f"<td>{imgs}</td></tr>"
        )
    parts.append("</table>")
    if missing_total:
        parts.append(f"<p class='bad'>{missing_total} media file(s) are missing from disk; run the same command "
                     "again to restore them.</p>")
    parts.append("</body></html>")
    path = run_dir / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
