"""reports: write_report's files, and index.html rendered in a real headless browser (chromium + selenium)."""

from __future__ import annotations

import html

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dm_tune.errors import UserError
from dm_tune import beta_from_rho
from dm_tune.reports import load_guidelines, write_report
from dm_tune.reports._html import SECTIONS
from dm_tune.reports._text import setting_label
from dm_tune.reports._load import tidy
from tests.conftest import DM_TUNE

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
_IDS = itertools.count()


def trial(rate: float, stage: str, seed: int, val: float | None, test: float | None, psi: float = 0.0,
          rho: float = 0.0, baseline: str = "", method: str = "dm", status: str = "finished") -> dict[str, Any]:
    lam = psi / (1 - psi)
    dm = method == "dm"
    return {"run_id": f"r{next(_IDS)}", "experiment": "study", "setting": f"digits/symmetric/{rate}",
            "stage": stage, "baseline": baseline, "status": status, "method": method,
            "lam": str(lam) if dm else "", "beta": str(beta_from_rho(rho, lam)) if dm else "",
            "dataset": "digits", "noise": "none" if rate == 0 else "symmetric", "noise_rate": str(rate),
            "imbalance": "none", "imbalance_ratio": "1", "model": "mlp", "num_classes": "10", "pretrained": "false",
            "seed": str(seed), "epochs": "10", "final_val_acc": np.nan if val is None else val,
            "final_test_acc": np.nan if test is None else test,
            "best_test_acc": np.nan if test is None else test + 0.03,
            "git_commit": "abc123"}


def campaign() -> pd.DataFrame:
    """Three noise rates: 10 search trials each (one diverged, one early-stopped), a confirmed best, baselines."""
    rng = np.random.default_rng(0)
    rows = []
    for rate, best in ((0.0, 0.1), (0.2, 0.3), (0.4, 0.5)):
        top = 0.9 - 0.3 * rate
        for i in range(10):
            psi, rho = float(rng.uniform(0, 0.8)), float(rng.uniform(0.5, 6))
            val = top - 0.3 * (psi - best) ** 2 - 0.002 * (rho - 3) ** 2
            status = {8: "diverged", 9: "early-stopped"}.get(i, "finished")
            ok = status != "diverged"
            rows.append(trial(rate, "search", 0, val if ok else None, val - 0.05 if ok else None, psi, rho,
                              status=status))
        for seed in range(3):
            rows.append(trial(rate, "confirm", seed, top + 0.01 * seed, top - 0.04 + 0.01 * seed, best, 3.0))
            for name, drop in (("cce", 0.15), ("gce", 0.08), ("dm-beta0", 0.1)):
                rows.append(trial(rate, "confirm", seed, top - drop, top - 0.04 - drop * rate + 0.01 * seed,
                                  baseline=name, method="dm" if name == "dm-beta0" else name))
    return tidy(rows)


def histories(df: pd.DataFrame) -> pd.DataFrame:
    ids = df.loc[(df["stage"] == "confirm") & (df["baseline"] == ""), "run_id"]
    return pd.DataFrame([(r, m, e, 1 + (0.04 if m == "weight_clean" else -0.04) * e) for r in ids
                         for m in ("weight_clean", "weight_noisy") for e in range(1, 6)],
                        columns=["run_id", "metric", "step", "value"])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    df = campaign()
    return write_report(df, tmp_path_factory.mktemp("report"), histories(df))


