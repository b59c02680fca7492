"""The search pipeline in-process on a real local Ray, real Optuna storage and real MLflow (sqlite)."""

from __future__ import annotations

import shutil
import signal
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dm_tune.errors import UserError
from dm_tune.provenance import cpu_model
from dm_tune.search import Study
from dm_tune.search._run import RunOptions, run_study
from tests.conftest import tiny_study

pytestmark = pytest.mark.timeout(600)


def _run(ws: Path, study_dict: dict):
    study = Study.from_dict(study_dict)
    return study, run_study(study, RunOptions(workspace=ws, echo=False))


def _trial_runs(ws: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("dmtune.role") == "trial"], runs


def test_search_then_confirm_tracks_every_trial_once(tmp_path, ray_local, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    sigint = signal.getsignal(signal.SIGINT)
    study, summaries = _run(ws, tiny_study())
    assert signal.getsignal(signal.SIGINT) is sigint  # Tune's handler gone: a later Ctrl-C is not ignored
    assert (ws / "artifacts" / "tiny").is_dir() and not (tmp_path / "mlruns").exists()
    client, trials, runs = _trial_runs(ws, "tiny")

    parents = [r for r in runs if r.data.tags.get("dmtune.role") == "setting"]
    assert len(parents) == 1
    stages = Counter(r.data.tags["dmtune.stage"] for r in trials)
    assert stages == {"search": 3, "confirm": (1 + 2) * 2}  # top-1 DM arm + 2 baselines, 2 seeds
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert {r.data.tags["dmtune.status"] for r in trials} == {"finished"}
    assert len({r.data.tags["dmtune.trial_key"] for r in trials}) == len(trials)

    baselines = Counter(r.data.tags["dmtune.baseline"] for r in trials if r.data.tags["dmtune.stage"] == "confirm")
    assert baselines == {"": 2, "cce": 2, "imae": 2}
    for r in trials:
        p, m = r.data.params, r.data.metrics
        assert p["dataset"] == "digits" and p["noise"] == "symmetric" and float(p["noise_rate"]) == 0.4
        assert p["epochs"] == "3" and p["num_classes"] == "10" and p["model"] == "mlp"
        assert m["epochs_reached"] == 3 and 0.0 <= m["final_test_acc"] <= 1.0
        if p["method"] == "dm":
            lam, beta, psi = float(p["lam"]), float(p["beta"]), float(p["psi"])
            assert psi == pytest.approx(lam / (1 + lam))
            if r.data.tags["dmtune.baseline"] == "imae":
                assert (lam, beta) == (1.0, 8.0)
        history = sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda h: h.step)
        assert [h.step for h in history] == [1, 2, 3]
        assert history[-1].value == pytest.approx(m["final_val_acc"])
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"result.json", "weights.csv"} <= artifacts
        # what its worker trained it with (the driver does not tag these)
        assert r.data.tags["dmtune.cpu"] == cpu_model() and int(r.data.tags["dmtune.torch_threads"]) >= 1

    # The Optuna study lives in the workspace and knows how far each trial got.
    storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    ot = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and all(t.user_attrs["epochs_reached"] == 3 for t in complete)
    assert {round(t.params["psi"], 3) for t in complete} >= {0.333, 0.5}  # the paper's warm start

    (s,) = summaries
    best = s.best_dm()
    assert best is not None and len(best.test_acc) == 2
    assert {a.baseline for a in s.arms} == {"", "cce", "imae"}

    # The same study again: finished experiments are restored, nothing is re-run or re-logged.
    _, again = _run(ws, tiny_study())
    _, trials2, _ = _trial_runs(ws, "tiny")
    assert len(trials2) == len(trials)
    assert sorted(again[0].best_dm().test_acc) == sorted(best.test_acc)


def test_asha_stopped_trials_are_marked_truncated(tmp_path, ray_local):
    ws = tmp_path / "ws"
    ws.mkdir()
    _run(ws, tiny_study("asha", search={"num_samples": 6, "top_k": 1, "warm_start": False},
                       training={"epochs": 6}, baselines=[], seeds=[0],
                       scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 3}))
    _, trials, _ = _trial_runs(ws, "asha")
    search = [r for r in trials if r.data.tags["dmtune.stage"] == "search"]
    statuses = Counter(r.data.tags["dmtune.status"] for r in search)
    assert statuses["early-stopped"] >= 1, statuses
    for r in search:
        reached = r.data.metrics["epochs_reached"]
        assert (reached < 6) == (r.data.tags["dmtune.status"] == "early-stopped")
        assert r.data.metrics["train_time_s"] > 0  # (0 for a trial stopped at the first rung)
    # Every ended trial's history runs to the epoch it reached: the epoch a rung stopped it at is in it
    # (a resumed ASHA rebuilds its rungs from these histories).
    from dm_tune.search._ledger import Ledger

    (path,) = (ws / "ledger" / "asha").glob("*.jsonl")
    for key, outcome in Ledger(path).ended.items():
        assert [h["epoch"] for h in outcome.history] == list(range(1, outcome.epochs_reached + 1)), key
    # Trials that ASHA let run to the end are full results: the best of them is confirmed, and
    # confirm trials are never stopped early.
    confirm = [r for r in trials if r.data.tags["dmtune.stage"] == "confirm"]
    assert len(confirm) == 1 and confirm[0].data.tags["dmtune.status"] == "finished"
    assert confirm[0].data.metrics["epochs_reached"] == 6


