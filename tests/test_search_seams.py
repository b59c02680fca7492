"""The search's seams: the trial contract, the ledger, the searcher over real Optuna storage, and
what Ray's, MLflow's and Optuna's own tools read after the default study."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dm_tune.errors import UserError
from dm_tune.config import TrainConfig
from dm_tune.search._ledger import Ledger
from dm_tune.search._searcher import StagedSearcher, top_arms
from dm_tune.search._trial import TrialOutcome, TrialSpec, population_report
from dm_tune.search_spaces import BASELINES, get_space
from tests.conftest import DM_TUNE

SETTING = "digits-symmetric0.4-default"


def _search_spec(number: int, psi: float = 0.5) -> TrialSpec:
    return TrialSpec(SETTING, "search", 0, {"method": "dm", "lam": psi / (1 - psi), "beta": 8.0},
                     number=number, knobs={"psi": psi, "rho": 2.0})


def _outcome(val: float, status: str = "finished") -> TrialOutcome:
    return TrialOutcome(status=status, epochs_reached=3, final_val_acc=val, final_test_acc=val - 0.01,
                        history=({"epoch": 1, "val_acc": val},))


def _same(a: TrialOutcome, b: TrialOutcome) -> bool:  # NaN fields compare equal here
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_spec_and_outcome_round_trip_and_keys():
    spec = _search_spec(4)
    assert spec.key == f"{SETTING}/search/4"
    assert TrialSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    fixed = TrialSpec(SETTING, "confirm", 2, {"method": "cce"}, arm="cce", baseline="cce")
    assert fixed.key == f"{SETTING}/cce/seed2"
    assert fixed.train_values({"dataset": "digits", "seed": 0}) == {"dataset": "digits", "method": "cce", "seed": 2}
    out = _outcome(0.9)
    assert _same(TrialOutcome.from_dict(json.loads(json.dumps(out.to_dict()))), out)
    assert _same(TrialOutcome.from_report(out.to_report(), errored=False), out)
    # A final report is a result however the trial ended after it (a member trained before its
    # population failed for good keeps it)
    assert _same(TrialOutcome.from_report(out.to_report(), errored=True), out)


def test_outcome_without_a_final_report_is_early_stopped_or_errored():
    cut = TrialOutcome.from_report({"epoch": 2, "val_acc": 0.7, "test_acc": 0.6}, errored=False)
    assert (cut.status, cut.epochs_reached, cut.final_val_acc) == ("early-stopped", 2, 0.7) and not cut.usable
    # the epoch it diverged in reached a scheduler's rung, which stopped it: diverged, not early-stopped
    diverged = TrialOutcome.from_report({"epoch": 2, "val_acc": 0.1, "diverged": 1.0}, errored=False)
    assert (diverged.status, diverged.epochs_reached) == ("diverged", 2) and not diverged.usable
    assert TrialOutcome.from_report(None, errored=True).status == "errored"
    # Failed after its final report (a population trained one member at a time, whose later member
    # failed for good): the ended members' results stand
    crashed_after_final = TrialOutcome.from_report(population_report([_outcome(0.9)]), errored=True)
    assert crashed_after_final.status == "finished" and crashed_after_final.usable


def test_a_trial_cut_short_keeps_its_training_time_and_best_values():
    """A trial ASHA stopped ends without its final report: it was recorded with a training time of
    0 s (the summary's training time left it out) and no best-over-training or validation-selected
    values, which its history holds. Retrieval's best mAP values too."""
    history = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.45, "epoch_time_s": 1.5},
               {"epoch": 2, "val_acc": 0.8, "test_acc": 0.7, "epoch_time_s": 2.0},
               {"epoch": 3, "val_acc": 0.6, "test_acc": 0.75, "epoch_time_s": 2.5},
               {"epoch": 4, "val_acc": 0.9, "test_acc": 0.9, "epoch_time_s": 9.0}]  # after the cut: not its
    cut = TrialOutcome.from_report({"epoch": 3, "val_acc": 0.6, "test_acc": 0.75}, errored=False, history=history)
    assert cut.status == "early-stopped" and cut.train_time_s == pytest.approx(6.0)
    assert (cut.best_test_acc, cut.best_epoch, cut.best_val_acc, cut.val_selected_test_acc) == (0.75, 3, 0.8, 0.7)
    retrieval = [{"epoch": 1, "val_map": 0.3, "test_map": 0.2, "epoch_time_s": 1.0},
                 {"epoch": 2, "val_map": 0.2, "test_map": 0.25, "epoch_time_s": 1.0}]
    cut = TrialOutcome.from_report({"epoch": 2, "val_map": 0.2, "test_map": 0.25}, errored=False, history=retrieval)
    assert cut.task_metrics == {"final_val_map": 0.2, "final_test_map": 0.25, "best_test_map": 0.25,
                                "val_selected_test_map": 0.2}
    assert cut.best_epoch == 2 and math.isnan(cut.best_test_acc) and cut.train_time_s == 2.0


def test_ledger_survives_a_torn_last_line_and_knows_what_is_unfinished(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    a, b, c = _search_spec(0), _search_spec(1), _search_spec(2)
    assert ledger.start([a]) == a.key
    assert ledger.start([b, c]) == b.key  # a population is named by its first member
    ledger.checkpoint(b.key, "/ckpt/bc")
    assert ledger.end(a, _outcome(0.8)) and not ledger.end(a, _outcome(0.1))  # ended once
    assert ledger.end(c, _outcome(0.7))
    with open(path, "a") as f:
        f.write('{"event": "end", "key": "' + b.key + '", "outc')  # the driver died mid-write
    again = Ledger(path)
    assert [s.key for s in again.unfinished()] == [b.key]
    assert [[s.key for s in p] for p in again.unfinished_populations()] == [[b.key, c.key]]
    assert again.checkpoints[b.key] == "/ckpt/bc"
    assert again.ended[a.key].final_val_acc == 0.8
    first, second = again.new_experiment(), Ledger(path).new_experiment()
    assert re.fullmatch(r"run-1-[0-9a-f]{6}", first) and re.fullmatch(r"run-2-[0-9a-f]{6}", second)
    # Another search's run-1 (Ray stages runs by start second and name: equal names shared a folder)
    assert Ledger(tmp_path / "other.jsonl").new_experiment() != first


def test_ledger_starts_and_outcomes_are_on_disk_when_written(tmp_path, monkeypatch):
    """A start line was flushed but not fsync'd: after the machine went down it could be lost while
    its trial's MLflow run, committed by SQLite, survived, and the resume refuses a ledger that lacks
    a trial MLflow has (the loss cannot be staged here: fsync is what is checked)."""
    import dm_tune.search._ledger as ledger_module

    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(ledger_module.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                               real(fd)))
    ledger = Ledger(tmp_path / "l.jsonl")
    a, b = _search_spec(0), _search_spec(1)
    ledger.start([a, b])
    ledger.checkpoint(a.key, "/ckpt/a")
    ledger.end(a, _outcome(0.8))
    assert synced == [str(tmp_path / "l.jsonl")] * 3  # the two starts and the end; not the checkpoint


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from dm_tune.search._ledger import Ledger
from dm_tune.search._trial import TrialOutcome, TrialSpec

path = Path(sys.argv[1])
ledger = Ledger(path)
a, b = (TrialSpec("s", "search", 0, {"method": "cce"}, number=n) for n in (0, 1))
ledger.start([a])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 20, resource.RLIM_INFINITY))
try:
    ledger.end(a, TrialOutcome("finished", 3, final_val_acc=0.5))
except OSError as e:
    print("full:", e.strerror)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space freed
