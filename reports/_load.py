"""Loading: MLflow runs written by ``dm-tune search`` -> one tidy DataFrame (the only I/O here).

The MLflow schema (tags ``dmtune.*``, params as strings, final metrics) is the contract with the
search; everything after this module is a pure DataFrame -> DataFrame / figure function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dm_tune._names import task_of
from dm_tune._param import beta_from_rho, lambda_from_mode, mode_from_lambda, rho_from_beta
from dm_tune._tracking_server import check_server
from dm_tune.errors import UserError, parse_url, read_number

PARAM_COLUMNS = ("method", "lam", "beta", "psi", "rho", "dataset", "noise", "noise_rate", "imbalance",
                 "imbalance_ratio", "model", "num_classes", "pretrained", "seed", "epochs", "class_weighting")
METRIC_COLUMNS = ("epochs_reached", "final_test_acc", "final_val_acc", "best_test_acc",
                  "val_selected_test_acc", "train_time_s", "noise_rate_realised", "test_examples")
# Retrieval runs (re-ID; they log final_val_map): their mAPs fill the score columns above in place
# of accuracy (final_test_acc holds final test mAP, final_val_acc final validation mAP,
# best_test_acc the best test mAP over training, ...), with task = "retrieval" so that every
# label says mAP; their CMC ranks have columns of their own.
RETRIEVAL_SCORES = {"final_test_acc": "final_test_map", "final_val_acc": "final_val_map",
                    "best_test_acc": "best_test_map", "val_selected_test_acc": "val_selected_test_map"}
RETRIEVAL_COLUMNS = ("final_test_rank1", "final_test_rank5", "final_test_rank10")
NUMERIC_COLUMNS = ("lam", "beta", "psi", "rho", "noise_rate", "imbalance_ratio", "num_classes", "seed",
                   "epochs") + METRIC_COLUMNS + RETRIEVAL_COLUMNS
# A run without these is unusable (still running, or killed before it logged its result)...
REQUIRED_METRICS = ("final_test_acc", "final_val_acc")
# ...unless its status explains why: such runs are kept (with NaN accuracies) so that they are counted.
FAILED_STATUSES = ("diverged", "errored")
# A search still running (or interrupted, until it is resumed) has runs with these: not results
# (their metrics are left out), not counted as errored, but attempts of their arm on their seed.
IN_PROGRESS = ("running", "interrupted")
HISTORY_METRICS = ("weight_clean", "weight_noisy", "test_acc")
COLUMNS = ("run_id", "experiment", "setting", "stage", "baseline", "status", "task") + PARAM_COLUMNS + METRIC_COLUMNS + (
    RETRIEVAL_COLUMNS + ("arm", "git_commit", "dmtune_version", "versions", "machine", "data", "reused_from"))


def load_runs(tracking_uri: str, experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """All dm-tune trial runs of ``experiments`` (None: every experiment that has some), one row each.

    Runs that lack the final metrics (and are not marked diverged/errored) are skipped, and runs
    still in progress are kept without metrics (an arm with one is not complete on its seeds); the
    number of both is in ``df.attrs["skipped"]``. Raises UserError when the store is unreachable or
    holds no matching runs with results (naming the experiments that do exist).
    """
    from mlflow import MlflowClient  # heavy import, only where it is used
    from mlflow.exceptions import MlflowException

    _check_reachable(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        known = {e.name: e.experiment_id for e in _all_experiments(client)}
    except MlflowException as e:
        if "database schema" not in str(e):
            raise _store_error(tracking_uri, e) from None
        said = str(e).split(". ")[0]  # (found version X, but expected Y); then MLflow's advice, at length
        raise UserError(f"the MLflow store at {tracking_uri} has a schema this MLflow does not read: {said}; "
                        f"report with the MLflow that wrote it, or back it up and run: mlflow db upgrade "
                        f"{tracking_uri}") from None
    if experiments:
        missing = [name for name in experiments if name not in known]
        if missing:
            raise UserError(f"no MLflow experiment named {', '.join(map(repr, missing))} at {tracking_uri}; "
                            f"existing experiments: {_names(known)}")
        chosen = {name: known[name] for name in experiments}
    else:
        chosen = known
    rows: list[dict[str, Any]] = []
    skipped = 0
    for name, exp_id in chosen.items():
        try:
            runs = _search_trial_runs(client, exp_id)
        except MlflowException as e:
            raise _store_error(tracking_uri, e) from None
        for run in runs:
            check_run_values(name, run.info.run_id, run.data.params, run.data.metrics)
            row = run_to_row(name, run.info.run_id, run.data.params, run.data.metrics, run.data.tags)
            if row is not None:
                rows.append(row)
            skipped += row is None or row["status"] in IN_PROGRESS
    if all(r["status"] in IN_PROGRESS for r in rows):
        where = ", ".join(map(repr, chosen)) if experiments else "any experiment"
        raise UserError(f"no dm-tune trial runs with final metrics in {where} at {tracking_uri} "
                        f"({skipped} incomplete runs skipped); existing experiments: {_names(known)}")
    df = tidy(rows)
    df.attrs["skipped"] = skipped
    df.attrs["tracking_uri"] = tracking_uri
    return df


def load_histories(tracking_uri: str, run_ids: Iterable[str],
                   metrics: Sequence[str] = HISTORY_METRICS) -> pd.DataFrame:
    """Per-epoch metric histories, long format: columns run_id, metric, step, value."""
    from mlflow import MlflowClient

    _check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    records = []
    for run_id in dict.fromkeys(run_ids):
        for key in metrics:
            for m in client.get_metric_history(run_id, key):  # (MlflowException: report goes on without them)
                try:
                    records.append((run_id, m.key, int(m.step), float(m.value)))
                except (TypeError, ValueError):  # (MLflow hands back what SQLite holds: text, in a damaged store)
                    raise UserError(f"run {run_id}: metric {m.key} at step {str(m.step)[:40]!r} = "
                                    f"{str(m.value)[:40]!r} is not a number: the store is damaged (restore it, "
                                    f"or delete the run: mlflow runs delete --run-id {run_id})") from None
    return pd.DataFrame(records, columns=["run_id", "metric", "step", "value"])


def run_to_row(experiment: str, run_id: str, params: dict[str, str], metrics: dict[str, float],
               tags: dict[str, str]) -> dict[str, Any] | None:
    """One trial run as a flat dict, or None when it lacks its final metrics without a reason."""
    status = tags.get("dmtune.status", "")
    if status in IN_PROGRESS:  # its final metrics, if any, may be there before its status: not a result yet
        metrics = {}
    # The task its dataset trains (a diverged retrieval run has no final mAPs: MLflow is given no
    # NaN), else, for a dataset this dm-tune does not know, the metrics it logged.
    retrieval = task_of(params.get("dataset", "")) == "retrieval" or "final_val_map" in metrics
    task = "retrieval" if retrieval else "classification"
    if task == "retrieval":
        metrics = {**metrics, **{acc: metrics.get(m, math.nan) for acc, m in RETRIEVAL_SCORES.items()}}
    if status not in FAILED_STATUSES + IN_PROGRESS and any(_missing(metrics.get(k)) for k in REQUIRED_METRICS):
        return None
    row: dict[str, Any] = {"run_id": run_id, "experiment": experiment,
                           "setting": tags.get("dmtune.setting", ""), "stage": tags.get("dmtune.stage", ""),
                           "baseline": tags.get("dmtune.baseline", ""), "status": status, "task": task}
    row.update({k: params.get(k, "") for k in PARAM_COLUMNS})
    row.update({k: metrics.get(k, math.nan) for k in METRIC_COLUMNS + RETRIEVAL_COLUMNS})
    # A confirm-stage record of a search trial's run (same seed and configuration): not a training of its own.
    row["reused_from"] = tags.get("dmtune.reused_from", "")
    row["git_commit"] = tags.get("dmtune.git_commit", "")
    versions = _recorded_versions(tags.get("dmtune.versions", ""))
    row["dmtune_version"] = str(versions.get("dm-tune", ""))
    row["versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())  # ("python 3.11.7, torch 2.14.1, ...")
    # What decides its rounding besides them (a run repeats bit for bit only on the same): the CPU
    # and torch's threads its worker trained with ("" in a run recorded without them).
    cpu, threads = tags.get("dmtune.cpu", ""), tags.get("dmtune.torch_threads", "")
    row["machine"] = f"{cpu}, {threads} torch thread{'' if threads == '1' else 's'}" if cpu and threads else cpu
    # What it trained on: its dataset's fingerprint, and its label file's ("" in a run recorded without them).
    data, labels = tags.get("dmtune.data_fingerprint", ""), tags.get("dmtune.noise_file_fingerprint", "")
    row["data"] = f"{data}, label file {labels}" if data and labels else data
    return row


# What each number a trial run logs may be (a run whose value is not is from a damaged store, and
# the report's fits and figures would fail on it with a traceback): (integer, lowest, highest, what).
# Wider than TrainConfig's ranges on purpose: a store that an earlier dm-tune wrote under ranges of
# its own (seeds past 2**32 - 1 before Seed) still reads; only what no dm-tune logs is refused.
_INF = math.inf
_PARAM_RANGES = {"lam": (False, 0.0, _INF, "a number >= 0"), "beta": (False, -_INF, _INF, "a finite number"),
                 "psi": (False, 0.0, 1.0, "a number in [0, 1]"), "rho": (False, -_INF, _INF, "a finite number"),
                 "noise_rate": (False, 0.0, 1.0, "a number in [0, 1]"),
                 "imbalance_ratio": (False, 1.0, _INF, "a number >= 1"),
                 "num_classes": (True, 2, _INF, "an integer >= 2"), "seed": (True, 0, _INF, "an integer >= 0"),
                 "epochs": (True, 1, _INF, "an integer >= 1")}
_SCORE = (False, 0.0, 1.0, "a number in [0, 1]")
_METRIC_RANGES = {**{k: _SCORE for k in ("final_test_acc", "final_val_acc", "best_test_acc", "val_selected_test_acc",
                                          "noise_rate_realised", *RETRIEVAL_SCORES.values(), *RETRIEVAL_COLUMNS)},
                  "epochs_reached": (False, 0.0, _INF, "a number >= 0"),
                  "train_time_s": (False, 0.0, _INF, "a number >= 0"),
                  "test_examples": (True, 1, _INF, "an integer >= 1")}


def check_run_values(experiment: str, run_id: str, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Raise UserError naming the run, the value and what it may be, for a param or metric no
    dm-tune run logs (text for a number, a NaN accuracy, lam -5, 0 classes): the store is damaged."""
    checks = [("param", params, _PARAM_RANGES), ("metric", metrics, _METRIC_RANGES)]
    for kind, values, ranges in checks:
        for key, (integer, low, high, allowed) in ranges.items():
            value = values.get(key)
            if value is None or (kind == "param" and value == ""):  # (not logged: a baseline has no lam)
                continue
            try:
                number = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not (math.isfinite(number) and low <= number <= high and (not integer or number.is_integer())):
                raise UserError(f"run {run_id} of experiment {experiment!r}: {kind} {key} = {str(value)[:40]!r} "
                                f"is not {allowed}: the store is damaged (restore it, or delete the run: "
                                f"mlflow runs delete --run-id {run_id})")