def test_report_files(report: dict[str, Path]) -> None:
    for name in ("index.html", "guidelines.md", "guidelines.json", "figures/best_mode_vs_noise.png",
                 "figures/weight_curves.png", "figures/plane_00.png", "figures/baselines_02.png",
                 "figures/weights_01.png", "figures/loso.png"):
        assert report[name].is_file() and report[name].stat().st_size > 0, name
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for k, p in report.items() if k.endswith(".png"))
    assert all(p.stat().st_mode & 0o044 for p in report.values())  # readable by others, as the umask says
    out = report["guidelines.json"].parent
    assert not [p for p in out.rglob(".*") if p.is_file()]  # written through temporary files, none left
    doc = load_guidelines(report["guidelines.json"])
    assert [s["noise_rate"] for s in doc["settings"]] == [0.0, 0.2, 0.4]
    expected = {"finished": 20, "diverged": 1, "early_stopped": 1, "errored": 0, "in_progress": 0, "reused": 0}
    assert all(s["counts"] == expected for s in doc["settings"])
    assert {r["knob"] for r in doc["rules"] if r["kind"] == "noise_rate"} == {"psi", "rho"}
    assert json.loads(report["guidelines.json"].read_text())["schema_version"] == 2
    md = report["guidelines.md"].read_text()
    assert "40% symmetric noise: mode psi about 0.50" in md and "points over CCE over 3 seeds" in md
    # one surface over the three settings; each of them held out in turn
    assert len(doc["surface"]["settings"]) == 3 and doc["surface"]["n_rows"] == 3 * (8 + 1)  # one row per arm: 8 finished search trials + the confirmed arm; dm-beta0 has rho 0
    assert [r["noise_rate"] for r in doc["loso"]["rows"]] == [0.0, 0.2, 0.4]
    assert "## Response surface" in md and "## Leave-one-setting-out validation" in md
    assert "estimated from the setting's own trials" in md
    # each setting's results, as index.html shows them (guidelines.md had only the one-line guideline)
    part = md.split("## Per-setting results\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^### (.*)$", part, re.M) == [setting_label(s) for s in doc["settings"]]
    page = report["index.html"].read_text()
    for s, block in zip(doc["settings"], part.split("\n### ")[1:]):
        assert f"| recommended | lambda {s['lam']:.3g}, beta {s['beta']:.3g} (psi {s['psi']:.3f}" in block
        assert f"| final test accuracy | {s['test_acc_mean']:.1f} +/- {s['test_acc_std']:.1f}% (n=3 seeds) |" in block
        verdicts = re.findall(r"^\| ([\w-]+) \| [^|]* \| [^|]* \| ([\w ]+) \|$", block, re.M)
        assert verdicts == [(name, b["verdict"]) for name, b in s["vs_baselines"].items()] != []
        assert all(f"<td>{name}</td>" in page for name, _ in verdicts)


