"""How long a `dm-tune` command takes from the end of its work to the end of its process.

    python benchmarks/exit_time.py [--command search|train] [--repeats 3] [--json out.json]

The console script (``dm_tune.cli.console_main``) runs ``dm_tune.cli.main`` and then calls
``gc.freeze()``, so that the interpreter's collections at exit skip the objects torch, Ray,
MLflow and Optuna leave behind. Two arms run the same command as a subprocess:

- ``main``: ``dm_tune.cli.main`` alone (the console script before the change);
- ``console_main``: the console script as installed.

A wrapper in the subprocess writes the moment the function returns; the exit time is from then
to the end of the subprocess, seen by this process. The arms alternate order between repeats;
medians over repeats. Commands: ``search``, a tiny study (digits, 2 DM trials and one baseline
of 3 epochs, one seed; its own local Ray), and ``train``, one digits run of one epoch (torch and
scikit-learn loaded, no Ray or MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _args
import _machine

ARMS = ("main", "console_main")
WRAPPER = """
import sys, time
from dm_tune.cli import {fn}
sys.argv = ["dm-tune", *sys.argv[2:]]
rc = {fn}()
with open(MARKER, "w") as f:
    f.write(repr(time.time()))
sys.exit(rc)
"""


def _argv(command: str, tmp: Path) -> list[str]:
    if command == "train":
        return ["train", "--dataset", "digits", "--epochs", "1", "--quiet", "--out", str(tmp / "result.json")]
    import yaml

    study = {"name": "exit", "settings": {"dataset": ["digits"], "noise": ["symmetric"], "noise_rate": [0.4]},
             "seeds": [0], "search": {"num_samples": 2, "top_k": 1}, "search_seeds": 1, "baselines": ["cce"],
             "training": {"epochs": 3}, "resources": {"cpus_per_trial": 1, "max_concurrent": 2}}
    (tmp / "study.yaml").write_text(yaml.safe_dump(study))
    return ["search", "--config", str(tmp / "study.yaml"), "--workspace", str(tmp / "ws"), "--quiet"]


def measure(arm: str, command: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        marker = tmp / "returned"
        code = f"MARKER = {str(marker)!r}\n" + WRAPPER.format(fn=arm)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", code, "dm-tune", *_argv(command, tmp)],
                              capture_output=True, text=True, cwd=tmp)
        end = time.time()
        if proc.returncode != 0:
            sys.exit(f"{arm} {command} exited {proc.returncode}:\n{proc.stderr}")
        returned = float(marker.read_text())
    return {"command_s": round(end - t0, 3), "exit_s": round(end - returned, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--command", choices=("search", "train"), default="search")
    p.add_argument("--repeats", type=_args.positive_int, default=3, help="runs of each arm; medians reported")
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args()

    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for r in range(args.repeats):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            runs[arm].append(measure(arm, args.command))
            print(f"{arm:>12} {args.command}: exit {runs[arm][-1]['exit_s']:.2f} s "
                  f"(command {runs[arm][-1]['command_s']:.1f} s)", file=sys.stderr)
    figures = {
        "command": args.command, "repeats": args.repeats,
        "machine": _machine.machine(),
        "load_average": os.getloadavg()[0],
        "arms": {arm: {"exit_s": statistics.median(x["exit_s"] for x in rs),
                       "command_s": statistics.median(x["command_s"] for x in rs),
                       "exit_s_all": [x["exit_s"] for x in rs]} for arm, rs in runs.items()},
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