def _number(value: Any) -> float:
    """A param's text (or a metric) as the float it spells, exactly; NaN for "" (not logged) or text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(read_number(str(value)))
    except ValueError:
        return math.nan


def tidy(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> typed DataFrame: numbers numeric, pretrained bool, DM's (lam, beta) <-> (psi, rho) filled in, arm."""
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = ""
    for col in NUMERIC_COLUMNS:  # (pandas 2's to_numeric read "0.49999999999999994" one ulp off)
        df[col] = df[col].map(_number).astype(float)  # "" (not logged) -> NaN
    df["pretrained"] = df["pretrained"].astype(str).str.lower().isin(["true", "1", "yes"])
    for col in ("experiment", "setting", "stage", "baseline", "status", "method", "dataset", "noise",
                "imbalance", "model", "task", "class_weighting", "reused_from"):
        df[col] = df[col].fillna("").astype(str)
    df["task"] = df["task"].replace("", "classification")
    df["class_weighting"] = df["class_weighting"].replace("", "none")  # runs from before class weighting
    df["imbalance"] = df["imbalance"].replace("", "none")
    df["imbalance_ratio"] = df["imbalance_ratio"].fillna(1.0)
    # Noise from a label file has the rate its labels have: the one each run measured.
    from_file = (df["noise"] == "file") & df["noise_rate_realised"].notna()
    df.loc[from_file, "noise_rate"] = df.loc[from_file, "noise_rate_realised"]
    # One setting measured by two studies (experiments) is two settings: their arms, epochs and
    # seeds are their own, and pooling them would count one seed twice.
    shared = df.groupby("setting")["experiment"].transform("nunique") > 1
    df.loc[shared, "setting"] = df.loc[shared, "setting"] + "@" + df.loc[shared, "experiment"]
    _fill_dm_coordinates(df)
    df["arm"] = [arm_label(b, m, lam, beta, cw) for b, m, lam, beta, cw in
                 zip(df["baseline"], df["method"], df["lam"], df["beta"], df["class_weighting"])]
    # Two configurations whose knobs round to one label (3 significant figures) are two arms.
    exact = [(f"{lam:.12g}", f"{beta:.12g}") for lam, beta in zip(df["lam"], df["beta"])]
    clash = pd.Series(exact, index=df.index).groupby([df["setting"], df["arm"]]).transform("nunique") > 1
    for i in df.index[clash & (df["baseline"] == "")]:
        df.at[i, "arm"] = arm_label("", df.at[i, "method"], df.at[i, "lam"], df.at[i, "beta"],
                                    df.at[i, "class_weighting"], digits=9)
    return df[list(COLUMNS)].reset_index(drop=True)


