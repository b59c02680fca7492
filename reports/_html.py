"""write_report(): index.html (self-contained up to EMBED_BYTES of figures), guidelines.md, guidelines.json
and figures/*.png."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from dm_tune.errors import write_output
from dm_tune.reports import _figures as figs
from dm_tune.reports._guidelines import (build_guidelines, capped_mark, capped_notes, changed_data_lines, dumps,
                                         guidelines_markdown, loso_summary_text, report_commit_text, setting_label,
                                         setting_tables, trials_text)
from dm_tune.reports._guidelines import decimal_text as _num
from dm_tune.reports._loso import refit_phrase
from dm_tune.reports._surface import NO_SURFACE_TEXT, arms_phrase, hyperparameters_phrase
from dm_tune.reports._text import md_unescape, metric_name, runs_phrase, settings_text

SECTIONS = ("Guidelines", "Comparison with the paper", "Across settings", "Response surface",
            "Leave-one-setting-out validation", "Per-setting results", "Provenance")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #e69500}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:.9em}.agree{color:#17803d}.refine{color:#b36b00}.refute{color:#b00020}.none{color:#555}
"""


# The figures' PNG bytes up to which index.html embeds them (figures="auto"): 250 to 320 figures
# (25 to 31 kB each, measured), about 100 settings. Above, the page links them from figures/ beside
# it: a report of 383 settings embedded its 1,152 figures in an index.html of 39.6 MB (BENCHMARKS.md,
# "Thousands of arms").
EMBED_BYTES = 8_000_000
FIGURES = ("auto", "embed", "link")
_FIGURE_NAME = re.compile(r"(best_mode_vs_noise|weight_curves|loso|(plane|baselines|weights)_\d{2,})\.png")


def write_report(df: pd.DataFrame, out_dir: str | Path,
                 histories: pd.DataFrame | None = None, sections: list[str] | None = None,
                 loso: str = "auto", figures: str = "auto") -> dict[str, Path]:
    """Analyse ``df`` (from ``load_runs``) and write the report; returns {relative name: path}.

    ``sections``: further Markdown sections (``dm-tune stability``'s and ``dm-tune validate``'s)
    appended to guidelines.md and, as HTML, to index.html. ``loso``: how leave-one-setting-out's
    refits get their hyper-parameters (``_loso.leave_one_setting_out``'s ``hyperparameters``).
    ``figures``: "embed" the figures in index.html, "link" them from figures/, or "auto": embed them
    up to EMBED_BYTES in all, else link them (the page says so)."""
    if figures not in FIGURES:
        raise ValueError(f"figures must be one of {', '.join(FIGURES)}, not {figures!r}")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    doc = build_guidelines(df, loso=loso)
    files: dict[str, str | bytes] = {}  # relative name -> content: all made before any is written

    def add_figure(name: str, fig: Any) -> None:
        if fig is not None:
            files[f"figures/{name}.png"] = figs.png_bytes(fig)

    settings = doc["settings"]
    if settings:
        add_figure("best_mode_vs_noise", figs.best_mode_figure(settings, doc["rules"]))
        add_figure("weight_curves", figs.weight_curves_figure(settings))
    if doc.get("loso"):
        add_figure("loso", figs.loso_figure(doc["loso"]))
    for i, s in enumerate(settings):
        add_figure(f"plane_{i:02d}", figs.plane_figure(s, df[df["setting"] == s["setting"]]))
        if s["vs_baselines"]:
            add_figure(f"baselines_{i:02d}", figs.baselines_figure(s))
        add_figure(f"weights_{i:02d}", figs.weight_history_figure(s, histories))
    total = sum(len(data) for data in files.values())
    embed = figures == "embed" or (figures == "auto" and total <= EMBED_BYTES)
    images = {name[len("figures/"):-len(".png")]: ("data:image/png;base64," + base64.b64encode(data).decode("ascii")
                                                   if embed else name) for name, data in files.items()}
    linked = None if embed or not files else (
        f"The {len(files)} figures ({total / 1e6:.1f} MB) are linked from figures/ beside this page, not embedded "
        + (f"(more than {EMBED_BYTES / 1e6:g} MB; dm-tune report --figures embed embeds them)" if figures == "auto"
           else "(dm-tune report --figures link)") + ": keep the folder with the page.")
    extra = [section.rstrip() + "\n" for section in sections or []]
    page = render_html(doc, images, [markdown_html(section) for section in extra], linked)
    files.update({"guidelines.md": "\n".join([guidelines_markdown(doc), *extra]), "index.html": page,
                  "guidelines.json": dumps(doc)})
    # Everything is made first (the figures take seconds), then written in a moment, each file
    # whole or not at all, guidelines.json (what recommend, validate and a warm start read) last:
    # a report cut short leaves the previous report's guidelines; its pages and guidelines carry
    # the time they were made (provenance.generated), so a mix cut in that moment shows.
    for name, content in files.items():
        write_output(out / name, content)
    for old in (out / "figures").glob("*.png"):  # an earlier report's figures that this one has not
        if _FIGURE_NAME.fullmatch(old.name) and f"figures/{old.name}" not in files and old.is_file():
            old.unlink()
    return {name: out / name for name in files}