def test_the_report_keeps_the_full_fits_hyper_parameters_in_leave_one_setting_out_when_told(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dm-tune report --loso kept`: each held-out refit keeps the full fit's kernel hyper-parameters,
    and guidelines.json, guidelines.md and index.html say so; a bad value is one line naming the flag."""
    from dm_tune.cli import build_parser, main
    from dm_tune.reports._text import ANALYSIS_VERSION

    paths = write_report(campaign(), tmp_path / "rep", loso="kept")
    doc = json.loads(paths["guidelines.json"].read_text())
    assert doc["loso"]["hyperparameters"] == "kept" and doc["loso"]["n_surface_rows"] == doc["surface"]["n_rows"]
    assert doc["analysis_version"] == ANALYSIS_VERSION >= 7
    for name in ("guidelines.md", "index.html"):
        assert "hyper-parameters kept from the fit on every setting (27 rows" in paths[name].read_text(), name
    assert build_parser().parse_args(["report", "--loso", "refit"]).loso == "refit"
    assert build_parser().parse_args(["report"]).loso == "auto"
    from dm_tune.reports._loso import KEPT_ROWS

    with pytest.raises(SystemExit) as stop:
        main(["report", "--help"])
    assert stop.value.code == 0 and f"auto (default): kept from {KEPT_ROWS} surface rows up" in " ".join(
        capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as stop:
        main(["report", "--loso", "fixed"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # (Python 3.12.8 and later write the choices unquoted)
    assert line.replace("'", "") == ("dm-tune report: error: argument --loso: invalid choice: fixed "
                                     "(choose from auto, refit, kept)")


def test_the_report_links_its_figures_above_the_embedding_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Hundreds of settings embedded their figures in an index.html of 40 MB: above EMBED_BYTES (or
    with --figures link) the page links each from figures/, lazily, and says so; --figures embed
    embeds them at any size."""
    from dm_tune.cli import build_parser, main
    from dm_tune.reports import _html

    df = campaign()
    embedded = write_report(df, tmp_path / "embed", figures="auto")["index.html"]
    monkeypatch.setattr(_html, "EMBED_BYTES", 10_000)
    for how in ("auto", "link", "embed"):
        paths = write_report(df, tmp_path / how, figures=how)
        page = paths["index.html"].read_text()
        srcs = re.findall(r"<img src='([^']*)' alt='[^']*'" + ("" if how == "embed" else " loading='lazy'") + ">", page)
        assert len(srcs) == len(re.findall("<img ", page)) == len(list((tmp_path / how / "figures").glob("*.png")))
        if how == "embed":
            assert "linked from" not in page  # (at any size)
            assert all(src.startswith("data:image/png;base64,") for src in srcs)
            continue
        assert sorted(srcs) == sorted(f"figures/{p.name}" for p in (tmp_path / how / "figures").glob("*.png"))
        total = sum((tmp_path / how / src).stat().st_size for src in srcs)
        assert f"The {len(srcs)} figures ({total / 1e6:.1f} MB) are linked from figures/ beside this page" in page
        assert ("dm-tune report --figures embed embeds them" in page) == (how == "auto")
        assert len(page) < embedded.stat().st_size - total  # (base64 is 4/3 of the bytes)
    assert "linked from" not in embedded.read_text() and "data:image/png;base64," in embedded.read_text()
    with pytest.raises(ValueError, match="figures must be one of auto, embed, link, not 'some'"):
        write_report(df, tmp_path / "bad", figures="some")
    assert build_parser().parse_args(["report", "--figures", "link"]).figures == "link"
    with pytest.raises(SystemExit) as stop:
        main(["report", "--help"])
    monkeypatch.undo()
    assert stop.value.code == 0 and f"embedded up to {_html.EMBED_BYTES // 10**6} MB of figures" in " ".join(
        capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as stop:
        main(["report", "--figures", "some"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.replace("'", "") == ("dm-tune report: error: argument --figures: invalid choice: some "
                                     "(choose from auto, embed, link)")


def test_html_is_self_contained(report: dict[str, Path]) -> None:
    page = report["index.html"].read_text()
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == 12 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "http://" not in page and "https://" not in page and "<link" not in page
    assert "best test accuracy over training (optimistic)" in page
    # a list of the sections, each guideline linked to its setting's results (nothing linked to them)
    links, ids = re.findall(r"<a href='#([^']*)'>", page), set(re.findall(r" id='([^']*)'", page))
    assert links and set(links) <= ids, set(links) - ids
    assert [t for t in re.findall(r"<li><a href='#section-\d+'>([^<]*)</a></li>", page)] == list(SECTIONS)
    assert sum(link.startswith("setting-") for link in links) == 3


def test_html_renders_in_headless_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"cannot run: {' and '.join(missing)} not installed (both are needed; "
                    "bash scripts/setup.sh as root installs Debian's chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.support.wait import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(report["index.html"].resolve().as_uri())
        headings = [h.text for h in driver.find_elements("tag name", "h2")]
        assert headings == list(SECTIONS)
        assert driver.find_element("tag name", "h1").text == "DM tuning report"
        assert len(driver.find_elements("tag name", "h3")) >= 3 + 2  # settings + rules/trends
        images = driver.find_elements("tag name", "img")
        assert len(images) == 12
        widths = [driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
                  for img in images]
        assert all(w and w > 0 for w in widths), widths
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        # the figures linked from figures/ (--figures link), each read when scrolled to
        driver.get(write_report(campaign(), tmp_path / "linked", figures="link")["index.html"].resolve().as_uri())
        images = driver.find_elements("tag name", "img")
        assert len(images) == len(list((tmp_path / "linked" / "figures").glob("*.png"))) > 3
        for img in images:
            driver.execute_script("arguments[0].scrollIntoView()", img)
            WebDriverWait(driver, 10).until(lambda d: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img), img.get_attribute("src"))
        assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []
    finally:
        driver.quit()


@pytest.mark.parametrize("present", [("chromium",), ("chromium", "chromedriver")])
def test_setup_installs_the_browser_unless_both_binaries_are_there(tmp_path: Path, present: tuple[str, ...]) -> None:
    """scripts/browser.sh (run by setup.sh) with chromium but no chromedriver on PATH must still
    install (as root) or name what is missing. apt-get is a stub that records its arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in (*present, "apt-get"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "id").symlink_to(shutil.which("id"))
    proc = subprocess.run(["/bin/bash", "scripts/browser.sh"], cwd=Path(__file__).parents[1],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text() if log.exists() else ""
    if "chromedriver" in present:
        assert calls == "" and proc.stderr == ""
    elif os.geteuid() == 0:
        assert "apt-get install -y -qq chromium chromium-driver" in calls
    else:
        assert calls == "" and "chromedriver not found" in proc.stderr


def test_markdown_sections_become_escaped_html() -> None:
    from dm_tune.reports._html import markdown_html

    md = ("## Stability between two runs\n\nA: <a.json>  \nB: b.json\n\n| setting | Δ psi |\n|---|---|\n"
          "| digits & co | 0.1 |\n\n### Rules\n\n- one <rule>\n- two\n")
    page = markdown_html(md)
    assert page == ("<h2>Stability between two runs</h2><p>A: &lt;a.json&gt; B: b.json</p>"
                    "<table><tr><th>setting</th><th>Δ psi</th></tr><tr><td>digits &amp; co</td><td>0.1</td></tr>"
                    "</table><h3>Rules</h3><ul><li>one &lt;rule&gt;</li><li>two</li></ul>")


def test_markdown_entities_are_read_as_markdown_reads_them() -> None:
    """Only an entity that Markdown reads as one (with its ";") is a character in index.html:
    Python's html.unescape also reads "&copy" and "&lt" without one."""
    from dm_tune.reports._html import markdown_html
    from dm_tune.reports._text import md_cell, md_text

    for name in ("a &copy b", "R^2 0.10 &lt 0.5", "x &amp; y", "&#60;b>", "p < 0.05 & q >= 3", "<i>x</i> &lt;",
                 "<1@a.b>", "> x", "x &amp", "[x](http://e) ![i](http://e/p.png) [1, 2]"):
        assert markdown_html(f"- {md_text(name)}\n") == f"<ul><li>{html.escape(name)}</li></ul>"
        assert markdown_html(f"- {md_text(name)}; its\n") == f"<ul><li>{html.escape(name + '; its')}</li></ul>"
        cell = markdown_html(f"| h |\n|---|\n| {md_cell(name + ' | z')} |\n")
        assert cell == f"<table><tr><th>h</th></tr><tr><td>{html.escape(name + ' | z')}</td></tr></table>"
    # what CommonMark reads as markup (an email autolink, a block quote, an entity once a template's ";"
    # follows) is an entity; a comparison is not
    assert [md_text(t) for t in ("<1@a.b>", "<=x@y.z>", "> x", "x &amp", "a >= b, c < d", "x > y")] == [
        "&lt;1@a.b>", "&lt;=x@y.z>", "&gt; x", "x &amp;amp", "a >= b, c < d", "x > y"]
    # a link or an image from a store's name links nowhere and loads nothing; a range reads as written
    assert md_text("![i](http://e/p.png) [x](y) in [1.10, 3.98]") == (
        "![i]&#40;http://e/p.png) [x]&#40;y) in [1.10, 3.98]")


def test_report_takes_the_stability_and_validation_sections(report: dict[str, Path], tmp_path: Path) -> None:
    """`dm-tune report --stability --validation`: both sections appended to guidelines.md and
    index.html; a file of the wrong kind is one line naming the flag (exit 2)."""
    import argparse

    from dm_tune.reports._cli import _sections
    from dm_tune.reports._stability import compare

    doc = json.loads(report["guidelines.json"].read_text())
    stability = tmp_path / "stability.json"
    stability.write_text(json.dumps({"a": "runA.json", "b": "runB.json", **compare(doc, doc)}))
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"seeds": [0, 1], "verdict_rule": "paired t", "settings": []}))
    sections = _sections(argparse.Namespace(stability=str(stability), validation=str(validation)))
    assert [s.splitlines()[0] for s in sections] == ["## Stability between two runs", "## Validation of the recommendations"]
    out = write_report(campaign(), tmp_path / "r", None, sections)
    md, page = out["guidelines.md"].read_text(), out["index.html"].read_text()
    for text in (md, page):
        assert "Stability between two runs" in text and "Validation of the recommendations" in text
    assert "A: runA.json" in md and "Stability between two runs</h2>" in page

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": []}))
    proc = subprocess.run([DM_TUNE, "report", "--workspace", str(tmp_path), "--stability", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--stability {bad}: not a stability.json written by 'dm-tune stability'" in proc.stderr
    # the keys it looks for, but not what the command writes: one line too (it was a KeyError)
    bad.write_text(json.dumps({"settings": [], "rules": [], "summary": {}}))
    with pytest.raises(UserError, match=f"--stability {bad}: not a stability.json written by 'dm-tune stability' "
                                        r"\(at KeyError"):
        _sections(argparse.Namespace(stability=str(bad), validation=None))
    # the right keys holding other things went into the report ("Verdict: None. Trained: .")
    for doc, what in (({"settings": [], "seeds": "abc", "verdict_rule": None}, 'its seeds is "abc"'),
                      ({"settings": [], "seeds": [0, "1"], "verdict_rule": "paired t"}, 'its seeds is [0, "1"]'),
                      ({"settings": {}, "seeds": [0], "verdict_rule": "paired t"}, "its settings is {}")):
        bad.write_text(json.dumps(doc))
        with pytest.raises(UserError, match=re.escape(f"--validation {bad}: not a validation.json written by "
                                                      f"'dm-tune validate' ({what})")):
            _sections(argparse.Namespace(stability=None, validation=str(bad)))
    # a number no float holds (a hand-edited file): an OverflowError traceback
    arm = {"mean": 80.0, "std": 1.0, "n": 2}
    vs = {"mean_diff": 1.0, "std": 1.0, "n": 2, "verdict": "within noise"}
    entry = {"setting": "s", "recommendation": {"lam": 1.0, "beta": 8.0}, "arms": {a: {"runs": [{}, {}]} for a in
                                                                                   ("dm-recommended", "cce", "imae")},
             "summary": {"arms": {"dm-recommended": arm, "cce": {**arm, "mean": 10 ** 400}, "imae": arm},
                         "vs": {"cce": vs, "imae": vs}}}
    bad.write_text(json.dumps({"settings": [entry], "seeds": [0, 1], "verdict_rule": "paired t"}))
    with pytest.raises(UserError, match=re.escape(f"--validation {bad}: not a validation.json written by "
                                                  "'dm-tune validate' (at OverflowError")):
        _sections(argparse.Namespace(stability=None, validation=str(bad)))