ledger.start([b])
"""


def test_an_event_after_one_a_full_disk_cut_short_starts_its_own_line(tmp_path):
    """The write that failed left part of its line in the file: the next event, the process going
    on, starts a new line (it was glued onto the torn one, and lost with it)."""
    path = tmp_path / "l.jsonl"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("full: File too large"), proc.stderr
    lines = path.read_text().split("\n")
    assert len(lines) == 4 and lines[1].startswith('{"event":"end"') and not lines[1].endswith("}")  # torn
    again = Ledger(path)
    assert sorted(again.started) == ["s/search/0", "s/search/1"] and not again.ended


def test_checkpoints_in_the_workspace_are_found_after_it_moved(tmp_path):
    """They were recorded as absolute paths: a workspace moved (or mounted elsewhere) resumed its
    unfinished populations from scratch. Paths outside it, and URIs, stay as they were."""
    ws = tmp_path / "ws"
    path = ws / "ledger" / "l.jsonl"
    ledger = Ledger(path, ws)
    a, b, c = _search_spec(0), _search_spec(1), _search_spec(2)
    for spec in (a, b, c):
        ledger.start([spec])
    ledger.checkpoint(a.key, str(ws / "ray" / "run-1" / "trial" / "checkpoint_000002"))
    ledger.checkpoint(b.key, "/elsewhere/checkpoint_000001")
    ledger.checkpoint(c.key, "s3://bucket/ray/checkpoint_000003")
    assert '"path":"ray/run-1/trial/checkpoint_000002"' in path.read_text()
    moved = tmp_path / "moved"
    ws.rename(moved)
    again = Ledger(moved / "ledger" / "l.jsonl", moved)
    assert again.checkpoint_path(a.key) == str(moved / "ray" / "run-1" / "trial" / "checkpoint_000002")
    assert again.checkpoint_path(b.key) == "/elsewhere/checkpoint_000001"
    assert again.checkpoint_path(c.key) == "s3://bucket/ray/checkpoint_000003"
    assert again.checkpoint_path("never") is None


@pytest.mark.parametrize("line, what", [
    (b'{"event": "end", "key": "k"}\n', "not an event this dm-tune writes (KeyError: 'outcome')"),
    (b'{"event": "start", "key": "k", "spec": {"stage": "search"}}\n', "not an event this dm-tune writes (TypeError"),
    (b'[1, 2]\n', "not an event this dm-tune writes"),
    (b'{"event": "end", "key": "k", "outcome": "\xff\xfe"}\n', "bytes that are not text"),
], ids=["missing-field", "bad-spec", "not-an-object", "not-text"])
def test_a_damaged_ledger_line_is_one_line_naming_it(tmp_path, line, what):
    """A torn line (the driver killed mid-write) is skipped, even mid-file once a later write began
    a new line; a line no dm-tune wrote is damage: named with its number, not a traceback."""
    path = tmp_path / "l.jsonl"
    Ledger(path).start([_search_spec(0)])
    with open(path, "ab") as f:
        f.write(b'{"event": "end", "key": "x", "outc')  # torn by a killed driver...
    Ledger(path).start([_search_spec(1)])  # ...then the next driver's line after it
    assert len(Ledger(path).started) == 2
    with open(path, "ab") as f:
        f.write(line)
    with pytest.raises(UserError) as info:
        Ledger(path)
    assert str(info.value).startswith(f"{path}: line 4 holds {what}") and "\n" not in str(info.value)


def test_a_ledger_that_cannot_be_read_is_one_line(tmp_path):
    """A folder in the ledger's place: an IsADirectoryError traceback from the resume, after Ray had started."""
    path = tmp_path / "l.jsonl"
    path.mkdir()
    with pytest.raises(UserError) as info:
        Ledger(path)
    assert str(info.value) == (f"{path}: cannot be read (Is a directory); the ledger is damaged: restore it, or run "
                               "the study in another --workspace")


def test_ledger_records_a_reused_trial_in_one_line(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    search = _search_spec(0)
    ledger.start([search])
    ledger.end(search, _outcome(0.9))
    confirm = TrialSpec(SETTING, "confirm", 0, dict(search.overrides), arm="dm-1")
    ledger.reuse(confirm, search)
    assert len(path.read_text().splitlines()) == 3
    for view in (ledger, Ledger(path)):
        assert view.started[confirm.key] == confirm and not view.unfinished()
        assert _same(view.ended[confirm.key], dataclasses.replace(view.ended[search.key], reused_from=search.key))
        assert view.unfinished_populations() == []
    text = path.read_text()
    path.write_text(text[:-20])  # killed while writing it: neither started nor ended
    torn = Ledger(path)
    assert confirm.key not in torn.started and confirm.key not in torn.ended


def test_top_arms_rank_finished_search_trials_only():
    ended = [(_search_spec(0, 0.5), _outcome(0.90)), (_search_spec(1, 0.6), _outcome(0.95, "diverged")),
             (_search_spec(2, 0.5), _outcome(0.93)), (_search_spec(3, 0.25), _outcome(0.91)),
             (_search_spec(4, 0.7), _outcome(0.99, "early-stopped"))]
    arms = top_arms(ended, 3)
    assert [name for name, _ in arms] == ["dm-1", "dm-2"]  # psi 0.5 twice is one arm
    assert arms[0][1]["lam"] == pytest.approx(1.0) and arms[1][1]["lam"] == pytest.approx(1 / 3)


def _searcher(tmp_path, ledger: Ledger, population_size: int = 1, **kwargs) -> StagedSearcher:
    options = {"num_samples": 3, "seeds": [0, 1], "space": get_space("decoupled"),
               "warm_points": [{"psi": 0.5, "rho": 4.0}], "sampler": optuna.samplers.RandomSampler(seed=0),
               "baselines": {"cce": BASELINES["cce"]}, **kwargs}
    return StagedSearcher(
        setting=SETTING, ledger=ledger, study_name="t",
        optuna_storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        optuna_study="s", top_k=1, population_size=population_size, **options)


def _members(config) -> list[TrialSpec]:
    return [TrialSpec.from_dict(d) for d in config["specs"]]


def test_searcher_stages_and_resume_from_the_ledger(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    searcher = _searcher(tmp_path, ledger)
    configs = [searcher.suggest(f"t{i}") for i in range(5)]  # 3 search, then the baseline on 2 seeds
    assert all(len(c["specs"]) == 1 for c in configs)
    specs = [_members(c)[0] for c in configs]
    assert [s.stage for s in specs] == ["search"] * 3 + ["confirm"] * 2
    assert specs[0].knobs == {"psi": 0.5, "rho": 4.0}  # the warm start comes first
    assert searcher.suggest("t5") is None  # the confirmed arm waits for the search
    searcher.on_trial_complete("t0", population_report([_outcome(0.9)]))
    searcher.on_trial_complete("t3", population_report([_outcome(0.8)]))

    # The driver dies here. A new searcher over the same ledger and Optuna study:
    resumed = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"))
    again = [_members(resumed.suggest(f"r{i}"))[0] for i in range(3)]
    assert [s.key for s in again] == [specs[1].key, specs[2].key, specs[4].key]  # unfinished ones
    assert resumed.suggest("r3") is None
    resumed.on_trial_complete("r0", population_report([_outcome(0.95)]))
    resumed.on_trial_complete("r1", None, error=True)
    resumed.on_trial_complete("r2", population_report([_outcome(0.85)]))
    # The best finished search trial (0.95) is confirmed: on its search seed (0) its own run is
    # the confirm trial's (recorded, not trained again), the other seed trains.
    confirm = [_members(resumed.suggest(f"c{i}"))[0] for i in range(1)]
    assert [(s.arm, s.seed) for s in confirm] == [("dm-1", 1)] and confirm[0].overrides == specs[1].overrides
    reused = resumed.ledger.ended[f"{SETTING}/dm-1/seed0"]
    assert reused.reused_from == specs[1].key and reused.final_val_acc == 0.95
    assert resumed.ledger.started[f"{SETTING}/dm-1/seed0"].overrides == specs[1].overrides
    assert resumed.suggest("c1") == resumed.FINISHED and not resumed.done()
    resumed.on_trial_complete("c0", population_report([_outcome(0.9)]))
    assert resumed.done()
    assert _same(Ledger(tmp_path / "l.jsonl").ended[f"{SETTING}/dm-1/seed0"], reused)  # durable

    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    states = Counter(t.state for t in trials)
    assert states == {optuna.trial.TrialState.COMPLETE: 2, optuna.trial.TrialState.FAIL: 1}
    assert trials[0].user_attrs["status"] == "finished" and trials[1].value == pytest.approx(0.95)
    resumed.tell(specs[1], _outcome(0.1))  # a second tell (a reconcile) changes nothing
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[1].value == 0.95


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_a_resumed_search_draws_no_point_again_and_tells_what_the_ledger_ended(tmp_path, sampler):
    """kill -9 after the ledger recorded an arm's end, before Optuna was told: the resumed searcher
    asked new arms of a sampler seeded as at the start, which drew again the points it had drawn
    (TPE still in its random start-up, as Optuna counted the arm running): one arm trained twice.
    A grid search covers its grid once (reseeded, its stored grid ids pointed at other points)."""
    import shutil

    from dm_tune.search_spaces import make_sampler, resumed_sampler

    space = get_space("paper-grid" if sampler == "grid" else "decoupled")
    arms = 32 if sampler == "grid" else 7

    def searcher(where):
        return _searcher(where, Ledger(where / "l.jsonl"), num_samples=arms, seeds=[0], warm_points=[],
                         space=space, sampler=make_sampler(sampler, space, 0, arms),
                         resume_sampler=functools.partial(resumed_sampler, sampler, space, 0, arms))

    first = searcher(tmp_path)
    specs = [_members(first.suggest(f"t{i}"))[0] for i in range(3)]
    first.on_trial_complete("t1", population_report([_outcome(0.8)]))
    first.ledger.end(specs[0], _outcome(0.9))  # ... and the driver dies before telling Optuna
    load = lambda: optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")  # noqa: E731
    assert [t.state.name for t in load().trials] == ["RUNNING", "COMPLETE", "RUNNING"]
    twin = tmp_path / "twin"  # the same state, resumed a second time below
    twin.mkdir()
    for name in ("l.jsonl", "optuna.db"):
        shutil.copy(tmp_path / name, twin / name)

    resumed = searcher(tmp_path)
    again = [_members(resumed.suggest(f"r{i}"))[0] for i in range(arms - 2)]
    assert again[0].key == specs[2].key  # the unfinished arm first
    assert [t.state.name for t in load().trials][:2] == ["COMPLETE", "COMPLETE"]
    assert load().trials[0].value == pytest.approx(0.9)
    points = [tuple(s.knobs.values()) for s in specs + again[1:]]
    assert len(set(points)) == len(points) == arms, points  # no arm drawn twice (a grid: each point once)
    # A resume from the same point asks the same arms.
    second = searcher(twin)
    assert [_members(second.suggest(f"r{i}"))[0].knobs for i in range(arms - 2)] == [s.knobs for s in again]


def test_a_trial_another_driver_ends_before_it_is_tagged_is_asked_again(tmp_path, monkeypatch):
    """Two studies share one Optuna study: the other's driver, starting, ends an untagged RUNNING
    trial as its own dead driver's, in the instant between this one's ask and its tag. The
    searcher asks again instead of failing on the ended trial."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), warm_points=[])
    study = searcher.optuna_study()
    real_ask, asked = type(study).ask, []

    def ask_then_lose_it(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        asked.append(trial.number)
        if len(asked) == 1:
            self.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # the other driver
        return trial

    monkeypatch.setattr(type(study), "ask", ask_then_lose_it)
    (spec,) = _members(searcher.suggest("t0"))
    assert asked == [0, 1] and spec.number == 1
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING"] and trials[1].user_attrs["dmtune.study"] == "t"


def test_a_retrieval_seed_whose_weights_became_nan_counts_0(tmp_path):
    """A retrieval run's NaN embeddings rank nothing: its mAP is NaN, and the arm's mean over seeds
    was NaN, told to Optuna as FAIL (the sampler learnt nothing from the unstable arm), where the
    same divergence on a classifier counts accuracy 0 and the arm scores low."""
    from dm_tune.search._trial import OBJECTIVES

    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), search_seeds=2, warm_points=[],
                         objective=OBJECTIVES["retrieval"].final)
    searcher.suggest("t0"), searcher.suggest("t1")
    finished = TrialOutcome(status="finished", epochs_reached=3, task_metrics={"final_val_map": 0.4})
    diverged = TrialOutcome(status="diverged", epochs_reached=1, task_metrics={"final_val_map": math.nan})
    searcher.on_trial_complete("t0", population_report([finished]))
    searcher.on_trial_complete("t1", population_report([diverged]))
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(0.2)
    assert trial.user_attrs["seed_values"] == [0.4, 0.0] and trial.user_attrs["status"] == "diverged"

def test_a_pruned_arm_is_told_its_seeds_values_at_the_epoch_it_was_pruned(tmp_path):
    """Seed 1 stopped by ASHA at epoch 2 (val 0.4); seed 0 finished 3 epochs (0.5, 0.6, 0.9):
    Optuna hears 0.5 at step 2, the two seeds at epoch 2, not (0.9 + 0.4) / 2 across epochs."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), search_seeds=2, warm_points=[])
    first, second = _members(searcher.suggest("t0")), _members(searcher.suggest("t1"))
    assert [s.seed for s in first + second] == [0, 1] and first[0].number == second[0].number == 0
    finished = TrialOutcome(status="finished", epochs_reached=3, final_val_acc=0.9, final_test_acc=0.9,
                            history=tuple({"epoch": e, "val_acc": v} for e, v in ((1, 0.5), (2, 0.6), (3, 0.9))))
    searcher.on_trial_complete("t0", population_report([finished]))
    searcher.on_trial_complete("t1", {"epoch": 2, "members": [{"epoch": 2, "val_acc": 0.4}]})
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {2: pytest.approx(0.5)}
    assert trial.user_attrs["seed_values"] == pytest.approx([0.9, 0.4])  # the seeds' own last values
    assert trial.user_attrs["seed_statuses"] == ["finished", "early-stopped"]  # and how each ended


def test_a_stopped_trials_history_holds_the_epoch_it_was_stopped_at_and_those_before_a_resume(tmp_path):
    """Tune hands the result a scheduler stops a trial at to on_trial_complete alone: the trial's
    history ended an epoch early (a trial stopped at the first rung had none: 0 s of training, no
    best values, and a resumed ASHA left its value out of the rung). A trial resumed from a
    checkpoint sends its earlier epochs once (RESTORED_KEY): they were missing too."""
    from dm_tune.search._trial import RESTORED_KEY

    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), search_seeds=2, warm_points=[])
    first, second = _members(searcher.suggest("t0")), _members(searcher.suggest("t1"))

    def row(epoch: int, val: float) -> dict:
        return {"epoch": epoch, "val_acc": val, "test_acc": val, "epoch_time_s": 0.5}

    searcher.on_trial_complete("t0", {"epoch": 1, "members": [row(1, 0.3)]})  # stopped at the first rung
    stopped = searcher.ledger.ended[first[0].key]
    assert stopped.status == "early-stopped" and [h["epoch"] for h in stopped.history] == [1]
    assert stopped.train_time_s == 0.5 and stopped.best_val_acc == 0.3
    # seed 1 resumed from its epoch-2 checkpoint: epochs 1 and 2 ride in its first report, then stopped at 4
    searcher.on_trial_result("t1", {"epoch": 3, "members": [{**row(3, 0.6), RESTORED_KEY: [row(1, 0.4), row(2, 0.7)]}]})
    searcher.on_trial_complete("t1", {"epoch": 4, "members": [row(4, 0.5)]})
    resumed = searcher.ledger.ended[second[0].key]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert all(RESTORED_KEY not in h for h in resumed.history)
    assert resumed.train_time_s == 2.0 and resumed.best_val_acc == 0.7 and resumed.epochs_reached == 4


