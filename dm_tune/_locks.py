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
def held(path: Path, busy: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock file ``path`` for this process (it names the holder: pid, host, since when),
    waiting up to ``wait_s`` for another holder, or fail with one line: ``busy`` with ``{holder}``
    filled in. The lock goes with the process, however it ends (``kill -9`` included): the kernel
    releases it."""
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
