"""The ``dm-tune train`` command line: results on disk, the (mode, spread) flags, --config with
flag overrides, and bad input (exit 2, one line on stderr, no traceback).

The real console script runs as a subprocess for the runs that work and for two bad inputs
(one rejected by argparse, one raised below ``main``). Each such process imports torch (~3 s
of CPU), so the full table of bad inputs goes through ``dm_tune.cli.main(argv)`` -
what the script calls - in this process; the subprocess cases show the script adds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


def _script() -> str:
    here = Path(sys.executable).parent / "dm-tune"
    found = str(here) if here.exists() else shutil.which("dm-tune")
    assert found, "the dm-tune console script is not installed (pip install -e .)"
    return found


# --- the invocations -------------------------------------------------------------------------

FILES = {
    "run.yaml": "dataset: digits\nmethod: dm\nlam: 5\nnoise_rate: 0.2\nepochs: 3\nseed: 7\nlr: 0.002\n",
    "bad.yaml": "dataset: digits\nepochs: [3\n",
    "deep.yaml": "dataset_options: " + "[" * 3000 + "]" * 3000 + "\n",
    "weights.pt": "",
    "unknown.yaml": "dataset: digits\nlearning_rate: 0.1\n",
    "lam_abc.yaml": "lam: abc\n",
    "dup.yaml": "dataset: digits\nepochs: 1\nepochs: 2\n",
    "cce_lam.yaml": "method: cce\nlam: 3\n",
    "momentum.yaml": "momentum: 0.5\nepochs: 1\n",
    "adam_momentum.yaml": "optimizer: adam\nmomentum: 0.5\n",
    "cosine_milestones.yaml": "schedule: cosine\nlr_milestones: [0.3, 0.6]\n",
    "cnn_hidden.yaml": "dataset: mnist1d\nhidden_dim: 32\nepochs: 1\n",
    "too_wide.yaml": "hidden_dim: 1000000\nepochs: 1\n",
    "digits_augment.yaml": "augment: true\n",
    "digits_download.yaml": "download: true\n",
    "sgd_momentum.yaml": "optimizer: sgd\nmomentum: 0.5\n",
    "epochs_underscore.yaml": "dataset: digits\nepochs: 1_0\n",
    "epochs_base60.yaml": "dataset: digits\nepochs: 1:2\n",
}

RUNS = {
    "main": ["--dataset", "digits", "--noise", "symmetric", "--noise-rate", "0.4", "--method", "dm",
             "--lam", "2", "--beta", "24", "--seed", "0", "--out", "result.json", "--epochs", "5"],
    # the file says method dm, lam 5, epochs 3, seed 7; the flags override lam (through --mode),
    # epochs and seed
    "yaml": ["--config", "run.yaml", "--mode", "0.5", "--spread", "4", "--epochs", "1", "--seed", "2",
             "--out", "yaml.json"],
}
# bad input through the real script: one argparse error, one error raised below main()
SCRIPT_ERRORS = ("bad integer flag", "unknown dataset")

# case -> (arguments after `train`, words the one error line must contain)
ERRORS = {
    "unknown dataset": (["--dataset", "imagenet"], ["dataset", "'imagenet'", "digits"]),
    "unknown method": (["--method", "focal"], ["method", "'focal'", "cce"]),
    # search's KIND:RATIO form is taken; a ratio given twice must be one
    "imbalance ratio not a number": (["--imbalance", "step:x"], ["--imbalance", "'step:x'", "KIND:RATIO"]),
    # was "imbalance: '' is not allowed"
    "imbalance ratio without its kind": (["--imbalance", ":10"], ["--imbalance: ':10' is not allowed", "KIND:RATIO"]),
    "imbalance ratio given twice": (["--imbalance", "step:10", "--imbalance-ratio", "5"],
                                    ["--imbalance step:10", "--imbalance-ratio 5", "give it once"]),
    "noise rate 1.5": (["--noise-rate", "1.5"], ["noise_rate", "1.5", "[0.0, 1.0)"]),
    # At the limit a wrong label is as common as the true one: no method can learn the classes.
    "pair noise at 0.5": (["--noise", "pair", "--noise-rate", "0.5"], ["noise_rate", "0.5", "below 0.5", "pair"]),
    "symmetric noise at (C-1)/C": (["--noise-rate", "0.9"], ["noise_rate", "0.9", "below 0.9", "10 classes"]),
    "superclass noise on digits": (["--noise", "cifar100-superclass", "--noise-rate", "0.2"],
                                   ["noise", "'cifar100-superclass'", "groups"]),
    "negative lam": (["--lam", "-1"], ["lam", "-1", "[0.0"]),
    "lam with cce": (["--method", "cce", "--lam", "2"], ["--lam", "only applies to --method dm", "'cce'"]),
    "mode with lam": (["--mode", "0.5", "--lam", "1"], ["--mode", "--lam"]),
    # named in the flag given, not as the lam or beta it becomes
    "mode beyond lambda's range": (["--mode", "0.9995"], ["--mode", "0.9995", "[0, 0.999000999]"]),
    "spread beyond beta's range": (["--mode", "0.5", "--spread", "5000"], ["--spread", "5000", "[-250, 250]"]),
    # the unknown method first: "--lam only applies to --method dm, not 'DM'" hid the typo
    "mis-cased method with lam": (["--method", "DM", "--lam", "2"], ["method", "'DM'", "expected one of: dm"]),
    "on-disk dataset without root": (["--dataset", "cifar10"], ["data_root", "cifar10", "--data-root"]),
    "missing data root": (["--dataset", "cifar10", "--data-root", "no/such/dir"], ["data_root", "no/such/dir", "does not exist"]),
    "malformed yaml": (["--config", "bad.yaml"], ["bad.yaml", "not valid YAML"]),
    # YAML keeps the last of a repeated key: one of the two settings was silently ignored
    "a key given twice in a config": (["--config", "dup.yaml"], ["dup.yaml", "'epochs' is given twice (line 3)"]),
    # were 10 and 62 epochs (YAML 1.1 reads digit separators and base 60)
    "a digit separator in a config": (["--config", "epochs_underscore.yaml"], ["epochs: '1_0'", "expected an integer"]),
    "a base-60 number in a config": (["--config", "epochs_base60.yaml"], ["epochs: '1:2'", "expected an integer"]),
    "config is a directory": (["--config", "."], ["--config .", "is a directory"]),
    # a file that cannot be read (root reads a chmod 000 file; this one fails for everyone): was a traceback
    "config that cannot be read": (["--config", "/proc/self/mem"], ["--config /proc/self/mem", "cannot be read"]),
    # fields no member uses were silently ignored (the flag --lam with cce was refused, lam in a file not)
    "lam in a file that trains cce": (["--config", "cce_lam.yaml"], ["lam: 3", "only applies to method dm"]),
    # a file wrong in itself stays wrong whatever flag changes the method
    "lam in a file that trains cce, under --method gce": (["--config", "cce_lam.yaml", "--method", "gce"],
                                                          ["lam: 3", "only applies to method dm"]),
    "gce-q with dm": (["--gce-q", "0.5"], ["gce_q: 0.5", "only applies to methods gce and gce-dn"]),
    "noise key without file noise": (["--noise-key", "worse_label"], ["noise_key", "only applies to noise file"]),
    "data root of an embedded dataset": (["--data-root", "/nonexistent"],
                                         ["data_root: '/nonexistent'", "only applies to the datasets read from disk"]),
    "unknown key in config": (["--config", "unknown.yaml"], ["learning_rate", "unknown field"]),
    # fields the run's optimizer, schedule, model or dataset ignores were trained without a word
    "momentum with the dataset's default adam": (["--config", "momentum.yaml", "--quiet"],
                                                 ["momentum: 0.5", "only applies to optimizer sgd",
                                                  "this run's optimizer is adam (the dataset's default)"]),
    "momentum with adam": (["--config", "adam_momentum.yaml"], ["momentum: 0.5", "only applies to optimizer sgd",
                                                                "this run would ignore it"]),
    "momentum with adam, several members": (["--config", "momentum.yaml", "--seed", "0,1", "--quiet"],
                                            ["momentum: 0.5", "(the dataset's default)"]),
    "milestones with a cosine schedule": (["--config", "cosine_milestones.yaml"],
                                          ["lr_milestones", "only applies to schedule step"]),
    "hidden_dim with the 1-D CNN": (["--config", "cnn_hidden.yaml", "--quiet"],
                                    ["hidden_dim: 32", "this run's model is cnn (the dataset's default)"]),
    # a 10**12-parameter MLP (within hidden_dim's range): a traceback from torch's allocator
    "an MLP too wide for memory": (["--config", "too_wide.yaml", "--quiet"],
                                   ["hidden_dim: 1000000 is not allowed", "1e+12 parameters",
                                    "exceed this machine's"]),
    "augment on digits": (["--config", "digits_augment.yaml"], ["augment: True", "only applies to the image datasets"]),
    "download on digits": (["--config", "digits_download.yaml"], ["download: True", "only applies to datasets cifar10"]),
    "cuda on a CPU-only machine": (["--device", "cuda", "--epochs", "1"], ["cuda", "CUDA is not available"]),
    # were ignored without a word: one member, and a dataset held in memory
    "a digit separator in a list": (["--lam", "1_0", "--epochs", "1"], ["--lam: '1_0'", "comma-separated list"]),
    # was "expected one argument": argparse takes -1e-3 for an option
    "a negative exponent": (["--lr", "-1e-3", "--epochs", "1"], ["lr: -0.001 is not allowed"]),
    "a negative exponent to --threads": (["--threads", "-1e3"], ["--threads: expected an integer, not '-1e3'"]),
    # were read as 10 and 3 (Python's int and float take digit separators and other scripts' digits)
    "a digit separator in a number": (["--lr", "0_1", "--epochs", "1"], ["--lr: expected a number, not '0_1'"]),
    "digits of another script": (["--epochs", "\u0663"], ["--epochs: expected an integer, not '\u0663'"]),
    "population size for one member": (["--population-size", "4", "--epochs", "1"],
                                       ["--population-size: 4", "only applies to several members"]),
    "workers for data in memory": (["--num-workers", "5", "--epochs", "1"],
                                   ["num_workers: 5", "only applies to the datasets read from disk a batch at a time",
                                    "the others are held in memory"]),
    "workers for members in memory": (["--num-workers", "2", "--seed", "0,1", "--epochs", "1"],
                                      ["num_workers: 2", "only applies to the datasets read from disk a batch"]),
    "out into a missing directory": (["--epochs", "1", "--out", "missing/result.json"], ["--out", "missing", "does not exist"]),
    "out is a directory": (["--epochs", "1", "--out", "."], ["--out", "is a directory"]),
    # Path drops the trailing slash: a file "results" was written
    "out names a missing directory": (["--epochs", "1", "--out", "results/"], ["--out results/", "names a directory"]),
    "out names a file as a directory": (["--epochs", "1", "--out", "run.yaml/"],
                                        ["--out run.yaml/", "names a directory"]),
    # was "directory run.yaml does not exist": it exists, as a file
    "out inside a file": (["--epochs", "1", "--out", "run.yaml/result.json"], ["--out", "run.yaml is a file, not a"]),
    # checked before training (was: a traceback after it, the result lost)
    "out where no file can be made": (["--epochs", "1", "--out", "/proc/result.json"], ["--out", "cannot write in /proc"]),
    "negative seed": (["--seed", "-1", "--epochs", "1"], ["seed", "-1", "[0, 4294967295]"]),
    "seed beyond numpy's": (["--seed", "4294967296", "--epochs", "1"], ["seed", "4294967296", "[0, 4294967295]"]),
    "bad integer flag": (["--epochs", "ten"], ["--epochs", "'ten'"]),
    "non-numeric lam in config with --spread": (["--config", "lam_abc.yaml", "--spread", "4"], ["lam", "'abc'"]),
    "model that does not fit the data": (["--model", "resnet20", "--epochs", "1", "--quiet"], ["model", "resnet20", "image"]),
    # --pretrained was not even checked where the model loads no weights (the run trained, exit 0)
    "pretrained file missing": (["--pretrained", "no/such.pt", "--epochs", "1"],
                                ["pretrained", "no/such.pt", "expected an existing local weights file"]),
    "pretrained with a model that loads none": (["--pretrained", "weights.pt", "--model", "mlp", "--epochs", "1"],
                                                ["pretrained", "only applies to models resnet18"]),
    "pretrained with a default model that loads none": (
        ["--pretrained", "weights.pt", "--epochs", "1", "--quiet"],
        ["pretrained", "this run's model is mlp (the dataset's default)"]),
    # was a RecursionError traceback
    "a config nested too deeply": (["--config", "deep.yaml"], ["--config deep.yaml", "nested too deeply"]),
    # an empty path was read as "not given": the default run trained, 60 epochs
    "empty config path": (["--config", ""], ["--config", "expected a path, not ''"]),
    "empty noise file path": (["--noise", "file", "--noise-file", ""], ["--noise-file", "expected a path, not ''"]),
    # the result replaced the YAML it was configured by
    "out is the config": (["--config", "run.yaml", "--epochs", "1", "--out", "run.yaml"],
                          ["--out run.yaml", "the run's input (--config)"]),
    "out is the noise file": (["--noise", "file", "--noise-file", "labels.npy", "--out", "labels.npy"],
                              ["--out labels.npy", "the run's input (its noise labels)"]),
    "out is the config, several members": (["--config", "run.yaml", "--lam", "1,2", "--out", "./run.yaml"],
                                           ["--out ./run.yaml", "the run's input (--config)"]),
    # past float's range: an OverflowError traceback
    "an integer of 400 digits": (["--epochs", "9" * 400], ["epochs", "expected an integer in [1, 100000]"]),
    # torch failed to start the threads, with a traceback
    "threads beyond any machine": (["--epochs", "1", "--threads", "100000"], ["--threads", "100000", "[1, 1024]"]),
    # the small classes kept one example each: a ratio of 99 was trained and recorded as realised
    "imbalance beyond the data's": (["--imbalance", "longtail", "--imbalance-ratio", "5000", "--epochs", "1"],
                                    ["imbalance_ratio", "5000", "at most about 99", "longtail"]),
    "population beyond a search's": (["--lam", "1,2", "--population-size", "5000"],
                                     ["--population-size", "5000", "[1, 1024]"]),
}


def _write_files(where: Path) -> Path:
    for name, text in FILES.items():
        (where / name).write_text(text)
    return where


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    cwd = _write_files(tmp_path_factory.mktemp("cli"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny models; a shared CPU
    script = _script()
    jobs = {**{k: ["train", *v] for k, v in RUNS.items()}, **{k: ["train", *ERRORS[k][0]] for k in SCRIPT_ERRORS}}

    def call(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(call, jobs.values())))
    return cwd, done


def _ok(outcomes, name: str) -> dict:
    cwd, done = outcomes
    proc = done[name]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads((cwd / RUNS[name][RUNS[name].index("--out") + 1]).read_text())


# --- runs that work --------------------------------------------------------------------------


def test_train_writes_the_result_json(outcomes):
    result = _ok(outcomes, "main")
    assert ", symmetric noise 0.4 (realised 0." in outcomes[1]["main"].stderr.splitlines()[0]
    assert {"test_accuracy", "best_test_accuracy", "best_epoch", "val_accuracy", "history", "config"} <= set(result)
    history = result["history"]
    assert len(history) == 5 and [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert result["test_accuracy"] == history[-1]["test_acc"]
    assert result["best_test_accuracy"] == max(h["test_acc"] for h in history) >= result["test_accuracy"]
    assert history[result["best_epoch"] - 1]["test_acc"] == result["best_test_accuracy"]
    assert result["val_accuracy"] == history[-1]["val_acc"]
    assert 0.3 < result["test_accuracy"] <= 1.0 and result["status"] == "finished"  # DM is slow to start
    config = result["config"]
    assert config["seed"] == 0 and config["git_commit"] and config["package_versions"]["torch"]
    assert (config["dataset"], config["noise"], config["noise_rate"], config["method"]) == ("digits", "symmetric", 0.4, "dm")
    assert (config["lam"], config["beta"], config["epochs"]) == (2.0, 24.0, 5)
    assert result["noise_rate_realised"] == pytest.approx(0.4, abs=0.03)


def test_train_prints_progress_and_a_summary(outcomes):
    proc = outcomes[1]["main"]
    assert proc.stdout.startswith("finished: final test accuracy") and "wrote " in proc.stdout
    epochs = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 5 and epochs[-1].startswith("epoch   5/5")


def test_config_file_with_flags_overriding_it(outcomes):
    result = _ok(outcomes, "yaml")
    config = result["config"]
    assert (config["dataset"], config["method"], config["noise_rate"], config["lr"]) == ("digits", "dm", 0.2, 0.002)
    assert (config["epochs"], config["seed"], config["data_seed"]) == (1, 2, 2)  # flags beat the file
    assert len(result["history"]) == 1


def test_mode_and_spread_convert_to_lambda_and_beta(outcomes):
    config = _ok(outcomes, "yaml")["config"]
    # psi = 0.5 -> lam = psi / (1 - psi) = 1 (not the file's 5); beta = rho (1+lam)^(1+lam) / lam^lam = 4 * 4 / 1
    assert config["lam"] == pytest.approx(1.0, rel=1e-12)
    assert config["beta"] == pytest.approx(16.0, rel=1e-12)


# --- bad input: exit code 2, one line on stderr, no traceback ---------------------------------


def _check_error_line(case: str, rc, out: str, err: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(("dm-tune: error: ", "dm-tune train: error: ")), lines[0]
    for word in ERRORS[case][1]:
        assert word in lines[0], (word, lines[0])
    assert out == ""


def _skip_cuda_case_on_cuda(case: str) -> None:
    if case == "cuda on a CPU-only machine":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")


@pytest.mark.parametrize("case", SCRIPT_ERRORS)
def test_bad_input_through_the_script(outcomes, case):
    _skip_cuda_case_on_cuda(case)
    proc = outcomes[1][case]
    _check_error_line(case, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    from dm_tune.cli import main

    _skip_cuda_case_on_cuda(case)
    monkeypatch.chdir(_write_files(tmp_path))
    try:
        rc = main(["train", *ERRORS[case][0]])
    except SystemExit as e:  # argparse errors exit from inside the parser
        rc = e.code
    out, err = capsys.readouterr()
    _check_error_line(case, rc, out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # nothing written


def test_out_never_replaces_the_data_the_run_reads(tmp_path, monkeypatch, capsys):
    """--out the features file the run trained on (or a file of its data folder) wrote the result
    over it: the dataset was gone, exit 0."""
    from dm_tune.cli import main
    from tests.test_datasets_disk import make_features

    monkeypatch.chdir(tmp_path)
    root = make_features(tmp_path / "feat")
    before = (root / "features.npz").read_bytes()
    for data_root, out in (("feat/features.npz", "feat/features.npz"), ("feat", "feat/features.npz")):
        rc = main(["train", "--dataset", "features", "--data-root", data_root, "--epochs", "1", "--out", out])
        _, err = capsys.readouterr()
        assert rc == 2 and err.count("\n") == 1, err
        assert f"--out {out}: is the run's input (its data, data_root {data_root})" in err
        assert (root / "features.npz").read_bytes() == before
    assert main(["train", "--dataset", "features", "--data-root", "feat", "--epochs", "1", "--quiet",
                 "--out", "feat/result.json"]) == 0  # (a new file beside the data is no input)
    assert json.loads((root / "result.json").read_text())["status"] == "finished"

def test_a_path_that_is_a_link_round_a_loop_is_one_line(tmp_path, monkeypatch, capsys):
    """Path.resolve raises RuntimeError on a link round a loop (before Python 3.13): each command
    that resolved a path it was given ended in that traceback."""
    from dm_tune.cli import main

    monkeypatch.chdir(tmp_path)
    Path("loop").symlink_to("loop")
    cases = [(["train", "--epochs", "1", "--out", "loop"], "--out loop"),
             (["train", "--epochs", "1", "--out", "loop/r.json"], "--out loop/r.json"),
             (["train", "--epochs", "1", "--noise", "file", "--noise-file", "loop"], "noise_file: loop"),
             (["search", "--workspace", "loop"], "--workspace loop"),
             (["search", "--workspace", "ws", "--storage-path", "loop"], "--storage-path loop"),
             (["report", "--workspace", "loop"], "--workspace loop")]
    for argv, words in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.splitlines() == [f"dm-tune: error: {words}: is a symbolic link in a loop (it leads back to itself)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]


# --- where outputs go: checked before the work, written whole -----------------------------------


def test_output_places_are_checked_without_leaving_anything(tmp_path):
    from dm_tune.errors import UserError, output_path, write_output

    assert output_path("--out", str(tmp_path / "a" / "b"), directory=True) == tmp_path / "a" / "b"
    assert output_path("--out", str(tmp_path / "r.json")) == tmp_path / "r.json"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no directory made yet
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"--out .*notes.txt/sub: .*notes.txt is not a directory"):
        output_path("--out", str(tmp_path / "notes.txt" / "sub"), directory=True)
    with pytest.raises(UserError, match="exists and is not a directory"):
        output_path("--out", str(tmp_path / "notes.txt"), directory=True)
    write_output(tmp_path / "notes.txt", "new\n")  # replaced whole
    assert (tmp_path / "notes.txt").read_text() == "new\n"
    with pytest.raises(UserError, match=r"could not write .*gone/r.json \(No such file or directory\)"):
        write_output(tmp_path / "gone" / "r.json", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary file left behind


def test_a_folder_made_read_only_during_a_write_is_one_line(tmp_path):
    """The folder turned read-only between the temporary file and its rename: removing the
    temporary file failed as the rename had, and that second PermissionError escaped as a traceback.
    (A child that gives up root's permission override, and makes the folder read-only just before
    write_output renames.)"""
    import subprocess
    import sys

    from tests.conftest import permissions_preexec

    preexec = permissions_preexec()
    script = """
