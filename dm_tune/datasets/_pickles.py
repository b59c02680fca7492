"""A check of a pickle's opcodes before a restricted unpickler builds it (the CIFAR batches' own,
torch's weights-only loader for label files and pretrained weights).

Restricting the globals a pickle may name stops it running code, not taking forever: a pickle
can refer to one value many times through its memo at no cost, so a few hundred bytes can nest a
tuple in itself 64 times, t = (t, t), whose hash (Python does not cache a tuple's), repr or
comparison takes 2^64 steps; so can a list given to set(), Counter() or OrderedDict() (globals
torch's loader allows), a numpy dtype built of dtypes, or a chain of ``_codecs.encode(.., 'hex')``
that doubles a string at each call. ``unsafe_pickle`` reads the opcodes (pickletools: nothing is
built) and refuses:

- a container (list, dict, set, a tuple of more than a few plain values, or what a call other
  than an array, tensor or dtype reconstruction returned) or a string or bytes of more than 256
  (or a numpy scalar or an encoding made of one) used a second time by reference (the memo's
  GET, or DUP): every value a pickle builds is then a tree its own opcodes spell out, and
  hashing, printing, comparing or copying it takes time linear in the file, bar the shared
  short plain values;
- more hashing in all (dict keys, set items, what calls are given) than a million steps plus 64
  per opcode (a long integer counts its length: its hash is not cached);
- items set on an array or tensor (numpy indexes it with the key: index arrays of a few
  elements each broadcast to 2 to the power of their number);
- ``_codecs.encode`` with any codec but latin1, ``numpy.dtype`` of anything but a string,
  ``bytearray`` of a number (a size to allocate), a memo index past the number of opcodes read
  (the unpickler grows its memo to it), more than ``MAX_OPCODES`` opcodes.
"""

from __future__ import annotations

import pickletools
from typing import Any

# pickletools' names of the values that are plain: their hash is their length at most, cached
# for strings, and they hold nothing.
_PLAIN = frozenset({"int", "bool", "int_or_bool", "float", "bytes", "str", "bytes_or_str", "None"})
# A tuple of plain values up to this hashing cost may be shared (numpy's (0,) shapes, torch's
# sizes and storage keys are).
SHARED_TUPLE_COST = 64
# A string or bytes longer than this may not be used twice by reference: each call given it
# (``_codecs.encode``) copies it, so a 1 MB string given to 8000 calls filled 8 GB.
SHARED_TEXT_LENGTH = 256
# Ten times the opcodes of the largest file the loaders read (CIFAR-100's training batch: about
# 200 000); the scan reads one in about 2 microseconds.
MAX_OPCODES = 2_000_000
# Globals whose calls return values that hold nothing a pickle gave them to share: arrays, numpy
# scalars and dtypes, tensors, storages, sizes, devices, bytes.
_LEAF_CALLS = ("numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct",
               "numpy.core.multiarray scalar", "numpy._core.multiarray scalar",
               "numpy.core.numeric _frombuffer", "numpy._core.numeric _frombuffer", "numpy dtype",
               "_codecs encode", "torch Size", "torch device", "builtins complex", "builtins bytearray",
               "torch._tensor _rebuild_from_type_v2", "torch.serialization _get_layout")

# Leaf calls whose result holds a copy of the text they were given: long text in, long text out.
_COPYING_CALLS = frozenset({"numpy.core.multiarray scalar", "numpy._core.multiarray scalar", "_codecs encode",
                            "builtins bytearray"})


class _Value:
    """A value on the scanned stack: its kind (pickletools' name, ``global`` for a global named by
    the pickle, ``leaf`` for what a leaf call or a persistent id returns, ``object`` for what any
    other call returns), its hashing cost, a tuple's items, a short string's text, a global's
    name."""

    __slots__ = ("kind", "cost", "items", "text")

    def __init__(self, kind: str, cost: int = 1, items: list[_Value] | None = None, text: str | None = None) -> None:
        self.kind, self.cost, self.items, self.text = kind, cost, items or [], text

    def shareable(self) -> bool:
        if self.kind == "tuple":
            return self.cost <= SHARED_TUPLE_COST and all(v.shareable() for v in self.items)
        return self.kind in _PLAIN or self.kind in ("global", "leaf")


