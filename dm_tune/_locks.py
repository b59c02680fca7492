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
from collections.abc import Iterator
from pathlib import Path

from dm_tune.errors import UserError


@contextlib.contextmanager
def held(path: Path, busy: str) -> Iterator[None]:
    """Hold the lock file ``path`` for this process (it names the holder: pid, host, since when),
    or fail with one line: ``busy`` with ``{holder}`` filled in. The lock goes with the process,
    however it ends (``kill -9`` included): the kernel releases it."""
    f = open(path, "a+")  # noqa: SIM115 - closed below, which releases the lock
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(busy.format(holder=f.read().strip() or "another process")) from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        f.flush()
        yield
    finally:
        f.close()
