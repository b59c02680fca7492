"""The benchmark scripts run and write what BENCHMARKS.md reads (no timing assertions here)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, exit_code: int = 0) -> None:
    """The script as ``python benchmarks/SCRIPT ARGS`` runs it, in this process (torch is imported
    once for all of them), ending with ``exit_code``; torch's thread count is put back afterwards."""
    import torch

    threads, argv, path = torch.get_num_threads(), sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(ROOT / "benchmarks" / script), *args], [str(ROOT / "benchmarks")]
    code: int | str | None = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv, sys.path[:] = argv, path
        torch.set_num_threads(threads)
    assert code == exit_code, code


def test_step_time_writes_all_three_arms(tmp_path):
    out = tmp_path / "step.json"
    _run("step_time.py", "--cases", "mlp,loss,loss-c100", "--repeats", "2", "--block-ms", "5",
         "--threads", "1", "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["target_ratio"] == 1.05
    rows = {r["case"]: r for r in doc["results"]}
    assert set(rows) == {"mlp", "loss", "loss-c100"}
    for r in rows.values():
        assert r["blocks"] == 2 and r["dm_ms"] > 0 and r["ce_ms"] > 0 and r["dm_torch_ms"] > 0
        assert abs(r["ratio"] - r["dm_ms"] / r["ce_ms"]) < 1e-9
    # The DM arm runs the fused kernel on the small CPU batches, torch above the size limit.
    assert rows["mlp"]["dm_kernel"] == "native" and rows["loss"]["dm_kernel"] == "native"
    assert rows["loss-c100"]["dm_kernel"] == "torch"


def test_gpu_throughput_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "tp.json"
    _run("gpu_throughput.py", "--device", "cpu", "--batch", "8", "--steps", "1", "--blocks", "1",
         "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["amp"] == "off" and doc["batch"] == 8
    assert doc["images_per_s"]["dm"] > 0 and doc["images_per_s"]["cce"] > 0


def test_population_benchmark_smoke(tmp_path):
    out = tmp_path / "pop.json"
    _run("population.py", "--quick", "--cases", "digits-mlp,resnet20", "--threads", "1", "--sizes", "1,2",
         "--profile", "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["quick"] is True
    rows = {(r["case"], r["k"]): r for r in doc["results"]}
    assert set(rows) == {("digits-mlp", 1), ("digits-mlp", 2), ("resnet20", 1), ("resnet20", 2)}
    for r in rows.values():
        assert r["population_configs_per_s"] > 0 and r["separate_configs_per_s"] > 0
        assert abs(r["ratio"] - r["population_configs_per_s"] / r["separate_configs_per_s"]) < 1e-9
        assert r["separate_runs"] == r["k"]
    assert rows[("resnet20", 2)]["population_images_per_s"] > 0
    profiles = {p["case"]: p for p in doc["profiles"]}  # one per case, at its largest K, on the CPU's clock
    assert set(profiles) == {"digits-mlp", "resnet20"} and {p["k"] for p in profiles.values()} == {2}
    for p in profiles.values():
        shares = [r["share"] for r in p["top"]]
        assert p["clock"] == "cpu" and 0 < sum(shares) <= 1.0001 and shares == sorted(shares, reverse=True)
    mlp = [r["name"] for r in profiles["digits-mlp"]["top"][:3]]
    assert {"aten::bmm", "aten::baddbmm"} & set(mlp)  # the MLP population's time is in its products


def test_population_benchmark_times_both_precisions_side_by_side(tmp_path):
    out = tmp_path / "amp.json"
    _run("population.py", "--quick", "--cases", "digits-mlp", "--threads", "1", "--sizes", "2",
         "--amp", "off,bf16", "--json", str(out))
    doc = json.loads(out.read_text())
    off, bf16 = doc["results"]
    assert doc["amp"] == ["off", "bf16"] and (off["amp"], bf16["amp"]) == ("off", "bf16")
    assert "fastest_ratio" not in off
    pop = max(off["population_configs_per_s"], bf16["population_configs_per_s"])
    sep = max(off["separate_configs_per_s"], bf16["separate_configs_per_s"])
    assert bf16["fastest_ratio"] == pytest.approx(pop / sep)
    assert {bf16["fastest_population_amp"], bf16["fastest_separate_amp"]} <= {"off", "bf16"}


def test_roofline_counts_the_mlps_work_and_bounds_the_ratio(tmp_path):
    out = tmp_path / "roofline.json"
    _run("roofline.py", "--k", "2", "--epochs", "1", "--repeats", "1", "--json", str(out))
    doc = json.loads(out.read_text())
    # digits MLP 64 -> 256 -> 256 -> 10: 84,480 multiply-adds per example.
    assert doc["model"] == "mlp" and doc["layer_macs"] == [64 * 256, 256 * 256, 256 * 10]
    macs = 64 * 256 + 256 * 256 + 256 * 10
    assert abs(doc["ceiling_ratio"] - doc["single_s_per_config"] / doc["compute_bound_s_per_config"]) < 1e-9
    assert abs(doc["compute_bound_s_per_config"] * doc["peak_gflops"] - doc["gflop_per_config"]) < 1e-6
    # Training: forward, weight gradients, input gradients but the first layer's; evaluation: forward.
    per_epoch = 2 * ((3 * macs - 64 * 256) * doc["n_train"] + macs * doc["n_eval"])
    assert abs(doc["gflop_per_config"] * 1e9 - per_epoch) < 1e-3


def test_roofline_counts_the_cnns_convolutions(tmp_path):
    out = tmp_path / "roofline.json"
    _run("roofline.py", "--case", "mnist1d-cnn", "--k", "2", "--repeats", "1", "--json", str(out))
    doc = json.loads(out.read_text())
    # Length 40, kernel 3, padding 1, pooled by 2 after each block: 1 -> 32 -> 64 -> 128 channels.
    assert doc["model"] == "cnn" and doc["epochs"] == 1
    assert doc["layer_macs"] == [32 * 1 * 3 * 40, 64 * 32 * 3 * 20, 128 * 64 * 3 * 10, 128 * 10]
    assert doc["single_s_per_config"] > 0 and doc["population_s_per_config"] > 0


def test_pooling_benchmark_times_both_layers(tmp_path):
    out = tmp_path / "pooling.json"
    _run("pooling.py", "--blocks", "2", "--block-ms", "5", "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["threads"] == 1 and len(doc["rows"]) == 4 and doc["rows"][0]["what"].startswith("training step")
    for r in doc["rows"]:
        assert r["pair_ms"] > 0 and r["maxpool1d_ms"] > 0
        assert abs(r["speedup"] - r["maxpool1d_ms"] / r["pair_ms"]) < 1e-9


def test_layout_benchmark_times_both_layouts(tmp_path):
    out = tmp_path / "layout.json"
    _run("layout.py", "--models", "cnn", "--batch", "4", "--blocks", "2", "--block-ms", "5", "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and [r["what"] for r in doc["rows"]] == ["training step", "evaluation forward"]
    for r in doc["rows"]:
        assert r["model"] == "cnn" and r["batch"] == 4 and r["nhwc_ms"] > 0 and r["nchw_ms"] > 0
        assert abs(r["speedup"] - r["nchw_ms"] / r["nhwc_ms"]) < 1e-9


def test_population_optimizer_benchmark_times_both_paths(tmp_path):
    out = tmp_path / "popopt.json"
    _run("population_optimizer.py", "--k", "2", "--epochs", "1", "--repeats", "2", "--threads", "1",
         "--json", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["threads"] == 1 and row["k"] == 2
    assert row["stacked_s_per_config"] > 0 and row["slices_s_per_config"] > 0
    assert abs(row["speedup"] - row["slices_s_per_config"] / row["stacked_s_per_config"]) < 1e-9


def test_optimizer_benchmark_times_both_updates(tmp_path):
    out = tmp_path / "optimizer.json"
    _run("optimizer.py", "--quick", "--cases", "digits-mlp", "--k", "2", "--repeats", "2", "--threads", "1",
         "--json", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["case"] == "digits-mlp" and row["threads"] == 1
    assert row["fused_s_per_config"] > 0 and row["default_s_per_config"] > 0
    assert row["sqrt_zeros_us"] > 0 and row["sqrt_ordinary_us"] > 0


def test_population_kernels_benchmark_checks_and_times_both_arms(tmp_path):
    out = tmp_path / "kernels.json"
    _run("population_kernels.py", "--blocks", "1", "--block-ms", "1", "--sizes", "2", "--population-k", "2",
         "--cnn-k", "2", "--quick", "--json", str(out))
    doc = json.loads(out.read_text())
    assert [r["layer"] for r in doc["conv"]] == [[32, 64, 20], [64, 128, 10], [1, 32, 40]]
    assert [r["layer"] for r in doc["positions"]] == [[32, 64, 20], [64, 128, 10]]
    assert len(doc["loss"]) >= 10 and len(doc["relu_pool"]) == 3 and len(doc["block"]) == 3
    assert [(r["case"], r["k"]) for r in doc["population"]] == [("digits-mlp", 2), ("mnist1d-cnn", 2)]
    for r in doc["conv"] + doc["positions"] + doc["relu_pool"] + doc["block"] + doc["loss"] + doc["population"]:
        assert r["speedup"] > 0
    _run("population_kernels.py", "--sections", "block", "--blocks", "1", "--block-ms", "1", "--sizes", "2",
         "--json", str(out))
    assert set(json.loads(out.read_text())) == {"threads", "blocks", "torch", "machine", "block"}


def test_the_gpu_checks_script_parses_and_passes_known_flags():
    # The script runs only on a lent GPU machine, once a session: a typo there costs the run.
    import re
    import subprocess

    script = ROOT / "benchmarks" / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = script.read_text().splitlines()
    runs = [line.split()[2:] for line in lines if re.match(r"population \w+ --", line)]
    assert len(runs) >= 4
    known = set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "benchmarks" / "population.py").read_text()))
    for flags in runs:
        unknown = [f for f in flags if f.startswith("--") and f not in known]
        assert not unknown, (flags, unknown)


def test_the_gpu_checks_script_fails_where_there_is_no_gpu(tmp_path):
    """Without CUDA it printed a traceback, every step's refusal, and exited 0."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the script would run its checks")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "torch sees no CUDA device here" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "out").glob("*.log"))


def test_exit_time_runs_both_entry_points(tmp_path):
    out = tmp_path / "exit.json"
    _run("exit_time.py", "--command", "train", "--repeats", "1", "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["command"] == "train" and doc["repeats"] == 1
    assert set(doc["arms"]) == {"main", "console_main"}
    for arm in doc["arms"].values():  # the work's end was recorded, inside the command's wall time
        assert 0 < arm["exit_s"] < arm["command_s"] and arm["exit_s_all"] == [arm["exit_s"]]


@pytest.mark.parametrize("args, needle", [
    (["--resnet-images", "1"], "--resnet-images 1: need at least 2 images (one for validation)"),
    (["--cases", "digits-mlp", "--resnet-images", "64"],
     "--resnet-images 64: sizes the resnet20 case, which --cases digits-mlp leaves out"),
    (["--amp", "off,fp16"], "--amp off,fp16: each value must be auto, off or bf16"),
])
def test_population_benchmark_refuses_options_it_cannot_honour(tmp_path, capsys, args, needle):
    _run("population.py", *args, "--json", str(tmp_path / "pop.json"), exit_code=2)
    err = capsys.readouterr().err
    assert needle in err, err
    assert not (tmp_path / "pop.json").exists()


@pytest.mark.parametrize("script, args, needle", [
    ("population.py", ["--threads", "0"], "argument --threads: '0': expected comma-separated whole numbers >= 1"),
    ("population.py", ["--sizes", "1,0"], "argument --sizes: '1,0': expected comma-separated whole numbers >= 1"),
    ("population.py", ["--repeats", "0"], "argument --repeats: '0': expected a whole number >= 1"),
    ("roofline.py", ["--k", "0"], "argument --k: '0': expected a whole number >= 1"),
    ("step_time.py", ["--block-ms", "0"], "argument --block-ms: '0': expected a number > 0"),
    ("pooling.py", ["--blocks", "-1"], "argument --blocks: '-1': expected a whole number >= 1"),
    ("layout.py", ["--threads", "0"], "argument --threads: '0': expected a whole number >= 1"),
    ("optimizer.py", ["--threads", "1,x"], "argument --threads: '1,x': expected comma-separated whole numbers"),
    ("population_optimizer.py", ["--epochs", "0"], "argument --epochs: '0': expected a whole number >= 1"),
    ("population_kernels.py", ["--cnn-k", "-1"], "argument --cnn-k: '-1': expected a whole number >= 0"),
    ("gpu_throughput.py", ["--steps", "0"], "argument --steps: '0': expected a whole number >= 1"),
    ("exit_time.py", ["--repeats", "0"], "argument --repeats: '0': expected a whole number >= 1"),
    ("search_overhead.py", ["--repeats", "0"], "argument --repeats: '0': expected a whole number >= 1"),
    ("bounded_load.py", ["--cifar-images", "0"], "argument --cifar-images: '0': expected a whole number >= 1"),
    ("compare_methods.py", ["--noise-rate", "2"], "noise_rate: 2.0 is not allowed; expected a number in [0.0, 1.0)"),
    ("compare_methods.py", ["--arms", "cce", "dm:1"], "--arms dm:1: expected a method name or dm:LAM:BETA"),
    ("compare_methods.py", ["--arms", "cce", "cce"], "--arms cce cce: expected distinct arms"),
])
def test_benchmark_scripts_refuse_bad_counts_in_a_line(tmp_path, capsys, script, args, needle):
    """A zero or negative count, a malformed list or configuration: argparse's one line and exit 2
    when parsed, not a traceback (or a division by zero) after the timing."""
    _run(script, *args, "--json" if script != "compare_methods.py" else "--epochs",
         str(tmp_path / "out.json") if script != "compare_methods.py" else "1", exit_code=2)
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out.json").exists()


def test_compare_methods_prints_its_table_and_refuses_one_seed(capsys):
    """Its smallest run: two seeds, one epoch (one seed has no spread: refused when parsed, not after
    training every arm)."""
    _run("compare_methods.py", "--seeds", "1", "--epochs", "1", "--arms", "cce", exit_code=2)
    assert "--seeds 1: expected at least 2" in capsys.readouterr().err
    _run("compare_methods.py", "--seeds", "2", "--epochs", "1", "--arms", "cce", "dm:1:8")
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| method | final test acc % (mean ± std) |")
    assert table[4].startswith("| cce | ") and table[5].startswith("| DM (lam=1, beta=8) | ")


def test_bounded_load_benchmark_times_every_arm(tmp_path):
    out = tmp_path / "bounded.json"
    _run("bounded_load.py", "--model", "resnet18", "--cifar-images", "120", "--repeats", "1", "--json", str(out))
    result = json.loads(out.read_text())
    assert len(result["median_s"]) == 12 and all(t > 0 for t in result["median_s"].values())
    assert result["file_bytes"]["weights"] > 40 * 2**20  # (resnet18's 11.7 M parameters)
