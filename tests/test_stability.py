"""dm-tune stability: two hand-made guidelines documents compared (regions overlapping or not,
rules holding in one run only), missing keys named, and one call of the command."""

from __future__ import annotations

import copy
import json
import math
import re
import os
from pathlib import Path
from typing import Any

import pytest

from dm_tune.cli import main
from dm_tune.errors import UserError
from dm_tune.reports._stability import brief, check_doc, compare, overlaps, to_markdown

GROUP = {"noise": "symmetric", "num_classes": 10, "imbalance": "none", "pretrained": False}


def setting(name: str, psi: float, rho: float, psi_range: list[float], rho_range: list[float],
            gain: float = 5.0) -> dict[str, Any]:
    return {"setting": name, "psi": psi, "rho": rho, "lam": psi / (1 - psi), "beta": 8.0,
            "psi_range": psi_range, "rho_range": rho_range,
            "vs_baselines": {"cce": {"mean_diff": gain, "std": 1.0, "n": 3}}}


def rule(knob: str, supported: bool, b: float, kind: str = "noise_rate", group: dict | None = None) -> dict[str, Any]:
    return {"kind": kind, "knob": knob, "x": "noise_rate", "group": GROUP if group is None else group,
            "a": 0.5, "b": b, "r2": 0.9 if supported else 0.1, "n": 4, "supported": supported,
            "reason": "" if supported else "R^2 0.10 < 0.5", "text": f"{knob} rule"}


def docs() -> tuple[dict[str, Any], dict[str, Any]]:
    a = {"schema_version": 99, "settings": [
        setting("s-overlap", 0.50, 4.0, [0.40, 0.60], [2.0, 6.0], gain=10.0),
        setting("s-apart", 0.20, 1.0, [0.10, 0.30], [0.5, 1.5]),
        setting("s-only-a", 0.5, 2.0, [0.4, 0.6], [1.0, 3.0]),
    ], "rules": [rule("psi", True, 0.4), rule("rho", True, -2.0),
                 rule("psi", True, 0.3, kind="lambda_beta", group={}),
                 rule("rho", False, 1.0, group={**GROUP, "noise": "pair"})]}
    b = {"schema_version": 1, "settings": [
        setting("s-overlap", 0.55, 2.0, [0.58, 0.70], [1.0, 2.5], gain=8.0),  # ranges touch: [0.4,0.6] & [0.58,0.7]
        setting("s-apart", 0.70, -1.0, [0.65, 0.75], [-2.0, 0.0]),
        setting("s-only-b", 0.5, 2.0, [0.4, 0.6], [1.0, 3.0]),
    ], "rules": [rule("psi", True, 0.2), rule("rho", False, -1.0),
                 rule("psi", True, -0.3, kind="lambda_beta", group={}),
                 rule("rho", False, 2.0, group={**GROUP, "noise": "pair"})]}
    return a, b


def test_settings_in_both_are_compared():
    result = compare(*docs())
    by_name = {c["setting"]: c for c in result["settings"]}
    assert set(by_name) == {"s-apart", "s-overlap"}
    near = by_name["s-overlap"]
    assert near["d_psi"] == pytest.approx(0.05) and near["d_rho"] == pytest.approx(2.0)
    assert near["d_log_rho"] == pytest.approx(math.log(2.0))
    assert near["psi_overlap"] and near["rho_overlap"] and near["region_overlap"]
    assert near["a"]["gain_vs_cce"] == {"mean_diff": 10.0, "std": 1.0, "n": 3}
    assert near["b"]["gain_vs_cce"]["mean_diff"] == 8.0
    apart = by_name["s-apart"]
    assert not apart["psi_overlap"] and not apart["rho_overlap"] and not apart["region_overlap"]
    assert apart["d_rho"] == pytest.approx(2.0) and apart["d_log_rho"] is None  # rho <= 0: no log
    assert result["only_in_a"] == ["s-only-a"] and result["only_in_b"] == ["s-only-b"]
    summary = result["summary"]
    assert summary["n_common"] == 2 and summary["region_overlap_fraction"] == 0.5
    assert summary["median_d_psi"] == pytest.approx((0.05 + 0.5) / 2)
    assert summary["median_d_log_rho"] == pytest.approx(math.log(2.0))