def test_diverged_trials_are_recorded_and_the_search_goes_on(tmp_path, ray_local):
    ws = tmp_path / "ws"
    ws.mkdir()
    # lr 10 with weight decay 1 multiplies the weights by -9 every step: a real divergence.
    _, summaries = _run(ws, tiny_study("diverge", search={"num_samples": 2, "top_k": 1},
                                       training={"epochs": 3, "optimizer": "sgd", "lr": 10.0,
                                                 "weight_decay": 1.0, "momentum": 0.0},
                                       baselines=["cce"], seeds=[0]))
    _, trials, _ = _trial_runs(ws, "diverge")
    assert Counter(r.data.tags["dmtune.status"] for r in trials) == {"diverged": 3}
    assert all(r.data.metrics["epochs_reached"] < 3 for r in trials)
    assert summaries[0].search_statuses == {"diverged": 2}
    assert summaries[0].best_dm() is None  # no finished DM arm to confirm
    (cce,) = summaries[0].arms  # diverged: counted, but its last epoch's accuracy is not a result
    assert cce.statuses == ["diverged"] and cce.n_results == 0


def test_population_trials_leave_the_same_records_as_single_trials(tmp_path, ray_local):
    """One MLflow child run and one Optuna trial per DM configuration, whatever the population size."""
    records = {}
    for size in (1, 4):
        ws = tmp_path / f"ws{size}"
        ws.mkdir()
        _run(ws, tiny_study(f"pop{size}", population_size=size, search={"num_samples": 5, "top_k": 1}))
        client, trials, runs = _trial_runs(ws, f"pop{size}")
        assert {r.info.status for r in runs} == {"FINISHED"}
        keys = Counter(r.data.tags["dmtune.trial_key"] for r in trials)
        assert max(keys.values()) == 1
        # The confirmed arm on its search seed (0) is its search trial's run, not trained again:
        # the same results, tagged with the population that trained it.
        by_key = {r.data.tags["dmtune.trial_key"]: r for r in trials}
        reused = [r for r in trials if r.data.tags.get("dmtune.reused_from")]
        assert [(r.data.tags["dmtune.stage"], r.data.params["seed"]) for r in reused] == [("confirm", "0")]
        source = by_key[reused[0].data.tags["dmtune.reused_from"]]
        assert source.data.tags["dmtune.stage"] == "search" and source.data.params["seed"] == "0"
        assert reused[0].data.tags["dmtune.population"] == source.data.tags["dmtune.population"]
        assert reused[0].data.metrics == source.data.metrics
        assert reused[0].data.params["population_size"] == source.data.params["population_size"]
        trained = [r for r in trials if not r.data.tags.get("dmtune.reused_from")]
        populations = Counter(r.data.tags["dmtune.population"] for r in trained)
        sizes = Counter(int(r.data.params["population_size"]) for r in trained)
        if size == 1:
            assert set(populations.values()) == {1} and set(sizes) == {1}
        else:  # TPE's 4 start-up arms as two populations of 2 (split over the 2 Ray trials that
            # run at once), then the fifth arm alone (at most a quarter of the search per round, so
            # that TPE learns between rounds); 2 baselines x 2 seeds as two populations of 2 and the
            # confirmed arm's other seed alone
            assert sorted(populations.values()) == [1] * 2 + [2] * 4 and sizes == {1: 2, 2: 8}
        for r in trials:
            steps = sorted(h.step for h in client.get_metric_history(r.info.run_id, "val_acc"))
            assert steps == [1, 2, 3] and r.data.tags["dmtune.status"] == "finished"
        storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
        (summary,) = optuna.get_all_study_summaries(storage)
        ot = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        assert Counter(t.state for t in ot) == {optuna.trial.TrialState.COMPLETE: 5}
        params = {k for r in trials for k in r.data.params}
        records[size] = (Counter(r.data.tags["dmtune.stage"] for r in trials),
                         Counter(r.data.tags["dmtune.baseline"] for r in trials), params)
    assert records[1] == records[4]


