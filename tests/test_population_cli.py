"""``dm-tune train`` with comma-separated --method/--lam/--beta/--seed: one member per
combination, trained in populations of --population-size; bad lists exit 2 with one line.
Through ``dm_tune.cli.main`` (what the console script calls), in this process."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dm_tune.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _error(capsys, argv: list[str]) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, words", [
    (["--lam", "1,x"], ["--lam", "'x'", "comma-separated list of numbers"]),
    (["--beta", "8,,16"], ["--beta", "''", "comma-separated list of numbers"]),
    (["--seed", "0,1.5"], ["--seed", "'1.5'", "integers"]),
    (["--method", "dm,"], ["--method", "''", "method names"]),
    (["--method", "dm,focal"], ["method", "'focal'", "cce"]),
    (["--lam", "1,-2"], ["lam", "-2", "[0.0"]),
    (["--seed", "0,1", "--population-size", "0"], ["--population-size", "'0'", "'auto' or an integer in [1, 1024]"]),
    # argparse's own "expected an integer" line, where search's takes auto
    (["--seed", "0,1", "--population-size", "2.5"], ["--population-size", "'2.5'", "'auto' or an integer"]),
    # "at this mode": which of the members' lam?
    (["--spread", "1", "--lam", "1000,1"], ["--spread", "1.0", "at this mode (lam 1000;"]),
    (["--seed", "0,-1"], ["seed", "-1", "[0, 4294967295]"]),
    (["--lam", "1,2", "--epochs", "40", "--out", "/proc/result.json"], ["--out", "cannot write in /proc"]),
    (["--method", "cce,gce", "--lam", "1,2"], ["--lam", "only applies to --method dm"]),
    # a value given twice was silently one member (search and validate refuse a seed given twice)
    (["--seed", "0,0"], ["--seed", "'0,0'", "each value once"]),
    (["--lam", "1,1.0"], ["--lam", "'1,1.0'", "each value once"]),
])
def test_bad_lists_exit_2_naming_the_flag_and_value(capsys, argv, words):
    err = _error(capsys, argv)
    for word in words:
        assert word in err, (word, err)


def test_lists_train_one_member_per_combination(tmp_path, capsys):
    out = tmp_path / "members.json"
    argv = ["train", "--method", "dm,cce", "--lam", "1,2", "--beta", "8", "--seed", "0,1", "--epochs", "2",
            "--population-size", "3", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    results = json.loads(out.read_text())
    assert isinstance(results, list) and len(results) == 6  # dm x {1, 2} x {0, 1} + cce x {0, 1}
    members = [(r["config"]["method"], r["config"]["lam"], r["config"]["beta"], r["config"]["seed"]) for r in results]
    assert members[:4] == [("dm", 1.0, 8.0, 0), ("dm", 1.0, 8.0, 1), ("dm", 2.0, 8.0, 0), ("dm", 2.0, 8.0, 1)]
    assert [(m[0], m[3]) for m in members[4:]] == [("cce", 0), ("cce", 1)]
    for r in results:  # today's result object, one per member
        assert r["status"] == "finished" and len(r["history"]) == 2 and r["config"]["epochs"] == 2
        assert r["test_accuracy"] == r["history"][-1]["test_acc"] and r["config"]["git_commit"]
    assert "population 2/2" in captured.err and "population 3/2" not in captured.err
    assert captured.out.count("finished: final test accuracy") == 6


def test_a_population_of_two_prints_the_median_of_two(tmp_path, capsys):
    """The epoch line's median of an even number of members is the mean of the middle two (it
    printed the upper one)."""
    out = tmp_path / "members.json"
    assert main(["train", "--lam", "1,2", "--beta", "8", "--epochs", "1", "--population-size", "2",
                 "--out", str(out)]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch   1/1  2/2 members")]
    low, high, median = (float(v) for v in re.search(r"test\s*([\d.]+)-\s*([\d.]+)% \(median\s*([\d.]+)%",
                                                     line).groups())
    pair = sorted(100 * r["test_accuracy"] for r in json.loads(out.read_text()))
    assert pair[0] < pair[1] and (low, high) == pytest.approx(pair, abs=0.06)
    assert median == pytest.approx(sum(pair) / 2, abs=0.06)


def test_a_single_member_keeps_the_single_result(tmp_path, capsys):
    out = tmp_path / "one.json"
    assert main(["train", "--seed", "3", "--lam", "2", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert isinstance(result, dict) and result["config"]["seed"] == 3 and result["config"]["lam"] == 2.0
    assert capsys.readouterr().out.startswith("finished: final test accuracy")


def test_the_default_population_size_is_the_measured_one(capsys):
    from dm_tune.population import suggested_population_size

    assert suggested_population_size("mlp", "cpu") == 16 and suggested_population_size("cnn", "cpu") == 4
    assert suggested_population_size("text", "cuda") == 16  # not measured
    assert main(["train", "--seed", "0,1,2", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "3 members in 1 population(s) of up to 16" in err and "population 1/1" in err


def test_members_trained_one_at_a_time_print_their_own_epochs(capsys):
    """--population-size 1 (and any member that cannot join a population) trains each member
    through train(): its epochs are shown as a single run's, under the member's name."""
    assert main(["train", "--lam", "1,2", "--population-size", "1", "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    for lam in (1, 2):
        for epoch in (1, 2):
            assert f"[dm lam={lam} beta=8 seed=0] epoch   {epoch}/2  loss " in captured.err, captured.err
    assert captured.out.count("finished: final test accuracy") == 2


def test_population_size_auto_and_members_labelled_apart(capsys):
    """--population-size auto is the default, as in a search; two members whose lam differ past :g's
    6 digits were both labelled lam=1."""
    assert main(["train", "--lam", "1,1.000001", "--population-size", "auto", "--epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert "2 members in 1 population(s) of up to 16" in captured.err
    assert "[dm lam=1 beta=8 seed=0] finished" in captured.out
    assert "[dm lam=1.000001 beta=8 seed=0] finished" in captured.out


def test_the_epoch_line_names_the_members_that_diverged_and_ranges_the_others(capsys):
    """The line said "2 diverged" (which?) and ranged their frozen models' accuracy with the rest."""
    assert main(["train", "--lr", "10", "--method", "mae,dm,cce", "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    first = next(line for line in captured.err.splitlines() if line.startswith("epoch   1/2"))
    assert "diverged: dm lam=1 beta=8 seed=0, cce seed=0" in first, first
    (mae,) = [line for line in captured.out.splitlines() if line.startswith("[mae seed=0] finished")]
    accuracy = float(mae.split("final test accuracy ")[1].split("%")[0])
    assert f"test {accuracy:5.1f}-{accuracy:5.1f}%" in first, (first, mae)  # the finite member alone


def test_a_retrieval_dataset_trains_its_members_one_at_a_time(tmp_path, capsys):
    out = tmp_path / "members.json"
    assert main(["train", "--dataset", "reid-synth", "--lam", "1,2", "--epochs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 members, one at a time: dataset 'reid-synth' is a retrieval task" in captured.err
    assert captured.err.count("test mAP") == 2 and captured.out.count("finished: final test mAP") == 2
    results = json.loads(out.read_text())
    assert [r["config"]["lam"] for r in results] == [1.0, 2.0] and all(r["test_map"] > 0 for r in results)


def test_a_population_out_of_gpu_memory_is_one_line_naming_a_size_that_halves_it(capsys, monkeypatch):
    from dm_tune import population

    def out_of_memory(*args, **kwargs):  # a GPU that runs out cannot exist here: its error can
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which "
            "1.20 GiB is free. Including non-PyTorch memory, this process has 22.40 GiB memory in use. If reserved "
            "but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")

    monkeypatch.setattr(population, "_train_together", out_of_memory)
    err = _error(capsys, ["--lam", "1,2,4", "--seed", "0,1", "--epochs", "1", "--population-size", "6", "--quiet"])
    assert "population of 6 members ran out of GPU memory" in err
    assert "Tried to allocate 2.00 GiB" in err and "1.20 GiB is free" in err and "Including" not in err
    assert "--population-size 3" in err and "population_size in the study" in err


def test_members_that_all_train_alone_are_said_so_once_not_as_a_population(tmp_path, capsys):
    """Data read from disk trains one member at a time: the header said "2 members in 1
    population(s) of up to 16" and the population then said it would not be one. Now the header
    says how they train, once, and each member's result is kept as it ends (populations of one)."""
    from tests.test_datasets_disk import make_imagefolder

    out = tmp_path / "r.json"
    assert main(["train", "--dataset", "imagefolder", "--data-root", str(make_imagefolder(tmp_path / "img")),
                 "--seed", "0,1", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("2 members, one at a time: dataset 'imagefolder' is read from disk (populations need in-memory "
            "data)") in err, err
    assert "population(s)" not in err and "runs one member at a time" not in err
    assert [r["config"]["seed"] for r in json.loads(out.read_text())] == [0, 1]
