"""An exclusive lock on a file for as long as a process does something (a search of a study, a
validation or a report into one folder): a second process is refused in one line that names
the holder. ``flock`` locks go with the process however it ends (``kill -9`` included), so a
stale lock file never blocks anyone."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dm_tune.errors import UserError


@contextlib.contextmanager
def held(path: Path, busy: str, wait_s: float = 0.5) -> Iterator[None]:
    """Hold the lock file ``path`` for this process (it names the holder: pid, host, since when),
    waiting up to ``wait_s`` for another holder, or fail with one line: ``busy`` with ``{holder}``
    filled in. The lock goes with the process, however it ends (``kill -9`` included): the kernel
    releases it. (The default wait outlasts another process's ``holder_now``, which holds the
    lock, shared, for microseconds.)"""
    f = acquire(path, busy, wait_s=wait_s)
    try:
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        f.flush()
        yield
    finally:
        f.close()


def holder_now(path: Path) -> str | None:
    """Who holds the lock file ``path`` at this moment (what it names, or "another process"), or
    None: not held, not there or not readable. Only a first answer, for refusing at once what
    ``held`` would refuse later: the file is neither created nor locked, and ``held`` decides."""
    try:
        f = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        except OSError:
            return None
        return None  # (the shared lock goes with the file's close)


def refuse_if_held(path: Path, busy: str) -> None:
    """Fail at once with ``held``'s line (``busy``, ``{holder}`` filled in) if another process holds
    ``path`` now: for refusing before seconds of work what ``held`` would refuse after it."""
    holder = holder_now(path)
    if holder is not None:
        raise UserError(busy.format(holder=holder))


def acquire(path: Path, busy: str, attempts: int = 5, wait_s: float = 0.0):
    """The lock file ``path``, open and locked, waiting up to ``wait_s`` for its holder to let go
    (then ``busy``, with ``{holder}`` filled in). A lock taken on a file that was removed meanwhile
    (its folder cleaned up by the process that created it) locks nothing: it is taken again on
    the file now at ``path``."""
    deadline = time.monotonic() + wait_s
    for _ in range(attempts):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = open(path, "a+")  # noqa: SIM115 - closed by the caller, which releases the lock
        except FileNotFoundError:  # the folder went between the mkdir and the open
            continue
        except OSError as e:
            raise UserError(_unopenable(path, e)) from None
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise UserError(busy.format(holder=holder)) from None
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()
    raise UserError(f"{path}: removed again each time it was locked; is another process cleaning up its folder?")


def _unopenable(path: Path, error: OSError) -> str:
    """The one line for a lock file that cannot be opened for writing. It is refused, not locked
    through a read-only descriptor (``flock`` would work on one): the lock file names its holder for
    whoever is refused, which a process that cannot write it cannot do, and one this user cannot
    write is another user's, beside whose files this process would write."""
    if path.is_dir() or (path.exists() and not path.is_file()):
        return (f"{path}: is not a file, and dm-tune locks that file to run one process at a time there; "
                "remove it (the lock file is made again)")
    if isinstance(error, PermissionError):
        return (f"{path}: the lock file cannot be written by this user (permissions); make it writable "
                "for this user, or run as the user who owns it")
    return f"{path}: the lock file cannot be opened ({error.strerror or error}); make it a file this user can write"
