"""``dm-tune report`` and ``dm-tune recommend``: parsers and handlers for dm_tune/cli.py.

Handlers return an exit code and raise UserError for user mistakes (the caller prints it as one
line and exits 2). Heavy imports (pandas, matplotlib, mlflow) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dm_tune.errors import (UserError, float_argument, int_argument, output_path, path_argument, read_input,
                            remove_write_leftovers, resolve_path, split_imbalance, text_argument)

DEFAULT_WORKSPACE = "./dmtune-runs"


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report``: MLflow outcomes of ``dm-tune search`` -> HTML report + guidelines."""
    p = subparsers.add_parser(
        "report", help="turn search outcomes (MLflow) into an HTML report and guidelines",
        description="Read the runs of 'dm-tune search' from MLflow and write index.html, guidelines.md, "
                    "guidelines.json and figures/ (final test accuracies, chosen on validation accuracy).")
    p.add_argument("--workspace", type=path_argument, default=DEFAULT_WORKSPACE,
                   help=f"search workspace (default {DEFAULT_WORKSPACE}); its MLflow store is WORKSPACE/mlflow.db")
    p.add_argument("--tracking-uri", type=text_argument("an MLflow tracking URI"),
                   help="MLflow tracking URI (overrides --workspace's store), e.g. http://host:5000")
    p.add_argument("--experiment", action="append", metavar="NAME",
                   help="study (MLflow experiment) to include; repeatable (default: every one with dm-tune runs)")
    p.add_argument("--out", type=path_argument, help="output directory (default WORKSPACE/report)")
    p.add_argument("--stability", metavar="JSON", type=path_argument,
                   help="stability.json of 'dm-tune stability': add its section")
    p.add_argument("--validation", metavar="JSON", type=path_argument,
                   help="validation.json of 'dm-tune validate': add its section")
    p.add_argument("--loso", default="auto", choices=("auto", "refit", "kept"),
                   help="leave-one-setting-out's refits of the surface: re-optimise their kernel hyper-parameters "
                        "(refit), keep the full fit's (kept: nothing optimised, for thousands of arms), or "
                        "auto (default): kept from 512 surface rows up")
    p.add_argument("--figures", default="auto", choices=("auto", "embed", "link"),
                   help="the figures in index.html: embedded in it (embed), linked from figures/ beside it (link), "
                        "or auto (default): embedded up to 8 MB of figures in all (about 100 settings)")
    p.set_defaults(func=report_command)
    return p


