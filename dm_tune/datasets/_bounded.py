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

The children are forked, one per load, by a helper process each process starts at its first load
and that ends with it (``python -P -m dm_tune.datasets._bounded serve``: it imports torch and the
readers once, so a load costs a fork, not an interpreter and torch's import, 2 s of CPU each). The
helper reads one request at a time on its standard input (a JSON line, then the file's bytes),
forks a child that loads them under the limits, its output sent to /dev/null and its errors to a
file, with its answer written to a file of its own, waits for it (killing it past its time),
and answers one JSON line on its standard output: what a file's loader prints cannot reach it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Time for a load in a child, from its fork; a file gets one more second per 10 MB.
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

# What a child may be asked to read a folder with: "module:function", a function taking the
# folder's path (``check_folder_load``).
FOLDER_READERS = {"cifar10": "dm_tune.datasets.cifar:_cifar10_source",
                  "cifar100": "dm_tune.datasets.cifar:_cifar100_source"}
# Time for the helper to start (it imports torch and the readers: 1-3 s on an idle 2-core VM, more
# under load) before its first answer.
START_SECONDS = 120.0

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
    """Have a child load ``stdin`` as ``args`` (``[mode, spec]``) under the limits for ``size`` bytes
    of files; raise ``Unreadable`` unless it loaded them."""
    seconds = LOAD_SECONDS + SECONDS_PER_BYTE * size
    memory = MEMORY_FACTOR * size + MEMORY_SLACK
    mode, spec = args
    request = {"mode": mode, "spec": spec, "extra": memory, "seconds": seconds, "size": len(stdin),
               "path": [p for p in sys.path if p]}  # (this process's dm_tune and readers, now)
    with _HELPER_LOCK:
        answer = _helper().ask(request, stdin)
    if "error" in answer:  # (no process could be started: fork or file limits)
        raise Unreadable(f"could not be loaded: no process to load it first could start ({answer['error']})")
    if answer.get("timeout"):
        raise Unreadable(f"refused: loading it took longer than {seconds:.0f} s, far longer than "
                         f"{_size(size)} of files needs")
    loaded = answer.get("answer")
    if not isinstance(loaded, dict) or not ("loaded" in loaded or "unreadable" in loaded):
        code = int(answer.get("returncode", 1))
        said = str(answer.get("said", ""))
        ended = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
        raise Unreadable(f"refused: the process that loads it first {ended}{f' ({said[:200]})' if said else ''}")
    if "unreadable" in loaded:
        raise Unreadable(str(loaded["unreadable"]))


class _Helper:
    """This process's helper: started at the first load, asked one load at a time, and started
    again after it ended (a process forked from this one starts its own)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),  # this process's dm_tune
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",  # (one thread to
               "MALLOC_ARENA_MAX": "2"}                                                      # fork from)
        self.owner = os.getpid()
        self.errors = _scratch_file()  # (what it says if it ends: a failed start)
        # (-P: not the working directory's dm_tune, if it holds one, but this process's)
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "dm_tune.datasets._bounded", "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, env=env)
        os.set_blocking(self.proc.stdin.fileno(), False)  # (a write never waits on a helper that stopped reading)
        self.pending = b""

    def ask(self, request: dict[str, Any], data: bytes) -> dict[str, Any]:
        """Send a request and its bytes, and read the helper's answer; one that ends, or is out of
        time (its start and the load's own time), is ended here."""
        import selectors

        deadline = time.monotonic() + request["seconds"] + START_SECONDS
        out = memoryview(json.dumps(request).encode() + b"\n" + data)
        send, receive = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        with selectors.DefaultSelector() as waiting:  # (not select(): a process may hold fds past 1024)
            waiting.register(receive, selectors.EVENT_READ)
            waiting.register(send, selectors.EVENT_WRITE)
            while b"\n" not in self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    return {"timeout": True}
                try:
                    for key, _ in waiting.select(left):
                        if key.fd == send:
                            out = out[os.write(send, out[:1 << 20]):]
                            if not out:
                                waiting.unregister(send)
                        else:
                            chunk = os.read(receive, 65536)
                            if not chunk:
                                raise BrokenPipeError
                            self.pending += chunk
                except BlockingIOError:
                    continue
                except OSError:  # it ended (the next load starts another)
                    return self._ended()
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def _ended(self) -> dict[str, Any]:
        self.close()
        said = _last_line(self.errors)
        return {"returncode": self.proc.returncode,
                "said": f"the process that forks it ended{': ' + said if said else ''}"}

    def close(self) -> None:
        if _HELPERS.get(self.owner) is self:
            del _HELPERS[self.owner]
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


_HELPERS: dict[int, _Helper] = {}  # by the pid of the process that started it
_HELPER_LOCK = threading.Lock()


def stop_helper() -> None:
    """End this process's helper, if it has one (the next load starts another)."""
    with _HELPER_LOCK:
        helper = _HELPERS.get(os.getpid())
        if helper is not None:
            helper.close()


def _helper() -> _Helper:
    helper = _HELPERS.get(os.getpid())
    if helper is not None and helper.proc.poll() is not None:  # it ended (killed) since the last load
        helper.close()
        helper = None
    if helper is None:
        helper = _HELPERS[os.getpid()] = _Helper()
    return helper


def _serve() -> None:
    """The helper's loop: a load per request, each in a child of its own, until its input ends."""
    import importlib

    import torch  # noqa: F401 - (imported once, here, before any fork; and the readers' modules)

    # Ctrl-C goes to the whole foreground group: the process that asks is interrupted, and this
    # helper ends with it (its input ends), not mid-answer (a child takes Ctrl-C as usual).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    for module in sorted({spec.split(":")[0] for spec in (*READERS.values(), *FOLDER_READERS.values())}):
        try:
            importlib.import_module(module)
        except ImportError:  # (a child that needs it says why)
            pass
    requests = sys.stdin.buffer
    while line := requests.readline():
        request = json.loads(line)
        data = requests.read(request["size"])
        if len(data) != request["size"]:
            return
        with _scratch_file() as errors, _scratch_file() as answer:
            try:
                pid = os.fork()
            except OSError as e:
                _say({"error": str(e)})
                continue
            if pid == 0:
                _forked(request, data, errors.fileno(), answer.fileno())
            _say(_how_it_ended(pid, time.monotonic() + request["seconds"], errors, answer))


def _forked(request: dict[str, Any], data: bytes, errors: int, answer: int) -> None:
    """In the forked child: load, write the answer, exit (never returns)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # (a loader's prints go nowhere: only the answer file answers)
        os.dup2(errors, 2)
        sys.path[:] = request["path"]
        result = _child(request["mode"], request["spec"], int(request["extra"]), data)
        with os.fdopen(answer, "wb", closefd=False) as f:
            f.write(json.dumps(result).encode())
        code = 0
    except BaseException:  # noqa: BLE001 - said on its errors, as an interpreter would, and exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _die_with_parent() -> None:
    """Have the kernel kill this child if the helper ends before it (Linux; elsewhere the
    helper's own end leaves it to finish its load, bounded in memory only)."""
    helper = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # (1: PR_SET_PDEATHSIG)
    except (OSError, AttributeError):
        return
    if os.getppid() != helper:  # (it ended before the prctl)
        os._exit(1)


def _how_it_ended(pid: int, deadline: float, errors: Any, answer: Any) -> dict[str, Any]:
    """How the child ``pid`` ended: its answer, out of time (killed), or its exit and last error line."""
    pause = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(pause)
        pause = min(2 * pause, 0.02)
    code = os.waitstatus_to_exitcode(status)
    answer.seek(0)
    try:
        said = json.loads(answer.read().decode()) if code == 0 else None
    except ValueError:
        said = None
    if isinstance(said, dict):
        return {"answer": said}
    return {"returncode": code, "said": _last_line(errors)}


def _last_line(f: Any) -> str:
    """The last line written to the file ``f`` (a process's errors), "" if none."""
    f.seek(0)
    lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def _scratch_file() -> Any:
    """An unnamed file in memory (Linux's memfd: no temporary folder needed, a read-only or full
    one included), else an unnamed temporary file."""
    try:
        return os.fdopen(os.memfd_create("dm-tune-bounded-load"), "w+b")
    except (AttributeError, OSError):
        import tempfile

        return tempfile.TemporaryFile()


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


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


def _child(mode: str, spec: str, extra: int, sent: bytes) -> dict[str, Any]:
    """Run ``spec`` on what the parent sent (``bytes``: a file's bytes, read as a binary file;
    ``folder``: a folder's path) under the memory limit, and say how it ended."""
    import io

    from dm_tune.datasets._base import DataError

    function = _reader(spec)  # (imports its module, if the helper had not, before the limit)
    import torch

    torch.set_num_threads(1)
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
    from dm_tune.datasets._bounded import _serve as serve

    serve()