def test_one_run_compared_with_itself_or_runs_sharing_no_setting_are_warned_about():
    """The same file twice read "overlap in 100%", and two files of no common setting all "n/a",
    each without a word."""
    a, b = docs()
    assert "same guidelines" not in brief(compare(a, b)) and "share no setting" not in brief(compare(a, b))
    itself = brief(compare(a, copy.deepcopy(a)))
    assert "warning: A and B are the same guidelines, one run compared with itself" in itself
    apart = {**b, "settings": [s for s in b["settings"] if s["setting"] == "s-only-b"]}
    result = compare(a, apart)
    assert result["summary"]["n_common"] == 0 and not result["identical"]
    assert "warning: the two runs share no setting: no setting compared" in brief(result)
    # and the written files say so too (stability.md, the report's section): only the terminal did
    assert "**A and B are the same guidelines, one run compared with itself: not a test of stability**" in \
        to_markdown(compare(a, copy.deepcopy(a)))
    assert "**The two runs share no setting: no setting compared**" in to_markdown(result)
    assert "same guidelines" not in to_markdown(compare(a, b)) and "share no setting" not in to_markdown(compare(a, b))


def test_a_setting_trained_for_other_epochs_in_the_two_runs_is_named():
    """Two runs of one campaign differ only in their search order: a setting trained for 60 epochs in
    one and 30 in the other differs for another reason. Settings from before guidelines recorded
    their epochs (no key) are compared as they are."""
    a, b = docs()
    assert compare(a, b)["different_training"] == []
    a["settings"][0]["epochs"], b["settings"][0]["epochs"] = 60, 30
    a["settings"][1]["epochs"] = 60  # s-apart: unknown in B
    result = compare(a, b)
    assert result["different_training"] == ["s-overlap: 60 vs 30 epochs"]
    assert "**Trained differently in the two runs**" in to_markdown(result)


def test_files_of_two_schema_versions_are_compared_with_a_warning():
    """A file an older report wrote (another schema version: other ranges, no response surface) was
    compared without a word, its differences read as the search's instability."""
    a, b = docs()
    b["schema_version"] = a["schema_version"]
    same = compare(a, b)
    assert not same["different_schema"] and "schema" not in brief(same) and "schema" not in to_markdown(same)
    b["schema_version"] = 1
    result = compare(a, b)
    assert result["different_schema"] and result["schema_versions"] == [99, 1]
    assert "warning: the two files are of guidelines schema versions 99 and 1" in brief(result)
    assert "**the two files are of guidelines schema versions 99 and 1" in to_markdown(result)
    del b["schema_version"]
    assert "schema versions 99 and unrecorded" in brief(compare(a, b))
    # one schema, but a report that analyses otherwise (rules without a p-value): warned too
    b["schema_version"] = a["schema_version"]
    a["analysis_version"] = 2
    result = compare(a, b)
    assert not result["different_schema"] and result["analysis_versions"] == [2, 1]
    assert "warning: the two files were written by reports that analyse differently (analysis versions 2 and 1" \
        in brief(result) and "analysis versions 2 and 1" in to_markdown(result)


def test_a_region_overlaps_only_when_both_ranges_do():
    a, b = docs()
    b["settings"][0]["rho_range"] = [6.5, 9.0]  # psi ranges still overlap
    near = {c["setting"]: c for c in compare(a, b)["settings"]}["s-overlap"]
    assert near["psi_overlap"] and not near["rho_overlap"] and not near["region_overlap"]
    assert overlaps([0.0, 1.0], [1.0, 2.0]) and not overlaps([0.0, 1.0], [1.01, 2.0])


def test_a_rule_is_claimed_only_when_supported_in_both_with_one_sign():
    result = compare(*docs())
    by_kind = {(r["kind"], r["knob"], r["group"].get("noise")): r for r in result["rules"]}
    held = by_kind[("noise_rate", "psi", "symmetric")]
    assert (held["a"], held["b"], held["verdict"]) == ("supported (+)", "supported (+)", "holds in both")
    one = by_kind[("noise_rate", "rho", "symmetric")]
    assert (one["a"], one["b"], one["verdict"]) == ("supported (-)", "not supported", "only in A")
    flipped = by_kind[("lambda_beta", "psi", None)]
    assert flipped["verdict"] == "opposite signs"
    assert by_kind[("noise_rate", "rho", "pair")]["verdict"] == "in neither"
    assert result["summary"]["rules_claimed"] == 1 and result["summary"]["rules_total"] == 4


def test_a_retrieval_rule_is_not_taken_for_the_classification_rule_of_the_same_kind():
    """Both tasks have a lambda-beta rule over all settings: two rules, each compared with its own."""
    a, b = docs()
    for doc, slope in ((a, 0.5), (b, 0.6)):
        doc["rules"].append(rule("psi", True, slope, kind="lambda_beta", group={}) | {"task": "retrieval"})
    result = compare(a, b)
    rows = {r["rule"]: r for r in result["rules"] if r["kind"] == "lambda_beta"}
    assert len(rows) == 2 and result["summary"]["rules_total"] == 5
    retrieval = next(r for rid, r in rows.items() if rid.startswith("[retrieval] "))
    assert retrieval["verdict"] == "holds in both"
    classification = next(r for rid, r in rows.items() if not rid.startswith("["))
    assert classification["verdict"] == "opposite signs"


