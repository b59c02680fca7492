"""The workspace's stores, checked before a search writes anything and created one process at a time.

A workspace holds two SQLite stores, ``mlflow.db`` (unless ``--tracking-uri`` names a server or
another file) and ``optuna.db``, shared by every study in it. Three things can go wrong there
that MLflow and Optuna only report as long tracebacks, or not at all:

- a store that is damaged, truncated or not a store at all, or a workspace that cannot be
  written: ``check_workspace`` names the file and the problem in one line, before anything is
  written (a store left mid-write by a killed search is not damaged: SQLite rolls that write back);
- two searches of the same study at once, which would overwrite each other: ``study_lock`` holds
  an exclusive lock on ``WORKSPACE/locks/NAME.lock`` for the whole search;
- two searches (of different studies) creating the same new store at once, which races MLflow's
  schema migrations (``duplicate column name``): ``prepare_stores`` creates or upgrades the
  stores under a workspace-wide lock.

The locks are ``flock`` locks (``dm_tune._locks``): the OS releases them when the process ends, however it ends
(even ``kill -9``), so a stale lock file never blocks a later search.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from dm_tune._locks import held, refuse_if_held
from dm_tune.errors import UserError, first_line

LOCKS_DIR = "locks"
_STORES_LOCK = ".stores.lock"   # study names start with a letter or digit: no clash with NAME.lock
_SQLITE_HEADER = b"SQLite format 3\x00"
# A table each kind of store has, to tell a store from some other SQLite file.
_STORE_TABLES = {"MLflow": "experiments", "Optuna": "studies"}
# The tables every store of the kind has had since its earliest supported version: one without any
# of them is damaged. (MLflow, opening it, would create the missing table, empty, in the user's
# store, and a report would then read a store whose runs had lost their params as one without runs.)
_CORE_TABLES = {"MLflow": ("experiments", "runs", "params", "metrics", "latest_metrics", "tags"),
                "Optuna": ("studies", "trials", "trial_params", "trial_values")}
_MOVE_AWAY = "move it away or use another --workspace"


def _busy(path: Path, kind: str, why: str) -> str:
    """The one line for a store another process holds: busy, not damaged, so try again."""
    return f"{path}: {kind} store busy ({why}); another process is writing it: try again"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (MLflow's and SQLAlchemy's spelling); None for a server.
    As SQLAlchemy reads it: a ``~`` is a folder of that name, not the home directory."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    return Path(uri[len("sqlite:///"):])


def check_workspace(workspace: Path, tracking_uri: str, folders: Sequence[tuple[Path, str]] = (),
                    ledgers: Path | None = None) -> list[str]:
    """Fail with one line if the workspace or one of its stores cannot be used; write nothing.
    ``folders``: those the search will write in, each with the option that chose it (a file in the
    place of one was a traceback, some once the search had run); ``ledgers``: the study's ledger
    folder, whose ledgers it appends to.

    Returns warnings to show (an empty store in a workspace that has a history: it is recreated,
    so what it held is gone)."""
    _check_writable_dir(workspace, f"--workspace {workspace}")
    for folder, flag in folders:
        if flag == "--workspace" and folder.is_relative_to(workspace):
            _check_writable_dir(folder, f"--workspace {workspace}: {folder.relative_to(workspace)}/")
        else:
            _check_writable_dir(folder, f"{flag} {folder}", flag if flag.startswith("--") else "--workspace")
    if ledgers is not None and ledgers.is_dir():  # refused now, not once trials have run
        for ledger in ledgers.glob("*.jsonl"):
            if not os.access(ledger, os.W_OK):
                raise UserError(f"{ledger}: cannot be written (the search appends to it); make it writable "
                                "or use another --workspace")
    stores = {"Optuna": workspace / "optuna.db"}
    tracking = sqlite_path(tracking_uri)
    if tracking is not None:
        stores["MLflow"] = tracking
        if tracking.parent != workspace:
            _check_writable_dir(tracking.parent, f"--tracking-uri {tracking_uri}", "--tracking-uri")
    warnings: list[str] = []
    for kind, path in stores.items():
        warning = check_store(path, kind, workspace)
        if warning:
            warnings.append(warning)
    _refuse_emptied(stores, workspace, ledgers)
    return warnings


def _refuse_emptied(stores: dict[str, Path], workspace: Path, ledgers: Path | None) -> None:
    """An empty (0-byte) store that this study's ledgers say held its trials (MLflow: every trial;
    Optuna: the search stage's) is refused now. It was refused once the search ran, after a warning
    that a new store replaces it, and after the new store had been made in its place."""
    empty = [(kind, path) for kind, path in stores.items() if path.is_file() and path.stat().st_size == 0]
    if not empty or ledgers is None or not ledgers.is_dir():
        return
    from dm_tune.search._ledger import Ledger

    for ledger_path in sorted(ledgers.glob("*.jsonl")):
        started = Ledger(ledger_path, workspace).started.values()
        for kind, path in empty:
            # (an MLflow run per trial; an Optuna trial per search arm, which trains on several seeds)
            held = (len(started) if kind == "MLflow" else
                    len({spec.number for spec in started if spec.stage == "search"}))
            if held:
                raise UserError(f"{path}: is empty (0 bytes), but the ledger {ledger_path} records {held} "
                                f"{'trial run' if kind == 'MLflow' else 'search trial'}(s) this {kind} store held: "
                                "it was emptied since; restore it, or run the study in another --workspace")


def stored_artifact_location(tracking_uri: str, experiment: str, workspace: Path | None = None) -> Path | None:
    """Where a local MLflow store keeps experiment ``experiment``'s artifacts (a ``file:`` location
    it was created with), read with SQLite alone; None when there is none to read, or when the
    experiment is another workspace's than ``workspace`` (a store shared by several: its search of
    that name is refused, and what that workspace keeps is not this one's to note or check)."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file():
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT e.artifact_location, t.value FROM experiments e LEFT JOIN experiment_tags t "
                              "ON t.experiment_id = e.experiment_id AND t.key = 'dmtune.workspace_id' "
                              "WHERE e.name = ?", (experiment,)).fetchone()
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError):  # damaged, busy or another store: check_store says so
        return None
    if workspace is not None and row and row[1] is not None:
        try:
            own = (workspace / WORKSPACE_ID).read_text(encoding="ascii", errors="replace").strip()
        except OSError:  # (no id yet: the workspace owns no experiment)
            own = None
        if row[1] != own:
            return None
    location = urlparse(row[0]) if row and isinstance(row[0], str) else None
    if location is None or location.scheme != "file":
        return None
    return Path(unquote(location.path))