def test_a_seed_stopped_past_the_epoch_its_arm_was_pruned_at_is_told_its_value_there(tmp_path):
    """Seed 0 pruned at epoch 1 (val 0.3); seed 1 was ahead and is stopped at epoch 2: its epochs
    reported on the way are its history, so Optuna hears both seeds at epoch 1, (0.3 + 0.7) / 2."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), search_seeds=2, warm_points=[])
    first, second = _members(searcher.suggest("t0")), _members(searcher.suggest("t1"))
    assert first[0].number == second[0].number == 0
    for epoch, val in ((1, 0.7), (2, 0.8)):
        searcher.on_trial_result("t1", {"epoch": epoch, "members": [{"epoch": epoch, "val_acc": val}]})
    searcher.on_trial_result("t0", {"epoch": 1, "members": [{"epoch": 1, "val_acc": 0.3}]})
    searcher.on_trial_complete("t0", {"epoch": 1, "members": [{"epoch": 1, "val_acc": 0.3}]})
    searcher.on_trial_complete("t1", {"epoch": 2, "members": [{"epoch": 2, "val_acc": 0.8}]})
    stopped = searcher.ledger.ended[second[0].key]
    assert stopped.status == "early-stopped" and [h["val_acc"] for h in stopped.history] == [0.7, 0.8]
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {1: pytest.approx(0.5)}
    # A trial Tune retried from an earlier checkpoint reports epochs again: the latest report of each
    third = _members(searcher.suggest("t2"))
    for epoch, val in ((1, 0.1), (2, 0.2), (1, 0.15), (2, 0.25), (3, 0.35)):
        searcher.on_trial_result("t2", {"epoch": epoch, "members": [{"epoch": epoch, "val_acc": val}]})
    searcher.on_trial_complete("t2", None, error=True)
    assert [h["val_acc"] for h in searcher.ledger.ended[third[0].key].history] == [0.15, 0.25, 0.35]


def test_optuna_busy_at_a_tell_loses_no_end_and_is_told_later(tmp_path, capsys):
    """Another process holds the shared optuna.db past the wait as a population ends: every member's
    end is still in the ledger (so the search can finish), and Optuna hears of each at the next
    completion, instead of the search waiting for ever on ends that were never written."""
    import sqlite3

    searcher = StagedSearcher(
        setting=SETTING, ledger=Ledger(tmp_path / "l.jsonl"), study_name="t", optuna_study="s",
        optuna_storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}",
                                                  engine_kwargs={"connect_args": {"timeout": 0.2}}),
        sampler=optuna.samplers.RandomSampler(seed=0), baselines={"cce": BASELINES["cce"]}, top_k=1,
        population_size=2, num_samples=3, seeds=[0, 1], space=get_space("decoupled"), warm_points=[])
    first, second = _members(searcher.suggest("p0")), _members(searcher.suggest("p1"))
    assert [s.number for s in first + second] == [0, 1, 2]
    holder = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        searcher.on_trial_complete("p0", population_report([_outcome(0.9), _outcome(0.8)]))
    finally:
        holder.close()
    assert {s.key for s in first} <= set(searcher.ledger.ended)
    assert "Optuna could not be told how" in capsys.readouterr().err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["RUNNING"] * 3
    searcher.on_trial_complete("p1", population_report([_outcome(0.7)]))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.9), ("COMPLETE", 0.8), ("COMPLETE", 0.7)]


def test_a_member_that_ended_keeps_its_result_when_its_population_then_fails(tmp_path):
    """Members trained one at a time: the first's final report comes once, in the report after it
    ended; the population then fails for good. The first is finished, the second errored."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=2, num_samples=2, warm_points=[])
    first, second = _members(searcher.suggest("p0"))
    done = _outcome(0.9)
    searcher.on_trial_result("p0", {"epoch": 1, "members": [{"epoch": 1, "val_acc": 0.5}, None]})
    searcher.on_trial_result("p0", {"epoch": 1, "members": [done.to_report(), {"epoch": 1, "val_acc": 0.3}]})
    # in the ledger at once (it was kept in memory until the population's end: a driver killed before
    # that trained it again), and told to Optuna
    assert _same(Ledger(tmp_path / "l.jsonl").ended[first.key], done)
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials][:1] == ["COMPLETE"]
    searcher.on_trial_result("p0", {"epoch": 1, "members": [done.to_report(), {"epoch": 1, "val_acc": 0.3}]})
    searcher.on_trial_result("p0", {"epoch": 2, "members": [None, {"epoch": 2, "val_acc": 0.4}]})
    searcher.on_trial_complete("p0", None, error=True)
    assert _same(searcher.ledger.ended[first.key], done)
    assert searcher.ledger.ended[second.key].status == "errored"
    assert searcher.ledger.ended[second.key].epochs_reached == 2