def add_recommend_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``recommend``: DM (lambda, beta) for a new dataset from measured guidelines."""
    p = subparsers.add_parser(
        "recommend", help="recommend DM's lambda and beta for a dataset from measured guidelines",
        description="Predict DM's best mode, spread and class weighting for your data from the response surface "
                    "a guidelines file holds (fitted across its measured settings), with the region within 1 point "
                    "and the predicted gain over CCE; retrieval interpolates between measured settings.")
    p.add_argument("--num-classes", type=int_argument, required=True, help="number of classes (>= 2)")
    p.add_argument("--noise-type", "--noise", dest="noise_type", default="symmetric",
                   help="none, symmetric (default), pair, cifar100-superclass, file (real noise)")
    p.add_argument("--noise-rate", type=float_argument, required=True,
                   help="the noise's rate as 'dm-tune train --noise-rate' takes it, in [0, 1): the estimated "
                        "fraction of wrong labels for symmetric, pair and file; for cifar100-superclass the rate "
                        "of each paired subclass (0.4 makes about 16%% of all labels wrong)")
    p.add_argument("--imbalance", default="none",
                   help="none (default), longtail or step; or KIND:RATIO, as dm-tune search takes it (step:10)")
    p.add_argument("--imbalance-ratio", type=float_argument,
                   help="largest / smallest class size (default 1)")
    p.add_argument("--task", default="classification",
                   help="classification (default) or retrieval (re-ID; --num-classes is then the number of "
                        "identities in the training split): only settings of this task are used")
    p.add_argument("--dataset", type=text_argument("a dataset name"),
                   help="the dataset, when it is one the guidelines measured (e.g. digits); otherwise leave it out")
    p.add_argument("--guidelines", metavar="FILE", type=path_argument,
                   help="guidelines.json written by 'dm-tune report' (default: the file shipped with dm-tune)")
    p.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    p.set_defaults(func=recommend_command)
    return p


def tracking_uri_for(args: argparse.Namespace) -> str:
    if args.tracking_uri:
        return str(args.tracking_uri)
    workspace = resolve_path(args.workspace, "--workspace")
    store = workspace / "mlflow.db"
    elsewhere = [] if store.exists() else _tracked_elsewhere(workspace)
    if elsewhere:  # (load_runs would say "run 'dm-tune search' first", and it has run)
        raise UserError(f"no MLflow store at {store.as_posix()}: the searches of {workspace} record their runs at "
                        f"{' and '.join(elsewhere)}; pass --tracking-uri {elsewhere[0]}")
    return f"sqlite:///{store.as_posix()}"


def _tracked_elsewhere(workspace: Path) -> list[str]:
    """The tracking URIs other than the workspace's own store that its studies began with (each
    search keeps its study's in ``studies/NAME.places``)."""
    uris = set()
    for path in (workspace / "studies").glob("*.places"):
        try:
            uri = json.loads(path.read_text(encoding="utf-8")).get("tracking_uri")
        except (OSError, ValueError, AttributeError):  # a damaged one: the search that reads it says so
            continue
        if isinstance(uri, str):
            uris.add(uri)
    return sorted(uris)


