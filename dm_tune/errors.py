"""User-facing errors (the CLI prints their message as one line and exits with code 2) and the
YAML reader shared by the commands, whose mistakes are such errors."""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake in the user's input or environment (not a bug): shown as one line, exit 2."""



class DataError(ValueError):
    """Missing or malformed data on disk: names the path and the expected layout, and with ``field``
    (a field's name, its value as given and the path that value resolves to) the field the path
    came from: "data_root /data: cifar-100-python/train: file not found. Expected layout: ..."
    (``under``)."""

    def __init__(self, path: str | Path, problem: str, layout: str,
                 field: tuple[str, str, str | Path] | None = None) -> None:
        self.path, self.problem, self.layout, self.field = str(path), problem, layout, field
        where = str(path)
        if field is not None:
            name, value, base = field
            try:
                inside = Path(path).relative_to(base).as_posix()
            except ValueError:
                inside = str(path)
            where = f"{name} {value}" + ("" if inside == "." else f": {inside}")
        stop = "" if problem.endswith((".", "?", "!")) else "."  # ("in another order?. Expected")
        super().__init__(one_line(f"{where}: {problem}{stop} Expected layout: {layout}"))

    def __reduce__(self) -> tuple[Any, ...]:  # (to another process as it is: its args are its message)
        return DataError, (self.path, self.problem, self.layout, self.field)

    def under(self, name: str, value: str | Path, base: str | Path | None = None) -> DataError:
        """This error with the field its path came from in front (``name`` and its ``value`` as the
        user gave it; ``base``: the path that value resolves to, if another), unless it says so already."""
        if self.field is not None:
            return self
        return DataError(self.path, self.problem, self.layout, (name, str(value), base if base is not None else value))


def one_line(text: str) -> str:
    """``text`` with its control characters (a line break in a key a file names, say) escaped,
    so that it prints as the one line it is, not as lines a file wrote."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# The training fields that name files: a study stores them absolute, trials (which chdir) read them
# so, and a result records them so.
PATH_FIELDS = ("data_root", "noise_file", "pretrained")


def resolve_path(value: str | Path, what: str) -> Path:
    """``value``, user's home expanded, absolute, its links followed; a link round a loop (which
    Path.resolve raises as RuntimeError before Python 3.13) is the user's mistake ``what value``."""
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError):
        raise UserError(f"{what} {value}: is a symbolic link in a loop (it leads back to itself)") from None


def unexaminable(path: str | Path) -> str | None:
    """Why ``path`` cannot be examined, or None: a folder above it this user may not enter, or a
    name longer than the system takes. (Path.exists and is_dir answer False for a missing path, but
    raise these.)"""
    try:
        os.stat(Path(path).expanduser())
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG):
            return e.strerror or str(e)
    except ValueError as e:  # (an embedded NUL byte)
        return str(e)
    return None


def check_examinable(path: str | Path, what: str) -> None:
    """UserError ``what path: cannot be examined (why)`` where ``unexaminable`` says why."""
    why = unexaminable(path)
    if why:
        raise UserError(f"{what} {path}: cannot be examined ({why})")


