"""The workspace's stores: damaged or unusable stores fail in one line before anything is written,
one search per study at a time, and new stores created safely by processes running at once.
Real sqlite files, real MLflow and Optuna stores, real processes; no Ray is started here."""

from __future__ import annotations

import os
import random
import shutil
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dm_tune._locks import holder_now
from dm_tune.errors import UserError
from dm_tune.search._stores import check_workspace, prepare_stores, remove_if_only_ours, study_lock
from tests.conftest import DM_TUNE, permissions_preexec

pytestmark = pytest.mark.timeout(300)


def _cli(*args: str, cwd: Path, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([DM_TUNE, "search", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          preexec_fn=preexec_fn)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("dm-tune: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


@pytest.fixture(scope="module")
def real_stores(tmp_path_factory) -> Path:
    """A workspace with real MLflow and Optuna stores, created once (a few seconds)."""
    ws = tmp_path_factory.mktemp("stores")
    prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    return ws


def _damage(real: Path, ws: Path, how: str) -> Path:
    if how == "garbage optuna.db":
        (ws / "optuna.db").write_bytes(b"this is not a database\n" * 50)
        return ws / "optuna.db"
    if how == "truncated mlflow.db":
        data = (real / "mlflow.db").read_bytes()
        (ws / "mlflow.db").write_bytes(data[: len(data) // 2])
        return ws / "mlflow.db"
    if how == "header-only optuna.db":
        (ws / "optuna.db").write_bytes((real / "optuna.db").read_bytes()[:100])
        return ws / "optuna.db"
    if how == "foreign sqlite as mlflow.db":
        con = sqlite3.connect(ws / "mlflow.db")
        con.execute("CREATE TABLE notes (text TEXT)")
        con.commit()
        con.close()
        return ws / "mlflow.db"
    if how == "scrambled page of mlflow.db":  # a page overwritten: SQLite's report on it spans lines
        data = (real / "mlflow.db").read_bytes()
        for page in range(1, len(data) // 4096):
            scrambled = bytearray(data)
            scrambled[page * 4096:(page + 1) * 4096] = random.Random(page).randbytes(4096)
            (ws / "mlflow.db").write_bytes(bytes(scrambled))
            con = sqlite3.connect(ws / "mlflow.db")
            try:
                report = [row[0] for row in con.execute("PRAGMA quick_check")]
            except sqlite3.DatabaseError:
                continue
            finally:
                con.close()
            if "\n" in report[0] or len(report) > 1:
                return ws / "mlflow.db"
        raise AssertionError("no page of the store gives a report of several lines")
    if how == "directory as optuna.db":
        (ws / "optuna.db").mkdir()
        return ws / "optuna.db"
    if how == "non-UTF-8 schema of mlflow.db":  # SQLite's message quotes it: sqlite3 raised UnicodeDecodeError
        shutil.copy(real / "mlflow.db", ws / "mlflow.db")
        _garble_schema(ws / "mlflow.db")
        return ws / "mlflow.db"
    raise AssertionError(how)


def _garble_schema(path: Path) -> None:
    """A table's schema ends in a byte that is not UTF-8, as a damaged sqlite_master page may leave it."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA writable_schema=ON")
    con.execute("UPDATE sqlite_master SET sql = sql || x'ca' WHERE name = 'params'")
    con.commit()
    con.close()


DAMAGE = [
    ("garbage optuna.db", "not an SQLite database (file is damaged or not a dm-tune store)"),
    ("truncated mlflow.db", "damaged SQLite database"),
    ("header-only optuna.db", "damaged SQLite database"),
    ("foreign sqlite as mlflow.db", "an SQLite database but not an MLflow store"),
    ("directory as optuna.db", "is not a file"),
    ("scrambled page of mlflow.db", "damaged SQLite database"),
    ("non-UTF-8 schema of mlflow.db", "damaged SQLite database (malformed database schema (params)"),
]


def _damaged_workspace(real: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    ws.mkdir()
    if "optuna.db" in how:  # the other store is sound
        shutil.copy(real / "mlflow.db", ws / "mlflow.db")
    return ws, _damage(real, ws, how)


@pytest.mark.parametrize("how, problem", DAMAGE[:2])
def test_a_damaged_store_is_one_line_and_left_as_it_was(real_stores, tmp_path, how, problem):
    ws, path = _damaged_workspace(real_stores, tmp_path, how)
    before = _snapshot(ws)
    proc = _cli("--workspace", str(ws), cwd=tmp_path)
    line = _one_line_error(proc, f"{path}: {problem}", "move it away or use another --workspace")
    assert len(line) < 300
    assert _snapshot(ws) == before  # nothing written, nothing repaired behind the user's back


@pytest.mark.parametrize("how, problem", DAMAGE)
def test_check_workspace_names_the_damaged_store(real_stores, tmp_path, how, problem):
    ws, path = _damaged_workspace(real_stores, tmp_path, how)
    before = _snapshot(ws)
    with pytest.raises(UserError) as info:
        check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}")
    assert str(info.value).startswith(f"{path}: {problem}") and "\n" not in str(info.value)
    assert _snapshot(ws) == before
    shutil.rmtree(ws) if path.is_dir() else path.unlink()
    assert check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}") == []  # absent: created later


def test_a_store_whose_schema_is_not_utf8_is_damaged_where_its_artifact_location_is_read(real_stores, tmp_path):
    """A resumed search reads where MLflow keeps the study's artifacts before the stores are
    checked: that read passes the store on to the check (it was a UnicodeDecodeError traceback)."""
    from dm_tune.search._run import RunOptions

    ws, path = _damaged_workspace(real_stores, tmp_path, "non-UTF-8 schema of mlflow.db")
    opts = RunOptions(workspace=ws)
    assert opts.moved_artifacts("t") is None
    with pytest.raises(UserError, match=re.escape(f"{path}: damaged SQLite database")):
        check_workspace(ws, opts.tracking, opts.written_folders("t"), opts.ledger_dir("t"))


def test_an_optuna_store_of_another_optuna_version_is_one_line_and_left_as_it_was(real_stores, tmp_path):
    """It has the tables (so the checks pass) but a schema version this Optuna does not know, as a
    newer Optuna leaves it: Optuna's own refusal, with its advice, in one line, not a traceback."""
    ws = tmp_path / "ws"
    shutil.copytree(real_stores, ws)
    con = sqlite3.connect(ws / "optuna.db")
    con.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
    con.commit()
    con.close()
    assert check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}") == []
    before = _snapshot(ws)
    with pytest.raises(UserError) as info:
        prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    line = str(info.value)
    assert line.startswith(f"{ws / 'optuna.db'}: Optuna cannot open this store (") and "\n" not in line
    assert "move it away or use another --workspace" in line
    assert {k: v for k, v in _snapshot(ws).items() if not k.startswith("locks")} == {
        k: v for k, v in before.items() if not k.startswith("locks")}


def test_a_store_another_process_holds_is_busy_not_damaged(real_stores, tmp_path, monkeypatch):
    """An exclusive transaction held past the library's wait: 'try again', not 'move it away'."""
    from dm_tune.search import _stores

    monkeypatch.setattr(_stores, "SQLITE_BUSY_WAIT_S", 1.0)  # a second, not a minute, before it gives up
    ws = tmp_path / "ws"
    shutil.copytree(real_stores, ws)
    holder = sqlite3.connect(ws / "optuna.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(UserError) as checked:  # the pre-flight check, then the library itself
            check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}")
        with pytest.raises(UserError) as info:
            prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    finally:
        holder.close()
    assert str(checked.value).startswith(f"{ws / 'optuna.db'}: Optuna store busy")
    assert str(info.value).startswith(f"{ws / 'optuna.db'}: Optuna store busy")
    for line in (str(checked.value), str(info.value)):
        assert "try again" in line and "move it away" not in line and "damaged" not in line


_WRITER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size = 10")  # spill to the file mid-transaction, as a long write does
con.execute("BEGIN")
con.execute("CREATE TABLE half_written (n INTEGER, text TEXT)")
con.executemany("INSERT INTO half_written VALUES (?, ?)", ((i, "x" * 200) for i in range(20000)))
print("writing", flush=True)
time.sleep(300)
"""


def _killed_mid_write(db: Path) -> None:
    """A process killed (-9) inside a write transaction on ``db``: it leaves a hot journal."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert Path(f"{db}-journal").stat().st_size > 0


@pytest.mark.parametrize("store", ["optuna.db", "mlflow.db"])
def test_a_store_left_mid_write_by_kill_9_is_recovered_not_refused(real_stores, tmp_path, store):
    """A search killed (-9) while writing a store leaves a hot journal; the resumed search's check
    lets SQLite roll that write back, as any writer would, instead of calling the store damaged."""
    import optuna

    ws = tmp_path / "ws"
    shutil.copytree(real_stores, ws)
    before = (ws / store).read_bytes()
    _killed_mid_write(ws / store)
    assert (ws / store).read_bytes() != before  # the unfinished write reached the file itself
    assert check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}") == []
    assert not Path(f"{ws / store}-journal").exists() and (ws / store).read_bytes()[:100] == before[:100]
    tables = {row[0] for row in sqlite3.connect(ws / store).execute("SELECT name FROM sqlite_master")}
    assert "half_written" not in tables
    prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    optuna.get_all_study_summaries(f"sqlite:///{ws / 'optuna.db'}")


_CHECK_READ_ONLY = """
import sys
from pathlib import Path
from dm_tune.errors import UserError
from dm_tune.search._stores import check_store
try:
    check_store(Path(sys.argv[1]), "MLflow", Path(sys.argv[1]).parent, read_only=True)
except UserError as e:
    print(e)
"""


def test_a_store_left_mid_write_that_cannot_be_written_says_so(real_stores, tmp_path):
    """A report on a store, killed mid-write, that this user may only read: SQLite cannot roll the
    write back, and the line says that, not 'damaged'; nothing is changed."""
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(real_stores / "mlflow.db", ro / "mlflow.db")
    _killed_mid_write(ro / "mlflow.db")
    before = _snapshot(ro)
    preexec = permissions_preexec()
    ro.chmod(0o555)
    (ro / "mlflow.db").chmod(0o444)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHECK_READ_ONLY, str(ro / "mlflow.db")], capture_output=True,
                              text=True, timeout=120, preexec_fn=preexec)
    finally:
        ro.chmod(0o755)
        (ro / "mlflow.db").chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{ro / 'mlflow.db'}: a process was killed while writing it"), proc.stdout
    assert "write access" in proc.stdout and "damaged" not in proc.stdout
    assert _snapshot(ro) == before


def test_a_workspace_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    proc = _cli("--workspace", str(tmp_path / "notes.txt" / "ws"), cwd=tmp_path)
    _one_line_error(proc, "--workspace", f"{tmp_path / 'notes.txt'} is a file, not a directory")


@pytest.mark.parametrize("sub", ["locks", "ledger", "ledger/t", "studies", "summaries", "warm_starts", "ray",
                                 "ray/t", "artifacts", "artifacts/t"])
def test_a_file_where_the_search_writes_a_folder_is_one_line(real_stores, tmp_path, sub):
    """Each folder a search of study t writes in: a file in its place was a traceback, some (MLflow's
    artifacts) only once the whole search had run."""
    from dm_tune.search._run import RunOptions

    ws = tmp_path / "ws"
    shutil.copytree(real_stores, ws)
    if (ws / sub).is_dir():
        shutil.rmtree(ws / sub)
    (ws / sub).parent.mkdir(parents=True, exist_ok=True)
    (ws / sub).write_text("x")
    opts = RunOptions(workspace=ws)
    with pytest.raises(UserError) as info:
        check_workspace(ws, opts.tracking, opts.written_folders("t"), opts.ledger_dir("t"))
    assert str(info.value) == f"--workspace {ws}: {sub}/: exists and is not a directory"
    if "/" in sub:  # study t's own folder: no business of another study's search
        assert check_workspace(ws, opts.tracking, opts.written_folders("u"), opts.ledger_dir("u")) == []


def test_the_search_refuses_a_file_where_it_writes_a_folder_before_anything_runs(real_stores, tmp_path):
    """The command itself (a file at artifacts/ was a traceback once the whole search had run)."""
    ws = tmp_path / "ws"
    shutil.copytree(real_stores, ws)
    (ws / "artifacts").write_text("x")
    before = _snapshot(ws)
    proc = _cli("--workspace", str(ws), "--num-samples", "1", "--top-k", "1", cwd=tmp_path)
    _one_line_error(proc, f"--workspace {ws}: artifacts/: exists and is not a directory")
    assert _snapshot(ws) == before


def test_a_moved_workspace_is_checked_where_mlflow_keeps_its_artifacts(tmp_path):
    """An experiment keeps the artifact location it was created with (the workspace where it was
    then): that folder is checked, not the moved workspace's, which MLflow would not use."""
    from dm_tune.search import _tracking
    from dm_tune.search._run import RunOptions

    old, ws = tmp_path / "old", tmp_path / "ws"
    ws.mkdir()
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    _tracking.experiment_id(uri, "t", old / "artifacts", ws)  # created while the workspace was at old/
    old.write_text("x")  # and in its place now: a file
    opts = RunOptions(workspace=ws)
    with pytest.raises(UserError) as info:
        check_workspace(ws, opts.tracking, opts.written_folders("t"), opts.ledger_dir("t"))
    assert str(info.value) == (f"the artifact location MLflow keeps for the study {old / 'artifacts' / 't'}: "
                               f"{old} is a file, not a directory")
    assert check_workspace(ws, opts.tracking, opts.written_folders("u"), opts.ledger_dir("u")) == []
    # Said before a search of it starts: its trials' result files go to the old place.
    assert opts.moved_artifacts("t") == old / "artifacts" / "t" and opts.moved_artifacts("u") is None
    _tracking.experiment_id(uri, "here", ws / "artifacts", ws)
    assert opts.moved_artifacts("here") is None
    # Another workspace's experiment in a store both track into: its search from here is refused, and
    # where that one keeps its artifacts is neither noted nor checked as this workspace's old place.
    other = tmp_path / "other"
    other.mkdir()
    _tracking.experiment_id(uri, "theirs", other / "artifacts", other)
    assert opts.moved_artifacts("theirs") is None
    assert other / "artifacts" / "theirs" not in [folder for folder, _ in opts.written_folders("theirs")]


@pytest.mark.parametrize("where", ["workspace", "parent"])
def test_a_read_only_workspace_is_one_line(real_stores, tmp_path, where):
    ro = tmp_path / "ro"
    ro.mkdir()
    ws = ro if where == "workspace" else ro / "new-ws"
    if where == "workspace":
        shutil.copy(real_stores / "mlflow.db", ro / "mlflow.db")
    preexec = permissions_preexec()
    ro.chmod(0o555)
    try:
        proc = _cli("--workspace", str(ws), cwd=tmp_path, preexec_fn=preexec)
    finally:
        ro.chmod(0o755)
    _one_line_error(proc, "--workspace", f"{ro} is read-only")
    assert not (ro / "new-ws").exists() and not (ro / "locks").exists()


_CHECK_WORKSPACE = """
import sys
from pathlib import Path
from dm_tune.errors import UserError
from dm_tune.search._stores import check_workspace
try:
    check_workspace(Path(sys.argv[1]), sys.argv[2])
except UserError as e:
    print(e)
"""


def test_a_tracking_store_in_a_read_only_folder_names_the_tracking_uri(tmp_path):
    """Its folder read-only: the advice was 'use another --workspace', which changes nothing there."""
    ro = tmp_path / "ro"
    ro.mkdir()
    uri = f"sqlite:///{ro / 'x.db'}"
    preexec = permissions_preexec()
    ro.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHECK_WORKSPACE, str(tmp_path / "ws"), uri], capture_output=True,
                              text=True, timeout=120, preexec_fn=preexec)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"--tracking-uri {uri}: {ro} is read-only for this user; use another --tracking-uri"


