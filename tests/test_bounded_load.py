"""Torch-saved files (pretrained weights, CIFAR-N label files) are loaded first in a child process
with a time and memory limit (dm_tune/datasets/_bounded.py): real child processes, real files."""

from __future__ import annotations

import os
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import dm_tune.datasets._bounded as bounded
from dm_tune.datasets import DataError
from dm_tune.models import load_pretrained
from dm_tune.noise import read_label_file
from test_datasets_disk import _torch_zip, make_cifar10  # (_torch_zip: a torch.save archive with a given data.pkl)


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch):
    monkeypatch.setattr(bounded, "_PASSED", set())


def _children(monkeypatch) -> list[list[str]]:
    """The loads check_load has children do from now on, each as [mode, reader]."""
    started: list[list[str]] = []
    run = bounded._run_child

    def counted(args, *rest, **kwargs):
        started.append(list(args))
        return run(args, *rest, **kwargs)

    monkeypatch.setattr(bounded, "_run_child", counted)
    return started


def _torch_loads_here(monkeypatch) -> list[int]:
    """How often this process calls torch.load from now on (the children are other processes)."""
    calls: list[int] = []
    load = torch.load

    def counted(*args, **kwargs):
        calls.append(1)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    return calls


# {"worse_label": torch.LongTensor(2**31)}: 52 bytes of pickle, 16 GiB of tensor (a size the file
# states, not data it holds; the opcode scan cannot tell it from a small tensor).
_SIZED = (b"\x80\x02}X\x0b\x00\x00\x00worse_label" + b"ctorch\nLongTensor\n" + b"\x8a\x05\x00\x00\x00\x80\x00\x85R"
          + b"s.")


def test_pretrained_weights_load_into_the_model_and_are_checked_once(tmp_path, monkeypatch):
    source = torchvision.models.resnet18()
    plain, wrapped = tmp_path / "r18.pth", tmp_path / "checkpoint.pth"
    torch.save(source.state_dict(), plain)
    torch.save({"state_dict": source.state_dict(), "epoch": 90}, wrapped)
    started = _children(monkeypatch)
    for path in (plain, wrapped, plain):
        model = torchvision.models.resnet18()
        load_pretrained(model, path)
        for (name, got), want in zip(model.state_dict().items(), source.state_dict().values()):
            assert torch.equal(got, want), name
    # one child per distinct file (the same bytes again: no second child)
    assert started == [["bytes", "dm_tune.models:read_state_dict"]] * 2


def test_a_checkpoint_that_holds_no_state_dict_is_one_line(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"is not a state dict .*'model' holds a dict"):
        load_pretrained(torchvision.models.resnet18(), path)


@pytest.mark.parametrize("reader", ["label file", "pretrained weights"])
def test_a_file_stating_a_tensor_far_larger_than_itself_is_refused_in_the_child(tmp_path, monkeypatch, reader):
    """Its load fails against the child's memory limit; this process never loads it."""
    path = _torch_zip(tmp_path, _SIZED)
    loads = _torch_loads_here(monkeypatch)
    started = _children(monkeypatch)
    with pytest.raises(ValueError, match="can't allocate memory") as caught:
        if reader == "label file":
            read_label_file(path, "worse_label")
        else:
            load_pretrained(torch.nn.Linear(2, 2), path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, DataError) == (reader == "label file")
    assert len(started) == 1 and loads == []


def _helpers_children() -> list[str]:
    """The processes this process's helper has forked and not yet reaped."""
    helper = Path(f"/proc/{bounded._HELPERS[os.getpid()].proc.pid}/task")
    return [pid for task in helper.iterdir() for pid in (task / "children").read_text().split()]