def check_reachable(host: str, port: int, what: str, timeout: float = 3.0) -> None:
    """UserError ``what: cannot reach HOST:PORT (why)`` unless a TCP connection opens in ``timeout``."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        raise UserError(f"{what}: cannot reach {host}:{port} ({e.strerror or e})") from None


def parse_url(flag: str, uri: str) -> Any:
    """``uri`` parsed (urllib's SplitResult); an http(s) URL must name a host and a port that can
    be (urllib raises ValueError for [::1, [zz] or :99999, only once they are asked for)."""
    from urllib.parse import urlsplit

    try:
        parsed = urlsplit(uri)
        if parsed.scheme in ("http", "https"):
            if not parsed.hostname:
                raise ValueError("no host: expected http(s)://HOST[:PORT]")
            parsed.port  # noqa: B018  (read for its check)
    except ValueError as exc:
        raise UserError(f"{flag} {uri}: not a valid URL ({exc})") from None
    return parsed


def is_server(tracking_uri: str) -> bool:
    """Whether a tracking URI is an MLflow server's (http or https, in any case), not a store that
    MLflow opens itself."""
    from urllib.parse import urlsplit

    return urlsplit(tracking_uri).scheme in ("http", "https")


def absolute_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each of its ``PATH_FIELDS`` absolute (a relative path names another file
    from another folder); a URI (``s3://...``) stays as it is."""
    out = dict(values)
    for key in PATH_FIELDS:
        if isinstance(out.get(key), str) and out[key] and "://" not in out[key]:
            path = Path(out[key]).expanduser()
            try:
                out[key] = str(path.resolve())
            except (OSError, RuntimeError):  # a link round a loop: told by the field's own check
                out[key] = str(path.absolute())
    return out


def path_argument(value: str) -> str:
    """argparse ``type`` of a path flag: an empty path is a mistake (each command had read it as
    "not given", or as the current folder)."""
    if not value.strip():
        import argparse

        raise argparse.ArgumentTypeError(f"expected a path, not {value!r}")
    return value


def text_argument(what: str):
    """argparse ``type`` of a flag whose empty value would be read as "not given": refused as
    ``expected WHAT, not ''``."""
    def check(value: str) -> str:
        if not value.strip():
            import argparse

            raise argparse.ArgumentTypeError(f"expected {what}, not {value!r}")
        return value

    return check


def unusual_number(text: str) -> bool:
    """Text that Python (and pydantic) read as a number but a user would not write as one: ``1_0``
    (10) and digits of other scripts (Arabic-Indic three: 3)."""
    return "_" in text or not text.isascii()


def read_number(text: str, kind: type = float) -> Any:
    """``kind(text)`` (float or int), but ValueError for an ``unusual_number``."""
    if unusual_number(text):
        raise ValueError(text)
    return kind(text)


def split_imbalance(args: Any) -> None:
    """``--imbalance KIND:RATIO`` (a study's and ``dm-tune search``'s form) as ``--imbalance KIND
    --imbalance-ratio RATIO``, in ``args``; a ratio given both ways must be the same."""
    text = args.imbalance
    if not isinstance(text, str) or ":" not in text:
        return
    kind, _, ratio_text = (t.strip() for t in text.partition(":"))
    try:
        if not kind:  # (was "imbalance: '' is not allowed", the value as the user never wrote it)
            raise ValueError(text)
        ratio = read_number(ratio_text, float)
    except ValueError:
        raise UserError(f"--imbalance: {text!r} is not allowed; expected KIND or KIND:RATIO with a number as "
                        "RATIO, e.g. step or step:10") from None
    if args.imbalance_ratio is not None and args.imbalance_ratio != ratio:
        raise UserError(f"--imbalance {text} and --imbalance-ratio {args.imbalance_ratio:g} give two ratios; "
                        "give it once")
    args.imbalance, args.imbalance_ratio = kind, ratio


def _number_argument(kind: type, what: str):
    def check(value: str) -> Any:
        try:
            return read_number(value, kind)
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(f"expected {what}, not {value!r}") from None

    check.__name__ = kind.__name__
    return check


# argparse ``type`` of a number flag.
float_argument = _number_argument(float, "a number")
int_argument = _number_argument(int, "an integer")


def output_path(flag: str, value: str, *, directory: bool = False) -> Path:
    """The output ``flag value`` (a file, or a ``directory`` made later if missing), resolved and
    checked before any work is done: a file's directory must exist, a directory's nearest existing
    ancestor must be a directory, and that directory must take a new file (tried: a temporary file
    created and removed at once). A read-only, missing or odd place is reported now, not after the
    work whose results were to be written there."""
    given = Path("/dev/stdout" if value == "-" and not directory else value).expanduser()  # ("-": the usual stdout)
    if not directory and is_stdout(given):  # (also when stdout is a file: `> r.json`, `>> log`)
        return given
    if not directory and _special(given):  # a device, a pipe (/dev/null, a FIFO): written into
        if not os.access(given, os.W_OK):
            raise UserError(f"{flag} {value}: exists and is not writable")
        return given
    if not directory and value.endswith(("/", os.sep)):  # (Path drops the slash: "results/" wrote a file "results")
        raise UserError(f"{flag} {value}: names a directory; expected a file name")
    check_examinable(given, flag)
    path = resolve_path(given, flag)
    if directory:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {value}: exists and is not a directory")
        where = path
        while not where.exists():
            where = where.parent
        if not where.is_dir():
            raise UserError(f"{flag} {value}: {where} is not a directory")
    else:
        if path.is_dir():
            raise UserError(f"{flag} {value}: is a directory; expected a file name")
        where = path.parent
        if not where.is_dir():
            raise UserError(f"{flag} {value}: {where} " + ("is a file, not a directory" if where.exists()
                                                          else "does not exist (as a directory)"))
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"{flag} {value}: the file exists and is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".dmtune-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {value}: cannot write in {where} ({e.strerror or e})") from None
    return path


def output_dir(flag: str, value: str) -> Path:
    """The output directory ``flag value``, checked as ``output_path`` checks it, then made."""
    path = output_path(flag, value, directory=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {value}: could not create it ({e.strerror or e})") from None
    return path


def json_safe(x: Any) -> Any:
    """NaN/inf -> None, numpy and torch scalars and arrays -> Python, tuples -> lists: what
    standard JSON can hold."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_text(doc: Any, indent: int = 1) -> str:
    """``doc`` as standard JSON, which every reader takes (``jq``, a browser's ``JSON.parse``): a
    number that is not one (NaN: no validation split, a std over one seed) is null."""
    return json.dumps(json_safe(doc), indent=indent, allow_nan=False) + "\n"


def _special(path: Path) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a device, a FIFO, a
    socket; followed through links, so /dev/stdout is what it points at)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def is_stream(path: Path) -> bool:
    """Whether ``path`` is written as a stream (stdout, a device, a pipe), not replaced as a file."""
    return is_stdout(path) or _special(path)


def is_stdout(path: Path | None) -> bool:
    """Whether ``path`` is this process's standard output (``--out /dev/stdout``): the command's
    own lines then go to standard error, so that what is piped on is the file alone."""
    if path is None:
        return False
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # (no stdout, or one without a file descriptor)
        return False


def write_output(path: Path, data: str | bytes) -> None:
    """``data`` (text, or bytes) into ``path`` whole or not at all (a temporary file beside it, then
    renamed over it), readable as any new file of this user (the umask), or as the file it replaces;
    a failure (disk full, the place gone read-only since the check) is a UserError naming it. A
    device or a pipe (/dev/null, /dev/stdout, a FIFO) is written into: renamed over, it was replaced
    by a regular file (as root, /dev/null itself)."""
    tmp = None
    if is_stdout(path):  # written to this process's stdout as it is (renamed over a `>> log` file, its
        try:             # earlier lines were lost)
            if isinstance(data, bytes):
                sys.stdout.flush()
                sys.stdout.buffer.write(data)
            else:
                sys.stdout.write(data)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # (the reader went away, `| head`: not the user's mistake; exit 141 as for other output)
        except OSError as e:
            raise UserError(f"could not write {path} ({e.strerror or e})") from None
        return
    if _special(path):
        try:
            with open(path, "wb" if isinstance(data, bytes) else "w",
                      **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
                f.write(data)
        except OSError as e:
            raise UserError(f"could not write {path} ({e.strerror or e})") from None
        return
    try:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, mode)  # mkstemp's file is private (0600)
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes)
                                                                        else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # (the folder gone read-only since: what failed the write fails this too)
                pass
        raise UserError(f"could not write {path} ({e.strerror or e})") from None


def remove_write_leftovers(folder: Path, names: Iterable[str]) -> None:
    """Remove the temporary files that ``write_output`` calls into ``folder`` for files of these
    ``names`` (globs) left behind, cut off by a kill before their rename (``.NAME.`` and mkstemp's
    8 characters). Only for a caller that holds the folder (its lock): another writer's
    temporary file would be taken from under it."""
    for name in names:
        for tmp in folder.glob(f".{name}.????????"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)


# A disk that cannot take more: full, over quota, read-only, or a file-size limit. SQLite's "disk I/O
# error" is what a store's commit says when its folder turned read-only after the journal was made (the
# journal cannot be deleted: SQLITE_IOERR_DELETE); an EIO of another read or write is not taken for it.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
# SQLite's "unable to open database file": a store checked when the search began that it cannot open
# now, nor its journal (a folder made read-only while a transaction was open, seen through Optuna).
_NO_ROOM_TEXT = ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large",
                 "database or disk is full", "attempt to write a readonly database", "Permission denied",
                 "disk I/O error", "unable to open database file")


def no_room(error: BaseException) -> str | None:
    """What a full or read-only disk, or a store made read-only, said, anywhere in ``error``'s chain
    (Ray wraps a searcher's or a callback's error, sometimes as text), as one line; None for any
    other error."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    for e in chain:  # the OSError itself first: it names the file
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror)
    return next((said for e in chain for said in _NO_ROOM_TEXT if said in str(e)), None)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _umask() -> int:
    """The process's umask: read where the kernel says it (no moment with another one set, which
    another thread's new file would get), else set and put back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


PIPE_LIMIT = 1 << 24  # bytes read from an input file that is a pipe or device (/dev/zero never ends)


def read_input(path: Path, what: str, expected: str) -> str:
    """The UTF-8 text of the input file ``path``; a pipe (``--config <(...)``) or a device is read up
    to PIPE_LIMIT bytes, not forever (UserError past it, naming ``what``, the flag or field, and
    the ``expected`` kind of file). OSError and UnicodeDecodeError are the caller's to word."""
    if path.is_file():
        return path.read_text(encoding="utf-8")
    with path.open("rb") as f:
        raw = f.read(PIPE_LIMIT + 1)
    if len(raw) > PIPE_LIMIT:
        raise UserError(f"{what} {path}: not a regular file, and more than {PIPE_LIMIT:,} bytes came from it; "
                        f"expected {expected}")
    return raw.decode("utf-8")


def load_yaml(path: str, what: str) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``what``: the flag that named it, for messages). A key
    given twice in one mapping is refused (YAML keeps the last silently: a setting given twice
    would be half ignored)."""
    import yaml

    p = Path(path)
    check_examinable(p, what)
    if p.is_dir():
        raise UserError(f"{what} {path}: is a directory; expected a YAML file")
    if not p.exists():
        raise UserError(f"{what} {path}: file not found")
    try:
        text = read_input(p, what, "a YAML file")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path}: not a YAML file (not UTF-8 text)") from None
    except OSError as e:
        raise UserError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise UserError(f"{what} {path}: key {e.key!r} is given twice (line {e.line}); give each key once") from None
    except RecursionError:
        raise UserError(f"{what} {path}: nested too deeply to read") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{what} {path}: not valid YAML{where}") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as e:  # a tag its value does not fit: `!!int abc`
        detail = f": {first_line(e)}" if isinstance(e, ValueError) else ""
        raise UserError(f"{what} {path}: not valid YAML (a value its explicit tag does not fit{detail})") from None
    if data is None:
        raise UserError(f"{what} {path}: the file is empty")
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: expected a mapping of field: value at the top level")
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


# YAML 1.2's core schema for the plain scalars that are not strings. PyYAML reads YAML 1.1, where
# `017` is 15 (octal), `1:20` is 80 (base 60), `1_0` is 10, and `on`, `no`, `y` are booleans: in a
# config, `epochs: 017` would train 15 epochs without a word. Under these rules such values stay
# text, and the config's fields refuse them by name; `1e-3` (text in YAML 1.1) is a number.
_CORE_SCALARS = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+.0123456789"),
)


@functools.cache
def _unique_key_loader() -> type:
    """yaml.SafeLoader reading numbers and booleans by YAML 1.2's core schema (``_CORE_SCALARS``)
    and refusing a key written twice in one mapping (``_DuplicateKey``); a key that overrides one
    merged in with ``<<`` is YAML's own override, not a repeat."""
    import re

    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag not in {t for t, _, _ in _CORE_SCALARS}]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

        def construct_yaml_int(self, node: Any) -> int:
            text = self.construct_scalar(node)
            base = {"0o": 8, "0x": 16}.get(text[:2], 10)
            return int(text[2:] if base != 10 else text, base)

        def construct_yaml_float(self, node: Any) -> float:
            text = self.construct_scalar(node).lower()
            return float(text.replace(".inf", "inf").replace(".nan", "nan"))

        def flatten_mapping(self, node: Any) -> None:
            # Checked once per mapping, before YAML folds merged keys into it (in place: a mapping
            # merged into another may be folded before it is built itself).
            checked = self.__dict__.setdefault("_checked", set())
            if id(node) not in checked:
                checked.add(id(node))
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
            super().flatten_mapping(node)

    for tag, regexp, first in _CORE_SCALARS:
        UniqueKeyLoader.add_implicit_resolver(tag, re.compile(regexp), list(first))
    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)
    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", UniqueKeyLoader.construct_yaml_float)
    return UniqueKeyLoader
