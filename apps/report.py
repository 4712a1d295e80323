"""Self-contained HTML pages: one run (:func:`write_report`; clips play as GIFs) or one batch
(:func:`write_batch_report`).

A run's page lives in the run's folder (``OUT/runs/<run_id>/report.html``) and
links the PNGs beside it by relative path, so the folder can be zipped or
served as it is: every iteration's prompts, images and scores, the original
and the best prompt side by side on the same seeds, the score trajectory
(inline SVG, drawn without a plotting library), the word diff of the best prompt
against the original and the failed DSG questions of every candidate.

A batch's page (``OUT/report.html``) has per-category tables and plots, the
gain distribution and the best and worst prompts. Every prompt is
HTML-escaped; nothing needs a server.
"""
from __future__ import annotations

import base64
import difflib
import html
import io
import json
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
    parts.extend(_run_extras(store, run_id, trials, best, original, summary))
    if missing_total:
        parts.append(f"<p class='bad'>{missing_total} media file(s) are missing from disk; run the same command "
                     "again to restore them.</p>")
    parts.append("</body></html>")
    path = run_dir / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shared pieces

def word_diff_html(old: str, new: str) -> str:
    """``new`` against ``old`` word by word: removed words struck through, added ones marked.

    >>> word_diff_html("a red cube", "a big red cube")
    'a <ins>big</ins> red cube'
    """
    a, b = old.split(), new.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{html.escape(' '.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{html.escape(' '.join(b[j1:j2]))}</ins>")
    return " ".join(out)


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure():
    """A matplotlib figure on the Agg backend (no display), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(6, 3))


def trajectory_svg(trials, width: int = 480, height: int = 220) -> str:
    """The score trajectory of a run as inline SVG (no plotting library, so every install has it):
    every trial's objective by iteration (blue: feasible, red: not), and the best feasible so far."""
    its = sorted({t.iteration for t in trials})
    best = [choose_best([t for t in trials if t.iteration <= i]).objective for i in its]
    ys = [t.objective for t in trials] + best
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:  # a flat run still gets a readable axis
        lo, hi = lo - 0.5, hi + 0.5
    left, right, top, bottom = 48, 12, 10, 30
    span = max(1, its[-1] - its[0])

    def x(i):
        return left + (i - its[0]) / span * (width - left - right)

    def y(v):
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    out = [f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='score trajectory'>",
           f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#888'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#888'/>"]
    for v in (lo, (lo + hi) / 2, hi):  # three ticks on the objective axis
        out.append(f"<text x='{left - 4}' y='{y(v) + 4:.1f}' font-size='10' text-anchor='end'>{v:.3f}</text>")
    for i in its:
        out.append(f"<text x='{x(i):.1f}' y='{height - bottom + 14}' font-size='10' text-anchor='middle'>{i}</text>")
    out.append(f"<text x='{(left + width - right) / 2:.1f}' y='{height - 2}' font-size='10' "
               "text-anchor='middle'>iteration</text>")
    for t in trials:
        colour = "#1f77b4" if t.feasible else "#d62728"
        out.append(f"<circle cx='{x(t.iteration):.1f}' cy='{y(t.objective):.1f}' r='3' fill='{colour}' "
                   f"fill-opacity='0.6'><title>#{t.index}: {t.objective:.3f}</title></circle>")
    points = " ".join(f"{x(i):.1f},{y(b):.1f}" for i, b in zip(its, best))
    out.append(f"<polyline points='{points}' fill='none' stroke='#2ca02c' stroke-width='2'/>")
    # the label goes top left: a best-so-far line never falls, so that corner stays clear of it
    out.append(f"<text x='{left + 6}' y='{top + 10}' font-size='10' fill='#2ca02c'>best so far</text></svg>")
    return "".join(out)


def _img(store, run_id: str, g: dict, rel_to: Path) -> str:
    raw_title = f"seed {g['seed']}: " + ", ".join(f"{k}={v:.3f}" for k, v in g["scores"].items())
    if (len(g["paths"]) > 1 or "fps" in g["meta"]) and not g["missing"]:  # a clip plays, as in the table
        return clip_cell(store, run_id, g, raw_title)
    title = html.escape(raw_title)
    for p in g["paths"][:1]:
        if p in g["missing"]:
            return f"<span class='bad' title='{title}'>missing</span>"
        return f"<img src='{html.escape(str(Path(p).relative_to(rel_to)))}' title='{title}'>"
    return "<span>(no media)</span>"


def _run_extras(store, run_id: str, trials, best, original, summary: dict) -> list[str]:
    """The sections after the trial table: side by side, trajectory, diff, failed questions."""
    rel = Path("runs") / run_id
    parts = ["<h2>Original and best on the same seeds</h2>"]
    orig_g = {g["seed"]: g for g in store.load_generations(run_id, original.index)}
    best_g = {g["seed"]: g for g in store.load_generations(run_id, best.index)}
    parts.append("<table><tr><th>seed</th><th>original</th><th>best</th></tr>")
    for seed in sorted(orig_g):
        cell_b = _img(store, run_id, best_g[seed], rel) if seed in best_g else ""
        parts.append(f"<tr><td>{seed}</td><td>{_img(store, run_id, orig_g[seed], rel)}</td><td>{cell_b}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Best prompt against the original</h2><p class='diff'><code>"
                 + word_diff_html(original.prompt, best.prompt) + "</code></p>")
    parts.append("<h2>Score trajectory</h2>" + trajectory_svg(trials))
    rows = []
    for t in trials:
        failed = t.failed_questions()
        if failed:
            rows.append(f"<tr><td>{t.index}</td><td><code>{html.escape(t.prompt)}</code></td><td>"
                        + "<br>".join(f"{html.escape(q)} ({frac:.0%} of seeds)" for q, frac in failed) + "</td></tr>")
    parts.append("<h2>Failed questions per candidate</h2>" + (
        "<table><tr><th>#</th><th>prompt</th><th>failed questions</th></tr>" + "".join(rows) + "</table>"
        if rows else "<p>No DSG question failed (or the run has no DSG scorer).</p>"))
    return parts


# --------------------------------------------------------------------------- batch report

_BATCH_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
              "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;"
              "vertical-align:top}img{image-rendering:pixelated;width:64px;height:64px;margin:1px}"
              "img.plot{width:auto;height:auto}code{white-space:pre-wrap}.bad{color:#a00}")


def _fmt_ci(ci) -> str:
    return "" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _gain_plots(done: list[dict], per_cat: dict) -> tuple[str | None, str | None]:
    fig = _figure()
    if fig is None or not done:
        return None, None
    ax = fig.add_subplot(1, 1, 1)
    ax.hist([r["gain"] for r in done], bins=30, color="tab:blue", alpha=0.7, label="search seeds")
    held = [r["heldout_gain"] for r in done if r.get("heldout_gain") is not None]
    if held:
        ax.hist(held, bins=30, color="tab:orange", alpha=0.5, label="held-out seeds")
    ax.set_xlabel("gain (best - original objective)")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    hist = _png_data_uri(fig)
    fig2 = _figure()
    fig2.set_size_inches(7, max(2.5, 0.35 * len(per_cat) + 1))
    ax2 = fig2.add_subplot(1, 1, 1)
    cats = list(per_cat)
    means = [per_cat[c]["mean_gain"] or 0.0 for c in cats]
    errs = [[m - (per_cat[c]["gain_ci95"] or [m, m])[0] for c, m in zip(cats, means)],
            [(per_cat[c]["gain_ci95"] or [m, m])[1] - m for c, m in zip(cats, means)]]
    ax2.barh(cats, means, xerr=errs, color="tab:green", alpha=0.7)
    ax2.set_xlabel("mean gain, 95% paired bootstrap CI")
    ax2.invert_yaxis()
    return hist, _png_data_uri(fig2)


def write_batch_report(batch_dir: str | Path, *, n_extremes: int = 10) -> Path:
    """Write ``report.html`` for a batch folder (``results.jsonl`` + ``summary.json``); its path."""
    root = Path(batch_dir)
    res, summ = root / "results.jsonl", root / "summary.json"
    if not res.is_file() or not summ.is_file():
        raise ValueError(f"{str(root)!r} is not a batch folder (no results.jsonl and summary.json)")
    records = [json.loads(line) for line in res.read_text(encoding="utf-8").splitlines() if line.strip()]
    s = json.loads(summ.read_text(encoding="utf-8"))
    done = [r for r in records if r.get("status") == "done"]
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mmopt batch</title><style>", _BATCH_CSS,
             "</style></head><body>", f"<h1>mmopt batch <code>{e(str(root))}</code></h1>",
             f"<p>Input <code>{e(s['source'])}</code> ({e(s['format'])}): {s['rows_read']} rows, "
             f"{s['bad_rows']} bad rows skipped, {s['filtered_out']} filtered out, {s['selected']} selected; "
             f"{s['done']} done, {s['failed']} failed, {s['not_finished']} not finished; {s['images']} images.</p>"]
    o = s.get("overall")
    if o:
        parts.append(f"<p><b>Mean gain</b> on the search seeds {o['mean_gain']:+.4f} {_fmt_ci(o['gain_ci95'])}"
                     + (f"; on held-out seeds {o['mean_heldout_gain']:+.4f} {_fmt_ci(o['heldout_gain_ci95'])}"
                        if o.get("n_heldout") else "") + " (95% paired bootstrap over prompts).</p>")
    parts.append("<h2>Per category</h2><table><tr><th>category</th><th>n</th><th>original</th><th>best</th>"
                 "<th>gain (search)</th><th>95% CI</th><th>held-out original</th><th>held-out best</th>"
                 "<th>gain (held-out)</th></tr>")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for cat, g in s.get("per_category", {}).items():
        parts.append(f"<tr><td>{e(cat)}</td><td>{g['n']}</td><td>{f(g['mean_original'])}</td><td>{f(g['mean_best'])}"
                     f"</td><td>{g['mean_gain']:+.4f}</td><td>{_fmt_ci(g['gain_ci95'])}</td>"
                     f"<td>{f(g['mean_heldout_original'])}</td><td>{f(g['mean_heldout_best'])}</td>"
                     f"<td>{'-' if g['mean_heldout_gain'] is None else format(g['mean_heldout_gain'], '+.4f')}</td></tr>")
    parts.append("</table>")
    hist, bars = _gain_plots(done, s.get("per_category", {}))
    if hist:
        parts.append(f"<h2>Gain distribution</h2><img class='plot' src='{hist}' alt='gain histogram'>"
                     f"<h2>Mean gain per category</h2><img class='plot' src='{bars}' alt='gain per category'>")

    def table(title: str, rows: list[dict]) -> None:
        parts.append(f"<h2>{e(title)}</h2><table><tr><th>line</th><th>category</th><th>prompt</th>"
                     "<th>best prompt</th><th>gain</th><th>images</th></tr>")
        for r in rows:
            imgs = "".join(f"<img src='{e(p)}' title='{e(Path(p).name)}'>" for p in r.get("image_files", []))
            parts.append(f"<tr><td>{r['line']}</td><td>{e(r.get('category') or '')}</td>"
                         f"<td><code>{e(r['prompt'])}</code></td><td><code>{word_diff_html(r['prompt'], r['best_prompt'])}"
                         f"</code></td><td>{r['gain']:+.4f}</td><td>{imgs}</td></tr>")
        parts.append("</table>")

    ranked = sorted(done, key=lambda r: (r["gain"], -r["line"]))
    table(f"Best {min(n_extremes, len(ranked))} prompts (largest gain)", ranked[::-1][:n_extremes])
    table(f"Worst {min(n_extremes, len(ranked))} prompts (smallest gain)", ranked[:n_extremes])
    failed = [r for r in records if r.get("status") != "done"]
    if failed or s.get("bad_row_list"):
        parts.append("<h2>Not optimized</h2><table><tr><th>line</th><th>why</th></tr>")
        for r in failed:
            parts.append(f"<tr><td>{r['line']}</td><td class='bad'>{e(r.get('reason', '?'))}</td></tr>")
        for b in s.get("bad_row_list", []):
            parts.append(f"<tr><td>{b['line']}</td><td class='bad'>bad row: {e(b['reason'])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path = root / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