def test_searcher_hands_out_populations_and_tells_each_member(tmp_path):
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=2)
    first, second = searcher.suggest("p0"), searcher.suggest("p1")
    assert [s.number for s in _members(first)] == [0, 1] and [s.number for s in _members(second)] == [2]
    baseline = _members(searcher.suggest("p2"))
    assert [(s.arm, s.seed) for s in baseline] == [("cce", 0), ("cce", 1)] and first["group"] == _members(first)[0].key
    searcher.on_trial_complete("p0", population_report([_outcome(0.9), _outcome(0.7, "diverged")]))
    searcher.on_trial_complete("p1", {"epoch": 2, "members": [{"epoch": 2, "val_acc": 0.5}]}, error=True)
    assert len(searcher.ledger.ended) == 3
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert [t.user_attrs["status"] for t in trials] == ["finished", "diverged", "errored"]
    (confirm,) = [_members(searcher.suggest("p3"))]  # seed 0: the search trial's run (reused)
    assert [(s.arm, s.seed, s.overrides) for s in confirm] == [("dm-1", 1, _members(first)[0].overrides)]
    assert searcher.ledger.ended[f"{SETTING}/dm-1/seed0"].reused_from == _members(first)[0].key


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_study_is_readable_by_ray_mlflow_and_optuna_tools(tmp_path):
    """`dm-tune search`'s default study (at 3 epochs: the same trials, a fraction of the training),
    then each store read by its own library's tools."""
    import ray
    from ray import tune

    from dm_tune.trainables import dm_trainable

    ws = tmp_path / "ws"
    proc = subprocess.run([DM_TUNE, "search", "--workspace", str(ws), "--epochs", "3", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr
    n_trials = 30 * 2 + (3 + 8) * 3  # 30 DM arms on 2 search seeds, then 3 arms and 8 baselines on 3 seeds
    n_trained = n_trials - 3 * 2  # a confirmed arm's trials on the search seeds are its search trials

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("default").experiment_id], max_results=1000)
    assert Counter(r.info.status for r in runs) == {"FINISHED": n_trials + 1}  # no run left RUNNING
    assert Counter(r.data.tags["dmtune.role"] for r in runs) == {"trial": n_trials, "setting": 1}
    gce = next(r for r in runs if r.data.tags.get("dmtune.baseline") == "gce")
    sl = next(r for r in runs if r.data.tags.get("dmtune.baseline") == "sl")
    assert float(gce.data.params["gce_q"]) == 0.7 and "lam" not in gce.data.params
    assert {"sl_mu", "sl_nu"} <= set(sl.data.params) and "gce_q" not in sl.data.params

    # Ray's view: one row per Ray trial (a population), each member's final metrics in it.
    (experiment,) = (ws / "ray" / "default").glob("*/run-*")
    df = tune.ExperimentAnalysis(str(experiment)).dataframe()
    members = [m for population in df["members"] for m in population]
    assert len(members) == n_trained and df["population_size"].sum() == n_trained
    reused = [r for r in runs if r.data.tags.get("dmtune.reused_from")]
    assert Counter((r.data.tags["dmtune.stage"], r.data.params["seed"]) for r in reused) == {("confirm", "0"): 3,
                                                                                         ("confirm", "1"): 3}
    assert all(math.isfinite(m["final_val_acc"]) and math.isfinite(m["final_test_acc"]) for m in members)
    assert {m["status"] for m in members} == {"finished"}

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        results = tune.Tuner.restore(str(experiment), trainable=dm_trainable).get_results()
    finally:
        ray.shutdown()
    assert len(results) == len(df) and results.num_errors == 0
    assert sum(len(r.metrics["members"]) for r in results) == n_trained
    assert all(math.isfinite(m["final_test_acc"]) for r in results for m in r.metrics["members"])

    storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert Counter(t.state for t in trials) == {optuna.trial.TrialState.COMPLETE: 30}


def test_sl_baseline_takes_the_authors_pair_for_the_dataset_unless_the_study_sets_it():
    from dm_tune.search import Study
    from dm_tune.search._run import _baselines
    from dm_tune.search._study import Setting

    cifar100 = Setting("cifar100", "symmetric", 0.4, "none", 1.0, None)
    on_disk = {"settings": {"dataset": ["cifar100"]}, "training": {"data_root": "/x"}}
    study = Study.from_dict({**on_disk, "baselines": ["cce", "sl"]})
    assert _baselines(study, cifar100)["sl"] == {"method": "sl", "sl_mu": 6.0, "sl_nu": 0.1, "class_weighting": "none"}
    assert _baselines(study, cifar100)["cce"] == {"method": "cce", "class_weighting": "none"}
    own = Study.from_dict({**on_disk, "baselines": ["sl"], "training": {"data_root": "/x", "sl_mu": 1.0, "sl_nu": 1.0}})
    assert _baselines(own, cifar100)["sl"] == {"method": "sl", "class_weighting": "none"}  # (the study's pair)
    # GCE likewise: the baseline's q 0.7 overrode the study's gce_q
    assert _baselines(Study.from_dict({**on_disk, "baselines": ["gce"]}), cifar100)["gce"] == \
        {"method": "gce", "gce_q": 0.7, "class_weighting": "none"}
    assert _baselines(Study.from_dict({**on_disk, "baselines": ["gce"], "training": {"data_root": "/x", "gce_q": 0.3}}),
                      cifar100)["gce"] == {"method": "gce", "class_weighting": "none"}
    # the study's class weighting is its DM arms': the baselines keep their own (plain CCE stayed
    # "cce" in every report while it trained with inverse weights)
    weighted = Study.from_dict({**on_disk, "baselines": ["cce", "cce-cb"],
                                "training": {"data_root": "/x", "class_weighting": "inverse"}})
    assert {b: o["class_weighting"] for b, o in _baselines(weighted, cifar100).items()} == \
        {"cce": "none", "cce-cb": "effective-number"}


@pytest.mark.parametrize("training, where", [
    ({"gce_q": 0.3}, "the gce baseline"),
    ({"sl_nu": 2.0}, "the sl baseline"),
    ({"class_weighting_beta": 0.99}, "class weighting effective-number"),
    ({"data_root": "/data"}, "the datasets read from disk"),
    ({"num_workers": 4}, r"the datasets read from disk a batch at a time \(clothing1m, imagefolder, mars; the others"
                         r" are held in memory\)"),
])
def test_a_training_field_no_trial_uses_is_refused(training, where):
    """It was silently ignored (a digits search with --data-root, gce_q without a gce baseline)."""
    from dm_tune._validate import ConfigError
    from dm_tune.search import Study

    with pytest.raises(ConfigError, match=f"training.{next(iter(training))}: .* only applies to {where}; no trial"):
        Study.from_dict({"baselines": ["cce"], "training": training})
    used = {"gce_q": ["gce"], "sl_nu": ["sl"], "class_weighting_beta": ["cce-cb"]}.get(next(iter(training)))
    if used:  # with the baseline that uses it: accepted
        Study.from_dict({"baselines": used, "training": training})


def test_num_workers_is_refused_for_data_held_in_memory_after_loading():
    """CIFAR, IMDB and features files are read from disk but held in memory: num_workers was accepted
    for them, and changed nothing."""
    from dm_tune._validate import ConfigError
    from dm_tune.search import Study

    training = {"num_workers": 4, "data_root": "/data"}
    for held in ("cifar10", "imdb", "features"):
        with pytest.raises(ConfigError, match="training.num_workers: 4 .* only applies to the datasets read"):
            Study.from_dict({"baselines": ["cce"], "settings": {"dataset": [held]}, "training": training})
    Study.from_dict({"baselines": ["cce"], "settings": {"dataset": ["cifar10", "imagefolder"]}, "training": training})


def test_a_trial_asked_but_never_handed_out_is_handed_out_on_resume(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    searcher = _searcher(tmp_path, ledger, num_samples=4, search_seeds=2)
    searcher.suggest("t0")
    orphan = searcher._ask()  # the driver dies after asking Optuna, before the ledger records the trial
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = lambda: optuna.load_study(study_name="s", storage=url)  # noqa: E731
    study().ask()  # ... or a moment after asking, before the trial was tagged
    half = study().ask({"psi": optuna.distributions.FloatDistribution(0.01, 0.99)})  # ... or halfway through its point
    half.set_user_attr("dmtune.study", "t")
    assert [t.state.name for t in study().trials] == ["RUNNING"] * 4
    resumed = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=4, search_seeds=2)
    again = [_members(resumed.suggest(f"r{i}"))[0] for i in range(5)]
    # The unfinished trial and its missing seed, then the orphan as asked (both seeds), then a new arm.
    assert [(s.number, s.seed) for s in again] == [(0, 0), (0, 1), (1, 0), (1, 1), (4, 0)]
    assert again[2:4] == orphan
    assert [t.state.name for t in study().trials] == ["RUNNING", "RUNNING", "FAIL", "FAIL", "RUNNING"]
    assert [t.user_attrs["status"] for t in study().trials[2:4]] == ["interrupted"] * 2
    # A trial of another dm-tune study sharing the Optuna study is left alone.
    other = study().ask()
    other.set_user_attr("dmtune.study", "someone-else")
    _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=4, search_seeds=2).suggest("x")
    assert study().trials[other.number].state.name == "RUNNING"