def arm_label(baseline: str, method: str, lam: float, beta: float, class_weighting: str = "none",
              digits: int = 3) -> str:
    """The name of a configuration across seeds: the baseline's name or ``dm(lam=..,beta=..)`` (to
    ``digits`` significant figures), with ``,cw=SCHEME`` when the DM arm weights classes (arms
    differing only in class weighting stay apart)."""
    if baseline:
        return baseline
    if method == "dm":
        cw = "" if class_weighting in ("", "none") else f",cw={class_weighting}"
        return f"dm(lam={_round(lam, digits)},beta={_round(beta, digits)}{cw})"
    return method


def _fill_dm_coordinates(df: pd.DataFrame) -> None:
    """Fill whichever of (lam, beta) / (psi, rho) the search did not log, for DM runs."""
    for i in df.index[df["method"] == "dm"]:
        lam, beta, psi, rho = (df.at[i, c] for c in ("lam", "beta", "psi", "rho"))
        if math.isnan(lam) and not math.isnan(psi) and 0 <= psi < 1:
            lam = df.at[i, "lam"] = lambda_from_mode(psi)
        if math.isnan(psi) and not math.isnan(lam) and lam >= 0:
            df.at[i, "psi"] = mode_from_lambda(lam)
        if math.isnan(beta) and not math.isnan(rho) and not math.isnan(lam) and lam >= 0:
            df.at[i, "beta"] = beta_from_rho(rho, lam)
        if math.isnan(rho) and not math.isnan(beta) and not math.isnan(lam) and lam >= 0:
            df.at[i, "rho"] = rho_from_beta(beta, lam)