import os, sys
from pathlib import Path
from dm_tune import errors
folder = Path(sys.argv[1])
real = os.replace
def replace(src, dst):
    folder.chmod(0o555)
    return real(src, dst)
errors.os.replace = replace
try:
    errors.write_output(folder / "r.json", "{}")
except errors.UserError as e:
    print(e)
"""
    (tmp_path / "out").mkdir()
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True,
                              timeout=120, preexec_fn=preexec)
    finally:
        (tmp_path / "out").chmod(0o755)
    assert proc.stdout == f"could not write {tmp_path / 'out' / 'r.json'} (Permission denied)\n", proc.stderr[-2000:]
    assert proc.stderr == "" and not (tmp_path / "out" / "r.json").exists()


def test_outputs_are_readable_as_the_umask_says_and_keep_a_replaced_files_mode(tmp_path):
    """Written through a private temporary file, an output still gets a new file's mode (not 0600)."""
    from dm_tune.errors import write_output

    old = os.umask(0o022)
    try:
        write_output(tmp_path / "r.json", "{}\n")
        write_output(tmp_path / "f.png", b"\x89PNG")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644 and (tmp_path / "f.png").read_bytes() == b"\x89PNG"
    (tmp_path / "r.json").chmod(0o640)
    write_output(tmp_path / "r.json", "[]\n")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640 and (tmp_path / "r.json").read_text() == "[]\n"