def test_search_arms_train_on_every_search_seed_and_score_their_mean(tmp_path):
    """search_seeds 2: each arm is two trials (seeds 0 and 1); Optuna hears the mean once both end;
    an interruption between the two seeds hands the missing one out again, never a new arm."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=2, seeds=[0, 1, 2], search_seeds=2)
    a0, a1 = _members(searcher.suggest("t0")), _members(searcher.suggest("t1"))
    assert [(s.number, s.seed, s.replica) for s in a0 + a1] == [(0, 0, 0), (0, 1, 1)]
    assert a0[0].key == f"{SETTING}/search/0" and a1[0].key == f"{SETTING}/search/0/seed1"
    assert a0[0].overrides == a1[0].overrides and a0[0].knobs == {"psi": 0.5, "rho": 4.0}
    b0 = _members(searcher.suggest("t2"))  # the second arm's first seed
    assert [(s.number, s.seed) for s in b0] == [(1, 0)]
    study = lambda: optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")  # noqa: E731
    searcher.on_trial_complete("t0", population_report([_outcome(0.9)]))
    assert study().trials[0].state.name == "RUNNING"  # one seed of two: Optuna waits
    searcher.on_trial_complete("t1", population_report([_outcome(0.7)]))
    assert study().trials[0].value == pytest.approx(0.8)
    assert study().trials[0].user_attrs["seed_values"] == pytest.approx([0.9, 0.7])

    # The driver dies with arm 1's second seed never handed out: a resume hands out both the
    # unfinished first seed and the missing second one, and asks Optuna for nothing new.
    resumed = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=2, seeds=[0, 1, 2], search_seeds=2)
    again = [_members(resumed.suggest(f"r{i}"))[0] for i in range(2)]
    assert [(s.number, s.seed) for s in again] == [(1, 0), (1, 1)]
    assert len(study().trials) == 2
    resumed.on_trial_complete("r0", population_report([_outcome(0.95)]))
    resumed.on_trial_complete("r1", population_report([_outcome(0.55, "diverged")]))
    assert study().trials[1].user_attrs["status"] == "diverged"
    baselines = [_members(resumed.suggest(f"b{i}"))[0] for i in range(3)]
    assert [(s.arm, s.seed) for s in baselines] == [("cce", 0), ("cce", 1), ("cce", 2)]
    for i in range(3):
        resumed.on_trial_complete(f"b{i}", population_report([_outcome(0.5)]))
    # Arm 0 (mean 0.8) is confirmed, not arm 1 (a diverged seed), though its first seed scored 0.95:
    # on seeds 0 and 1 its confirm trials are its search trials there, seed 2 trains.
    confirm = [_members(resumed.suggest(f"c{i}"))[0] for i in range(1)]
    assert [(s.arm, s.seed) for s in confirm] == [("dm-1", 2)] and confirm[0].overrides == a0[0].overrides
    assert resumed.suggest("c1") == resumed.FINISHED
    ended = resumed.ledger.ended
    assert [ended[f"{SETTING}/dm-1/seed{seed}"].reused_from for seed in (0, 1)] == [a0[0].key, a1[0].key]
    assert [ended[f"{SETTING}/dm-1/seed{seed}"].final_val_acc for seed in (0, 1)] == [0.9, 0.7]


def test_search_seed_replicas_fill_populations(tmp_path):
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=4, num_samples=3,
                         seeds=[0, 1], search_seeds=2)
    first, second = _members(searcher.suggest("p0")), _members(searcher.suggest("p1"))
    assert [(s.number, s.seed) for s in first] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(s.number, s.seed) for s in second] == [(2, 0), (2, 1)]


@pytest.mark.parametrize("slots, sizes", [(1, [9]), (2, [5, 4]), (4, [3, 3, 3]), (16, [1] * 9)])
def test_a_fixed_stage_is_split_over_the_slots_that_run_at_once(tmp_path, slots, sizes):
    # 3 baselines on 3 seeds: at least one population per slot, of equal sizes, at most 16 each.
    baselines = {b: BASELINES[b] for b in ("cce", "gce", "mae")}
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=16, num_samples=1,
                         seeds=[0, 1, 2], slots=slots)
    searcher.baselines = {name: dict(o) for name, o in baselines.items()}
    assert [s.stage for s in _members(searcher.suggest("search"))] == ["search"]
    populations = [_members(searcher.suggest(f"b{i}")) for i in range(len(sizes))]
    assert [len(p) for p in populations] == sizes
    assert sorted((s.arm, s.seed) for p in populations for s in p) == sorted(
        (b, seed) for b in baselines for seed in (0, 1, 2))
    assert searcher.suggest("next") is None  # the confirmed arm waits for the search


def test_the_confirm_stage_trains_only_the_seeds_the_search_did_not(tmp_path):
    """2 arms confirmed on 3 seeds, 2 of them search seeds: 4 confirm trials are the arms' finished
    search trials; the other 2 train, split over the 2 slots. A resume re-records nothing."""
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=16, num_samples=2,
                         seeds=[0, 1, 2], search_seeds=2, slots=2)
    searcher.baselines, searcher.top_k = {}, 2
    search = _members(searcher.suggest("s"))
    assert [(s.number, s.seed) for s in search] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    searcher.on_trial_complete("s", population_report([_outcome(v) for v in (0.9, 0.8, 0.7, 0.75)]))
    confirm = [_members(searcher.suggest(f"c{i}")) for i in range(2)]
    assert [[(s.arm, s.seed) for s in p] for p in confirm] == [[("dm-1", 2)], [("dm-2", 2)]]
    assert confirm[0][0].overrides == search[0].overrides and confirm[1][0].overrides == search[2].overrides
    assert searcher.suggest("c2") == searcher.FINISHED
    reused = {k: o for k, o in searcher.ledger.ended.items() if o.reused_from}
    assert {k: (o.reused_from, o.final_val_acc) for k, o in reused.items()} == {
        f"{SETTING}/dm-1/seed0": (search[0].key, 0.9), f"{SETTING}/dm-1/seed1": (search[1].key, 0.8),
        f"{SETTING}/dm-2/seed0": (search[2].key, 0.7), f"{SETTING}/dm-2/seed1": (search[3].key, 0.75)}
    lines = len((tmp_path / "l.jsonl").read_text().splitlines())
    resumed = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), population_size=16, num_samples=2,
                        seeds=[0, 1, 2], search_seeds=2, slots=2)
    resumed.baselines, resumed.top_k = {}, 2
    again = [_members(resumed.suggest(f"r{i}")) for i in range(2)]  # the two unfinished, as they were
    assert [[s.key for s in p] for p in again] == [[s.key for s in p] for p in confirm]
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == lines


def test_class_weighting_is_a_search_dimension_of_dm_arms(tmp_path):
    space = {**get_space("decoupled"), "class_weighting": {"type": "categorical", "choices": ["none", "inverse"]}}
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), space=space, num_samples=6,
                         warm_points=[{"psi": 0.5, "rho": 4.0, "class_weighting": "none"}])
    specs = [_members(searcher.suggest(f"t{i}"))[0] for i in range(6)]
    assert {s.overrides["class_weighting"] for s in specs} == {"none", "inverse"}
    assert all(s.overrides["method"] == "dm" and isinstance(s.overrides["lam"], float) for s in specs)
    assert TrainConfig.from_dict({**specs[0].overrides}).class_weighting == specs[0].overrides["class_weighting"]


def test_a_guidelines_warm_start_searches_inside_the_recommended_region():
    from types import SimpleNamespace

    from dm_tune.search._run import guided_space

    space = get_space("decoupled")
    rec = SimpleNamespace(psi=0.5, rho=3.0, class_weighting="none",
                          region={"psi": [0.4, 0.6], "rho": [2.0, 4.5], "plausible": {"psi": [0.3, 0.7], "rho": [1.5, 6.0]}})
    narrowed, warm = guided_space(space, rec)
    assert (narrowed["psi"]["low"], narrowed["psi"]["high"]) == (0.3, 0.7)
    assert (narrowed["rho"]["low"], narrowed["rho"]["high"], narrowed["rho"]["log"]) == (1.5, 6.0, True)
    assert warm == [{"psi": 0.5, "rho": 3.0}] and space["psi"]["low"] == 0.0  # the named space is untouched
    # A degenerate region widens to a tenth of the space around the point; bounds stay inside the space.
    rec = SimpleNamespace(psi=0.75, rho=12.0, class_weighting="inverse",
                          region={"psi": [0.75, 0.75], "rho": [12.0, 12.0]})
    wide = {**space, "class_weighting": {"type": "categorical", "choices": ["none", "inverse"]}}
    narrowed, warm = guided_space(wide, rec)
    assert narrowed["psi"]["high"] == 0.75 and narrowed["psi"]["low"] == pytest.approx(0.75 - 0.0375)
    assert narrowed["rho"]["high"] == 12.0 and narrowed["rho"]["low"] < 12.0
    assert warm == [{"psi": 0.75, "rho": 12.0, "class_weighting": "inverse"}]


def test_search_populations_hold_whole_arms_on_their_search_seeds():
    from dm_tune.search._run import _search_population_size
    from dm_tune.search._study import Study

    default = Study.from_dict({})  # 30 arms, 2 at a time, 2 search seeds: 3 arms a population, 5 rounds
    assert _search_population_size(default, 16) == 6
    assert _search_population_size(Study.from_dict({"seeds": [0]}), 16) == 3
    assert _search_population_size(default, 4) == 4  # never above the population size
    assert _search_population_size(default, 5) == 4  # whole arms: 5 would split the third arm's seeds
    assert _search_population_size(default, 1) == 1  # (below one arm's seeds: one trial a population)
    assert _search_population_size(Study.from_dict({"search": {"num_samples": 4}}), 16) == 2  # one arm
    assert _search_population_size(Study.from_dict({"scheduler": {"kind": "asha"}}), 16) == 1


def test_start_up_arms_are_asked_together_and_the_sampler_waits_for_them(tmp_path):
    """The sampler's start-up arms (drawn whatever the results) fill populations of their own size;
    no arm after them is asked until every start-up arm has finished (the sampler counts finished
    trials: asked earlier, it would draw at random too). Meanwhile the baselines take the slots; an
    interruption during the wait resumes the same way."""
    options = {"population_size": 16, "num_samples": 6, "seeds": [0, 1, 2], "search_seeds": 2, "slots": 2,
               "startup_arms": 4, "startup_population_size": 4, "search_population_size": 2}
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), **options)
    study = lambda: optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")  # noqa: E731
    first, second = _members(searcher.suggest("p0")), _members(searcher.suggest("p1"))
    assert [(s.number, s.seed) for s in first] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(s.number, s.seed) for s in second] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    baselines = [_members(searcher.suggest(f"b{i}")) for i in range(2)]
    assert sorted((s.arm, s.seed) for b in baselines for s in b) == [("cce", 0), ("cce", 1), ("cce", 2)]
    assert searcher.suggest("w0") is None and len(study().trials) == 4  # waiting, nothing asked
    searcher.on_trial_complete("p0", population_report([_outcome(0.9)] * 4))
    for i, b in enumerate(baselines):
        searcher.on_trial_complete(f"b{i}", population_report([_outcome(0.5)] * len(b)))
    assert searcher.suggest("w1") is None and len(study().trials) == 4  # two of four finished

    # The driver dies while it waits: the resumed searcher trains the unfinished start-up
    # population again, then waits for it as well.
    resumed = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), **options)
    assert [s.key for s in _members(resumed.suggest("r0"))] == [s.key for s in second]
    assert resumed.suggest("r1") is None and len(study().trials) == 4
    resumed.on_trial_complete("r0", population_report([_outcome(0.8)] * 4))
    after = _members(resumed.suggest("r2"))  # every start-up arm finished: populations of the search's size
    assert [(s.number, s.seed) for s in after] == [(4, 0), (4, 1)]
    assert [t.state.name for t in study().trials] == ["COMPLETE"] * 4 + ["RUNNING"]


def test_start_up_populations_split_the_samplers_start_up_over_the_slots():
    from dm_tune.search._run import _startup_population_size
    from dm_tune.search._study import Study
    from dm_tune.search_spaces import startup_trials

    assert startup_trials("tpe", 30) == 10 and startup_trials("gp", 12) == 4 and startup_trials("cmaes", 30) == 5
    assert startup_trials("random", 30) == 0 and startup_trials("grid", 32) == 0
    default = Study.from_dict({})  # TPE's 10 start-up arms, 2 at a time, 2 search seeds: 5 arms a population
    assert _startup_population_size(default, 16, 10) == 10
    assert _startup_population_size(default, 4, 10) == 4  # never above the population size
    assert _startup_population_size(default, 3, 10) == 2  # whole arms
    assert _startup_population_size(Study.from_dict({"scheduler": {"kind": "asha"}}), 16, 10) == 1


def test_a_rung_that_prunes_an_arm_on_one_seed_stops_its_other_seeds_there():
    """An arm searched on two seeds is two Ray trials; once ASHA prunes it on one, it is PRUNED in
    Optuna whatever the other does, so the other is stopped at the same epoch, not trained on. An
    arm that ran its full budget on one seed prunes nothing; baselines are never stopped."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from dm_tune.search._scheduler import asha

    def trial(name: str, arm: int, stage: str = "search"):
        return SimpleNamespace(trial_id=name, config={"specs": [{"stage": stage, "number": arm}]})

    scheduler = asha("val_acc", max_t=8, grace_period=1, reduction_factor=2)
    good, good2, poor, poor2, cce = (trial("good", 0), trial("good2", 0), trial("poor", 1), trial("poor2", 1),
                                     trial("cce", -1, stage="baseline"))
    for t in (good, good2, poor, poor2, cce):
        scheduler.on_trial_add(None, t)

    def result(t, epoch: int, acc: float) -> str:
        return scheduler.on_trial_result(None, t, {"epoch": epoch, "val_acc": acc})

    assert result(good, 1, 0.9) == TrialScheduler.CONTINUE
    assert result(poor, 1, 0.1) == TrialScheduler.STOP  # the rung prunes arm 1 at epoch 1 on this seed
    assert result(poor2, 1, 0.95) == TrialScheduler.STOP  # its other seed stops there, however well it does
    assert result(cce, 1, 0.0) == TrialScheduler.CONTINUE
    for epoch in range(1, 9):
        decision = result(good, epoch, 0.9 + epoch / 100)
    assert decision == TrialScheduler.STOP  # the end of the budget, not a prune
    assert result(good2, 1, 0.95) == TrialScheduler.CONTINUE  # so its other seed trains on