def test_two_search_seeds_and_a_guidelines_warm_start(tmp_path, ray_local, monkeypatch):
    """search_seeds 2: every search arm is two MLflow runs (seeds 0 and 1) and one Optuna trial
    told their mean; warm_start from a guidelines file: the search starts at its point and
    samples only inside its plausible region."""
    import json

    from dm_tune.reports import build_guidelines, recommend
    from dm_tune.search._run import guided_space, search_space
    from tests.test_reports_surface import campaign

    monkeypatch.chdir(tmp_path)
    guidelines = tmp_path / "guidelines.json"
    guidelines.write_text(json.dumps(build_guidelines(campaign())), encoding="utf-8")
    rec = recommend(json.loads(guidelines.read_text()), 10, "symmetric", 0.4, dataset="digits")
    ws = tmp_path / "ws"
    study, _ = _run(ws, tiny_study("warm", search_seeds=2,
                                   search={"num_samples": 3, "top_k": 1, "warm_start": str(guidelines)}))
    _, trials, _ = _trial_runs(ws, "warm")
    search = [r for r in trials if r.data.tags["dmtune.stage"] == "search"]
    assert Counter(r.data.params["seed"] for r in search) == {"0": 3, "1": 3}

    storage = optuna.storages.RDBStorage(f"sqlite:///{ws / 'optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    ot = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in ot] == ["COMPLETE"] * 3
    assert ot[0].params == pytest.approx({"psi": rec.psi, "rho": rec.rho})  # starts at the recommended point
    space, _ = guided_space(search_space(study), rec)
    assert (space["psi"]["low"], space["psi"]["high"]) != (0.0, 0.75)  # narrowed to the region
    for t in ot:
        for knob in ("psi", "rho"):
            dist = t.distributions[knob]
            assert (dist.low, dist.high) == pytest.approx((space[knob]["low"], space[knob]["high"]))
            assert dist.low - 1e-9 <= t.params[knob] <= dist.high + 1e-9
        runs = sorted((r for r in search if float(r.data.params["psi"]) == pytest.approx(t.params["psi"])),
                      key=lambda r: int(r.data.params["seed"]))
        values = [r.data.metrics["final_val_acc"] for r in runs]
        assert len(values) == 2 and t.user_attrs["seed_values"] == pytest.approx(values)
        assert t.value == pytest.approx(sum(values) / 2)

    # `dm-tune report` rewrites the file (another region): the study resumes in the region it
    # began with, from the copy it kept; a new region was a new, empty Optuna study whose trial
    # numbers clashed with the ended ones.
    guidelines.write_text(json.dumps(build_guidelines(campaign(noise_sd=3.0))), encoding="utf-8")
    assert (ws / "warm_starts" / "warm.json").is_file()
    _run(ws, study.to_dict())
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [summary.study_name]
    assert len(optuna.load_study(study_name=summary.study_name, storage=storage).trials) == 3
    assert len(_trial_runs(ws, "warm")[1]) == len(trials)


def test_resources_the_cluster_lacks_are_refused_before_any_trial(ray_local):
    """On a cluster (here the local one, 2 CPUs), what a trial asks for must exist: one line, not a
    trial left pending for ever. (A local search checks its GPUs even before Ray starts.)"""
    from dm_tune.errors import UserError
    from dm_tune.search._preflight import check_resources

    with pytest.raises(UserError, match=r"resources.gpus_per_trial: 64 GPUs per trial requested but the Ray cluster has"):
        check_resources(Study.from_dict({"resources": {"gpus_per_trial": 64}}))
    with pytest.raises(UserError, match=r"resources.cpus_per_trial: 3 CPUs per trial requested but the Ray cluster has 2"):
        check_resources(Study.from_dict({"resources": {"cpus_per_trial": 3}}))
    check_resources(Study.from_dict({"resources": {"cpus_per_trial": 2}}))


def test_a_search_never_joins_another_searchs_own_local_ray(ray_local, monkeypatch):
    """``--address auto`` finds the newest Ray on the machine: another search's own local Ray (here
    the module's), which ends with that search and takes the joined search's trials with it. It is
    refused, found by auto or given by its address; a cluster of 'ray start --head' is joined (the
    two-node test). RAY_ADDRESS, which Ray's 'auto' reads first, makes 'auto' this module's Ray: the
    newest on the machine may be another test worker's, or the two-node test's cluster."""
    from dm_tune.search._preflight import probe_ray

    address = ray_local.get_runtime_context().gcs_address
    monkeypatch.setenv("RAY_ADDRESS", address)
    for given in ("auto", address):
        with pytest.raises(UserError, match=rf"--address {given}: the Ray at {address} is another dm-tune search's "
                                            "own local Ray, which ends when that search does"):
            probe_ray(given)


def test_a_resumed_trial_reports_its_earlier_epochs_once(tmp_path, ray_local):
    """In a real Tune run: the first report after a checkpoint carries each member's restored epochs
    (RESTORED_KEY), the next ones do not, and a report not sent keeps them for the one that is."""
    from ray import tune

    from dm_tune.search._trial import RESTORED_KEY
    from dm_tune.trainables._dm import TrialRuntime, _reporter, _restored

    before = [{"epoch": 1, "val_acc": 0.4}, {"epoch": 2, "val_acc": 0.6}]
    state = {"kind": "population", "members": [{"history": before}, {"history": before[:1]}]}
    assert _restored(state) == {0: before, 1: before[:1]}
    assert _restored({"kind": "one-by-one", "done": [{}], "current": {"history": before}}) == {1: before}
    assert _restored(None) == {}

    def trainable(config):
        report = _reporter(TrialRuntime(report_every=2, checkpoint_every=100), 9, 2, {}, {0: before, 1: before[:1]})
        for epoch in (3, 4, 5, 6):
            report({0: {"epoch": epoch, "val_acc": 0.7}, 1: {"epoch": epoch, "val_acc": 0.5}}, lambda: {})

    seen = []

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.append(result["members"])

    tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[Recorder()],
                                                     verbose=0)).fit()
    assert len(seen) == 2  # epochs 4 and 6 (every second call)
    assert [m[RESTORED_KEY] for m in seen[0]] == [before, before[:1]] and seen[0][0]["epoch"] == 4
    assert all(RESTORED_KEY not in m for m in seen[1])