def test_an_out_that_is_a_pipe_or_a_device_is_written_into_not_replaced(tmp_path):
    """--out was renamed over: a FIFO (or, as root, /dev/null) became a regular file holding the
    JSON, and "--out /dev/stdout | jq" was "cannot write in /proc/N/fd". A pipe or device is written
    into; to standard output (also "--out -", and when it is a file) the command's own lines go to
    stderr, so the pipe carries the JSON alone."""
    import stat
    import threading

    fifo = tmp_path / "result.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    done = subprocess.run([_script(), "train", "--epochs", "1", "--quiet", "--out", str(fifo)], capture_output=True,
                          text=True, timeout=300)
    reader.join(timeout=30)  # (a reader still waiting when the FIFO was replaced waits forever: a daemon)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode) and json.loads(got[0])["status"] == "finished"
    for out in ("/dev/stdout", "-"):
        done = subprocess.run([_script(), "train", "--epochs", "1", "--quiet", "--seed", "0,1", "--out", out],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert [r["config"]["seed"] for r in json.loads(done.stdout)] == [0, 1]
        assert "finished: final test accuracy" in done.stderr and "wrote /dev/stdout" in done.stderr
    log = tmp_path / "log.txt"  # standard output appended to a file (`>> log.txt`): added to, not replaced
    log.write_text("an earlier line\n")
    with log.open("a") as stdout:
        done = subprocess.run([_script(), "train", "--epochs", "1", "--quiet", "--out", "-"], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, rest = log.read_text().split("\n", 1)
    assert first == "an earlier line" and json.loads(rest)["status"] == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "result.fifo"]


def test_a_config_from_a_pipe_is_read_and_a_folder_as_label_file_is_named(tmp_path, capsys):
    """--config <(printf ...) was "file not found" (a pipe is no regular file, but it is there); a
    device that never ends is refused once a config's size has come from it. A folder given as the
    label file was "label file not found"; a .pt file without --noise-key said it "holds several
    label sets" when it held one."""
    import threading

    from dm_tune.cli import main

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("epochs: 1\nseed: 3\n"), daemon=True)
    writer.start()
    assert main(["train", "--config", str(fifo), "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    writer.join(timeout=30)
    assert json.loads((tmp_path / "r.json").read_text())["config"]["seed"] == 3
    capsys.readouterr()
    assert main(["train", "--config", "/dev/zero"]) == 2
    assert capsys.readouterr().err.strip() == ("dm-tune: error: --config /dev/zero: not a regular file, and more "
                                               "than 16,777,216 bytes came from it; expected a YAML file")
    (tmp_path / "labels").mkdir()
    assert main(["train", "--noise", "file", "--noise-file", str(tmp_path / "labels"), "--epochs", "1"]) == 2
    assert f"{tmp_path / 'labels'}: is a directory; expected a label file" in capsys.readouterr().err
    import torch

    torch.save({"a": torch.zeros(3, dtype=torch.long)}, tmp_path / "one.pt")
    assert main(["train", "--noise", "file", "--noise-file", str(tmp_path / "one.pt"), "--epochs", "1"]) == 2
    assert "a .pt file's label set is never guessed; name it with noise_key (present: a)" in capsys.readouterr().err


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    from dm_tune.cli import main

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"PK\x03\x04\x9c\xff\x00binary")  # e.g. a checkpoint passed by mistake
    assert main(["train", "--config", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dm-tune: error: --config {weights}: not a YAML file (not UTF-8 text)"


def test_a_flag_that_makes_a_files_noise_rate_or_ratio_unused_warns(tmp_path, capsys):
    """--noise none over a file's noise_rate (and --imbalance none over its ratio) was an error
    ("noise_rate: 0.4 ... must be 0 with noise 'none'") that did not say the value came from the
    file, where --method cce over its lam is a warning: flags override the file."""
    from dm_tune.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("noise_rate: 0.4\nimbalance: longtail\nimbalance_ratio: 10\nepochs: 1\n")
    assert main(["train", "--config", str(config), "--noise", "none", "--imbalance", "none", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: noise_rate from --config {config} is ignored: --noise none overrides the file" in err
    assert f"warning: imbalance_ratio from --config {config} is ignored: --imbalance none overrides the file" in err
    # given by a flag too, it is the user's own contradiction: refused
    assert main(["train", "--config", str(config), "--noise", "none", "--noise-rate", "0.3"]) == 2
    assert "noise_rate: 0.3 is not allowed; must be 0 with noise 'none'" in capsys.readouterr().err


def test_a_negative_value_or_list_follows_its_flag(capsys):
    """argparse took "--beta -8,8" (and "--spread -1e3") for an option: "expected one argument"."""
    from dm_tune.cli import _signed_values, main

    assert _signed_values(["train", "--beta", "-8,8", "--lam", "-", "--quiet"]) == ["train", "--beta=-8,8", "--lam", "-",
                                                                                   "--quiet"]
    assert main(["train", "--beta", "-8,8", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "beta=-8 seed=0] finished" in out and "beta=8 seed=0] finished" in out


def test_a_noise_key_with_a_label_list_is_refused(tmp_path, capsys):
    """--noise-key reads a key of a CIFAR-N .pt file; with a .npy, .csv or .txt list it was ignored."""
    import numpy as np

    from dm_tune.cli import main

    np.save(tmp_path / "labels.npy", np.zeros(1797, dtype=np.int64))
    assert main(["train", "--noise", "file", "--noise-file", str(tmp_path / "labels.npy"), "--noise-key",
                 "worse_label", "--epochs", "1"]) == 2
    assert "noise_key: 'worse_label' is not allowed; only applies to noise file, with a CIFAR-N .pt noise_file" in \
        capsys.readouterr().err


def test_a_run_without_added_noise_says_so(capsys):
    """A dataset's own noise (Clothing1M's) with none added was announced as "symmetric noise 0
    (realised 0.179)"."""
    from dm_tune.cli import main

    assert main(["train", "--noise-rate", "0", "--epochs", "1"]) == 0
    assert ", no noise added (realised 0.000), model mlp" in capsys.readouterr().err.splitlines()[0]
    assert main(["train", "--noise-rate", "0", "--seed", "0,1", "--epochs", "1"]) == 0  # a population's line too
    assert ", no noise added, model mlp; 2 members" in capsys.readouterr().err.splitlines()[0]


def test_a_run_on_imbalanced_data_or_with_class_weighting_says_so(capsys):
    """The first line named the noise, not the imbalance or the class weighting a run trained with."""
    from dm_tune.cli import main

    flags = ["train", "--noise-rate", "0", "--imbalance", "longtail", "--imbalance-ratio", "20", "--epochs", "1"]
    assert main([*flags, "--class-weighting", "sqrt-inverse"]) == 0
    assert (", no noise added (realised 0.000), longtail imbalance 20:1 (realised 19.8:1), class weighting "
            "sqrt-inverse, model mlp, dm") in capsys.readouterr().err.splitlines()[0]
    assert main([*flags, "--seed", "0,1"]) == 0  # (the members' realised ratios are their seeds')
    assert ", no noise added, longtail imbalance 20:1, model mlp; 2 members" in capsys.readouterr().err.splitlines()[0]
    assert main(["train", "--noise-rate", "0", "--class-weighting", "inverse", "--epochs", "1"]) == 0
    assert ", no noise added (realised 0.000), class weighting inverse, model mlp" in (
        capsys.readouterr().err.splitlines()[0])


def test_a_method_flag_over_a_file_of_dm_knobs_warns_that_they_are_ignored(tmp_path, capsys):
    """Flags override the file: --method cce over a file that sets DM's lam trains CCE, and says the
    file's lam is ignored (a file that itself trains CCE with a lam is refused: see ERRORS)."""
    from dm_tune.cli import main

    (tmp_path / "run.yaml").write_text(FILES["run.yaml"])
    out = tmp_path / "r.json"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--method", "cce", "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["method"] == "cce"
    err = capsys.readouterr().err
    assert "warning: lam from --config" in err and "--method cce overrides the file" in err
    # --noise over a file of file noise: its label file is dropped, with a warning (TrainConfig refused
    # noise_file beside another noise: the flag could not override the file)
    (tmp_path / "file_noise.yaml").write_text("noise: file\nnoise_file: labels.npy\n")
    assert main(["train", "--config", str(tmp_path / "file_noise.yaml"), "--noise", "symmetric", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: noise_file from --config") == 1 and "--noise symmetric overrides" in err
    # --optimizer adam over a file of SGD with its momentum: said once, not again once the data is loaded
    (tmp_path / "sgd.yaml").write_text(FILES["sgd_momentum.yaml"])
    assert main(["train", "--config", str(tmp_path / "sgd.yaml"), "--optimizer", "adam", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: momentum from --config") == 1 and "--optimizer adam overrides the file" in err


def test_members_that_ended_are_in_out_when_the_run_is_killed(tmp_path):
    """Members train a population at a time, and --out was written once all had: a run killed (or
    failed, or interrupted) while the last population trained lost the results of those that had
    ended. The file now holds them, rewritten whole as each population ends."""
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([_script(), "train", "--seed", "0,1", "--population-size", "1", "--epochs", "300",
                             "--quiet", "--out", "r.json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the first member's result line: said once it is in the file
        assert first.startswith("[dm lam=1 beta=8 seed=0] finished: final test"), (first, proc.stderr.read())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert result["status"] == "finished" and result["config"]["seed"] == 0 and len(result["history"]) == 300
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # (no temporary file left beside it)


PATH_FLAGS = {"--out": ["--out", "{p}.json"], "--config": ["--config", "{p}.yaml"],
              "--noise-file": ["--noise", "file", "--noise-file", "{p}.npy"],
              "--pretrained": ["--pretrained", "{p}.pt"],
              "--data-root": ["--dataset", "features", "--data-root", "{p}.npz"]}
PATH_SAID = {"--out": "--out {p}.json: cannot be examined ({why})",
             "--config": "--config {p}.yaml: cannot be examined ({why})",
             "--noise-file": "{p}.npy: cannot be examined ({why})",
             "--pretrained": "expected an existing local weights file (it cannot be examined: {why})",
             "--data-root": "{p}.npz: cannot be {examined}"}


@pytest.mark.parametrize("flag", sorted(PATH_FLAGS))
@pytest.mark.parametrize("where", ["a name too long", "a folder this user may not enter"])
def test_a_path_that_cannot_be_examined_is_one_line(tmp_path, flag, where):
    """Path.is_dir and is_file answer False for a missing path but raise PermissionError under a
    folder this user may not enter and OSError for a name longer than the system takes: each of
    these flags ended in that traceback, exit 1."""
    from tests.conftest import permissions_preexec

    if where == "a name too long":
        p, why, examined, preexec = "x" * 300, "File name too long", "examined (File name too long)", None
    else:
        (tmp_path / "locked").mkdir(mode=0o700)
        (tmp_path / "locked").chmod(0o000)
        p, why, examined, preexec = "locked/x", "Permission denied", "read (permission denied)", permissions_preexec()
    args = [a.format(p=p) for a in PATH_FLAGS[flag]]
    try:
        proc = subprocess.run([_script(), "train", "--epochs", "1", "--quiet", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    finally:
        if (tmp_path / "locked").exists():
            (tmp_path / "locked").chmod(0o700)
    said = PATH_SAID[flag].format(p=p, why=why, examined=examined)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and said in proc.stderr, proc.stderr


def test_a_run_without_validation_says_so_not_nan(tmp_path, monkeypatch, capsys):
    """val_fraction 0 on digits: the lines read "(val nan%)" and "val nan%"."""
    from dm_tune.cli import main

    monkeypatch.chdir(tmp_path)
    Path("v0.yaml").write_text("val_fraction: 0\n")
    assert main(["train", "--config", "v0.yaml", "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    assert "(no validation split)" in out and "nan" not in out + err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("  test " in line and " val " not in line for line in epochs)


def test_a_terminated_or_unread_train_ends_in_a_line_or_quietly(tmp_path):
    """SIGTERM (a scheduler's stop) ended a run silently with -15; now as Ctrl-C does: one line, the
    members that ended kept, exit 143. `--out -` into a pipe its reader closed was a user error
    (exit 2, "could not write /dev/stdout (Broken pipe)"); it is quiet, 141, as other output is."""
    import signal

    # started with SIGINT ignored, as `dm-tune train &` in a script is: SIGTERM was then ignored too
    proc = subprocess.Popen([_script(), "train", "--epochs", "3000"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        while not proc.stderr.readline().lstrip().startswith("epoch"):  # training (not still importing)
            assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "dm-tune: terminated", err
    assert "Traceback" not in err

    read, write = os.pipe()
    os.close(read)  # nobody reads the result
    done = subprocess.run([_script(), "train", "--epochs", "1", "--quiet", "--out", "-"], cwd=tmp_path,
                          stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert done.returncode == 141 and "error" not in done.stderr, done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (a device that is always full)")
@pytest.mark.parametrize("argv", [["recommend", "--num-classes", "10", "--noise-rate", "0.3"],
                                  ["recommend", "--num-classes", "10", "--noise-rate", "0.3", "--json"]])
def test_output_to_a_full_disk_is_one_line(argv, tmp_path):
    """`dm-tune recommend > /dev/full` ended in a traceback (OSError: No space left on device)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([_script(), *argv], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert done.returncode == 1 and done.stderr == "dm-tune: error: the output: No space left on device\n", done.stderr


@pytest.mark.parametrize("argv", [["train", "--epo", "1"], ["search", "--mode", "0.5"], ["train", "--bet", "-8"]])
def test_a_flag_is_never_an_abbreviation_of_another(argv, capsys):
    """argparse took --epo for --epochs, search's --model for train's --mode (the error then named
    settings.model), and --bet -8 failed where --beta -8 worked."""
    from dm_tune.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv[1:])}" in capsys.readouterr().err


def test_imbalance_in_the_search_form_and_seeds_are_the_train_flags_too(tmp_path, capsys):
    """dm-tune search takes --imbalance step:10 and --seeds; train took only --imbalance step
    --imbalance-ratio 10 and --seed (a command copied from one to the other was refused)."""
    from dm_tune.cli import main

    outs = []
    for i, argv in enumerate((["--imbalance", "step:10", "--seeds", "3"],
                              ["--imbalance", "step", "--imbalance-ratio", "10", "--seed", "3"])):
        out = tmp_path / f"r{i}.json"
        assert main(["train", *argv, "--epochs", "1", "--quiet", "--out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    for r in outs:
        assert r["config"]["imbalance"] == "step" and r["config"]["imbalance_ratio"] == 10 and r["config"]["seed"] == 3
    assert outs[0]["test_accuracy"] == outs[1]["test_accuracy"]