def _reader(tmp_path, monkeypatch, kind: str, name: str, body: str) -> None:
    """The reader ``kind`` of READERS (or FOLDER_READERS) is ``read`` of a module ``name`` whose
    ``read(f)`` runs ``body``."""
    (tmp_path / f"{name}.py").write_text(f"def read(f):\n{textwrap.indent(body, '    ')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # (each load's child gets this process's sys.path)
    monkeypatch.setitem(bounded.READERS if kind in bounded.READERS else bounded.FOLDER_READERS, kind, f"{name}:read")


def _slow_reader(tmp_path, monkeypatch, kind: str) -> None:
    """The reader ``kind`` sleeps a minute before it reads."""
    _reader(tmp_path, monkeypatch, kind, "slow_reader", "import time\ntime.sleep(60)")


def test_a_load_that_outlasts_its_time_is_refused_and_its_process_killed(tmp_path, monkeypatch):
    path = tmp_path / "labels.pt"
    torch.save({"worse_label": np.zeros(10, dtype=np.int64)}, path)
    real = bounded.READERS["label-arrays"]
    _slow_reader(tmp_path, monkeypatch, "label-arrays")
    monkeypatch.setattr(bounded, "LOAD_SECONDS", 0.2)
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(DataError, match=r"refused: loading it took longer than 0 s"):
        read_label_file(path, "worse_label")
    assert loads == [] and _helpers_children() == []  # (killed and reaped)
    monkeypatch.setitem(bounded.READERS, "label-arrays", real)  # the same file, in time
    assert read_label_file(path, "worse_label").tolist() == [0] * 10


def test_a_child_killed_by_a_signal_is_a_refusal_not_a_load(tmp_path, monkeypatch):
    """kill -9 of the child (as the kernel's OOM killer would): the file is refused, never loaded
    here, and not remembered as passed."""
    # (after printing what an answer looks like, as a file's loader could: its output goes nowhere)
    _reader(tmp_path, monkeypatch, "state-dict", "dying_reader",
            "import os, signal\nprint('{\"answer\": {\"loaded\": true}}', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    path = tmp_path / "w.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(ValueError, match="refused: the process that loads it first was killed by signal 9"):
        load_pretrained(torch.nn.Linear(2, 2), path)
    assert loads == [] and bounded._PASSED == set()


def test_a_child_that_answers_nothing_readable_is_a_refusal(tmp_path, monkeypatch):
    _reader(tmp_path, monkeypatch, "label-arrays", "raising_reader", "raise KeyError('no such thing')")
    path = tmp_path / "labels.pt"
    torch.save({"worse_label": torch.zeros(3, dtype=torch.long)}, path)
    with pytest.raises(DataError, match=r"the process that loads it first exited 1 \(KeyError: 'no such thing'\)"):
        read_label_file(path, "worse_label")


def test_the_child_imports_this_process_dm_tune(tmp_path, monkeypatch):
    """From another working directory and with PYTHONPATH unset, the child still finds the package
    this process runs (a Ray worker's may come from its runtime environment's working_dir), and not
    a dm_tune folder in the working directory."""
    path = tmp_path / "labels.pt"
    torch.save({"worse_label": torch.arange(4)}, path)
    (tmp_path / "dm_tune").mkdir()
    (tmp_path / "dm_tune" / "__init__.py").write_text("raise ImportError('the working directory\\'s dm_tune')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    bounded.stop_helper()  # (its helper starts here)
    started = _children(monkeypatch)
    assert read_label_file(path, "worse_label").tolist() == [0, 1, 2, 3]
    assert len(started) == 1 and os.getcwd() == str(tmp_path)


def test_a_label_file_nested_thousands_deep_is_refused_in_one_line(tmp_path):
    """Its arrays are copied whole through its containers (views of any size are measured in the
    child): a list nested 5000 deep ends that copy, and the file is refused."""
    pkl = b"\x80\x02}X\x0b\x00\x00\x00worse_label" + b"]" * 5000 + b"a" * 4999 + b"s."
    with pytest.raises(DataError, match="refused: holds containers nested thousands deep"):
        read_label_file(_torch_zip(tmp_path, pkl), "worse_label")


def test_a_view_far_larger_than_its_storage_is_refused_in_the_child(tmp_path, monkeypatch):
    """A stride-0 view of 2^31 elements over a 1-element storage costs nothing to load, and 16 GiB
    to read as labels (900 million uint8 elements fitted the child's memory and filled 8 GB here as
    int64): the child counts its bytes against the file's; this process never loads it."""
    saved = tmp_path / "one.pt"
    torch.save({"worse_label": torch.zeros(1, dtype=torch.long)}, saved)
    with zipfile.ZipFile(saved) as src:
        pkl = src.read(next(n for n in src.namelist() if n.endswith("/data.pkl")))
    # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...): size (1,) -> (2^31,), stride (1,) -> (0,)
    grown = pkl.replace(b"K\x01\x85q", b"\x8a\x05\x00\x00\x00\x80\x00\x85q", 1).replace(b"K\x01\x85q", b"K\x00\x85q", 1)
    assert grown != pkl
    path = tmp_path / "view.pt"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, grown if name.endswith("/data.pkl") else src.read(name))
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(DataError, match=r"refused: its arrays hold more data than the file does \(an array viewed "):
        read_label_file(path, "worse_label")
    assert loads == []


def test_one_array_listed_many_times_is_refused_in_the_child(tmp_path, monkeypatch):
    """1600 references to one 5000-label tensor: 8 MB of labels from a 7 KB file (500 000 labels
    listed 1600 times filled 8 GB here, after the child had only copied the one tensor)."""
    labels = torch.zeros(5000, dtype=torch.uint8)
    path = tmp_path / "listed.pt"
    torch.save({"worse_label": [labels] * 1600}, path)
    assert path.stat().st_size < 20_000
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(DataError, match=r"refused: its arrays hold more data than the file does .*listed many times"):
        read_label_file(path, "worse_label")
    assert loads == []
    sets = ("worse_label", "aggre_label", "random_label1", "random_label2", "random_label3", "clean_label")
    torch.save({key: torch.zeros(50_000, dtype=torch.uint8) for key in sets}, path)  # (each its own data)
    assert read_label_file(path, "worse_label").shape == (50_000,)


def test_a_numpy_array_of_a_stated_shape_runs_the_child_out_of_memory(tmp_path, monkeypatch):
    """numpy's own unpickling function, which the label reader must allow, allocates the shape it
    is given (8 GiB here) before any data: the child runs out of memory, this process loads nothing."""
    pkl = (b"\x80\x02}X\x0b\x00\x00\x00worse_label" + b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
           + b"\x8a\x05\x00\x00\x00\x00\x02\x85" + b"X\x01\x00\x00\x00b\x87R" + b"s.")  # (2^33,), 'b'
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(DataError, match=r"refused: loading it ran out of memory \(this process may hold \d"):
        read_label_file(_torch_zip(tmp_path, pkl), "worse_label")
    assert loads == []


@pytest.mark.parametrize(("pkl", "words"), [
    # torch.storage.UntypedStorage(2^24): numpy read it item by item (34 s) after a cheap load
    (b"\x80\x02}X\x0b\x00\x00\x00worse_label" + b"ctorch.storage\nUntypedStorage\n" + b"J\x00\x00\x00\x01\x85R" + b"s.",
     "refused: holds a UntypedStorage, where a label file holds arrays, lists and numbers"),
    # a tuple as a label set's name: printed in full by "has no key ... (present: ...)"
    (b"\x80\x02}K\x01K\x02\x86N" + b"s.", "refused: holds a tuple key, where label sets are named by strings"),
])
def test_a_label_file_holding_what_no_label_file_holds_is_refused(tmp_path, pkl, words):
    with pytest.raises(DataError, match=words):
        read_label_file(_torch_zip(tmp_path, pkl), "worse_label")


def test_a_state_dict_keyed_by_anything_but_names_is_one_line(tmp_path):
    path = _torch_zip(tmp_path, b"\x80\x02}K\x01K\x02\x86N" + b"s.")
    with pytest.raises(ValueError, match=r"is not a state dict \(a dict of names to tensors\): it has a tuple key$"):
        load_pretrained(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize("reader", ["label file", "pretrained weights"])
def test_a_file_torch_saved_with_a_newer_pickle_protocol_says_why_it_is_refused(tmp_path, reader):
    """torch's weights-only loader reads none of protocol 3's opcodes on (its message read
    "Weights only load failed. In PyTorch 2.6, we changed the default value of ...")."""
    path = tmp_path / "p4.pt"
    torch.save({"worse_label": torch.zeros(3, dtype=torch.long)}, path, pickle_protocol=4)
    with pytest.raises(ValueError, match=r"\(torch's weights-only loader refused it: Unsupported operand 149 \(pickle "
                                         r"protocol 3 or above; torch.save writes 2 unless told otherwise\)\)"):
        if reader == "label file":
            read_label_file(path, "worse_label")
        else:
            load_pretrained(torch.nn.Linear(2, 2), path)


def test_weights_that_do_not_fit_the_model_are_one_line(tmp_path):
    """A shape that differs (torch's multi-line RuntimeError) or a state dict whose ``_metadata``
    is no dict (an AttributeError from inside torch): one ValueError naming the file."""
    wrong = torchvision.models.resnet18().state_dict()
    wrong["conv1.weight"] = torch.zeros(3, 3)
    shaped = tmp_path / "shaped.pth"
    torch.save(wrong, shaped)
    with pytest.raises(ValueError, match=r"shaped.pth: weights do not fit the model \(size mismatch for conv1.weight: "
                                         r"copying a param with shape torch.Size\(\[3, 3\]\) from checkpoint.*\)$"):
        load_pretrained(torchvision.models.resnet18(), shaped)
    odd = torch.nn.Linear(2, 2).state_dict()
    odd._metadata = ["not", "a", "dict"]  # (torch.save keeps it: an OrderedDict's attribute)
    meta = tmp_path / "meta.pth"
    torch.save(odd, meta)
    with pytest.raises(ValueError, match=r"meta.pth: weights do not fit the model \('list' object has no attribute"):
        load_pretrained(torch.nn.Linear(2, 2), meta)


def test_a_cifar_release_is_read_first_in_a_child_once_per_version_of_its_files(tmp_path, monkeypatch):
    """A CIFAR folder is read in a child before this process reads it (out of time there: refused,
    not read here); its verdict holds until a file changes."""
    import dm_tune.datasets.cifar as cifar

    root = make_cifar10(tmp_path)
    unpickled: list[Path] = []
    unpickle = cifar._unpickle
    monkeypatch.setattr(cifar, "_unpickle", lambda path, *a: unpickled.append(path) or unpickle(path, *a))
    _slow_reader(tmp_path, monkeypatch, "cifar10")
    monkeypatch.setattr(bounded, "LOAD_SECONDS", 0.2)
    with pytest.raises(DataError, match=r"cifar-10-batches-py: refused: loading it took longer than 0 s"):
        cifar.load_cifar10(root, {}, False)
    assert unpickled == []
    monkeypatch.setattr(bounded, "LOAD_SECONDS", 120.0)
    monkeypatch.setitem(bounded.FOLDER_READERS, "cifar10", "dm_tune.datasets.cifar:_cifar10_source")
    started = _children(monkeypatch)
    for _ in range(2):
        assert len(cifar.load_cifar10(root, {}, False).train) == 50
    meta = root / "cifar-10-batches-py" / "batches.meta"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))
    cifar.load_cifar10(root, {}, False)
    assert started == [["folder", "dm_tune.datasets.cifar:_cifar10_source"]] * 2


@pytest.mark.parametrize("how", ["replaced", "written", "written, its time set back"])
def test_a_cifar_file_changed_between_its_check_and_its_read_is_refused(tmp_path, monkeypatch, how):
    """The child reads the release, then this process reads it again: a file another process
    replaced (or rewrote) in between was read here unchecked."""
    import dm_tune.datasets.cifar as cifar

    root = make_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    read = cifar._cifar10_source

    def changed_then_read(base: Path):
        data, before = batch.read_bytes(), batch.stat()
        if how == "replaced":  # (another file of the same size and times, renamed over it)
            (batch.parent / "new").write_bytes(data)
            os.utime(batch.parent / "new", ns=(before.st_atime_ns, before.st_mtime_ns))
            os.replace(batch.parent / "new", batch)
        else:
            batch.write_bytes(data)
            if how.endswith("set back"):
                os.utime(batch, ns=(before.st_atime_ns, before.st_mtime_ns))
        return read(base)

    monkeypatch.setattr(cifar, "_cifar10_source", changed_then_read)
    with pytest.raises(DataError, match=r"cifar-10-batches-py: changed while it was being read \(data_batch_3\): "
                                        "read it again once nothing writes to it"):
        cifar.load_cifar10(root, {}, False)
    monkeypatch.setattr(cifar, "_cifar10_source", read)
    assert len(cifar.load_cifar10(root, {}, False).train) == 50  # (unchanged since: read)


def test_a_key_a_file_names_with_a_line_break_prints_as_one_line(tmp_path):
    """The CLI prints a DataError as one line: a key's line break read as a line of dm-tune's own."""
    path = tmp_path / "labels.pt"
    torch.save({"x\ndm-tune: training finished": torch.zeros(3, dtype=torch.long)}, path)
    with pytest.raises(DataError) as caught:
        read_label_file(path, "worse_label")
    assert "\n" not in str(caught.value) and "(present: x\\ndm-tune: training finished)" in str(caught.value)


def test_a_clean_label_saved_with_requires_grad_is_compared_not_a_traceback(tmp_path):
    from dm_tune.noise import _check_clean_labels, _read_labels

    path = tmp_path / "labels.pt"
    torch.save({"worse_label": torch.ones(3, dtype=torch.long),
                "clean_label": torch.zeros(3, requires_grad=True)}, path)
    labels, blob = _read_labels(path, "worse_label")
    with pytest.raises(DataError, match="its clean_label disagrees with the dataset's labels at 3 of"):
        _check_clean_labels(path, labels, blob)  # (was: RuntimeError, Can't call numpy() on Tensor that requires grad)


def _labels(tmp_path, name: str, n: int) -> Path:
    path = tmp_path / name
    torch.save({"worse_label": torch.arange(n)}, path)
    return path


def test_a_helper_killed_between_or_during_loads_is_started_again(tmp_path, monkeypatch):
    """kill -9 of the helper that forks the loading children: between loads, the next load starts
    another; during one, that load is refused in one line (not loaded here), its child does not
    outlive the helper, and the next load starts another."""
    import signal
    import threading
    import time

    first, second, third = (_labels(tmp_path, f"l{n}.pt", n) for n in (3, 4, 5))
    assert read_label_file(first, "worse_label").tolist() == [0, 1, 2]
    helper = bounded._HELPERS[os.getpid()].proc
    os.kill(helper.pid, signal.SIGKILL)
    helper.wait()
    assert read_label_file(second, "worse_label").tolist() == [0, 1, 2, 3]
    assert bounded._HELPERS[os.getpid()].proc.pid != helper.pid

    real = bounded.READERS["label-arrays"]
    _slow_reader(tmp_path, monkeypatch, "label-arrays")
    helper, orphans = bounded._HELPERS[os.getpid()].proc, []

    def kill_it_mid_load() -> None:
        deadline = time.monotonic() + 60
        while not (children := _helpers_children()) and time.monotonic() < deadline:
            time.sleep(0.02)
        orphans.extend(children)
        os.kill(helper.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_it_mid_load)
    killer.start()
    loads = _torch_loads_here(monkeypatch)
    with pytest.raises(DataError, match=r"l5.pt: refused: the process that loads it first was killed by signal 9 "
                                        r"\(the process that forks it ended\)\. Expected layout"):
        read_label_file(third, "worse_label")
    killer.join()
    assert loads == [] and len(orphans) == 1
    deadline = time.monotonic() + 30  # its child was killed with it (not left to sleep its minute)
    while Path(f"/proc/{orphans[0]}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{orphans[0]}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in "ZX":  # (dead, left to a parent that does not reap)
            break
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{orphans[0]}").exists()
    monkeypatch.setitem(bounded.READERS, "label-arrays", real)
    assert read_label_file(third, "worse_label").tolist() == [0, 1, 2, 3, 4]


def test_loads_from_threads_and_a_forked_process_each_get_their_own_answer(tmp_path):
    """Two threads ask at once (one helper, one load at a time); a process forked after a load
    starts a helper of its own rather than writing into its parent's."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [_labels(tmp_path, f"l{n}.pt", n) for n in range(2, 8)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: read_label_file(p, "worse_label").tolist(), paths))
    assert got == [list(range(n)) for n in range(2, 8)]
    mine = bounded._HELPERS[os.getpid()].proc.pid
    pid = os.fork()
    if pid == 0:  # (the forked test process: only os._exit, whatever happens)
        code = 3
        try:
            ok = read_label_file(_labels(tmp_path, "forked.pt", 9), "worse_label").tolist() == list(range(9))
            code = 0 if ok and bounded._HELPERS[os.getpid()].proc.pid != mine else 1
        finally:
            bounded.stop_helper()
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert read_label_file(_labels(tmp_path, "after.pt", 4), "worse_label").tolist() == [0, 1, 2, 3]
    assert bounded._HELPERS[os.getpid()].proc.pid == mine