def test_an_arms_seeds_meet_other_arms_seeds_at_a_rung_not_each_other():
    """One set of rungs for every seed: the first arm to reach a rung on both its seeds was stopped
    by its own better seed (0.904 against 0.916), and a search could prune every arm. Each search
    seed (replica) now has its own rungs; a poor arm is still stopped by the others' same seed."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from dm_tune.search._scheduler import asha

    def trial(name: str, arm: int, replica: int):
        return SimpleNamespace(trial_id=name, config={"specs": [{"stage": "search", "number": arm,
                                                                 "replica": replica}]})

    scheduler = asha("val_acc", max_t=8, grace_period=1, reduction_factor=2)
    seeds = [trial(f"a0s{r}", 0, r) for r in (0, 1)] + [trial(f"a1s{r}", 1, r) for r in (0, 1)]
    for t in seeds:
        scheduler.on_trial_add(None, t)

    def result(t, epoch: int, acc: float) -> str:
        return scheduler.on_trial_result(None, t, {"epoch": epoch, "val_acc": acc})

    assert result(seeds[1], 1, 0.916) == TrialScheduler.CONTINUE
    assert result(seeds[0], 1, 0.904) == TrialScheduler.CONTINUE  # was STOP: below its own other seed
    assert result(seeds[2], 1, 0.5) == TrialScheduler.STOP  # arm 1's first seed, below arm 0's first
    assert result(seeds[3], 1, 0.99) == TrialScheduler.STOP  # its arm is pruned
    assert 1 in scheduler._pruned and 0 not in scheduler._pruned
    assert "seed 1:" in scheduler.debug_string() and "seed 2:" in scheduler.debug_string()


def test_a_resumed_search_rebuilds_ashas_rungs_from_the_ledger(tmp_path):
    """A resumed ASHA search started with empty rungs: the first trials to reach each rung after the
    resume were compared with nobody, so an arm the uninterrupted search would have stopped trained
    its whole budget. The ended search trials' histories in the ledger are told to the new
    scheduler first: it stops what the uninterrupted one stops, and a pruned arm stays pruned."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from dm_tune.search._run import _scheduler
    from dm_tune.search._study import Study

    def trial(name: str, arm: int, replica: int = 0):
        return SimpleNamespace(trial_id=name, config={"specs": [{"stage": "search", "number": arm,
                                                                 "replica": replica}]})

    study = Study.from_dict({"scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2}})
    ledger = Ledger(tmp_path / "ledger.jsonl")
    uninterrupted = _scheduler(study, 8, Ledger(tmp_path / "other.jsonl"))
    curves = {0: [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9, 0.9], 1: [0.6, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9],
              2: [0.2, 0.3]}  # arm 2: stopped at epoch 1 on seed 0 by the rung arms 0 and 1 set
    def live(t, results: list[dict]) -> str:
        """As Tune tells a trial's results; a stopped one's last result again as it completes."""
        for result in results:
            if uninterrupted.on_trial_result(None, t, result) == TrialScheduler.STOP:
                uninterrupted.on_trial_complete(None, t, result)
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    for arm, curve in curves.items():
        uninterrupted.on_trial_add(None, trial(f"a{arm}", arm))
        for epoch, acc in enumerate(curve[:7], 1):
            if live(trial(f"a{arm}", arm), [{"epoch": epoch, "val_acc": acc}]) == TrialScheduler.STOP:
                break
        spec = _search_spec(arm)
        stopped = epoch < len(curve)
        ledger.start([spec])
        ledger.end(spec, TrialOutcome(status="early-stopped" if stopped else "finished", epochs_reached=epoch,
                                      final_val_acc=acc, history=tuple({"epoch": e, "val_acc": a, "train_loss": 1.0}
                                                                       for e, a in enumerate(curve[:epoch], 1))))
    assert epoch == 1 and stopped  # arm 2 was pruned at the first rung
    # arm 4 diverged in epoch 1, which the rung stopped it at: pruned live, "diverged" (and stopped)
    # in the ledger; arm 5 diverged in epoch 3 and ended by itself: not pruned, live or resumed
    uninterrupted.on_trial_add(None, trial("a4", 4))
    assert live(trial("a4", 4), [{"epoch": 1, "val_acc": 0.1}]) == TrialScheduler.STOP
    stopped = TrialOutcome.from_report({"epoch": 1, "val_acc": 0.1, "diverged": 1.0}, False,
                                       [{"epoch": 1, "val_acc": 0.1, "diverged": 1.0}])
    assert stopped.status == "diverged" and stopped.stopped
    assert TrialOutcome.from_dict({"status": "diverged", "epochs_reached": 1}).stopped is None  # an earlier ledger
    uninterrupted.on_trial_add(None, trial("a5", 5))
    assert live(trial("a5", 5), [{"epoch": e, "val_acc": v} for e, v in ((1, 0.95), (2, 0.96), (3, 0.1))]) \
        == TrialScheduler.CONTINUE
    # arm 2's seed 1, stopped at once by its arm's pruning: Tune still tells its result as it completes,
    # and the rung records it (0.95)
    uninterrupted.on_trial_add(None, trial("a2s1", 2, 1))
    assert live(trial("a2s1", 2, 1), [{"epoch": 1, "val_acc": 0.95}]) == TrialScheduler.STOP
    pruned = TrialOutcome.from_report({"epoch": 1, "val_acc": 0.95}, False, [{"epoch": 1, "val_acc": 0.95}])
    for spec, outcome in ((_search_spec(4), stopped), (dataclasses.replace(_search_spec(2), seed=1, replica=1), pruned),
                          (_search_spec(5), TrialOutcome(status="diverged", epochs_reached=3, stopped=False,
                                                         history=tuple({"epoch": e, "val_acc": v} for e, v in
                                                                       ((1, 0.95), (2, 0.96), (3, 0.1)))))):
        ledger.start([spec])
        ledger.end(spec, outcome)

    resumed, empty = _scheduler(study, 8, Ledger(ledger.path)), _scheduler(study, 8, Ledger(tmp_path / "none.jsonl"))
    for scheduler in (uninterrupted, resumed, empty):
        scheduler.on_trial_add(None, trial("poor", 3))
        scheduler.on_trial_add(None, trial("seed1", 2, 1))
    poor, other_seed = {"epoch": 1, "val_acc": 0.3}, {"epoch": 1, "val_acc": 0.95}
    assert uninterrupted.on_trial_result(None, trial("poor", 3), poor) == TrialScheduler.STOP
    assert resumed.on_trial_result(None, trial("poor", 3), poor) == TrialScheduler.STOP
    assert empty.on_trial_result(None, trial("poor", 3), poor) == TrialScheduler.CONTINUE  # what the resume did
    # Arm 2's other seed is stopped at the epoch a rung pruned the arm, however well it does.
    assert resumed.on_trial_result(None, trial("seed1", 2, 1), other_seed) == TrialScheduler.STOP
    assert empty.on_trial_result(None, trial("seed1", 2, 1), other_seed) == TrialScheduler.CONTINUE
    for scheduler in (uninterrupted, resumed):  # and arm 4's, pruned by its diverged seed; not arm 5's
        scheduler.on_trial_add(None, trial("a4-seed1", 4, 1))
        assert scheduler.on_trial_result(None, trial("a4-seed1", 4, 1), other_seed) == TrialScheduler.STOP
        assert 5 not in scheduler._pruned
    # The rungs, each search seed's, hold the same values as the uninterrupted scheduler's.
    def rungs(scheduler) -> dict:
        return {r: inner.debug_string().splitlines()[1:] for r, inner in scheduler._inners.items()}

    assert rungs(resumed) == rungs(uninterrupted) and set(rungs(resumed)) == {0, 1}


def test_a_trial_resumed_from_a_checkpoint_joins_the_rungs_it_passed_before():
    """Resumed under a new Ray trial, a search trial's first report is of the epoch after its
    checkpoint: the rungs it had passed before lost its values. They ride in that report
    (RESTORED_KEY) and are told to the rungs first, as if it had never stopped."""
    from types import SimpleNamespace

    from dm_tune.search._scheduler import asha
    from dm_tune.search._trial import RESTORED_KEY

    def trial(name: str):
        return SimpleNamespace(trial_id=name, config={"specs": [{"stage": "search", "number": 5}]})

    def member(epoch: int, acc: float, **more) -> dict:
        return {"epoch": epoch, "val_acc": acc, "members": [{"epoch": epoch, "val_acc": acc, **more}]}

    uninterrupted, resumed = (asha("val_acc", max_t=8, grace_period=1, reduction_factor=2) for _ in range(2))
    uninterrupted.on_trial_add(None, trial("before"))
    for epoch, acc in ((1, 0.9), (2, 0.91), (3, 0.92)):
        uninterrupted.on_trial_result(None, trial("before"), member(epoch, acc))
    resumed.on_trial_add(None, trial("after"))
    resumed.on_trial_result(None, trial("after"), member(3, 0.92, **{RESTORED_KEY: [
        {"epoch": 1, "val_acc": 0.9}, {"epoch": 2, "val_acc": 0.91}]}))
    assert resumed.inner.debug_string().splitlines()[1:] == uninterrupted.inner.debug_string().splitlines()[1:]
    # resumed in its last epoch: no per-epoch report after the checkpoint (the budget's epoch reaches
    # Tune in the final report alone), so its every epoch is told from the final report's history
    for epoch, acc in ((4, 0.93), (5, 0.93), (6, 0.94), (7, 0.95)):
        uninterrupted.on_trial_result(None, trial("before"), member(epoch, acc))
    history = [{"epoch": e, "val_acc": a} for e, a in ((1, 0.9), (2, 0.91), (3, 0.92), (4, 0.93), (5, 0.93),
                                                        (6, 0.94), (7, 0.95), (8, 0.96))]
    late = asha("val_acc", max_t=8, grace_period=1, reduction_factor=2)
    late.on_trial_add(None, trial("late"))
    late.on_trial_complete(None, trial("late"), {"final": 1.0, "history": history})
    assert late.inner.debug_string().splitlines()[1:] == uninterrupted.inner.debug_string().splitlines()[1:]


@pytest.mark.parametrize("space", ["decoupled", "paper"])
def test_the_papers_points_start_a_search_with_extra_knobs_too(tmp_path, space):
    """Extra knobs (lr, weight decay) once emptied the warm start: the paper's three points come
    first whatever the study searches beside them, the extra knobs drawn by the sampler."""
    from dm_tune.search._run import _warm_points

    plain = _warm_points(get_space(space))
    searched = get_space(space, ("lr", "weight_decay"))
    points = _warm_points(searched)
    assert len(plain) == 3 and points == plain
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), space=searched, warm_points=points, num_samples=4)
    specs = [_members(searcher.suggest(f"t{i}"))[0] for i in range(4)]
    for spec, point in zip(specs, points):
        for name, value in point.items():
            assert spec.knobs[name] == pytest.approx(value), (name, spec.knobs)
        low, high = searched["lr"]["low"], searched["lr"]["high"]
        assert low <= spec.overrides["lr"] <= high and "weight_decay" in spec.overrides