def _check_writable_dir(path: Path, what: str, other: str = "--workspace") -> None:
    """``path`` is, or can be created as, a directory this process can write in (``other``: the
    option whose other value would do)."""
    existing = path
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        detail = "exists and is not a directory" if existing == path else f"{existing} is a file, not a directory"
        raise UserError(f"{what}: {detail}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {existing} is read-only for this user; use another {other}")


def check_store(path: Path, kind: str, workspace: Path, *, read_only: bool = False) -> str | None:
    """One SQLite store: absent (created later) or a sound store of ``kind`` (MLflow, Optuna);
    ``read_only``: one that is only to be read (a report), so it need not be writable.

    Raises UserError naming the file and the problem; returns a warning for an empty file."""
    move_away = "pass the store of a finished search" if read_only else _MOVE_AWAY
    if not path.exists():
        return None
    if not path.is_file():
        raise UserError(f"{path}: is not a file; {move_away}")
    if not os.access(path, os.R_OK if read_only else os.R_OK | os.W_OK):
        access = "read" if read_only else "read and written"
        raise UserError(f"{path}: cannot be {access} by this user (permissions); {move_away}")
    size = path.stat().st_size
    if size == 0 and read_only:
        raise UserError(f"{path}: is empty (0 bytes), not a store with runs; {move_away}")
    if size == 0:
        history = workspace_history(workspace)
        if not history:
            return None
        return (f"{path} is empty (0 bytes) although this workspace has earlier searches ({', '.join(history)}); "
                f"a new {kind} store is created there and whatever it held before is lost")
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise UserError(f"{path}: not an SQLite database (file is damaged or not a dm-tune store); {move_away}")
    # Opened for writing where it may be written: a process killed mid-write (kill -9) leaves a hot
    # journal, which SQLite rolls back (its crash recovery) on the first open that may write, and
    # which a read-only open refuses ('attempt to write a readonly database'). The checks only read.
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}", uri=True)
        try:
            check = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except UnicodeDecodeError as e:
        # sqlite3 raises this in place of its DatabaseError when SQLite's message holds bytes that are
        # not UTF-8: a damaged schema quoted in the message (it is SQLite's message, in e.object).
        why = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else str(e)
        raise UserError(f"{path}: damaged SQLite database ({' '.join(why.split())[:200]}); {move_away}") from None
    except sqlite3.DatabaseError as e:
        code = getattr(e, "sqlite_errorname", "")
        if code == "SQLITE_READONLY_ROLLBACK":
            raise UserError(f"{path}: a process was killed while writing it, and rolling that write back "
                            f"needs write access to the file and its folder; {move_away}") from None
        if code == "SQLITE_BUSY":
            raise UserError(_busy(path, kind, str(e))) from None
        raise UserError(f"{path}: damaged SQLite database ({e}); {move_away}") from None
    if check != ["ok"]:
        first = " ".join(" ".join(check[:2]).split())[:200]  # SQLite's report spans lines: one line of it
        raise UserError(f"{path}: damaged SQLite database (integrity check: {first}); {move_away}")
    if tables and _STORE_TABLES[kind] not in tables:
        raise UserError(f"{path}: an SQLite database but not an {kind} store (no {_STORE_TABLES[kind]!r} "
                        f"table); {move_away}")
    missing = [t for t in _CORE_TABLES[kind] if tables and t not in tables]
    if missing:
        raise UserError(f"{path}: damaged {kind} store (its {', '.join(map(repr, missing))} table"
                        f"{'s are' if len(missing) > 1 else ' is'} missing); {move_away}")
    return None