def render_html(doc: dict[str, Any], images: dict[str, str], extra: list[str] | None = None,
                linked: str | None = None) -> str:
    """The report page; ``images`` maps figure names to data URIs, or to their paths beside the page
    (nothing is linked from outside); ``extra``: HTML sections placed before the per-setting results;
    ``linked``: the note that says the figures are linked, not embedded."""
    e = html.escape
    prov = doc["provenance"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>DM tuning report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>DM tuning report</h1>",
             f"<p class='note'>Generated {e(doc['generated'])} from {e(runs_phrase(prov))}. "
             f"Accuracies in {e(doc['accuracy_unit'])}: "
             f"{e(doc['accuracy_note'])}.</p>", *([f"<p class='note'>{e(linked)}</p>"] if linked else []),
             "<h2>Guidelines</h2><ul>"]
    parts += [f"<li>{e(s['guideline'])} <a href='#setting-{i}'>(results)</a></li>"
              for i, s in enumerate(doc["settings"])] or ["<li>No setting has finished DM runs.</li>"]
    parts += [f"<li>{e(w)}</li>" for w in changed_data_lines(prov)]
    parts.append("</ul>")
    parts += ["<h2>Comparison with the paper</h2>",
              _table(["setting", "measured psi", "paper psi", "verdict", "reason"],
                     [[e(setting_label(s)), f"{s['psi']:.2f}", _num(s["paper_comparison"]["paper_psi"]),
                       _verdict(s["paper_comparison"]["verdict"]), e(s["paper_comparison"]["reason"])]
                      for s in doc["settings"]], escape=False)]
    parts += ["<h2>Across settings</h2>", "<h3>Rules</h3><ul>"] + [f"<li>{e(_rule_text(r))}</li>" for r in doc["rules"]]
    parts += ["</ul><h3>Trends (descriptive)</h3><ul>"] + [f"<li>{e(t['text'])}</li>" for t in doc["trends"]]
    parts += ["</ul><div class='figs'>", _img(images, "best_mode_vs_noise", "best mode against noise rate"),
              _img(images, "weight_curves", "weight curves"), "</div>"]
    parts += _surface_section(doc.get("surface")) + _loso_section(doc.get("loso"), images)
    parts += extra or []
    parts.append("<h2>Per-setting results</h2>")
    for i, s in enumerate(doc["settings"]):
        parts.append(_setting_section(i, s, images))
    if doc["unresolved"]:
        parts.append("<h3>Settings without a recommendation</h3>")
        parts.append(_table(["setting", "reason", "trials"],
                            [[u["setting"], u["reason"], trials_text(u["counts"])] for u in doc["unresolved"]]))
    parts += ["<h2>Provenance</h2>",
              _table(["item", "value"], [["experiments", ", ".join(prov["experiments"])],
                                         ["git commits of the runs", ", ".join(prov["git_commits"]) or "unknown"],
                                         ["dm-tune versions of the runs",
                                          ", ".join(prov["dm_tune_versions_of_runs"]) or "unknown"],
                                         ["report written by dm-tune",
                                          prov["dm_tune_version"] + report_commit_text(prov)],
                                         *(["package versions of the runs", v]
                                           for v in prov.get("package_versions_of_runs", [])),
                                         *(["machines of the runs", m] for m in prov.get("machines_of_runs", [])),
                                         *(["data of the runs", d] for d in prov.get("data_of_runs", [])),
                                         ["tracking URI", prov["tracking_uri"]]]),
              "</body></html>"]
    return _with_contents("\n".join(parts))