@pytest.mark.parametrize("lost", ["ledger", "ledger lines", "optuna.db"])
def test_a_lost_ledger_or_optuna_store_is_refused_not_searched_again(tmp_path, ray_local, lost):
    """The ledger is what a resume goes on from, the Optuna store what the sampler knows: without
    the first every trial trained (and was recorded) again; without the second the resume failed
    with a traceback, or asked trials whose numbers the ledger had given others. One line now,
    and nothing written."""
    ws = tmp_path / "ws"
    ws.mkdir()
    study = tiny_study("lost", search={"num_samples": 2, "top_k": 1}, baselines=["cce"], seeds=[0])
    _run(ws, study)
    _, _, runs = _trial_runs(ws, "lost")
    if lost == "ledger lines":  # cut short (or an older copy): the first trial's lines are all it holds
        for ledger in (ws / "ledger").rglob("*.jsonl"):
            ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:2]))
    else:
        shutil.rmtree(ws / lost) if (ws / lost).is_dir() else (ws / lost).unlink()
    with pytest.raises(UserError) as info:
        _run(ws, study)
    assert {"ledger": "the ledger was lost since", "ledger lines": "the ledger lost lines since",
            "optuna.db": "its store was replaced or emptied"}[lost] in str(info.value)
    _, _, after = _trial_runs(ws, "lost")
    assert sorted((r.info.run_id, r.info.status) for r in after) == sorted((r.info.run_id, r.info.status) for r in runs)


def test_a_grid_search_has_its_own_optuna_study(tmp_path):
    """Studies on one setting share its Optuna study (a later one warm-starts from it), but Optuna's
    GridSampler takes the points another study ran there as done: two grid searches of a setting
    split the grid between them and then trained points again. A grid search's study is its own;
    one that began in the shared study (its trials there carry its name) goes on in it."""
    import optuna

    from dm_tune.search._run import _own_grid

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert _own_grid(storage, "digits-symmetric0.4-default/paper-grid/abc", "g1") == \
        "digits-symmetric0.4-default/paper-grid/abc/g1"
    shared = optuna.create_study(study_name="s", storage=storage)
    trial = shared.ask()
    trial.set_user_attr("dmtune.study", "g0")
    assert _own_grid(storage, "s", "g0") == "s" and _own_grid(storage, "s", "g1") == "s/g1"
    grid = {"psi": [0.1, 0.5], "rho": [1.0, 2.0]}
    for name in ("g1", "g2"):  # each its own grid: all four points, none twice
        own = optuna.create_study(study_name=_own_grid(storage, "s", name), storage=storage,
                                  sampler=optuna.samplers.GridSampler(grid, seed=0))
        points = []
        for _ in range(4):
            t = own.ask()
            points.append((t.suggest_float("psi", 0.1, 0.5), t.suggest_float("rho", 1.0, 2.0)))
            try:
                own.tell(t, 0.0)
            except RuntimeError:  # (the grid, told in full, stops its study: Study.stop outside optimize)
                pass
        assert len(set(points)) == 4, (name, points)