def report_command(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from dm_tune._tracking_server import quieten_store_migrations
    from dm_tune.reports._analysis import recommended_run_ids
    from dm_tune.reports._html import write_report
    from dm_tune.reports._load import load_histories, load_runs

    quieten_store_migrations()
    sections = _sections(args)  # bad --stability/--validation files stop the report before it reads anything
    out = resolve_path(args.workspace, "--workspace") / "report"
    if args.out or out.parent.is_dir():  # (a missing workspace is load_runs' error: no store there)
        out = output_path("--out" if args.out else "--workspace", args.out or str(out), directory=True)
    from dm_tune._locks import held, refuse_if_held

    busy = f"{out}: another dm-tune report is writing there ({{holder}}); wait for it to end or use another --out"
    refuse_if_held(out / ".report.lock", busy)  # (before reading the runs; held decides)
    uri = tracking_uri_for(args)
    df = load_runs(uri, args.experiment)
    histories = None
    try:
        histories = load_histories(uri, recommended_run_ids(df))
    except (MlflowException, OSError) as exc:  # the weight curves are optional: report without them
        print(f"dm-tune: warning: no metric histories ({exc}); skipping the weight-over-training figures",
              file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with held(out / ".report.lock", busy):
            remove_write_leftovers(out, ("guidelines.json", "guidelines.md", "index.html"))
            remove_write_leftovers(out / "figures", ("*.png",))
            # one report's files, not a mix of two
            paths = write_report(df, out, histories, sections, loso=args.loso, figures=args.figures)
            doc = json.loads(paths["guidelines.json"].read_text(encoding="utf-8"))  # before another report's
    except OSError as e:
        raise UserError(f"could not write the report into {out} ({e.strerror or e})") from None
    from dm_tune.reports._text import runs_phrase

    print(runs_phrase(doc["provenance"], f" from {', '.join(doc['provenance']['experiments'])}"))
    for s in doc["settings"]:
        print(f"- {s['guideline']}")
    for u in doc.get("unresolved", []):  # (only the files said why a setting got no guideline)
        print(f"- {u['setting']}: no recommendation ({u['reason'] or 'no usable DM runs'})")
    if doc.get("surface"):
        from dm_tune.reports._surface import arms_phrase

        n = len(doc["surface"]["settings"])
        print(f"response surface: {arms_phrase(doc['surface'])} (each its mean over seeds) of {n} "
              f"setting{'s' if n != 1 else ''}")
    if doc.get("loso"):
        from dm_tune.reports._guidelines import loso_summary_text

        print(f"leave-one-setting-out: {loso_summary_text(doc['loso']['summary'])}")
    for name in ("index.html", "guidelines.md", "guidelines.json"):
        print(f"{name}: {paths[name]}")
    return 0


def _sections(args: argparse.Namespace) -> list[str]:
    """The Markdown sections of --stability and --validation (their commands' JSON outputs)."""
    sections = []
    for flag, path in (("--stability", args.stability), ("--validation", args.validation)):
        if not path:
            continue
        try:
            doc = json.loads(read_input(Path(path), flag, "a JSON file"))
        except FileNotFoundError:
            raise UserError(f"{flag} {path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{flag} {path}: cannot read it as JSON ({exc})") from None
        except RecursionError:
            raise UserError(f"{flag} {path}: nested too deeply to read") from None
        if flag == "--stability":
            from dm_tune.reports._stability import to_markdown

            what, keys = "a stability.json written by 'dm-tune stability'", {"settings": list, "rules": list,
                                                                               "summary": dict}
            render = lambda d: to_markdown(d, str(d.get("a", "A")), str(d.get("b", "B")))  # noqa: E731
        else:
            from dm_tune.validate import to_markdown as render

            what, keys = "a validation.json written by 'dm-tune validate'", {"settings": list, "seeds": list,
                                                                             "verdict_rule": str}
        if not (isinstance(doc, dict) and keys.keys() <= set(doc)):
            raise UserError(f"{flag} {path}: not {what}")
        # (the right keys holding other things went into the report: "Verdict: None. Trained: .")
        wrong = next((k for k, kind in keys.items() if not isinstance(doc[k], kind)), None)
        if wrong is None and flag == "--validation" and not all(type(x) is int for x in doc["seeds"]):
            wrong = "seeds"
        if wrong is not None:
            raise UserError(f"{flag} {path}: not {what} (its {wrong} is {json.dumps(doc[wrong])[:80]})")
        try:
            sections.append(render(doc))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise UserError(f"{flag} {path}: not {what} (at {type(exc).__name__}: {exc})") from None
    return sections


def train_command(args: argparse.Namespace, rec: Any) -> str:
    """The `dm-tune train` line for a recommendation: the query's setting (noise, imbalance, the
    dataset where it is one dm-tune reads) and DM's knobs; placeholders in capitals for what the
    query cannot say (the data's folder, a label file). It trained the embedded digits, clean and
    balanced, where the knobs alone were printed."""
    from dm_tune._names import DATASET_NAMES, DATASET_ROOTS

    parts = ["dm-tune train"]
    if args.dataset in DATASET_NAMES:
        parts += ["--dataset", args.dataset] + (["--data-root", "DIR"] if DATASET_ROOTS[args.dataset] else [])
    else:
        parts += ["--dataset", "DATASET", "--data-root", "DIR"]
    if args.noise_type == "file":
        parts += ["--noise", "file", "--noise-file", "LABELS"]
    elif args.noise_type != "none" and args.noise_rate:
        parts += ["--noise", args.noise_type, "--noise-rate", f"{args.noise_rate:g}"]
    if args.imbalance != "none":
        parts += ["--imbalance", args.imbalance, "--imbalance-ratio", f"{args.imbalance_ratio:g}"]
    parts += ["--method", "dm", "--lam", f"{rec.lam:.4g}", "--beta", f"{rec.beta:.4g}"]
    if rec.class_weighting != "none":
        parts += ["--class-weighting", rec.class_weighting]
    return " ".join(parts)


def recommend_command(args: argparse.Namespace) -> int:
    from dm_tune.reports._recommend import _check_inputs, recommend
    from dm_tune.reports._schema import default_guidelines_path, load_guidelines
    from dm_tune.reports._text import ratio_text

    split_imbalance(args)
    if args.imbalance_ratio is None:
        args.imbalance_ratio = 1.0
    # (named by their flags here; recommend() checks them again under its parameters' names)
    _check_inputs(args.num_classes, args.noise_type, args.noise_rate, args.imbalance, args.imbalance_ratio,
                  {k: "--" + k.replace("_", "-") for k in ("num_classes", "noise_rate", "noise_type", "imbalance",
                                                           "imbalance_ratio", "task", "dataset")},
                  task=args.task, dataset=args.dataset)

    path = Path(args.guidelines) if args.guidelines else default_guidelines_path()
    if not args.guidelines and not path.is_file():
        raise UserError(f"no guidelines are shipped yet ({path}); pass --guidelines FILE, e.g. the "
                        "guidelines.json that 'dm-tune report' writes into WORKSPACE/report")
    rec = recommend(load_guidelines(path), num_classes=args.num_classes, noise_type=args.noise_type,
                    noise_rate=args.noise_rate, imbalance=args.imbalance, imbalance_ratio=args.imbalance_ratio,
                    task=args.task, dataset=args.dataset)
    if args.json:
        print(json.dumps({**rec.to_dict(), "guidelines": str(path)}, indent=2))
        return 0
    what = "identities in the training split (retrieval)" if args.task == "retrieval" else "classes"
    from dm_tune._names import wrong_label_fraction

    fraction = wrong_label_fraction(args.noise_type, args.noise_rate)
    noise = ("clean labels" if args.noise_type == "none" or not args.noise_rate
             else f"{args.noise_type} noise at rate {args.noise_rate:g} (about {fraction:.0%} of labels wrong)"
             if fraction != args.noise_rate else f"{args.noise_rate * 100:g}% {args.noise_type} noise")
    print(f"DM for {args.num_classes} {what}, {noise}"
          + ("" if args.imbalance == "none" else f", {args.imbalance} imbalance {ratio_text(args.imbalance_ratio)}") + ":")
    print(f"  lambda {rec.lam:.3g}, beta {rec.beta:.3g}   (mode psi {rec.psi:.3f}, log-spread rho {rec.rho:.3f})")
    print(f"  class weighting: {rec.class_weighting}")
    if rec.region is not None and rec.predicted_gain is not None:
        g, reg, wide = rec.predicted_gain, rec.region, rec.region["plausible"]
        print(f"  predicted gain over CCE: {g['mean']:+.1f} points of final validation accuracy "
              f"(95% interval {g['low']:+.1f} to {g['high']:+.1f})")
        print(f"  within {reg['within_points']:g} point of the best: psi {reg['psi'][0]:.2f}-{reg['psi'][1]:.2f}, "
              f"rho {reg['rho'][0]:.2f}-{reg['rho'][1]:.2f}; plausible: psi {wide['psi'][0]:.2f}-{wide['psi'][1]:.2f}, "
              f"rho {wide['rho'][0]:.2f}-{wide['rho'][1]:.2f}")
        from dm_tune.reports._surface import best_weighting

        print("  leans on:")
        for s in rec.leans_on:
            print(f"    {s['setting']} (correlation {s['correlation']:.2f}): measured best {s['best_gain']:+.1f} "
                  f"validation points over CCE at psi {s['best_psi']:.2f}, rho {s['best_rho']:.2f}, "
                  f"class weighting {best_weighting(s)}")
    else:
        print(f"  evidence: {rec.evidence}")
    for w in rec.warnings:
        print(f"  {w}" if w.startswith("note: ") else f"  warning: {w}")  # (an older analysis: a note)
    print(f"  try: {train_command(args, rec)}")
    print(f"  (guidelines: {path})")
    return 0