_H2 = re.compile(r"<h2>(.*?)</h2>")


def _with_contents(page: str) -> str:
    """``page`` with an id on each section heading and, before the first, a list of links to them."""
    titles: list[str] = []

    def anchor(m: re.Match[str]) -> str:
        titles.append(m.group(1))
        return f"<h2 id='section-{len(titles)}'>{m.group(1)}</h2>"

    page = _H2.sub(anchor, page)
    nav = ("<nav><ul>" + "".join(f"<li><a href='#section-{i}'>{t}</a></li>" for i, t in enumerate(titles, 1))
           + "</ul></nav>")
    return page.replace("<h2 id='section-1'>", nav + "<h2 id='section-1'>", 1) if titles else page


def _surface_section(surface: dict[str, Any] | None) -> list[str]:
    e = html.escape
    parts = ["<h2>Response surface</h2>"]
    if not surface:
        return parts + [f"<p>{e(NO_SURFACE_TEXT)}</p>"]
    fitted = surface["fitted"]
    parts.append(f"<p>A Gaussian process ({e(surface['model']['kernel']['form'])}) of {e(surface['target'])}, "
                 f"fitted on {arms_phrase(surface)} (each its mean over its seeds) of "
                 f"{settings_text(len(surface['settings']))}{e(hyperparameters_phrase(surface))}; "
                 "<code>dm-tune recommend</code> reads it.</p>")
    rows = [[name, f"{ls:.3g}"] for name, ls in fitted["length_scales"].items()]
    rows += [["signal std (points)", f"{fitted['signal_std']:.2f}"], ["noise std (points)", f"{fitted['noise_std']:.2f}"]]
    return parts + [_table(["feature / hyper-parameter", "fitted length scale / value"], rows)]


def _loso_section(loso: dict[str, Any] | None, images: dict[str, str]) -> list[str]:
    e = html.escape
    parts = ["<h2>Leave-one-setting-out validation</h2>"]
    if not loso:
        return parts + ["<p>No setting could be held out (each needs CCE runs, confirm-stage DM arms and another "
                        "setting to fit on).</p>"]
    rows = []
    for r in loso["rows"]:
        sf, pp = r["surface"], r["paper"]
        paper = (["-"] * 4 if pp is None else [f"psi {pp['psi']:.2f}, rho {pp['rho']:.2f}",
                                               f"{pp['test_acc']:.1f} +/- {pp['test_acc_std']:.1f}{capped_mark(pp)}",
                                               f"{pp['regret']:+.1f}", f"{pp['gain_over_cce']:+.1f}"])
        rows.append([setting_label(r), f"psi {sf['psi']:.2f}, rho {sf['rho']:.2f}, cw {sf['class_weighting']}",
                     f"{sf['test_acc']:.1f} +/- {sf['test_acc_std']:.1f}{capped_mark(sf)}", f"{sf['regret']:+.1f}",
                     f"{sf['gain_over_cce']:+.1f}", *paper, f"{r['best_arm']['arm']} ({r['best_arm']['test_acc']:.1f})",
                     f"{r['cce_test_acc']:.1f}"])
    return parts + [f"<p class='note'>Each setting held out in turn: the surface refitted on the others "
                    f"({e(refit_phrase(loso))}) recommends for it, and the recommendation and the paper's "
                    f"guidance are scored on its {e(loso['metric'])}, "
                    f"{e(loso['note'])}. Regret: the best confirmed arm's mean final test accuracy minus the "
                    "estimate." + "".join(f" {mark} {e(note)}" for mark, note in capped_notes(loso)) + "</p>",
                    _table(["setting", "surface recommends", "est. test", "regret", "gain over CCE", "paper",
                            "est. test", "regret", "gain over CCE", "best confirmed arm (test)", "CCE test"], rows),
                    f"<p>{e(loso_summary_text(loso['summary']))}</p>",
                    "<div class='figs'>", _img(images, "loso", "leave-one-setting-out regret and gain"), "</div>"]