def test_the_last_arm_of_a_grid_is_told_without_a_complaint(tmp_path, capsys):
    """Telling the last point of a grid made Optuna's grid sampler stop the study, which raises
    outside study.optimize: the searcher printed "Optuna could not be told" (and told it again)."""
    from dm_tune.search_spaces import make_sampler

    space = {"lam": {"type": "categorical", "choices": [0.0, 1.0]}, "beta": {"type": "categorical", "choices": [8.0]}}
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=2, seeds=[0], warm_points=[],
                         space=space, sampler=make_sampler("grid", space, 0, 2))
    for i in range(2):
        searcher.suggest(f"t{i}")
    for i in range(2):
        searcher.on_trial_complete(f"t{i}", population_report([_outcome(0.8)]))
    assert "could not be told" not in capsys.readouterr().err
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and not searcher._untold


def test_a_search_of_fewer_arms_than_warm_points_leaves_no_trial_waiting(tmp_path):
    """The paper's three suggested points were all enqueued in Optuna for a search of one arm: the
    two it never asked stayed WAITING in optuna.db for ever."""
    points = [{"psi": 0.5, "rho": 4.0}, {"psi": 0.3, "rho": 2.0}, {"psi": 0.7, "rho": 6.0}]
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=1, warm_points=points)
    (spec,) = _members(searcher.suggest("t0"))
    assert spec.knobs == points[0]
    searcher.on_trial_complete("t0", population_report([_outcome(0.8)]))
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]