def test_an_empty_store_warns_only_when_the_workspace_has_a_history(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "optuna.db").write_bytes(b"")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    assert check_workspace(ws, uri) == []  # a fresh workspace: an empty file is just a new store
    (ws / "studies").mkdir()
    (ws / "studies" / "earlier.json").write_text("{}")
    (warning,) = check_workspace(ws, uri)
    assert f"{ws / 'optuna.db'} is empty (0 bytes)" in warning and "studies/" in warning
    assert "lost" in warning and "\n" not in warning


@pytest.mark.parametrize(("store", "stage", "refused"), [("optuna.db", "search", True), ("optuna.db", "confirm", False),
                                                      ("mlflow.db", "confirm", True)])
def test_an_emptied_store_whose_trials_the_ledger_records_is_refused_before_anything_is_written(
        tmp_path, store, stage, refused):
    """A store emptied to 0 bytes under a study that had trained: a warning that a new store is
    made in its place, then, once the search ran, a refusal, after the new store had been made."""
    from dm_tune.search._ledger import Ledger
    from dm_tune.search._trial import TrialSpec

    ws = tmp_path / "ws"
    ledgers = ws / "ledger" / "study"
    ledgers.mkdir(parents=True)
    (ws / "studies").mkdir()
    (ws / "studies" / "study.json").write_text("{}")
    Ledger(ledgers / "s.jsonl", ws).start([TrialSpec("s", stage, 0, {"method": "dm", "lam": 1.0, "beta": 8.0},
                                                     number=0)])
    (ws / store).write_bytes(b"")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    if not refused:  # (a confirm-stage trial was never an Optuna trial: a new Optuna store loses nothing of it)
        (warning,) = check_workspace(ws, uri, ledgers=ledgers)
        assert "is empty (0 bytes)" in warning
        return
    what = "trial run" if store == "mlflow.db" else "search trial"
    with pytest.raises(UserError, match=re.escape(f"{ws / store}: is empty (0 bytes), but the ledger "
                                                  f"{ledgers / 's.jsonl'} records 1 {what}(s) this")):
        check_workspace(ws, uri, ledgers=ledgers)
    assert (ws / store).stat().st_size == 0