def workspace_history(workspace: Path) -> list[str]:
    """What in the workspace shows earlier searches (stored studies, summaries, Ray experiments)."""
    found = []
    for sub in ("studies", "summaries", "ray"):
        d = workspace / sub
        if d.is_dir() and any(d.iterdir()):
            found.append(f"{sub}/")
    return found


@contextlib.contextmanager
def study_lock(workspace: Path, name: str, resuming: bool = False) -> Iterator[None]:
    """Hold the study ``name`` of ``workspace`` for this process, or fail with one line if
    another process (a search of the same study) holds it. It is taken under the workspace-wide
    lock, so a failed start removing its new workspace (``remove_if_only_ours``) either sees this
    lock file or is done before it is created."""
    with contextlib.ExitStack() as stack:
        with stores_lock(workspace):
            stack.enter_context(held(workspace / LOCKS_DIR / f"{name}.lock", _searched_text(workspace, name, resuming)))
        yield


def refuse_if_searched(workspace: Path, name: str, resuming: bool = False) -> None:
    """Fail at once, with ``study_lock``'s line, if another process searches the study now: the
    checks and the data loading before the lock take seconds (``study_lock`` still decides)."""
    refuse_if_held(workspace / LOCKS_DIR / f"{name}.lock", _searched_text(workspace, name, resuming))


def _searched_text(workspace: Path, name: str, resuming: bool) -> str:
    return (f"study {name!r} is already being searched in {workspace} ({{holder}}); "
            "wait for it to end" + ("" if resuming else " or use another --name"))  # (--name: refused with --resume)


@contextlib.contextmanager
def stores_lock(workspace: Path, timeout_s: float = 300.0) -> Iterator[None]:
    """The workspace-wide lock under which stores are created or upgraded, study locks taken and a
    new workspace removed (a few seconds at most)."""
    path = workspace / LOCKS_DIR / _STORES_LOCK
    with held(path, f"{path}: held by another process for more than {timeout_s:g} s ({{holder}})", wait_s=timeout_s):
        yield


WORKSPACE_ID = "workspace.id"