def _setting_section(i: int, s: dict[str, Any], images: dict[str, str]) -> str:
    e = html.escape
    rows, header, base_rows = setting_tables(s)
    m = metric_name(s)
    return "\n".join([f"<h3 id='setting-{i}'>{e(setting_label(s))}</h3>",
                      f"<p class='note'>setting key {e(s['setting'])}</p>",
                      _table(["", ""], rows),
                      _table(header, base_rows) if base_rows else "<p>No baseline runs.</p>",
                      "<div class='figs'>", _img(images, f"plane_{i:02d}", f"{m} over the psi x rho plane"),
                      _img(images, f"baselines_{i:02d}", "DM vs baselines"),
                      _img(images, f"weights_{i:02d}", "clean vs noisy weights over training"), "</div>"])


def _table(header: list[str], rows: list[list[str]], escape: bool = True) -> str:
    cell = html.escape if escape else (lambda x: x)
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def markdown_html(text: str) -> str:
    """HTML for the Markdown that dm-tune's own commands write (headings, paragraphs, bullet lists,
    pipe tables, in which ``\\|`` is a pipe within a cell); its entities (``&lt;``, what a name's
    ``<`` is written as) read as the characters, and every text is escaped."""
    def e(markdown: str) -> str:
        return html.escape(md_unescape(markdown))

    out: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if table:
            out.append(_table(table[0], table[1:]))
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if para:
            out.append(f"<p>{e(' '.join(para))}</p>")
            para.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            inner = stripped[1:-1] if stripped.endswith("|") and not stripped.endswith("\\|") else stripped[1:]
            cells = [md_unescape(c.strip().replace("\\|", "|")) for c in re.split(r"(?<!\\)\|", inner)]
            if not all(set(c) <= {"-", ":"} for c in cells):  # not the |---| rule
                table.append(cells)
            continue
        if table or (items and not stripped.startswith("- ")) or not stripped:
            flush()
        if not stripped:
            continue
        if stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            out.append(f"<h{level}>{e(stripped[level:].strip())}</h{level}>")
        elif stripped.startswith("- "):
            items.append(stripped[2:])
        else:
            para.append(stripped)
    flush()
    return "".join(out)


def _img(images: dict[str, str], name: str, alt: str) -> str:
    if name not in images:
        return ""
    lazy = "" if images[name].startswith("data:") else " loading='lazy'"  # (a linked figure is read when seen)
    return f"<img src='{images[name]}' alt='{html.escape(alt)}'{lazy}>"


def _rule_text(rule: dict[str, Any]) -> str:
    paper = rule.get("paper_comparison")
    return rule["text"] + (f" [paper: {paper}]" if paper else "")


def _verdict(v: str) -> str:
    return f"<span class='{html.escape(v)}'>{html.escape(v)}</span>"