def test_an_imbalanced_trial_records_its_realised_ratio():
    """A search run recorded the noise rate it realised, not the imbalance ratio (9.9 for 10 on
    digits), which only `dm-tune train --out` had."""
    from dm_tune import TrainConfig, prepare
    from dm_tune.train import train
    from trainables._dm import _outcome

    cfg = TrainConfig.from_dict({"dataset": "digits", "imbalance": "step", "imbalance_ratio": 10, "epochs": 1})
    out = _outcome(train(cfg, prepare(cfg)), "node")
    assert 9 < out.imbalance_ratio_realised <= 10
    assert out.to_report()["imbalance_ratio_realised"] == out.imbalance_ratio_realised  # a final metric in MLflow
    assert TrialOutcome.from_dict(json.loads(json.dumps(out.to_dict()))).imbalance_ratio_realised == \
        out.imbalance_ratio_realised  # the ledger's
    balanced = TrainConfig.from_dict({"dataset": "digits", "epochs": 1})
    assert math.isnan(_outcome(train(balanced, prepare(balanced)), "node").imbalance_ratio_realised)
    # and the test set's size (one example's worth of accuracy: the report's least spread)
    assert out.test_examples == 540 and out.to_report()["test_examples"] == 540
    assert TrialOutcome.from_dict(json.loads(json.dumps(out.to_dict()))).test_examples == 540


def test_a_resumed_arm_trains_its_remaining_seeds_as_its_first_seed_trained(tmp_path):
    """A study begun before baselines kept their own class weighting trained "cce" with the study's
    weighting; resumed, its remaining seeds got the new overrides, and one "cce" row pooled
    weighted and plain seeds. An arm's seeds take the overrides its first started seed had."""
    ledger = Ledger(tmp_path / "l.jsonl")
    old = {"method": "cce", "class_weighting": "inverse"}
    ledger.start([TrialSpec(SETTING, "confirm", 0, old, arm="cce", baseline="cce")])
    searcher = _searcher(tmp_path, Ledger(tmp_path / "l.jsonl"), num_samples=1, warm_points=[],
                         baselines={"cce": {"method": "cce", "class_weighting": "none"}})
    specs = [spec for i in range(3) for spec in _members(searcher.suggest(f"t{i}"))]
    assert sorted((s.arm, s.seed, s.overrides == old) for s in specs if s.stage == "confirm") == \
        [("cce", 0, True), ("cce", 1, True)]  # (seed 0 goes on as it began; seed 1 as seed 0 did)


@pytest.mark.parametrize("search, training, told", [
    ({}, {}, True),  # the recommendation weights effective-number; the DM arms train with none
    ({}, {"class_weighting": "effective-number"}, False),
    ({"class_weighting": ["none", "effective-number"]}, {}, False),  # searched: the warm point carries it
])
def test_a_warm_start_measured_with_another_class_weighting_is_told(tmp_path, search, training, told):
    """A guidelines file's region measured with class weighting searched arms trained without
    it, without a word."""
    from pathlib import Path

    from dm_tune.data import load_source
    from dm_tune.reports._schema import load_guidelines
    from dm_tune.search import Study
    from dm_tune.search._run import RunOptions, _context

    shipped = Path(__file__).resolve().parents[1] / "reports" / "default_guidelines.json"
    study = Study.from_dict({"settings": {"noise_rate": [0.3], "imbalance": ["longtail:10"]}, "training": training,
                             "search": {"warm_start": str(shipped), **search}})
    (setting,) = study.expand()
    ctx = _context(study, setting, RunOptions(workspace=tmp_path), "0", load_source(study.train_config(setting)),
                   load_guidelines(shipped))
    assert ctx.recommendation.class_weighting == "effective-number"
    note = ctx.warm_start_note()
    assert (note == "setting digits-symmetric0.3-longtail10-default: the guidelines recommend class weighting "
                    "effective-number with the region searched; the DM arms train with none (search.class_weighting: "
                    "[none, effective-number] searches both, training.class_weighting sets the arms')") if told \
        else note is None


def _own_trainable():
    """A user's trainable over dm_trainable (built here, so that Ray ships it by value)."""

    def trainable(config, base, runtime):
        from dm_tune.search_spaces import to_lam_beta
        from dm_tune.trainables import dm_trainable

        knobs = to_lam_beta(config)
        spec = {"setting": "mine", "stage": "search", "seed": 0,
                "overrides": {"method": "dm", "lam": knobs["lam"], "beta": knobs["beta"]}}
        dm_trainable({"specs": [spec]}, base, runtime)

    return trainable


@pytest.mark.timeout(300)
def test_dm_trainable_in_a_users_tuner_with_optuna_search_and_asha(tmp_path, ray_local):
    """A Tune metric crashed the fit: the last epoch reached Tune only in the final report, which
    had final_val_acc but no val_acc (Ray's strict metric check, then OptunaSearch's KeyError)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from dm_tune.search_spaces import define_by_run, get_space, make_sampler
    from dm_tune.trainables import TrialRuntime

    space = get_space("decoupled")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = OptunaSearch(space=define_by_run(space), sampler=make_sampler("tpe", space, seed=0, num_samples=3),
                            storage=storage, study_name="mine", metric="val_acc", mode="max")
    base = {"dataset": "digits", "noise": "symmetric", "noise_rate": 0.4, "epochs": 3, "device": "cpu"}
    results = tune.Tuner(
        tune.with_parameters(_own_trainable(), base=base, runtime=TrialRuntime()),
        tune_config=tune.TuneConfig(num_samples=3, search_alg=searcher, scheduler=ASHAScheduler(
            time_attr="epoch", metric="val_acc", mode="max", max_t=3, grace_period=1)),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="mine", verbose=0)).fit()
    assert results.num_errors == 0
    for r in results:  # the final report: the last epoch's metrics beside the outcome's
        if r.metrics.get("final"):
            assert r.metrics["val_acc"] == r.metrics["final_val_acc"] and r.metrics["epoch"] == 3
    trials = optuna.load_study(study_name="mine", storage=storage).trials
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    best = results.get_best_result(metric="val_acc", mode="max")
    assert best.metrics["val_acc"] == max(t.value for t in trials if t.value is not None)


@pytest.mark.parametrize("space", ["decoupled", "paper"])
def test_a_search_of_the_papers_setting_starts_at_the_papers_own_choice(space):
    """Clothing1M's study never trained the paper's DM (lam 1, beta 2) unless the sampler happened
    on it: the warm start was the three general suggestions on every dataset."""
    from dm_tune.search._run import _warm_points
    from dm_tune.search._study import Setting
    from dm_tune.search_spaces import to_lam_beta

    general = _warm_points(get_space(space))
    for dataset, noise, rate, best in [("clothing1m", "none", 0.0, (1.0, 2.0)),
                                       ("cifar100", "symmetric", 0.0, (0.0, 2.0)),
                                       ("cifar10", "symmetric", 0.6, (2.0, 12.0))]:
        points = _warm_points(get_space(space), Setting(dataset, noise, rate, "none", 1.0, None))
        assert points[1:] == general
        lam_beta = to_lam_beta(points[0])
        assert (lam_beta["lam"], lam_beta["beta"]) == pytest.approx(best)
    for noise in ("none", "pair"):  # the clean setting, whichever noise type names it (Study.expand)
        points = _warm_points(get_space(space), Setting("cifar100", noise, 0.0, "none", 1.0, None))
        assert to_lam_beta(points[0])["lam"] == 0.0 and to_lam_beta(points[0])["beta"] == pytest.approx(2.0)
    # where the paper's best is one of its general suggestions (cifar100 at 40%: lam 0.5, beta 8), or none is named
    for dataset in ("cifar100", "digits"):
        setting = Setting(dataset, "symmetric", 0.4, "none", 1.0, None)
        assert _warm_points(get_space(space), setting) == general


def test_dm_trainable_given_a_plain_search_space_says_what_it_takes():
    """A user's {lam, beta} param_space failed in the trial with a bare KeyError: 'specs'."""
    from dm_tune.trainables import TrialRuntime, dm_trainable

    with pytest.raises(ValueError, match=r"dm_trainable's config is \{'specs': \[TrialSpec.to_dict\(\), \.\.\.\]\}.*"
                                         r"not \['beta', 'lam'\]"):
        dm_trainable({"lam": 1.0, "beta": 8.0}, {}, TrialRuntime())


def test_cma_es_draws_a_categorical_knob_at_random_without_a_warning_each_trial():
    """A searched class_weighting beside (psi, rho) under cmaes: Optuna warned on every trial that it
    samples it independently (the README says so once)."""
    import logging

    import optuna

    from dm_tune.search_spaces import make_sampler

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    try:
        study = optuna.create_study(sampler=make_sampler("cmaes", {}, 0, 12), direction="maximize")
        study.optimize(lambda t: t.suggest_float("psi", 0.0, 0.75) + len(t.suggest_categorical("cw", ["a", "bb"])),
                       n_trials=8)
    finally:
        logger.removeHandler(handler)
    assert len(study.trials) == 8
    assert not [r for r in records if "independent" in r.getMessage()], [r.getMessage() for r in records]