def test_a_rule_missing_from_one_run_is_absent_there():
    a, b = docs()
    b["rules"] = b["rules"][1:]
    rows = {r["rule"]: r for r in compare(a, b)["rules"]}
    (row,) = [r for r in rows.values() if r["kind"] == "noise_rate" and r["knob"] == "psi"]
    assert (row["a"], row["b"], row["verdict"]) == ("supported (+)", "absent", "only in A")


def test_markdown_has_the_table_and_the_rule_verdicts():
    md = to_markdown(compare(*docs()), "run1.json", "run2.json")
    assert md.startswith("## Stability between two runs")
    assert "| s-overlap | 0.500 [0.40, 0.60] | 0.550 [0.58, 0.70] |" in md
    assert "| s-apart |" in md and "| no | no |" in md
    assert "Only in A: s-only-a." in md
    assert "holds in both" in md and "only in A" in md and "opposite signs" in md
    assert "| +10.00 ± 1.00 (n=3) | +8.00 ± 1.00 (n=3) |" in md


def test_names_are_escaped_in_the_markdown_and_its_html():
    """A setting (or study) named with <script>, & and | went into guidelines.md raw, and its | split
    the table row into one cell more than the header (in index.html too)."""
    from dm_tune.reports._html import markdown_html

    nasty = "tw<i>n&amp; | <script>alert(1)</script>"
    a, b = docs()
    a["settings"][0]["setting"] = b["settings"][0]["setting"] = nasty
    a["settings"][2]["setting"] = nasty + " only"
    md = to_markdown(compare(a, b), "<a>.json", "b.json")
    assert "<script>" not in md and "<i>" not in md and "<a>" not in md
    row = next(line for line in md.splitlines() if "alert(1)" in line and line.startswith("| "))
    header = next(line for line in md.splitlines() if line.startswith("| setting | psi A"))
    assert len(re.split(r"(?<!\\)\|", row)) == len(header.split("|"))
    assert "Only in A: tw&lt;i>n&amp;amp; | &lt;script>alert(1)&lt;/script> only." in md
    page = markdown_html(md)
    assert "<td>tw&lt;i&gt;n&amp;amp; | &lt;script&gt;alert(1)&lt;/script&gt;</td><td>0.50" in page
    assert "<script>" not in page and "A: &lt;a&gt;.json" in page


def test_an_arm_not_confirmed_says_so_with_its_seeds():
    """A report of a search stopped before its confirm stage recommends a search-stage arm (fewer
    seeds): the stability table gave it as any other, with no seed count."""
    a, b = docs()
    b["settings"][0].update(stage="search", n_seeds=1)
    md = to_markdown(compare(a, b))
    assert "| s-overlap | 0.500 [0.40, 0.60] | 0.550 [0.58, 0.70] (search stage, 1 seed(s), not confirmed) |" in md


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("rules"), "missing key 'rules'"),
    (lambda d: d["settings"][1].pop("psi_range"), "settings[1]: missing key 'psi_range'"),
    (lambda d: d["settings"][0]["vs_baselines"]["cce"].pop("std"), "missing key 'vs_baselines.cce.std'"),
    # "no" was taken as true: a rule counted as supported that is not
    (lambda d: d["rules"][0].update(supported="no"), "rules[0]: supported must be true or false, got 'no'"),
    (lambda d: d["settings"][0].update(rho_range=[1.0]), "rho_range must be a [low, high] pair"),
    (lambda d: d["rules"][2].pop("supported"), "rules[2]: missing key 'supported'"),
    # a surface block is checked as the guidelines schema checks it (it was a KeyError: 'encoding')
    (lambda d: d.update(surface={"task": "classification"}), "surface.encoding: "),
    # wrong types: each was a traceback further on (unhashable, format code, join)
    (lambda d: d["settings"][0].update(setting=["a"]), "settings[0]: setting must be a non-empty string, got ['a']"),
    (lambda d: d["settings"][0]["vs_baselines"]["cce"].update(mean_diff="x"),
     "vs_baselines.cce.mean_diff must be a number or null, got 'x'"),
    (lambda d: d["rules"][0].update(group=["noise"]), "rules[0]: group must be an object of field: value"),
    (lambda d: d["settings"].append(copy.deepcopy(d["settings"][0])), "appears twice"),
    (lambda d: d["settings"][0].update(psi_range=[0.6, 0.2]), "low <= high"),
])
def test_a_missing_key_is_named(edit, message):
    doc = copy.deepcopy(docs()[0])
    edit(doc)
    with pytest.raises(UserError, match="A.json") as info:
        check_doc(doc, "A.json")
    assert message in str(info.value)


