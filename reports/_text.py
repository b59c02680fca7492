"""Light text helpers shared by the guidelines, the schema and ``recommend`` (no pandas, no numpy):
the schema constants and how settings, accuracies and differences are written."""

from __future__ import annotations

import html
import re
from typing import Any

from dm_tune._names import wrong_label_fraction

SCHEMA_VERSION = 2   # 2: the response surface (``surface``) and its leave-one-setting-out check (``loso``)
# How the report analyses (the file's format is the schema's): 2 asks a rule's slope for p < 0.05, a
# refutation of the paper for a gap beyond seed noise, and marks capped leave-one-setting-out
# estimates; 3 adjusts the rules' p-values for the number of slopes tested (Holm) and measures the
# gap at the paper's mode on test; 4 measures that gap among arms of the best arm's class weighting
# (an unweighted arm at the paper's mode against a weighted best measured the weighting); 5
# recommends (leave-one-setting-out too) no cell for a gain above the best its class weighting's
# arms are predicted, and caps the predicted gain at the measured best of the settings it leans
# on; 6 counts a searched class weighting in a setting's importance (a parameter of fANOVA) and
# sensitivity (psi's and rho's ranges over the recommended arm's weighting, the weightings' apart),
# recommends for imbalanced data only weightings its arms ran there (leave-one-setting-out too),
# caps the gain predicted for a measured setting at its own measured best,
# and takes the spread of a verdict against a baseline as at least one test example's worth, as
# dm-tune validate does; 7 optimises the surface's kernel hyper-parameters on a subset of its rows
# above _surface.HYPERPARAMETER_ROWS (``surface.fitted.hyperparameter_rows`` says on how many) and
# keeps, from _loso.KEPT_ROWS surface rows up, the full fit's in leave-one-setting-out's refits
# (``loso.hyperparameters`` says which); 8 predicts a noise type the surface did not measure as the
# average over those it did, at its fraction of wrong labels (leave-one-setting-out's held-out
# settings of such a type too); a file without the field was written by an earlier report (1).
ANALYSIS_VERSION = 8


def analysis_note(version: int) -> str | None:
    """One line on a guidelines file of an older analysis version (None for the current one)."""
    if version >= ANALYSIS_VERSION:
        return None
    return (f"note: these guidelines were written by a report of analysis version {version}, this dm-tune's is "
            f"{ANALYSIS_VERSION} (what changed since: the README, under analysis_version): the recommendation is "
            "computed from them by this version; 'dm-tune report' writes them again")


ACCURACY_UNIT = "percentage points"
# A label file's rate as a setting measured it (on the training part, over its seeds) and as the
# file has it overall differ by a point or so: within this, recommend takes them as the same file's.
FILE_RATE_TOLERANCE = 0.02


def fraction_warning(noise: str, rate: float) -> str | None:
    """recommend's line on a noise type not measured whose rate is not its fraction of wrong labels
    (cifar100-superclass's, per paired subclass), which the measured types are compared at; else None."""
    fraction = wrong_label_fraction(noise, rate)
    return None if fraction == rate else (f"noise rate {num_text(rate)} of {noise} noise makes about {fraction:.0%} "
                                          "of the labels wrong: read against the measured types at that rate")


def rate_slack(noise: str) -> float:
    """How far outside a measured range of rates of ``noise`` a rate may lie and count as inside it:
    a label file's FILE_RATE_TOLERANCE, else rounding."""
    return FILE_RATE_TOLERANCE if noise == "file" else 1e-9
REFERENCE_BASELINE = "cce"   # the headline comparison in each sentence


def count_text(n: int, noun: str) -> str:
    """'1 configuration', '3 configurations'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def settings_text(n: int, kind: str = "") -> str:
    """'1 setting', '3 settings'; with a ``kind``, '3 held-out settings'."""
    return count_text(n, f"{kind} setting" if kind else "setting")


def metric_name(s: dict[str, Any]) -> str:
    """What a setting's scores are: accuracy, or mAP for a retrieval setting."""
    return "mAP" if s.get("task") == "retrieval" else "accuracy"


