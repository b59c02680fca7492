"""A torch-saved file is first loaded in a child process with a time and a memory limit.

The pickle scan (``_pickles``) refuses the ways a small pickle is known to take exponential time.
What torch's weights-only loader still allows can cost time or memory in proportion to a number
the file states rather than to its size: a tensor class called with a size, a view past its
storage's data, a string copied at each call. So the caller reads the file's bytes once and
``check_load`` has a child process load them, with its address space limited to a few times the
file's size and its time to ``LOAD_SECONDS``; only when the load finished there does the caller
load the same bytes itself (the load is deterministic: it costs the same again). A load that
failed in the child fails with its message; one that ran out of time or memory, or whose process
died, is refused, and the caller's process never builds it.

The child runs ``python -P -m dm_tune.datasets._bounded MODULE:FUNCTION EXTRA_BYTES`` with the
bytes on its standard input (the reader imports torch before its memory is limited), and answers
one JSON line on its standard output, after a token only its parent knows.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Time for a child to start (it imports torch: 2-3 s on an idle 2-core VM, more under load) and
# load; a file gets one more second per 10 MB.
LOAD_SECONDS = 120.0
SECONDS_PER_BYTE = 1e-7
# The child's address space may grow past what it held before the load by this many times the
# file's size, plus MEMORY_SLACK: a file's tensors are its data (the bytes read in, the storages
# built from them, torch's copies), and allocators reserve more than they touch.
MEMORY_FACTOR = 4
MEMORY_SLACK = 1 << 30

# What a child may be asked to load with: "module:function", a function taking a binary file
# object that raises ``Unreadable`` for a file it cannot read as what it reads.
READERS = {"state-dict": "dm_tune.models:read_state_dict",
           "label-arrays": "dm_tune.noise:read_label_arrays"}

_TOKEN = "DMTUNE_BOUNDED_LOAD_TOKEN"
_PASSED: set[tuple[str, str]] = set()  # (reader, sha256 of the bytes) whose load finished in a child


class Unreadable(Exception):
    """A file a reader cannot read as what it reads; the one-line message says why."""


def check_load(data: bytes, reader: str) -> None:
    """Raise ``Unreadable`` unless ``READERS[reader]`` loads ``data`` in a child process within
    ``LOAD_SECONDS`` (and one second per 10 MB) and ``MEMORY_FACTOR`` times its size (and
    ``MEMORY_SLACK``) of memory. Bytes that passed once in this process pass at once."""
    key = (reader, hashlib.sha256(data).hexdigest())
    if key in _PASSED:
        return
    _run_child(["bytes", READERS[reader]], data, len(data))
    _PASSED.add(key)


def read_checked(data: bytes, reader: str) -> Any:
    """``READERS[reader]`` on ``data``, once ``check_load`` has passed it (raises ``Unreadable``)."""
    import io

    check_load(data, reader)  # (before anything is built here)
    return _reader(READERS[reader])(io.BytesIO(data))


def check_folder_load(spec: str, folder: Path) -> tuple[tuple[Any, ...], ...]:
    """Raise ``Unreadable`` unless ``spec`` ("module:function", given the folder's path) returns,
    or raises the ``DataError`` it raises for a malformed file, in a child process within the
    limits ``check_load`` sets for the folder's files' total size: a dataset read in place (the
    CIFAR batches), which the caller then reads itself. A folder whose files passed once in this
    process (``folder_files``: the same files, unchanged) passes at once; an empty or missing one
    at once too (the caller says what is missing).

    Unlike ``check_load``'s bytes, the files are read twice; returns what ``folder_files`` said
    before the child read them, for ``check_unchanged`` once the caller has read them: a file
    replaced or written to in between is then refused, not used unchecked."""
    stats = folder_files(folder)
    key = (spec, f"{folder.resolve()} {stats}")
    if key in _PASSED or not stats:
        return stats
    _run_child(["folder", spec], str(folder).encode(), sum(size for _, size, *_ in stats))
    _PASSED.add(key)
    return stats


def folder_files(folder: Path) -> tuple[tuple[Any, ...], ...]:
    """Each file of ``folder`` as (name, size, modification and status-change times, inode and
    device): a file written to, or replaced by another (a rename), is another tuple, even with its
    modification time set back (the status-change time cannot be)."""
    if not folder.is_dir():
        return ()
    files = sorted((p.name, p.stat()) for p in folder.iterdir() if p.is_file())
    return tuple((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev) for name, st in files)


def check_unchanged(folder: Path, checked: tuple[tuple[Any, ...], ...]) -> None:
    """Raise ``Unreadable`` if ``folder``'s files are not those ``check_folder_load`` checked."""
    now = folder_files(folder)
    if now != checked:
        changed = sorted({f[0] for f in set(now) ^ set(checked)})
        raise Unreadable(f"changed while it was being read ({', '.join(changed)}): read it again once nothing "
                         "writes to it")


def _run_child(args: list[str], stdin: bytes, size: int) -> None:
    seconds = LOAD_SECONDS + SECONDS_PER_BYTE * size
    memory = MEMORY_FACTOR * size + MEMORY_SLACK
    token = secrets.token_hex(16)  # (what the child answers starts with it: a file cannot print an answer)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),  # this process's dm_tune
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", _TOKEN: token}
    try:
        # (-P: not the working directory's dm_tune, if it holds one, but this process's)
        done = subprocess.run([sys.executable, "-P", "-m", "dm_tune.datasets._bounded", *args, str(memory)],
                              input=stdin, capture_output=True, timeout=seconds, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise Unreadable(f"refused: loading it took longer than {seconds:.0f} s, far longer than "
                         f"{_size(size)} of files needs") from None
    except OSError as e:  # (no process could be started: fork or file limits)
        raise Unreadable(f"could not be loaded: no process to load it first could start ({e})") from None
    answer = _answer(done.stdout, token)
    if answer is None:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        ended = f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited {done.returncode}"
        raise Unreadable(f"refused: the process that loads it first {ended}"
                         f"{f' ({said[-1][:200]})' if said else ''}")
    if "unreadable" in answer:
        raise Unreadable(str(answer["unreadable"]))


def _answer(stdout: bytes, token: str) -> dict[str, Any] | None:
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines or not lines[-1].startswith(token + " "):
        return None
    try:
        answer = json.loads(lines[-1][len(token) + 1:])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and ("loaded" in answer or "unreadable" in answer) else None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def _reader(spec: str) -> Callable[[Any], Any]:
    import importlib

    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def _limit_memory(extra: int) -> str | None:
    """Limit this process's address space to what it holds now plus ``extra`` bytes (Linux; where
    there is no /proc or no ``resource`` module, only the time limit holds). Returns the limit as
    text, or None."""
    from dm_tune._memory import address_space_held

    try:
        import resource
    except ImportError:
        return None
    held = address_space_held()
    if held is None:
        return None
    limit = held + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return _size(limit)


def _child(mode: str, spec: str, extra: int) -> dict[str, Any]:
    """Run ``spec`` on what the parent sent (``bytes``: a file's bytes, read as a binary file;
    ``folder``: a folder's path) under the memory limit, and say how it ended."""
    import io

    from dm_tune.datasets._base import DataError

    function = _reader(spec)  # (imports torch and numpy before the limit)
    import torch

    torch.set_num_threads(1)
    sent = sys.stdin.buffer.read()
    limit = _limit_memory(extra)
    try:
        function(io.BytesIO(sent) if mode == "bytes" else Path(sent.decode()))
    except Unreadable as e:
        if not _out_of_memory(e):
            return {"unreadable": str(e)}
    except DataError as e:  # (the caller's own run raises it again, as it is)
        if not _out_of_memory(e):
            return {"loaded": True}
    except MemoryError:
        pass
    else:
        return {"loaded": True}
    allowed = f" (this process may hold {limit})" if limit else ""
    return {"unreadable": f"refused: loading it ran out of memory{allowed}, far more than "
                          f"{_size(len(sent) if mode == 'bytes' else extra)} of files needs"}


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised while handling is a MemoryError."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__context__
    return False


if __name__ == "__main__":
    # (through the package's module, not this __main__ copy: the readers raise its Unreadable)
    from dm_tune.datasets._bounded import _child as child

    answer = json.dumps(child(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    print(f"{os.environ.get(_TOKEN, '')} {answer}", flush=True)
