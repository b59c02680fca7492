"""reports: loading runs from a real MLflow sqlite store written in the search's schema, and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dm_tune.errors import UserError
from dm_tune.reports import add_recommend_parser, add_report_parser, load_histories, load_runs
from tests.conftest import DM_TUNE, permissions_preexec

SETTING_PARAMS = {"dataset": "digits", "noise": "symmetric", "noise_rate": "0.4", "imbalance": "none",
                  "imbalance_ratio": "1.0", "model": "mlp", "num_classes": "10", "pretrained": "false",
                  "epochs": "3"}


def log_trial(client: Any, exp_id: str, parent: str, setting: str, stage: str, seed: int, status: str,
              method: str = "dm", baseline: str = "", lam: str = "", beta: str = "",
              final: dict[str, float] | None = None) -> str:
    """One child trial run as the search writes it: tags, string params, per-epoch and final metrics."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "dmtune.role": "trial",
                                          "dmtune.setting": setting, "dmtune.stage": stage,
                                          "dmtune.baseline": baseline, "dmtune.status": status,
                                          "dmtune.git_commit": "deadbeef",
                                          "dmtune.versions": json.dumps({"dm-tune": "0.1.0"})})
    rid = run.info.run_id
    params = {**SETTING_PARAMS, "method": method, "seed": str(seed), "lam": lam, "beta": beta}
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for step in (1, 2, 3)
               for k, v in (("weight_clean", 1.0 + 0.1 * step), ("weight_noisy", 1.0 - 0.1 * step),
                            ("test_acc", 0.5 + 0.05 * step))]
    metrics += [Metric(k, v, now, 0) for k, v in (final or {}).items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(rid)
    return rid


def final(val: float, test: float) -> dict[str, float]:
    return {"final_val_acc": val, "final_test_acc": test, "best_test_acc": min(1.0, test + 0.02),
            "val_selected_test_acc": test, "epochs_reached": 3, "train_time_s": 1.5, "best_epoch": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow import MlflowClient

    workspace = tmp_path_factory.mktemp("ws")
    uri = f"sqlite:///{(workspace / 'mlflow.db').as_posix()}"
    client = MlflowClient(tracking_uri=uri)
    ids: dict[str, Any] = {"workspace": workspace, "uri": uri}
    key = "digits/symmetric/0.4/none/mlp"
    exp_a = client.create_experiment("study-a")
    parent = client.create_run(exp_a, tags={"dmtune.role": "setting", "dmtune.setting": key}).info.run_id
    ids["dm"] = [log_trial(client, exp_a, parent, key, "confirm", s, "finished", lam="1.0", beta="8.0",
                           final=final(0.80 + 0.01 * s, 0.70 + 0.01 * s)) for s in range(3)]
    for s in range(3):
        log_trial(client, exp_a, parent, key, "confirm", s, "finished", method="cce", baseline="cce",
                  final=final(0.7, 0.6))
    log_trial(client, exp_a, parent, key, "search", 0, "finished", lam="0.5", beta="4", final=final(0.75, 0.65))
    log_trial(client, exp_a, parent, key, "search", 0, "diverged", lam="3", beta="40")       # no finals: kept
    log_trial(client, exp_a, parent, key, "search", 0, "finished", lam="2", beta="9")        # no finals: skipped
    # still running, its finals logged a moment before its status: skipped as a result, kept as an attempt
    ids["running"] = log_trial(client, exp_a, parent, key, "search", 1, "running", lam="0.5", beta="4",
                               final=final(0.99, 0.99))
    exp_b = client.create_experiment("study-b")
    parent_b = client.create_run(exp_b, tags={"dmtune.role": "setting", "dmtune.setting": key}).info.run_id
    log_trial(client, exp_b, parent_b, key, "search", 1, "finished", lam="0", beta="2", final=final(0.6, 0.5))
    client.create_experiment("empty-study")
    return ids


def test_load_runs_builds_the_tidy_frame(store: dict[str, Any]) -> None:
    df = load_runs(store["uri"], None)
    assert df.attrs["skipped"] == 2 and len(df) == 10
    running = df[df["run_id"] == store["running"]]
    assert list(running["status"]) == ["running"] and running["final_test_acc"].isna().all()
    assert set(df["experiment"]) == {"study-a", "study-b"}
    for col in ("run_id", "experiment", "setting", "stage", "baseline", "status", "method", "lam", "beta", "psi",
                "rho", "dataset", "noise", "noise_rate", "imbalance", "imbalance_ratio", "model", "num_classes",
                "pretrained", "seed", "epochs", "epochs_reached", "final_test_acc", "final_val_acc",
                "best_test_acc", "val_selected_test_acc", "train_time_s", "arm"):
        assert col in df
    for col in ("lam", "noise_rate", "num_classes", "seed", "final_test_acc", "epochs_reached", "train_time_s"):
        assert pd.api.types.is_float_dtype(df[col]), col
    dm = df[df["run_id"].isin(store["dm"])]
    assert set(dm["arm"]) == {"dm(lam=1,beta=8)"} and (dm["psi"] == 0.5).all() and (dm["rho"] == 2.0).all()
    cce = df[df["baseline"] == "cce"]
    assert set(cce["arm"]) == {"cce"} and cce["lam"].isna().all()
    assert df["pretrained"].dtype == bool and not df["pretrained"].any()
    diverged = df[df["status"] == "diverged"]
    assert len(diverged) == 1 and diverged["final_test_acc"].isna().all()
    assert sorted(df.loc[df["run_id"].isin(store["dm"]), "final_test_acc"]) == pytest.approx([0.70, 0.71, 0.72])
    assert (df["git_commit"] == "deadbeef").all() and (df["dmtune_version"] == "0.1.0").all()


def test_load_runs_selects_experiments(store: dict[str, Any]) -> None:
    df = load_runs(store["uri"], ["study-b"])
    assert list(df["experiment"]) == ["study-b"] and df.attrs["skipped"] == 0


@pytest.mark.parametrize("names", [["empty-study"], ["no-such-study"]])
def test_no_runs_lists_the_existing_experiments(store: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(UserError, match="existing experiments: .*study-a.*study-b"):
        load_runs(store["uri"], names)


def test_missing_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no MLflow store"):
        load_runs(f"sqlite:///{tmp_path.as_posix()}/nothing/mlflow.db", None)
    (tmp_path / "mlflow.db").mkdir()  # (was "no MLflow store at": there is something, a folder)
    with pytest.raises(UserError, match=r"mlflow.db: is not a file; pass the store of a finished search"):
        load_runs(f"sqlite:///{tmp_path.as_posix()}/mlflow.db", None)


@pytest.mark.parametrize("damage, problem", [
    ("truncated", "damaged SQLite database"),
    ("garbage", "not an SQLite database"),
    ("empty", "is empty (0 bytes)"),
    ("optuna", "not an MLflow store (no 'experiments' table)"),
    # MLflow, opening it, created the table again (empty) in the user's store; the report then said
    # that no setting has finished DM runs
    ("no params table", "damaged MLflow store (its 'params' table is missing)"),
    # SQLite's message quoted the schema's byte that is not UTF-8: sqlite3 raised UnicodeDecodeError
    ("non-UTF-8 schema", "damaged SQLite database (malformed database schema (params)"),
])
def test_a_damaged_store_is_one_line_not_a_traceback(store: dict[str, Any], tmp_path: Path,
                                                     damage: str, problem: str) -> None:
    import optuna

    path = tmp_path / "mlflow.db"
    real = (store["workspace"] / "mlflow.db").read_bytes()
    if damage == "truncated":
        path.write_bytes(real[:len(real) // 3])
    elif damage == "garbage":
        path.write_bytes(b"not a database at all")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "no params table":
        import sqlite3

        path.write_bytes(real)
        con = sqlite3.connect(path)
        con.execute("DROP TABLE params")
        con.commit()
        con.close()
    elif damage == "non-UTF-8 schema":
        import sqlite3

        path.write_bytes(real)
        con = sqlite3.connect(path)
        con.execute("PRAGMA writable_schema=ON")
        con.execute("UPDATE sqlite_master SET sql = sql || x'ca' WHERE name = 'params'")
        con.commit()
        con.close()
    else:
        optuna.create_study(storage=f"sqlite:///{path.as_posix()}")
    before = path.read_bytes()
    with pytest.raises(UserError) as info:
        load_runs(f"sqlite:///{path.as_posix()}", None)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before  # read, never repaired or written


@pytest.mark.parametrize("sql, problem", [
    ("UPDATE params SET value = '-5' WHERE key = 'lam'", "param lam = '-5' is not a number >= 0"),
    ("UPDATE params SET value = 'x' WHERE key = 'seed'", "param seed = 'x' is not an integer >= 0"),
    ("UPDATE params SET value = '0' WHERE key = 'num_classes'", "param num_classes = '0' is not an integer >= 2"),
    ("UPDATE params SET value = 'abc' WHERE key = 'noise_rate'", "param noise_rate = 'abc' is not a number in [0, 1]"),
    ("UPDATE latest_metrics SET value = 1e308 WHERE key = 'final_val_acc'",
     "metric final_val_acc = '1e+308' is not a number in [0, 1]"),
    ("UPDATE latest_metrics SET value = 'NaN' WHERE key = 'final_test_acc'",
     "metric final_test_acc = 'NaN' is not a number in [0, 1]"),
])
def test_a_store_whose_runs_hold_values_no_run_logs_is_one_line(store: dict[str, Any], tmp_path: Path, sql: str,
                                                                problem: str) -> None:
    """A damaged value (text for a number, lam -5, 0 classes, an accuracy of 1e308) was a traceback
    from wherever the report first used it (scikit-learn's GP, a figure, a log); a new --out was
    left half written."""
    import sqlite3

    workspace = tmp_path / "ws"
    workspace.mkdir()
    path = workspace / "mlflow.db"
    path.write_bytes((store["workspace"] / "mlflow.db").read_bytes())
    con = sqlite3.connect(path)
    con.execute(sql)
    con.commit()
    con.close()
    with pytest.raises(UserError) as info:
        load_runs(f"sqlite:///{path.as_posix()}", None)
    said = str(info.value)
    assert said.startswith("run ") and problem in said and "the store is damaged" in said and "\n" not in said
    done = subprocess.run([DM_TUNE, "report", "--workspace", str(workspace), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and problem in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_read_only_workspace_is_reported_elsewhere(store: dict[str, Any], tmp_path: Path) -> None:
    """An archived search (store and workspace read-only): reading is all a report does, so it
    reports into --out; into the workspace itself it refuses in one line, before reading."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "mlflow.db").write_bytes((store["workspace"] / "mlflow.db").read_bytes())
    preexec = permissions_preexec()
    (archive / "mlflow.db").chmod(0o444)
    archive.chmod(0o555)
    try:
        run = [DM_TUNE, "report", "--workspace", str(archive), "--experiment", "study-a"]
        ok = subprocess.run([*run, "--out", str(tmp_path / "rep")], capture_output=True, text=True,
                            timeout=300, preexec_fn=preexec)
        refused = subprocess.run(run, capture_output=True, text=True, timeout=300, preexec_fn=preexec)
    finally:
        archive.chmod(0o755)
        (archive / "mlflow.db").chmod(0o644)
    assert ok.returncode == 0, ok.stderr
    assert "alembic" not in ok.stderr, ok.stderr  # (MLflow 3.9 logged 9 lines of its migrations' set-up)
    assert (tmp_path / "rep" / "guidelines.json").is_file()
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"dm-tune: error: --workspace {archive / 'report'}: cannot write in {archive} (Permission denied)"]
    assert sorted(p.name for p in archive.iterdir()) == ["mlflow.db"]


def test_a_tracking_uri_of_another_kind_is_one_line() -> None:
    """MLflow's model registry refused foo://x with a 40-line traceback."""
    with pytest.raises(UserError, match=r"--tracking-uri foo://x: expected an http\(s\):// MLflow server or sqlite"):
        load_runs("foo://x", None)


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as sock:  # a free port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    said = f"--tracking-uri http://127.0.0.1:{port}: cannot reach 127.0.0.1:{port}"
    with pytest.raises(UserError, match=re.escape(said)):
        load_runs(f"http://127.0.0.1:{port}", None)
    assert time.monotonic() - start < 5


def test_a_server_that_takes_the_connection_and_never_answers_fails_fast(monkeypatch) -> None:
    """A port that accepts connections and never answers (a hung server, a firewall's tarpit): the
    check asks MLflow's client without its retries, within REQUEST_TIMEOUT_S (MLflow's own default
    retries for minutes); the search asks the same question."""
    from dm_tune import _tracking_server
    from dm_tune.search._preflight import check_tracking

    monkeypatch.setattr(_tracking_server, "REQUEST_TIMEOUT_S", 1)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    with socket.socket() as sock:  # listening: the kernel completes the handshakes, nothing reads
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        for ask in (load_runs, check_tracking):
            start = time.monotonic()
            with pytest.raises(UserError, match=re.escape(f"--tracking-uri {uri}: not an MLflow tracking server "
                                                          "that answers (")):
                ask(uri)
            assert time.monotonic() - start < 8
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # (the user's own setting, as it was)

@pytest.mark.parametrize(("uri", "said"), [("http://[::1", "Invalid IPv6 URL"), ("https://[zz]:80", "'zz'"),
                                           ("http://127.0.0.1:99999", "Port out of range"),
                                           ("http://127.0.0.1:abc", "'abc'"), ("http://", "no host")])
def test_a_tracking_uri_that_is_no_url_is_one_line(uri: str, said: str) -> None:
    """urllib raises ValueError for these once their host or port is read: tracebacks."""
    with pytest.raises(UserError, match=re.escape(f"--tracking-uri {uri}: not a valid URL (") + ".*" + re.escape(said)):
        load_runs(uri, None)


def test_a_web_server_that_is_not_mlflow_is_one_line(tmp_path: Path) -> None:
    """Its /health answered 404 (the server is there), then MLflow's API request failed with 501:
    a 50-line traceback ending in the server's error page. The search asks the same question."""
    from dm_tune.search._preflight import check_tracking

    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        said = []
        for ask in (load_runs, check_tracking):
            with pytest.raises(UserError) as info:
                ask(uri)
            said.append(str(info.value))
    finally:
        server.shutdown()
        server.server_close()
    text = said[0]
    assert said[1] == text
    assert text.startswith(f"--tracking-uri {uri}: not an MLflow tracking server that answers (API request to endpoint")
    assert "failed with error code 501" in text and "credentials" not in text
    assert "\n" not in text and "DOCTYPE" not in text


def test_runs_a_search_adds_between_two_pages_are_read_once(store: dict[str, Any], tmp_path: Path,
                                                            monkeypatch) -> None:
    """A report run while a search writes: the runs came newest first, 1000 a page, and a trial run
    created between two pages pushed the end of the first into the second, read twice (a report of
    over 1000 runs counted some twice)."""
    import shutil

    from mlflow import MlflowClient

    from dm_tune.reports import _load

    shutil.copy(store["workspace"] / "mlflow.db", tmp_path / "mlflow.db")  # (the module's store stays as it is)
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    before = load_runs(uri, ["study-a"])
    monkeypatch.setattr(_load, "PAGE_SIZE", 3)  # (the third newest, the diverged run, ends the first page)
    real, pages = MlflowClient.search_runs, []

    def a_search_writes_between_pages(self, *args, **kwargs):
        page = real(self, *args, **kwargs)
        pages.append(len(page))
        if len(pages) == 1:  # a new trial run of the same experiment, as a search creates one
            exp = self.get_experiment_by_name("study-a").experiment_id
            run = self.create_run(exp, tags={"dmtune.role": "trial", "dmtune.status": "running"})
            self.set_terminated(run.info.run_id, "KILLED")
        return page

    monkeypatch.setattr(MlflowClient, "search_runs", a_search_writes_between_pages)
    during = load_runs(uri, ["study-a"])
    assert len(pages) > 2 and during["run_id"].is_unique
    assert set(before["run_id"]) <= set(during["run_id"]) and len(during) <= len(before) + 1  # (+ the new run)

def test_load_histories(store: dict[str, Any]) -> None:
    h = load_histories(store["uri"], store["dm"][:2])
    assert set(h.columns) == {"run_id", "metric", "step", "value"} and len(h) == 2 * 3 * 3
    clean = h[(h["metric"] == "weight_clean") & (h["run_id"] == store["dm"][0])].sort_values("step")
    assert list(clean["step"]) == [1, 2, 3] and list(clean["value"]) == pytest.approx([1.1, 1.2, 1.3])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dm-tune")
    sub = p.add_subparsers(dest="command", required=True)
    add_report_parser(sub)
    add_recommend_parser(sub)
    return p


def test_report_says_on_the_command_line_which_settings_got_no_recommendation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every DM run of the setting diverged: the command printed the run count and the file paths
    and exited 0, saying nothing of the setting (only the files said why it had no guideline)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    client = MlflowClient(tracking_uri=uri)
    key = "digits/symmetric/0.4/none/mlp"
    exp = client.create_experiment("study-d")
    parent = client.create_run(exp, tags={"dmtune.role": "setting", "dmtune.setting": key}).info.run_id
    for s in range(2):
        log_trial(client, exp, parent, key, "confirm", s, "diverged", lam="3", beta="40")
        log_trial(client, exp, parent, key, "confirm", s, "finished", method="cce", baseline="cce",
                  final=final(0.7, 0.6))
    args = parser().parse_args(["report", "--workspace", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "rep" / "guidelines.json").read_text())
    assert doc["settings"] == [] and len(doc["unresolved"]) == 1
    (u,) = doc["unresolved"]
    assert f"- {u['setting']}: no recommendation ({u['reason'] or 'no usable DM runs'})\n" in out


def test_report_then_recommend_on_the_command_line(store: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["report", "--workspace", str(store["workspace"]), "--experiment", "study-a",
                                "--out", str(tmp_path / "rep")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "8 runs from study-a (2 incomplete runs skipped)" in out  # the running one among those skipped
    assert "+11.0 +/- 1.0 points over CCE over 3 seeds" in out
    assert "(each its mean over seeds) of 1 setting\n" in out  # (was "of 1 settings")
    for name in ("index.html", "guidelines.md", "guidelines.json", "figures/weights_00.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "(each its mean over its seeds) of 1 setting;" in page and "1 settings" not in page  # (the page too)
    args = parser().parse_args(["recommend", "--num-classes", "10", "--noise-type", "symmetric", "--noise-rate",
                                "0.5", "--guidelines", str(tmp_path / "rep" / "guidelines.json"), "--json"])
    assert args.func(args) == 0
    rec = json.loads(capsys.readouterr().out)
    # from the response surface fitted on the one measured setting (rate 0.4): 0.5 lies beyond it
    assert {"psi", "rho", "lam", "beta", "evidence", "warnings", "class_weighting", "region", "predicted_gain",
            "predicted_std", "leans_on"} <= set(rec)
    assert rec["lam"] == pytest.approx(rec["psi"] / (1 - rec["psi"])) and rec["class_weighting"] == "none"
    assert "noise rate 0.5 is outside the measured range [0.4, 0.4]" in rec["warnings"][0]
    assert rec["settings"] == ["digits/symmetric/0.4/none/mlp"]
    args = parser().parse_args(["recommend", "--num-classes", "10", "--noise-rate", "0.4", "--guidelines",
                                str(tmp_path / "rep" / "guidelines.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "predicted gain over CCE: " in out and " points of final validation accuracy (95% interval " in out
    assert " validation points over CCE at psi " in out and "within 1 point of the best: psi" in out
    assert "leans on:\n    digits/symmetric/0.4/none/mlp (correlation 1.00)" in out
    bad = parser().parse_args(["recommend", "--num-classes", "1", "--noise-rate", "0.4", "--guidelines",
                               str(tmp_path / "rep" / "guidelines.json")])
    with pytest.raises(UserError, match="--num-classes must be an integer >= 2"):
        bad.func(bad)


def test_report_default_tracking_uri_is_the_workspace_store(tmp_path: Path) -> None:
    args = parser().parse_args(["report", "--workspace", str(tmp_path / "ws")])
    with pytest.raises(UserError, match=f"no MLflow store at {(tmp_path / 'ws' / 'mlflow.db').as_posix()}"):
        args.func(args)


def test_a_report_of_a_workspace_whose_searches_track_on_a_server_names_the_server(tmp_path: Path) -> None:
    """No store in the workspace because its studies record on a server (studies/NAME.places): the
    report said "run 'dm-tune search' first" to a workspace that had searched."""
    studies = tmp_path / "ws" / "studies"
    studies.mkdir(parents=True)
    (studies / "srv.places").write_text(json.dumps({"tracking_uri": "http://127.0.0.1:9", "storage_path": None}))
    (studies / "here.places").write_text(json.dumps({"tracking_uri": None, "storage_path": None}))
    args = parser().parse_args(["report", "--workspace", str(tmp_path / "ws")])
    with pytest.raises(UserError) as info:
        args.func(args)
    assert str(info.value) == (f"no MLflow store at {(tmp_path / 'ws' / 'mlflow.db').as_posix()}: the searches of "
                               f"{tmp_path / 'ws'} record their runs at http://127.0.0.1:9; pass --tracking-uri "
                               "http://127.0.0.1:9")


def test_an_unwritable_report_directory_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    args = parser().parse_args(["report", "--workspace", str(tmp_path / "no-store"), "--out", "/proc/report"])
    with pytest.raises(UserError) as info:  # not "no MLflow store": --out is checked first
        args.func(args)
    assert str(info.value) == "--out /proc/report: cannot write in /proc (No such file or directory)"


def test_a_report_into_a_folder_another_report_is_writing_is_refused(store: dict[str, Any], tmp_path: Path) -> None:
    from dm_tune._locks import held

    out = tmp_path / "rep"
    out.mkdir()
    args = parser().parse_args(["report", "--workspace", str(store["workspace"]), "--experiment", "study-a",
                                "--out", str(out)])
    elsewhere = parser().parse_args(["report", "--workspace", str(tmp_path / "no-store"), "--out", str(out)])
    with held(out / ".report.lock", "{holder}"):  # as another dm-tune report holds it while it writes
        with pytest.raises(UserError) as info:
            args.func(args)
        with pytest.raises(UserError) as first:  # refused before the runs are read (they may take seconds)
            elsewhere.func(elsewhere)
    assert str(info.value).startswith(f"{out}: another dm-tune report is writing there (pid ")
    assert str(first.value) == str(info.value)
    assert sorted(p.name for p in out.iterdir()) == [".report.lock"]  # nothing of this one written
    assert args.func(args) == 0 and (out / "guidelines.json").is_file()  # once the other is done


def test_a_report_over_an_earlier_one_leaves_none_of_its_figures_or_temporary_files(
        store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An earlier report's figure of a setting this report does not have (weights_07.png) stayed in
    figures/ beside the new ones; the temporary files of writes a kill cut off stayed for ever."""
    out = tmp_path / "rep"
    (out / "figures").mkdir(parents=True)
    for name in ("figures/weights_07.png", "figures/loso.png", "figures/mine.png", "figures/.plane_00.png.k3j_x9q2",
                 ".index.html.89oj_3gf", ".guidelines.json.wlcdp7ud", "notes.txt", ".notes.txt.abcdefgh"):
        (out / name).write_text("earlier")
    args = parser().parse_args(["report", "--workspace", str(store["workspace"]), "--experiment", "study-a",
                                "--out", str(out)])
    assert args.func(args) == 0
    capsys.readouterr()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert "figures/weights_00.png" in left and "figures/plane_00.png" in left
    assert not {"figures/weights_07.png", "figures/loso.png", "figures/.plane_00.png.k3j_x9q2", ".index.html.89oj_3gf",
                ".guidelines.json.wlcdp7ud"} & set(left)  # (this store has one setting: no LOSO figure)
    assert {"figures/mine.png", "notes.txt", ".notes.txt.abcdefgh"} <= set(left)  # not dm-tune's: kept


def test_a_metric_history_value_that_is_not_a_number_is_one_line(store: dict[str, Any], tmp_path: Path) -> None:
    """Text where a weight history's value should be (a damaged store): a ValueError traceback."""
    import sqlite3

    path = tmp_path / "mlflow.db"
    path.write_bytes((store["workspace"] / "mlflow.db").read_bytes())
    con = sqlite3.connect(path)
    con.execute("UPDATE metrics SET value = 'zzz' WHERE key = 'weight_clean' AND step = 1 AND run_uuid = ?",
                (store["dm"][0],))
    con.commit()
    con.close()
    with pytest.raises(UserError) as info:
        load_histories(f"sqlite:///{path.as_posix()}", store["dm"][:1])
    assert str(info.value) == (f"run {store['dm'][0]}: metric weight_clean at step '1' = 'zzz' is not a number: the "
                               f"store is damaged (restore it, or delete the run: mlflow runs delete --run-id "
                               f"{store['dm'][0]})")


def test_a_store_of_another_mlflow_schema_is_one_line(store: dict[str, Any], tmp_path: Path) -> None:
    """A store an older or newer MLflow wrote: MLflow's 40-line traceback, its advice at the end."""
    import sqlite3

    path = tmp_path / "mlflow.db"
    path.write_bytes((store["workspace"] / "mlflow.db").read_bytes())
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'deadbeef'")
    con.commit()
    con.close()
    uri = f"sqlite:///{path.as_posix()}"
    with pytest.raises(UserError) as info:
        load_runs(uri, None)
    said = str(info.value)
    assert said.startswith(f"the MLflow store at {uri} has a schema this MLflow does not read: ") and \
        "found version deadbeef" in said and said.endswith(f"run: mlflow db upgrade {uri}") and "\n" not in said


def test_a_run_still_running_is_no_result_even_with_its_final_metrics() -> None:
    """A report taken while a search runs: a trial's final metrics can be in the store a moment
    before its status (or until the search's reconcile); it was counted as errored. It is kept as an
    attempt of its arm without metrics (so that its arm is not complete), counted as in progress."""
    from dm_tune.reports._analysis import status_counts
    from dm_tune.reports._load import run_to_row, tidy

    params = {"method": "dm", "lam": "1", "beta": "8", "seed": "0"}
    rows = [run_to_row("s", "r", params, final(0.8, 0.7), {"dmtune.status": status})
            for status in ("running", "interrupted")]
    assert [r["status"] for r in rows] == ["running", "interrupted"]
    assert all(math.isnan(r["final_val_acc"]) and math.isnan(r["final_test_acc"]) for r in rows)
    assert run_to_row("s", "r", params, final(0.8, 0.7), {"dmtune.status": "finished"})["status"] == "finished"
    assert status_counts(tidy(rows)) == {"finished": 0, "diverged": 0, "early_stopped": 0, "errored": 0,
                                         "in_progress": 2, "reused": 0}


def test_params_are_read_as_the_exact_floats_they_spell() -> None:
    """MLflow keeps params as text: pandas 2's to_numeric read "0.49999999999999994" as
    0.4999999999999999 and "3.5555555555555554" as 3.555555555555556 (one ulp off; pandas 3 and
    float() read them exactly), so a report of the same runs differed in its last digits."""
    from dm_tune.reports._load import tidy

    texts = ["0.01658536236693762", "0.49999999999999994", "3.5555555555555554", "1e-3", "7"]
    rows = [{"run_id": f"r{i}", "experiment": "e", "setting": "s", "stage": "search", "baseline": "", "status":
             "finished", "method": "dm", "lam": t, "beta": "8", "final_test_acc": 0.5, "final_val_acc": 0.5}
            for i, t in enumerate(texts)]
    rows.append({**rows[0], "run_id": "blank", "lam": ""})
    df = tidy(rows)
    assert [v.hex() for v in df["lam"][:5]] == [float(t).hex() for t in texts]
    assert math.isnan(df["lam"].iloc[5])