# --- one search per study ----------------------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from dm_tune.search._stores import study_lock
with study_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(300)
"""


def _hold(ws: Path, name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ws), name], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_search_of_the_same_study_is_refused_until_the_first_dies(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "optuna.db").write_bytes(b"")
    (ws / "studies").mkdir()
    (ws / "studies" / "other.json").write_text("{}")
    holder = _hold(ws, "mine")
    try:
        t0 = time.monotonic()
        proc = _cli("--workspace", str(ws), "--name", "mine", "--quiet", cwd=tmp_path)
        assert time.monotonic() - t0 < 60
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        # the refusal alone, before the checks and the data loading (no warning about the empty
        # store, which they give): no traceback
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert lines[0].startswith("dm-tune: error: study 'mine' is already being searched in")
        assert f"pid {holder.pid} on " in lines[0] and "--name" in lines[0]
        lock = ws / "locks" / "mine.lock"
        assert holder_now(lock) == lock.read_text().strip() and holder_now(lock).startswith(f"pid {holder.pid} on ")
        assert holder_now(ws / "locks" / "other.lock") is None and not (ws / "locks" / "other.lock").exists()
        with study_lock(ws, "other"):  # another study of the same workspace is not blocked
            pass
        with pytest.raises(UserError, match=f"pid {holder.pid}.*; wait for it to end$"):  # (--name is refused
            with study_lock(ws, "mine", resuming=True):                                 # beside --resume)
                pass
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            with study_lock(ws, "mine"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up runs in the holder
        holder.wait()
    with study_lock(ws, "mine"):  # the OS released the dead holder's lock
        assert f"pid {os.getpid()} on " in (ws / "locks" / "mine.lock").read_text()


def test_a_failed_start_removes_its_new_workspace_only_if_no_other_study_came_into_it(tmp_path):
    """A search that created a workspace and then failed (Ray, resources) removes it; but a second
    study that started there meanwhile (kill -9'd here, so only its lock file is left), or a study
    stored there, keeps it: another search's data is never removed."""
    ws = tmp_path / "ws"
    with study_lock(ws, "a"):
        (ws / "optuna.db").write_bytes(b"x")
        assert remove_if_only_ours(ws, "a") and not ws.exists()
    with study_lock(ws, "a"):
        other = _hold(ws, "b")
        other.send_signal(signal.SIGKILL)
        other.wait()
        assert not remove_if_only_ours(ws, "a") and (ws / "locks" / "b.lock").is_file()
    (ws / "locks" / "b.lock").unlink()
    (ws / "studies").mkdir()
    (ws / "studies" / "b.json").write_text("{}")
    with study_lock(ws, "a"):
        assert not remove_if_only_ours(ws, "a") and (ws / "studies" / "b.json").is_file()


_REMOVER = """
import shutil, sys, time
from pathlib import Path
from dm_tune.search._stores import stores_lock
ws = Path(sys.argv[1])
with stores_lock(ws):  # as remove_if_only_ours, slowed down: it saw no other study, then removes
    print("removing", flush=True)
    time.sleep(2)
    shutil.rmtree(ws)
"""


def test_a_study_lock_is_not_taken_in_a_workspace_being_removed(tmp_path):
    """A failed start removes the workspace it created under the workspace lock; a study lock
    taken meanwhile waits for that, so it is never on a file that is then removed (a second
    search of the same study would take it again and both would run)."""
    ws = tmp_path / "ws"
    remover = subprocess.Popen([sys.executable, "-c", _REMOVER, str(ws)], stdout=subprocess.PIPE, text=True)
    assert remover.stdout.readline().strip() == "removing"
    with study_lock(ws, "b"):
        remover.wait(timeout=60)
        assert f"pid {os.getpid()} on " in (ws / "locks" / "b.lock").read_text()
        with pytest.raises(UserError, match="already being searched"):
            with study_lock(ws, "b"):
                pass


def test_the_workspace_lock_waits_then_names_its_holder(tmp_path):
    from dm_tune.search._stores import stores_lock

    ws = tmp_path / "ws"
    holder = subprocess.Popen([sys.executable, "-c", _REMOVER, str(ws)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "removing"
        t0 = time.monotonic()
        with pytest.raises(UserError, match=rf"held by another process for more than 0.5 s \(pid {holder.pid} on "):
            with stores_lock(ws, timeout_s=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5
    finally:
        holder.wait(timeout=60)
    with stores_lock(ws, timeout_s=0.5):  # its holder gone (and the workspace with it): taken at once
        pass


def test_a_directory_in_place_of_the_study_lock_is_one_line(tmp_path):
    """The lock file could not be opened (a folder at its path): a traceback from open() in search
    and validate; now one line naming it and what to do."""
    ws = tmp_path / "ws"
    (ws / "locks" / "mine.lock").mkdir(parents=True)
    proc = _cli("--workspace", str(ws), "--name", "mine", "--quiet", cwd=tmp_path)
    _one_line_error(proc, f"{ws / 'locks' / 'mine.lock'}: is not a file", "remove it")


_LOCK_READ_ONLY = """
import sys
from pathlib import Path
from dm_tune.errors import UserError
from dm_tune.search._stores import study_lock
try:
    with study_lock(Path(sys.argv[1]), "mine"):
        print("held")
except UserError as e:
    print(e)
"""


def test_a_study_lock_file_this_user_cannot_write_is_one_line(tmp_path):
    ws = tmp_path / "ws"
    lock = ws / "locks" / "mine.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    preexec = permissions_preexec()
    lock.chmod(0o444)  # (another user's, made with its umask)
    try:
        proc = subprocess.run([sys.executable, "-c", _LOCK_READ_ONLY, str(ws)], capture_output=True, text=True,
                              timeout=120, preexec_fn=preexec)
    finally:
        lock.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{lock}: the lock file cannot be written by this user (permissions); make it "
                                   "writable for this user, or run as the user who owns it")


def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """Opened, then its folder removed by the search that created it, then locked: that lock would
    be on a file no one else can see; the study lock is taken on the file at the path instead."""
    from dm_tune import _locks

    ws, real_flock, removed = tmp_path / "ws", _locks.fcntl.flock, []

    def flock_after_a_clean_up(f, op):
        if not removed:
            removed.append(True)
            shutil.rmtree(ws)
        return real_flock(f, op)

    monkeypatch.setattr(_locks.fcntl, "flock", flock_after_a_clean_up)
    with study_lock(ws, "b"):
        assert removed and f"pid {os.getpid()} on " in (ws / "locks" / "b.lock").read_text()
        with pytest.raises(UserError, match="already being searched"):
            with study_lock(ws, "b"):
                pass


# --- new stores created by several processes at once ---------------------------------------------

_PREPARE = """
import sys, time
from pathlib import Path
from dm_tune.search._stores import prepare_stores
ws, go = Path(sys.argv[1]), Path(sys.argv[2])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.01)
prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
print("ready")
"""


def _tables(db: Path) -> set[str]:
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()


def test_a_search_killed_while_creating_its_stores_leaves_none_half_built(tmp_path):
    """MLflow builds a new store in many migrations; killed (-9) half-way, the first search of a
    workspace left a schema every later open refused ('table ... already exists'), for good. Built
    aside and put in place whole, it leaves no store, and the next search creates one."""
    ws, go = tmp_path / "ws", tmp_path / "go"
    ws.mkdir()
    go.touch()
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE, str(ws), str(go)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any("experiments" in _tables(db) for db in ws.glob("*mlflow.db*") if not db.name.endswith("-journal")):
                break  # the first migrations are in, the later ones not yet
            time.sleep(0.02)
        assert proc.poll() is None, "the stores were created before the test could kill the process"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (ws / "mlflow.db").exists() or _tables(ws / "mlflow.db") >= {"experiments", "runs", "logged_models"}
    assert check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}") == []
    prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").search_experiments()[0].name == "Default"
    assert sorted(p.name for p in ws.iterdir() if p.name.endswith("db")) == ["mlflow.db", "optuna.db"]


@pytest.mark.parametrize("start", ["absent", "empty"])
def test_a_store_built_aside_never_replaces_one_another_process_put_there_meanwhile(real_stores, tmp_path, start):
    """A tracking file shared by two workspaces (the stores lock is per workspace): while this
    process builds its new store aside (seconds of migrations), the other puts one in place. Theirs
    is kept, not replaced by an empty one; a tracking file's new folder is made as MLflow made it."""
    from dm_tune.search import _stores

    path = tmp_path / "new" / "shared.db"
    if start == "empty":
        path.parent.mkdir()
        path.write_bytes(b"")
    theirs = (real_stores / "mlflow.db").read_bytes()

    def built_while_theirs_arrives(tmp: Path) -> None:
        sqlite3.connect(tmp).execute("CREATE TABLE ours (x)").connection.close()
        arriving = path.with_name("theirs.db")
        arriving.write_bytes(theirs)
        os.replace(arriving, path)

    _stores._whole(path, built_while_theirs_arrives)
    assert path.read_bytes() == theirs
    assert sorted(p.name for p in path.parent.iterdir()) == ["shared.db"]  # nothing of ours left beside it


def test_stores_are_created_and_upgraded_under_the_workspace_lock(tmp_path, monkeypatch):
    """Building a new store aside keeps two creators apart; an existing store's upgrade is done in
    place, where only the workspace lock keeps two processes' migrations apart: every store is
    opened while this process holds it."""
    import contextlib

    from dm_tune.search import _stores

    held, opened = [], []
    real_lock, real_whole = _stores.stores_lock, _stores._whole

    @contextlib.contextmanager
    def lock(workspace: Path, *args, **kwargs):
        with real_lock(workspace, *args, **kwargs):
            held.append(True)
            try:
                yield
            finally:
                held.pop()

    def whole(path: Path, open_store) -> None:
        opened.append((path.name, bool(held)))
        real_whole(path, open_store)

    monkeypatch.setattr(_stores, "stores_lock", lock)
    monkeypatch.setattr(_stores, "_whole", whole)
    ws = tmp_path / "ws"
    ws.mkdir()
    for _ in range(2):  # created, then opened again (as a resume or an upgrade opens it)
        _stores.prepare_stores(ws, f"sqlite:///{ws / 'mlflow.db'}", f"sqlite:///{ws / 'optuna.db'}")
    assert opened == [("mlflow.db", True), ("optuna.db", True)] * 2


def test_two_processes_create_new_stores_at_once(tmp_path):
    """Two processes creating a new MLflow store at once raced its schema migrations (duplicate
    column name / alembic_version errors), nearly every time: each store is built aside and put in
    place whole (and under the workspace lock, the test above)."""
    import optuna
    from mlflow.tracking import MlflowClient

    ws, go = tmp_path / "ws", tmp_path / "go"
    ws.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(ws), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [proc.stdout.readline().strip() for proc in procs] == ["waiting"] * 2  # both imported
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0 and out.strip() == "ready", err[-2000:]
    assert check_workspace(ws, f"sqlite:///{ws / 'mlflow.db'}") == []
    assert [e.name for e in MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").search_experiments()] == ["Default"]
    assert optuna.get_all_study_summaries(optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")) == []


def test_a_full_disk_is_found_in_whatever_wraps_it(tmp_path):
    """What the search says in one line (with the resume command) when a store's disk is full: a
    real ENOSPC (/dev/full), and SQLite's own "full", each wrapped as Ray and MLflow wrap them."""
    import optuna

    from dm_tune.errors import no_room

    try:
        with open("/dev/full", "w") as f:
            f.write("x")
            f.flush()
    except OSError as e:
        full = e
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("Searcher.on_trial_complete failed") from e
    except RuntimeError as e:
        assert no_room(e) == "No space left on device"
    con = sqlite3.connect(tmp_path / "small.db")
    con.execute("CREATE TABLE t (x BLOB)")
    con.execute("PRAGMA max_page_count = 3")  # a store that cannot grow: SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError) as info:
        con.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    con.close()
    wrapped = RuntimeError(f"(sqlite3.OperationalError) {info.value}\n[SQL: INSERT ...]")  # as SQLAlchemy words it
    assert no_room(info.value) == no_room(wrapped) == "database or disk is full"
    # a store made read-only: by its permissions (the OSError's file named, however deep it is), or SQLite's
    denied = PermissionError(13, "Permission denied", str(tmp_path / "ledger.jsonl"))
    try:
        try:
            raise denied
        except OSError as e:
            raise RuntimeError("Searcher.on_trial_complete failed: Permission denied") from e
    except RuntimeError as e:
        assert no_room(e) == f"{tmp_path / 'ledger.jsonl'}: Permission denied"
    assert no_room(RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: ...]")) == \
        "attempt to write a readonly database"
    assert no_room(RuntimeError("injected failure at epoch 2")) is None
    assert no_room(OSError(2, "No such file or directory", "x")) is None
    # a store it cannot open now, nor its journal, as Optuna wraps it (a search that a folder made
    # read-only ended so, mid-ask, printed a traceback of Optuna's and SQLAlchemy's frames)
    with pytest.raises(sqlite3.OperationalError) as info:
        sqlite3.connect(tmp_path / "gone" / "optuna.db")
    try:
        try:
            raise info.value
        except sqlite3.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
    except optuna.exceptions.StorageInternalError as e:
        assert no_room(e) == "unable to open database file"


_COMMIT_IN_A_FOLDER_MADE_READ_ONLY = """
import os, sqlite3, sys
folder = sys.argv[1]
con = sqlite3.connect(os.path.join(folder, "store.db"))
con.execute("CREATE TABLE t (x)")
con.commit()
con.execute("INSERT INTO t VALUES (1)")  # the rollback journal is made now
os.chmod(folder, 0o555)
try:
    con.commit()
    print("committed")
except sqlite3.OperationalError as e:
    print(e)
finally:
    os.chmod(folder, 0o755)
"""


def test_a_store_whose_folder_turns_read_only_between_write_and_commit_is_no_room(tmp_path):
    """A folder made read-only while a store's transaction is open: SQLite's commit cannot delete
    its journal and says "disk I/O error" (not "readonly database"). A search ended so printed a
    traceback of Optuna's and SQLAlchemy's frames instead of its one line and resume command."""
    from dm_tune.errors import no_room

    said = subprocess.run([sys.executable, "-c", _COMMIT_IN_A_FOLDER_MADE_READ_ONLY, str(tmp_path)],
                          preexec_fn=permissions_preexec(), capture_output=True, text=True, check=True).stdout.strip()
    assert said == "disk I/O error"
    wrapped = RuntimeError(f"(sqlite3.OperationalError) {said}\n(Background on this error at: ...)")
    assert no_room(wrapped) == "disk I/O error"
    assert no_room(OSError(5, "Input/output error", "x")) is None  # (a failing read: a damaged ledger, data)