def setting_label(s: dict[str, Any]) -> str:
    rate = s.get("noise_rate") or 0.0
    noise = "clean labels" if s.get("noise") == "none" or rate == 0 else f"{rate * 100:.0f}% {s['noise']} noise"
    # For retrieval, num_classes counts the identities of the training split, the ones held out
    # for validation (by identity) included.
    data = (f"re-ID retrieval with {s['num_classes']} identities in the training split" if s.get("task") == "retrieval"
            else f"{s['num_classes']}-class data")
    parts = [f"{data} ({s.get('dataset', '?')}, {s.get('model', '?')})", noise]
    if s.get("imbalance", "none") != "none":
        parts.append(f"{s['imbalance']} imbalance {ratio_text(s.get('imbalance_ratio') or 1)}")
    if s.get("pretrained"):
        parts.append("pre-trained")
    if study := study_of(s):
        parts.append(f"study {study}")
    return ", ".join(parts)


def study_of(s: dict[str, Any]) -> str:
    """The study of a setting that two studies measured (its key ``KEY@STUDY``: each is a setting
    of its own, and the label must tell them apart); "" for the others."""
    return str(s.get("setting", "")).partition("@")[2]


def fmt_acc(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f}" + ("" if std is None else f" +/- {std:.1f}")


def num_text(x: float) -> str:
    """A user's number short where that says it exactly (100, 12.5, 0.4) and in full where it would
    not: 1.0000000001 is not 1, and a warning that "ratio 1 was not measured" contradicts itself."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def ratio_text(ratio: float) -> str:
    """An imbalance ratio as "R:1" (``num_text``: a ratio of 1.0000000001 is not 1:1, which reads as
    no imbalance)."""
    return num_text(ratio) + ":1"


def fmt_diff(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:+.1f}" + ("" if std is None else f" +/- {std:.1f}")


# What Markdown (CommonMark) reads as HTML, a link or a character reference: a "<" before anything
# but a space (a tag, a comment, a declaration, an autolink such as <1@a.b>), an "&" that starts an
# entity such as &lt; or &#60; (or would, with the ";" a template writes after the text), and a ">"
# that starts the text (a block quote, where the text starts a line or a list item); and "](", the
# middle of an inline link or image.
_ENTITY_NAME = r"(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]*)"
_ENTITY = re.compile("&" + _ENTITY_NAME + ";")
_STARTS_ENTITY = re.compile("&(?=" + _ENTITY_NAME + "(?:;|$))")
_OPENS_HTML = re.compile(r"<(?=\S)|^>")


def md_text(text: Any) -> str:
    """Text (a name from the store, a sentence of the report's) as one Markdown line. Only what
    Markdown would read as HTML, an autolink, an entity or a block quote is written as an entity:
    "<script>" as "&lt;script>" (a name holding <script> or <img> was raw HTML in guidelines.md),
    "&amp;" as "&amp;amp;". A comparison stays as written, "R^2 0.10 < 0.5" and ">= 0.05" (they read as
    "&lt;" and "&gt;=" in a terminal). An inline link or image, [text](url) or ![alt](url), is
    written "[text]&#40;url)": a name from the store links nowhere and loads no image where the file
    is rendered ("[1.10, 3.98]" stays as written). Other marks are left as they are: *stars* read as
    emphasis, and a renderer may still link a bare URL."""
    return _OPENS_HTML.sub(lambda m: "&lt;" if m.group(0) == "<" else "&gt;",
                           _STARTS_ENTITY.sub("&amp;", " ".join(str(text).split()))).replace("](", "]&#40;")


def md_unescape(markdown: str) -> str:
    """The text that ``md_text`` wrote: its entities as characters, and nothing else ("&copy" without
    its ";" is no entity in Markdown, though Python's ``html.unescape`` reads it as one)."""
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), markdown)


def md_cell(text: Any) -> str:
    """``md_text`` for a table cell: its pipes escaped (a name holding | split the row)."""
    return md_text(text).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines: the header, its rule and a line per row, every cell ``md_cell``."""
    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(md_cell(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def runs_phrase(prov: dict[str, Any], where: str = "") -> str:
    """How many runs a report read: "93 runs{where} (24 of them confirm-stage records of search runs,
    not trained again; 0 incomplete runs skipped)" (the records' count absent in an earlier report's)."""
    reused = prov.get("n_reused_runs")
    said = (f"{reused} of them confirm-stage records of search runs, not trained again; " if reused else "")
    return f"{prov['n_runs']} runs{where} ({said}{prov['n_skipped_runs']} incomplete runs skipped)"