_ONE: dict[str, _Value] = {}  # one value of each kind that costs 1 and holds nothing (values are never changed)


def _bare(kind: str) -> _Value:
    return _ONE.get(kind) or _ONE.setdefault(kind, _Value(kind))


def _plain(kind: str, arg: Any) -> _Value:
    """A plain value pushed by an opcode with argument ``arg``: a long integer costs its length; a
    string or bytes longer than ``SHARED_TEXT_LENGTH`` is not plain (it may not be shared)."""
    if isinstance(arg, int) and not isinstance(arg, bool) and arg.bit_length() >= 120:
        return _Value(kind, arg.bit_length() // 60)
    if isinstance(arg, (str, bytes)) and len(arg) > SHARED_TEXT_LENGTH:
        return _bare("long text")
    if isinstance(arg, str):
        return _Value(kind, text=arg)
    return _bare(kind)


def unsafe_pickle(f: Any) -> str | None:
    """Why the pickle in file ``f`` could take a loader far longer (or more memory) than its size
    (see the module's docstring), or None. Stops at the pickle's end, so ``f`` is left there.
    Raises ValueError (pickletools') for what is no pickle."""
    stack: list[_Value] = []
    marks: list[int] = []  # where each open MARK is on the stack (as the unpickler keeps them)
    memo: dict[int, _Value] = {}
    ops = hashing = 0
    for op, arg, _ in pickletools.genops(f):
        ops += 1
        if ops > MAX_OPCODES:
            return f"over {MAX_OPCODES:,} opcodes"
        name = op.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or index > ops:
                return f"a memo index ({index}) past the {ops} opcodes read"
            memo[index] = stack[-1] if stack else _bare("object")
            continue
        if name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            if name != "DUP" and arg not in memo:  # (what the unpickler fails on: text read as opcodes, "h...")
                raise ValueError(f"opcode {name} refers to memo entry {arg!r}, which the pickle never stored")
            value = (stack[-1] if stack else _bare("object")) if name == "DUP" else memo[arg]
            if not value.shareable():
                return f"a {value.kind} used twice by reference"
            stack.append(value)
            continue
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name == "POP" and marks and marks[-1] == len(stack):  # (the unpickler pops a mark there)
            marks.pop()
            continue
        before = [s.name for s in op.stack_before]
        sliced: list[_Value] = []
        if "mark" in before:
            at = marks.pop() if marks else 0
            sliced = stack[at:]
            del stack[at:]
            before = before[:before.index("mark")]
        popped = stack[len(stack) - min(len(before), len(stack)):]
        del stack[len(stack) - len(popped):]
        hashed: list[_Value] = []
        if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            items = sliced or popped
            pushed = [_Value("tuple", 1 + sum(v.cost for v in items), items)]
        elif name in ("SETITEM", "SETITEMS", "DICT"):
            if name != "DICT" and popped and popped[0].kind == "leaf":  # (numpy indexes: keys that broadcast)
                return "items set on an array or tensor"
            hashed = popped[1:2] if name == "SETITEM" else sliced[0::2]
            pushed = popped[:1] if name != "DICT" else [_Value("dict")]
        elif name in ("ADDITEMS", "FROZENSET"):
            hashed = sliced
            pushed = popped[:1] if name == "ADDITEMS" else [_Value("frozenset", 1 + len(sliced))]
        elif name in ("APPEND", "APPENDS", "BUILD"):
            hashed = popped[1:] if name == "BUILD" else []  # (a state's keys become attributes)
            pushed = popped[:1]
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"):
            call = (sliced[:1] if name == "OBJ" else popped[:1])
            args = (sliced[1:] if name == "OBJ" else sliced if name == "INST" else popped[1:])
            target = call[0] if call and call[0].kind == "global" else None
            args = [item for a in args for item in (a.items if a.kind == "tuple" else [a])]
            why = _refused_call(target.text if target else (arg if name == "INST" else None), args)
            if why is not None:
                return why
            hashed = args
            leaf = target is not None and (target.text in _LEAF_CALLS or target.text.startswith("torch._utils _rebuild"))
            if leaf and target.text in _COPYING_CALLS and any(a.kind == "long text" for a in args):
                pushed = [_bare("long text")]  # (what it returns holds a copy of that text)
            else:
                pushed = [_bare("leaf" if leaf else "object")]
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            text = arg if name == "GLOBAL" else (
                f"{popped[0].text} {popped[1].text}" if len(popped) == 2 and None not in (popped[0].text, popped[1].text)
                else "?")
            pushed = [_Value("global", text=text)]
        elif name in ("PERSID", "BINPERSID"):
            hashed = popped
            pushed = [_bare("leaf")]
        else:
            pushed = [_plain(s.name, arg) if s.name in _PLAIN else _bare(s.name) for s in op.stack_after]
        hashing += sum(v.cost for v in hashed)
        if hashing > 1_000_000 + SHARED_TUPLE_COST * ops:
            return "more hashing than its size allows (values nested by reference)"
        stack.extend(pushed)
    return None


def _refused_call(target: str | None, args: list[_Value]) -> str | None:
    """Why a call of global ``target`` ("module name") with these arguments is refused, or None."""
    if target == "_codecs encode" and (len(args) < 2 or args[1].text not in ("latin1", "latin-1")):
        return "a call of _codecs.encode with a codec other than latin1"
    if target == "numpy dtype" and (not args or args[0].kind not in ("str", "bytes", "bytes_or_str")):
        return "a numpy dtype built of something other than a string"
    if target == "builtins bytearray" and args and args[0].kind not in ("str", "bytes", "bytes_or_str"):
        return "a bytearray built of something other than bytes"
    return None


def unsafe_pickle_refusal(why: str, what: str) -> str:
    return f"refused: {why}, which no {what} has (loading it could take far longer than its size)"


def torch_file_refusal(source: Any, read_as: str, what: str) -> str | None:
    """Why torch's loader should not be given ``source`` (a path or a binary file object; one line),
    or None: it cannot be read as a torch-saved ``read_as``, or ``unsafe_torch_file`` finds what no
    ``what`` has."""
    from dm_tune.errors import first_line

    try:
        why = unsafe_torch_file(source)
    except Exception as e:  # noqa: BLE001 - zipfile's or pickletools' errors on a damaged file
        return f"could not be read as a torch-saved {read_as} ({first_line(e)})"
    return None if why is None else unsafe_pickle_refusal(why, what)


def unsafe_torch_file(source: Any) -> str | None:
    """``unsafe_pickle`` over the pickles of a torch.save file (a path or a binary file object),
    before torch's loader reads it: as torch decides, a file starting ``PK\\x03\\x04`` is its zip
    archive (every member named data.pkl, in any case, is read), any other its legacy format (its
    first five pickles: magic number, protocol, system, the object, its storages' keys) or a plain
    pickle. Raises (zipfile's or pickletools' errors) where the file cannot be read that way."""
    import contextlib
    import zipfile

    with (contextlib.nullcontext(source) if hasattr(source, "read") else open(source, "rb")) as f:
        f.seek(0)
        if f.read(4) == b"PK\x03\x04":
            with zipfile.ZipFile(f) as archive:
                for info in archive.infolist():
                    if info.filename.rsplit("/", 1)[-1].lower() == "data.pkl":
                        with archive.open(info) as member:
                            if (why := unsafe_pickle(member)) is not None:
                                return why
            return None
        f.seek(0)
        for _ in range(5):
            if (why := unsafe_pickle(f)) is not None:
                return why
            here = f.tell()
            if not f.read(1):
                return None
            f.seek(here)
    return None


def weights_only_refusal(e: BaseException) -> str:
    """What torch's weights-only loader said refusing a file, in one line: its unpickler's own
    reason where its message gives one (a protocol above torch.save's default 2 is named so)."""
    import re

    from dm_tune.errors import first_line

    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    if found is None:
        return first_line(e)
    reason = found.group(1).split(". Please use", 1)[0].rstrip(".")
    if reason.startswith("Unsupported operand"):
        reason += " (pickle protocol 3 or above; torch.save writes 2 unless told otherwise)"
    return f"torch's weights-only loader refused it: {reason}"