def test_the_command_writes_json_and_markdown(tmp_path: Path, capsys):
    a, b = docs()
    a["settings"][0]["vs_baselines"]["cce"]["std"] = float("nan")  # one seed: no spread; written as null
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "out"
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 setting(s) in both runs" in printed and "rules claimed" in printed
    text = (out / "stability.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert doc["summary"]["region_overlap_fraction"] == 0.5 and doc["a"].endswith("a.json")
    assert (out / "stability.md").read_text().startswith("## Stability between two runs")


def test_a_second_comparison_into_one_out_waits_for_the_first(tmp_path: Path, capsys):
    """stability.json and stability.md are written one after the other: two comparisons into one
    --out could leave one's json beside the other's md. The second waits for the first's lock."""
    import subprocess
    import time

    from dm_tune._locks import held
    from tests.conftest import DM_TUNE

    a, b = docs()
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "out"
    out.mkdir()
    with held(out / ".stability.lock", "{holder}"):  # as another dm-tune stability holds it while it writes
        proc = subprocess.Popen([DM_TUNE, "stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # (its lines as printed)
        assert proc.stdout.readline()  # it has compared (and printed) and goes on to write
        time.sleep(1)
        assert proc.poll() is None and not (out / "stability.json").exists()  # waiting, nothing written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads((out / "stability.json").read_text())["a"] == str(tmp_path / "a.json")


def test_an_unwritable_out_is_one_line(tmp_path: Path, capsys):
    a, b = docs()
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", "/proc/stability"]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == "dm-tune: error: --out /proc/stability: cannot write in /proc (No such file or directory)"
    assert out == ""  # refused before the comparison is printed, not after
    with pytest.raises(SystemExit) as e:  # an empty --out had written nothing, silently
        main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", ""])
    assert e.value.code == 2 and "argument --out: expected a path, not ''" in capsys.readouterr().err
    (tmp_path / "o2" / "stability.md").mkdir(parents=True)  # it printed everything and wrote the JSON, then failed
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "o2")]) == 2
    out, err = capsys.readouterr()
    assert err.strip().endswith("o2/stability.md is not a file (stability writes it); use another --out") and out == ""
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["stability.md"]
    (tmp_path / "a.json").write_text("{")  # a broken input: refused, and no --out folder made for nothing
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_the_command_names_a_broken_file(tmp_path: Path, capsys):
    a, _ = docs()
    del a["settings"][0]["rho"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "settings[0]: missing key 'rho'" in err


def test_two_surfaces_are_compared_setting_by_setting():
    """Two runs of a synthetic campaign (same optimum, different noise): their surfaces'
    recommendations agree on every setting; a run whose optimum moved does not overlap."""
    from tests.test_reports_surface import campaign

    from dm_tune.reports._surface import fit_surface

    a = {"settings": [], "rules": [], "surface": fit_surface(campaign(noise_sd=0.3))}
    b = {"settings": [], "rules": [], "surface": fit_surface(campaign(noise_sd=0.6))}
    result = compare(a, b)["surfaces"]
    assert result["summary"]["n_common"] == 4
    assert result["summary"]["region_overlap_fraction"] == 1.0 and result["summary"]["median_d_psi"] < 0.1
    moved = copy.deepcopy(b)
    moved["surface"]["model"]["X"] = [[x[0] - 0.4, *x[1:]] for x in moved["surface"]["model"]["X"]]
    far = compare(a, moved)["surfaces"]
    assert far["summary"]["median_d_psi"] > 0.3 and far["summary"]["region_overlap_fraction"] == 0.0
    assert "### The response surfaces' recommendations" in to_markdown(compare(a, b))


def test_a_damaged_surface_block_is_one_line_naming_its_file(tmp_path: Path, capsys):
    """No class weightings left in the encoding of a surface fitted on imbalanced settings (the
    schema cannot see it; recommend refuses it in one line): the comparison ended in a numpy traceback."""
    shipped = Path(__file__).parents[1] / "reports" / "default_guidelines.json"
    bad = json.loads(shipped.read_text())
    bad["surface"]["encoding"]["class_weightings"] = []
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["stability", str(tmp_path / "bad.json"), str(shipped)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'bad.json'}: the surface block cannot be used" in err and "dm-tune report" in err


def test_a_document_nested_too_deeply_is_one_line_for_every_reader(tmp_path: Path, capsys):
    """JSON nested 100,000 deep: a RecursionError traceback from stability, recommend and report."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    shipped = Path(__file__).parents[1] / "reports" / "default_guidelines.json"
    for argv in (["stability", str(deep), str(shipped)],
                 ["recommend", "--num-classes", "10", "--noise-rate", "0.2", "--guidelines", str(deep)]):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and "nested too deeply" in err, (argv, err)


def test_recommend_refuses_the_damaged_guidelines_stability_refuses(tmp_path: Path) -> None:
    """A setting without its 'setting' name, or one listed twice: stability refused them, recommend
    recommended from them. One check now, the same line from both."""
    from dm_tune.reports._recommend import recommend
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines
    from dm_tune.reports._stability import load_doc

    shipped = json.loads(default_guidelines_path().read_text(encoding="utf-8"))
    nameless, twice = copy.deepcopy(shipped), copy.deepcopy(shipped)
    del nameless["settings"][0]["setting"]
    twice["settings"].append(copy.deepcopy(twice["settings"][0]))
    for doc, problem in ((nameless, "settings[0]: missing key 'setting'"),
                         (twice, f"settings[{len(shipped['settings'])}]: setting "
                                 f"{shipped['settings'][0]['setting']!r} appears twice")):
        path = tmp_path / "g.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(UserError) as from_stability:
            load_doc(path)
        with pytest.raises(UserError) as from_load:
            load_guidelines(path)
        with pytest.raises(UserError) as from_recommend:
            recommend(doc, num_classes=10, noise_type="symmetric", noise_rate=0.3)
        assert str(from_stability.value) == f"{path}: {problem}"
        assert str(from_load.value) == f"guidelines file {path}: {problem}"
        assert str(from_recommend.value) == f"the guidelines: {problem}"


def test_an_out_whose_stability_file_is_an_input_is_refused(tmp_path: Path, capsys):
    """--out DIR with DIR/stability.json as A (or .md as B, or a link to one) replaced that input
    with the comparison: the guidelines it was read from were lost."""
    a, b = docs()
    (tmp_path / "stability.json").write_text(json.dumps(a))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "stability.md").write_text(json.dumps(b))
    (tmp_path / "link").mkdir()
    os.symlink(tmp_path / "stability.json", tmp_path / "link" / "stability.json")
    before = {p: p.read_text() for p in (tmp_path / "stability.json", tmp_path / "other" / "stability.md")}
    for args, hit, value, flag in (
            ([str(tmp_path / "stability.json"), str(tmp_path / "other" / "stability.md"), "--out", str(tmp_path)],
             "stability.json", str(tmp_path / "stability.json"), "A.json"),
            ([str(tmp_path / "stability.json"), str(tmp_path / "other" / "stability.md"), "--out",
              str(tmp_path / "other" / ".")], "stability.md", str(tmp_path / "other" / "stability.md"), "B.json"),
            ([str(tmp_path / "stability.json"), str(tmp_path / "other" / "stability.md"), "--out",
              str(tmp_path / "link")], "stability.json", str(tmp_path / "stability.json"), "A.json")):
        assert main(["stability", *args]) == 2
        out, err = capsys.readouterr()
        assert err.strip() == (f"dm-tune: error: --out {args[-1]}: its {hit} is the input {value} ({flag}); "
                               "write the result elsewhere") and out == ""
    assert {p: p.read_text() for p in before} == before
    assert main(["stability", str(tmp_path / "stability.json"), str(tmp_path / "other" / "stability.md"),
                 "--out", str(tmp_path / "elsewhere")]) == 0


def test_a_stability_or_validation_file_given_as_guidelines_is_named(tmp_path: Path, capsys):
    """recommend --guidelines stability.json said "schema_version: missing; this field is required"."""
    a, b = docs()
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["stability", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "s")]) == 0
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"verdict_rule": "wins/loses when ...", "arms": [], "seeds": [0],
                                      "settings": [], "summary": {}}))
    capsys.readouterr()
    for path, what in ((tmp_path / "s" / "stability.json", "a stability.json written by 'dm-tune stability'"),
                       (validation, "a validation.json written by 'dm-tune validate'")):
        assert main(["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--guidelines", str(path)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"dm-tune: error: guidelines file {path}: this is {what}, not guidelines; pass the guidelines.json "
            "that 'dm-tune report' writes (WORKSPACE/report)")