def workspace_id(workspace: Path) -> str:
    """The workspace's own random id (``WORKSPACE/workspace.id``, made on first use): what names it
    to a tracking store that several workspaces share, wherever it is mounted."""
    path = workspace / WORKSPACE_ID
    if not path.is_file():  # written aside, then put in place: never seen half-written, never replaced
        tmp = path.with_name(f".{WORKSPACE_ID}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            tmp.write_text(secrets.token_hex(16) + "\n", encoding="ascii")
            _put_in_place(tmp, path, was_empty=False)
        except OSError as e:
            raise UserError(f"{path}: cannot be written ({e.strerror or e})") from None
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not text:
        raise UserError(f"{path}: empty; remove it (a search writes it again)")
    return text


def remove_if_only_ours(workspace: Path, study: str) -> bool:
    """Remove a workspace this process created for ``study`` and could not use, unless another
    study has come into it meanwhile (a lock file or a stored study of its own): what another
    search keeps there is never removed. True when it was removed."""
    with stores_lock(workspace, timeout_s=30.0):
        locks = {p.name for p in (workspace / LOCKS_DIR).iterdir()} - {_STORES_LOCK, f"{study}.lock"}
        studies = workspace / "studies"
        if locks or (studies.is_dir() and any(studies.iterdir())):
            return False
        shutil.rmtree(workspace, ignore_errors=True)
        return True


def prepare_stores(workspace: Path, tracking_uri: str, optuna_url: str) -> None:
    """Create or upgrade the MLflow (when local) and Optuna stores, one process at a time.

    Both libraries create their schema when first opened; two processes doing that at once on
    a new file race (MLflow's migrations fail with 'duplicate column name')."""
    from mlflow.tracking import MlflowClient

    def mlflow_store(path: Path) -> None:
        MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)

    with stores_lock(workspace):
        tracking = sqlite_path(tracking_uri)
        if tracking is not None:
            with _refused("MLflow", tracking):
                _whole(tracking, mlflow_store)
        optuna_file = sqlite_path(optuna_url)
        with _refused("Optuna", optuna_file or Path(optuna_url)):
            if optuna_file is None:
                optuna_storage(optuna_url)
            else:
                _whole(optuna_file, lambda path: optuna_storage(f"sqlite:///{path}"))


_CREATING = ".creating"
_LEFTOVER_AGE_S = 3600.0   # a half-built store of a process killed this long ago is removed


def _whole(path: Path, open_store) -> None:
    """Open the SQLite store at ``path`` with ``open_store(path)``, which creates or upgrades its
    schema. A new store is built under a temporary name beside it and then put in place in one
    step, so a process killed while building it (MLflow's migrations are many transactions, and
    a half-built schema is refused by every later open) leaves no store rather than a broken one."""
    if path.is_file() and path.stat().st_size > 0:
        open_store(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)  # as the libraries would (a new --tracking-uri folder)
    for leftover in path.parent.glob(f".{path.name}.*{_CREATING}*"):
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > _LEFTOVER_AGE_S:
                leftover.unlink()
    was_empty = path.is_file()  # a 0-byte file (the pre-flight check warned): replaced if still empty
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_CREATING}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # a new file's mode (the umask)
    try:
        open_store(tmp)
        _put_in_place(tmp, path, was_empty)
    finally:
        for name in (tmp, Path(f"{tmp}-journal")):
            name.unlink(missing_ok=True)
    if not path.exists():  # the empty file it was to replace was removed meanwhile: start again
        _whole(path, open_store)
    elif path.stat().st_size == 0:  # another process's empty file took the place meanwhile: open it in place
        open_store(path)


def _put_in_place(tmp: Path, path: Path, was_empty: bool) -> None:
    """``tmp`` at ``path`` unless a store is there by now (another workspace's search, sharing this
    tracking file, built one meanwhile: theirs is kept and used)."""
    if was_empty:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == 0:
                os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the path exists: never replaces another's store
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: the (narrow) check-then-rename instead
        if not path.exists():
            os.replace(tmp, path)


# SQLite's wait for a store another process is writing: Python's default of 5 s is shorter than a
# busy shared workspace can keep a writer waiting (MLflow waits 20 s on its own).
SQLITE_BUSY_WAIT_S = 60.0


def optuna_storage(url: str):
    """The Optuna storage at ``url``; on SQLite, waiting up to SQLITE_BUSY_WAIT_S for other writers."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_WAIT_S}} if sqlite_path(url) is not None else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


@contextlib.contextmanager
def _refused(kind: str, path: Path) -> Iterator[None]:
    """A store the library will not open (a schema from another version of it, say): one line
    naming the file, the library's own first line, and what to do; not a traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the library raises, the user sees one line
        first = first_line(e)
        if "database is locked" in first:  # busy, not damaged: another process is writing it
            raise UserError(_busy(path, kind, first)) from None
        raise UserError(f"{path}: {kind} cannot open this store ({first}); {_MOVE_AWAY}") from None