def _round(x: float, digits: int = 3) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _recorded_versions(versions_json: str) -> dict[str, Any]:
    """The package versions a run recorded (tag dmtune.versions), in the recorded order; {} where it
    recorded none (or not as dm-tune writes them)."""
    try:
        versions = json.loads(versions_json) if versions_json else {}
    except json.JSONDecodeError:
        return {}
    return versions if isinstance(versions, dict) else {}


def _store_error(uri: str, exc: Exception) -> UserError:
    """MLflow's refusal of a request as one line: a web server that is not MLflow's answers its
    API with an HTTP error (MLflow's message then carries the page); a store that fails mid-read."""
    said = " ".join(str(exc).split(" Response body:")[0].split())  # (not the page that came with it)
    return UserError(f"the MLflow tracking store {uri} refused a request: "
                     f"{said[:300] + ('...' if len(said) > 300 else '')} (is it an MLflow tracking server or store?)")


def _check_reachable(uri: str) -> None:
    """Fail fast: MLflow's own client retries an unreachable server for minutes."""
    scheme = parse_url("--tracking-uri", uri).scheme
    if scheme in ("http", "https"):
        check_server(uri)
    elif scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).exists():
            raise UserError(f"no MLflow store at {path} (tracking URI {uri}); run 'dm-tune search' first "
                            "or pass --workspace/--tracking-uri")
        if path and path != ":memory:":  # a damaged or foreign file: one line, not SQLAlchemy's traceback
            from dm_tune.search._stores import check_store

            check_store(Path(path), "MLflow", Path(path).parent, read_only=True)
    else:  # MLflow's registry refused it with a 40-line traceback
        raise UserError(f"--tracking-uri {uri}: expected an http(s):// MLflow server or sqlite:////abs/path.db")


def _all_experiments(client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


PAGE_SIZE = 1000  # runs per MLflow request


def _search_trial_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every trial run of the experiment, once each, while a search may be adding runs: the pages
    go oldest first (newest first, a run created between two pages pushed the end of one into the
    next, read twice), and a run met again is skipped."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="tags.`dmtune.role` = 'trial'",
                                  max_results=PAGE_SIZE, page_token=token,
                                  order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
        for run in page:
            found.setdefault(run.info.run_id, run)
        token = page.token
        if not token:
            return list(found.values())


def _names(known: dict[str, str]) -> str:
    return ", ".join(sorted(known)) or "(none)"
