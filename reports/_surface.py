"""One response surface across settings: DM's gain over CCE as a Gaussian process of (psi, rho,
class weighting) and of the setting, and recommendations from it (its leave-one-setting-out check: _loso.py).

Training rows are the usable runs (finished, finite final validation accuracy) of the
*classification* task with method "dm" and finite psi, rho > 0: searched and confirmed DM arms
and the DM-family baselines with a spread (imae; dm-beta0 has rho 0 and is left out). Target: the
run's final validation accuracy minus the mean final validation accuracy of its setting's CCE
baseline (usable runs, confirm stage preferred), in percentage points. Settings without CCE runs
have no target and are left out.

Features (names in ``FEATURES`` order, stored with the model):

* ``psi``, ``log_rho``: DM's mode and log-spread;
* ``cw=SCHEME``: one indicator per class-weighting scheme seen other than "none" (none: all zero);
* ``noise_rate`` (noise "none" counts as symmetric at rate 0) and ``noise=TYPE``: one indicator
  per non-symmetric noise type seen;
* ``log_num_classes``, ``log_imbalance_ratio`` and ``imbalance=TYPE`` (longtail, step) indicators;
* ``dataset=NAME``: one-hot over the datasets seen (an unknown dataset: all zeros, with a warning).

A setting feature that does not vary over the training rows says nothing and is left out: a
request that differs from its one measured value (or names a noise type where one was measured)
gets the GP's prior interval around the measured value's prediction, and a "no calibrated gain"
warning (``unmeasured_dimensions``); an unmeasured noise type where several were measured is a
mixture over them, as an unmeasured dataset is over the datasets. Model:
GaussianProcessRegressor(ConstantKernel * RBF (one length scale per feature) + WhiteKernel,
normalize_y=True). ``gp_to_dict`` / ``gp_from_dict`` serialise it; ``gp_predict`` predicts
from the serialised form with numpy alone (scipy.linalg's triangular solves on a large surface), so
that ``dm-tune recommend`` needs neither scikit-learn nor pandas (scikit-learn imports pandas).
Heavy imports happen inside functions.
"""

from __future__ import annotations

import math
import warnings as _warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dm_tune._names import rate_limit, rate_of_fraction, wrong_label_fraction
from dm_tune._param import beta_from_rho, lambda_from_mode
from dm_tune.reports._text import FILE_RATE_TOLERANCE, fraction_warning, num_text, rate_slack

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.gaussian_process import GaussianProcessRegressor

POINTS = 100.0                      # fractions -> percentage points
PSI_GRID = (0.0, 0.75, 31)          # recommend's grid: psi from, to, cells
RHO_GRID = (0.25, 12.0, 25)         # rho from, to, cells (log-spaced)
WITHIN_POINTS = 1.0                 # the region: cells within this many points of the best
CW_MIN_GAIN = 1.0                   # a class weighting must beat "none" by this much to be chosen
Z95 = 1.96
# The point maximises the predicted gain minus this many predictive standard deviations: an edge
# of the measured space where the surface is unsure does not beat a well-measured point nearly as good.
CAUTION = 1.0
# The surface's own std (its uncertainty about the mean gain, the fitted run-to-run noise left
# out: that is in the interval, but more runs would not remove it) above which the answer is flagged.
MAX_STD = 3.0
N_LEANS_ON = 3
# Distinct (psi, rho, class weighting) points a surface needs: on one a Gaussian process has no
# spread to learn from, and its 95% interval came out zero points wide.
MIN_POINTS = 2
# Kernel hyper-parameter bounds. Targets are normalised (normalize_y), so the signal variance and
# noise level are relative to the spread of the gains; features are O(1) (psi, log rho, rates,
# 0/1 indicators, log counts), so length scales from 0.05 to 1000 cover "matters a lot" to "not at all".
CONSTANT_BOUNDS = (1e-3, 1e3)
LENGTH_SCALE_BOUNDS = (5e-2, 1e3)
NOISE_BOUNDS = (1e-5, 1e1)
N_RESTARTS = 2
GP_ALPHA = 1e-10                    # scikit-learn's default jitter on the kernel diagonal
KERNEL_FORM = "ConstantKernel * RBF(anisotropic) + WhiteKernel"
# A GP of fewer rows than this is fitted and asked with one BLAS thread. On matrices this small
# OpenBLAS's threads cost more than they bring, and on a busy machine (a report beside a search)
# they wait for cores: a 9-arm local GP (20 restarts) took 22.6 s beside a search with the default
# threads and 2.9 s with one; a 224-row fit 14.9 s and 0.74 s (BENCHMARKS.md, "The report's Gaussian
# processes").
ONE_THREAD_ROWS = 1024
# The surface's kernel hyper-parameters are optimised on at most this many of its rows (a seeded
# random subset); its posterior is then computed on every row with them (one factorisation). Each
# optimiser step costs O(rows^3) and holds rows^2 x features floats for the gradient: on 3,438 rows
# the fit took 370 s and 3.1 GB against 31 s and 0.7 GB on 1,024 of them (BENCHMARKS.md, "Thousands
# of arms").
HYPERPARAMETER_ROWS = 1024
SETTING_KEYS = ("dataset", "noise", "noise_rate", "num_classes", "imbalance", "imbalance_ratio")


# --- features -------------------------------------------------------------------------------

def _noise(noise: str, rate: float) -> tuple[str, float]:
    """Clean data is symmetric noise at rate 0."""
    return ("symmetric", 0.0) if noise == "none" or not rate else (noise, float(rate))


def encoding_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The vocabularies and kept features for training rows (dicts with the setting keys, psi, rho, cw)."""
    noise = sorted({_noise(r["noise"], r["noise_rate"])[0] for r in rows} - {"symmetric"})
    imbalance = sorted({r["imbalance"] for r in rows} - {"none"})
    cw = sorted({effective_weighting(r) for r in rows} - {"none"})
    datasets = sorted({r["dataset"] for r in rows})
    candidate = (["psi", "log_rho"] + [f"cw={c}" for c in cw] + ["noise_rate"] + [f"noise={n}" for n in noise]
                 + ["log_num_classes", "log_imbalance_ratio"] + [f"imbalance={i}" for i in imbalance]
                 + [f"dataset={d}" for d in datasets])
    full = {"features": candidate}
    values = [_raw_features(r, full) for r in rows]
    keep = [name for j, name in enumerate(candidate)
            if name in ("psi", "log_rho") or len({v[j] for v in values}) > 1]
    return {"features": keep, "class_weightings": ["none"] + cw, "noise_types": ["symmetric"] + noise,
            "imbalances": ["none"] + imbalance, "datasets": datasets}


def effective_weighting(r: dict[str, Any]) -> str:
    """The class weighting a run really trained with: on balanced data every scheme is "none"
    (each class has weight 1; dm_tune.class_weighting)."""
    return "none" if r.get("imbalance", "none") == "none" else str(r.get("class_weighting") or "none")


def _raw_features(r: dict[str, Any], enc: dict[str, Any]) -> list[float]:
    noise, rate = _noise(r["noise"], r["noise_rate"])
    values = {"psi": float(r["psi"]), "log_rho": math.log(float(r["rho"])), "noise_rate": rate,
              "log_num_classes": math.log(float(r["num_classes"])),
              "log_imbalance_ratio": math.log(float(r.get("imbalance_ratio") or 1.0)),
              f"cw={effective_weighting(r)}": 1.0, f"noise={noise}": 1.0,
              f"imbalance={r.get('imbalance', 'none')}": 1.0}
    if r.get("dataset"):
        values[f"dataset={r['dataset']}"] = 1.0
    return [values.get(name, 0.0) for name in enc["features"]]


def features(rows: list[dict[str, Any]], enc: dict[str, Any]) -> list[list[float]]:
    """Feature rows (``enc["features"]`` order) for dicts with the setting keys, psi, rho, class_weighting."""
    return [_raw_features(r, enc) for r in rows]


# --- training rows --------------------------------------------------------------------------

def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(["finished", ""]) & df["final_val_acc"].notna()]


def _cce_runs(df: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per setting, CCE's usable runs with ``metric`` (confirm stage when there is one)."""
    cce = _finished(df[df["baseline"] == "cce"]).dropna(subset=[metric])
    out: dict[str, pd.DataFrame] = {}
    for setting, runs in cce.groupby("setting", sort=True):
        out[str(setting)] = runs[runs["stage"] == "confirm"] if (runs["stage"] == "confirm").any() else runs
    return out


def cce_means(df: pd.DataFrame, metric: str = "final_val_acc") -> dict[str, float]:
    """Per setting, CCE's mean ``metric`` in points (usable runs, confirm stage when there is one)."""
    return {setting: float(runs[metric].mean() * POINTS) for setting, runs in _cce_runs(df, metric).items()}


def cce_by_seed(df: pd.DataFrame, metric: str = "final_val_acc") -> dict[str, pd.Series]:
    """Per setting, CCE's ``metric`` per seed in points (the runs of ``cce_means``)."""
    return {setting: runs.groupby("seed")[metric].mean() * POINTS for setting, runs in _cce_runs(df, metric).items()}


def _usable_dm(df: pd.DataFrame) -> pd.DataFrame:
    """Usable classification runs of method dm."""
    return _finished(df[(df["task"] == "classification") & (df["method"] == "dm")])


def dm_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Usable classification runs of method dm with finite psi and rho > 0."""
    runs = _usable_dm(df)
    return runs[runs["psi"].notna() & runs["rho"].notna() & (runs["rho"] > 0)]


def negative_beta_arms(df: pd.DataFrame) -> int:
    """DM arms (usable classification runs) with beta < 0, which the surface leaves out: its rho is
    log-scaled, so it covers beta > 0 only (the paper gives two-class data small beta of either sign)."""
    runs = _usable_dm(df)
    return int(runs.loc[runs["rho"] < 0, ["setting", "arm"]].drop_duplicates().shape[0])


def arm_means(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each (setting, arm)'s mean ``metric`` over its distinct seeds (a seed trained in both the
    search and the confirm stage counts once): columns ``mean`` and ``size`` (seeds), sorted."""
    per_seed = runs.groupby(["setting", "arm", "seed"], sort=True)[metric].mean()
    return per_seed.groupby(level=["setting", "arm"], sort=True).agg(["mean", "size"])


def training_rows(df: pd.DataFrame) -> tuple[list[dict[str, Any]], list[float]]:
    """(row dicts, targets in points) of the settings that have CCE runs: one row per DM arm
    (configuration) of a setting, its validation gain over CCE averaged over its distinct seeds,
    paired: against CCE's mean on those seeds (on all of CCE's when it lacks one of them).

    An arm searched on seeds 0 and 1 and confirmed on 0, 1, 2 is one row over 3 seeds (a seed
    trained twice counts once). One row per arm rather than per run keeps the Gaussian process
    (cubic in its rows) fast on whole campaigns, and its noise term then measures the spread of
    arm means, not of single runs."""
    cce, cce_seeds = cce_means(df), cce_by_seed(df)
    runs = dm_rows(df)
    runs = runs[runs["setting"].isin(list(cce))]
    keys = ["setting", "arm"]
    described = runs.drop_duplicates(keys).set_index(keys)
    per_arm = arm_means(runs, "final_val_acc")
    seeds_of = runs.groupby(keys, sort=True)["seed"].unique()
    confirmed = set(runs.loc[runs["stage"] == "confirm", keys].itertuples(index=False, name=None))
    # Seeds each arm was run on, whatever became of them: an arm that diverged on some is a point
    # of the surface (its finished seeds) but, as in the per-setting analysis, no setting's best.
    tried = df[(df["task"] == "classification") & (df["method"] == "dm")].groupby(keys)["seed"].nunique()
    rows, y = [], []
    for (setting, arm), stats in per_arm.iterrows():
        d = described.loc[(setting, arm)]
        row = {"setting": setting, "arm": arm, "stage": "confirm" if (setting, arm) in confirmed else "search",
               "baseline": str(d["baseline"]), "n_seeds": int(stats["size"]),
               "complete": int(stats["size"]) >= int(tried.get((setting, arm), 0)),
               **{k: d[k] for k in (*SETTING_KEYS, "model", "pretrained", "psi", "rho", "class_weighting")}}
        rows.append(row)
        seeds, base = [x for x in seeds_of[(setting, arm)] if x == x], cce_seeds[str(setting)]  # x == x: not NaN
        paired = bool(seeds) and all(x in base.index for x in seeds)
        y.append(float(stats["mean"]) * POINTS - (float(base[seeds].mean()) if paired else cce[str(setting)]))
    return rows, y


def measured_settings(rows: list[dict[str, Any]], y: list[float]) -> list[dict[str, Any]]:
    """Each training setting's description and its best measured arm (mean validation gain over CCE),
    chosen as the per-setting analysis chooses (``best_dm_arm``): among the confirmed arms when
    there are any, else the searched ones, from those that finished on every seed they were run on
    unless none did. The DM-family baselines (IMAE) are points of the surface but not candidates,
    unless a setting has nothing else."""
    from collections import defaultdict

    arms: dict[str, dict[tuple[str, str], tuple[float, bool]]] = defaultdict(dict)
    first: dict[str, dict[str, Any]] = {}
    searched = {r["setting"] for r in rows if not r.get("baseline")}
    for r, gain in zip(rows, y):
        first.setdefault(r["setting"], r)
        if not r.get("baseline") or r["setting"] not in searched:
            arms[r["setting"]][(r["stage"], r["arm"])] = (gain, bool(r.get("complete", True)))
    out = []
    for setting in sorted(arms):
        stage = "confirm" if any(s == "confirm" for s, _ in arms[setting]) else "search"
        pool = [(k, v) for k, v in arms[setting].items() if k[0] == stage]
        (_, arm), (gain, _) = max([kv for kv in pool if kv[1][1]] or pool, key=lambda kv: kv[1][0])
        best = next(r for r in rows if r["setting"] == setting and r["stage"] == stage and r["arm"] == arm)
        s = first[setting]
        desc = {k: s[k].item() if hasattr(s[k], "item") else s[k] for k in SETTING_KEYS}
        desc["model"] = str(s.get("model", ""))
        desc["num_classes"] = int(desc["num_classes"])
        out.append({"setting": setting, **desc,
                    "n_rows": sum(r["setting"] == setting for r in rows),
                    "best_arm": arm, "best_stage": stage, "best_psi": float(best["psi"]),
                    "best_rho": float(best["rho"]), "best_class_weighting": str(best["class_weighting"]),
                    "best_gain": gain})
    return out


# --- the Gaussian process -------------------------------------------------------------------

def _kernel(n_features: int, bounds: dict[str, Any] | None = None) -> Any:
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    b = bounds or kernel_spec(n_features)
    return (ConstantKernel(1.0, tuple(b["constant_value_bounds"]))
            * RBF([1.0] * n_features, tuple(b["length_scale_bounds"]))
            + WhiteKernel(0.1, tuple(b["noise_level_bounds"])))


def kernel_spec(n_features: int) -> dict[str, Any]:
    """How to rebuild the kernel: its form, size and hyper-parameter bounds."""
    return {"form": KERNEL_FORM, "n_features": n_features, "constant_value_bounds": list(CONSTANT_BOUNDS),
            "length_scale_bounds": list(LENGTH_SCALE_BOUNDS), "noise_level_bounds": list(NOISE_BOUNDS),
            "theta_order": "log constant, log length scales (feature order), log noise level"}


def fit_gp(X: Any, y: Any, n_restarts_optimizer: int = N_RESTARTS,
           theta0: list[float] | None = None) -> GaussianProcessRegressor:
    """Fit ConstantKernel * RBF(ARD) + WhiteKernel with normalised targets (seeded: random_state=0);
    ``theta0``: log hyper-parameters to start the optimiser from (default: all length scales 1)."""
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    kernel = _kernel(X.shape[1])
    if theta0 is not None:
        kernel = kernel.clone_with_theta(np.asarray(theta0, dtype=float))
    gp = GaussianProcessRegressor(kernel, alpha=GP_ALPHA, normalize_y=True,
                                  n_restarts_optimizer=n_restarts_optimizer, random_state=0)
    with _warnings.catch_warnings(), blas_threads(len(X)):  # a length scale at its upper bound: "irrelevant"
        _warnings.simplefilter("ignore", ConvergenceWarning)
        return gp.fit(X, y)


def fit_surface_model(X: Any, y: Any, feature_names: list[str], n_restarts_optimizer: int = N_RESTARTS,
                      theta0: list[float] | None = None, optimize: bool = True) -> dict[str, Any]:
    """The response surface's GP, serialised (``gp_to_dict``). ``optimize`` False keeps ``theta0``:
    the model is then the rows and those hyper-parameters, nothing fitted (``gp_posterior`` factorises
    once when asked). Above HYPERPARAMETER_ROWS rows the hyper-parameters are optimised on
    ``hyperparameter_subset`` of the rows, the posterior is every row's; the model records on how
    many (``hyperparameter_rows``)."""
    import numpy as np

    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if not optimize:
        if theta0 is None:
            raise ValueError("fit_surface_model: optimize=False keeps theta0, and none was given")
        return {**model_dict(X, y, theta0, feature_names), "hyperparameter_rows": 0}
    if len(X) <= HYPERPARAMETER_ROWS:
        return {**gp_to_dict(fit_gp(X, y, n_restarts_optimizer, theta0), feature_names, y),
                "hyperparameter_rows": len(X)}
    pick = hyperparameter_subset(X)
    theta = fit_gp(X[pick], y[pick], n_restarts_optimizer, theta0).kernel_.theta
    return {**model_dict(X, y, theta, feature_names), "hyperparameter_rows": len(pick)}


def hyperparameter_subset(X: Any) -> Any:
    """The rows (sorted indices) the hyper-parameters of a surface of more than HYPERPARAMETER_ROWS rows
    are optimised on: that many at random (seeded), and, for each feature that varies across ``X``
    but not among them (a rare setting or class weighting), the first further row, in a seeded
    order, that makes it vary: a constant feature's length scale would stay where the optimiser
    started it."""
    import numpy as np

    rng = np.random.default_rng(0)
    pick = list(rng.choice(len(X), HYPERPARAMETER_ROWS, replace=False))
    rest = rng.permutation(np.setdiff1d(np.arange(len(X)), pick))
    for j in range(X.shape[1]):
        seen = X[pick, j]
        if np.all(seen == seen[0]):
            other = next((int(i) for i in rest if X[i, j] != seen[0]), None)
            if other is not None:
                pick.append(other)
    return np.sort(np.asarray(pick))


@contextmanager
def blas_threads(n_rows: int) -> Iterator[None]:
    """One BLAS thread for the GP work of a GP of ``n_rows`` rows below ONE_THREAD_ROWS (scikit-learn's
    threadpoolctl); larger ones keep the threads they have."""
    if n_rows >= ONE_THREAD_ROWS:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def gp_to_dict(gp: GaussianProcessRegressor, feature_names: list[str], y: Any) -> dict[str, Any]:
    """Everything needed to rebuild the fitted posterior, JSON-safe (``y``: the targets ``gp`` was
    fitted on, as given; scikit-learn keeps only their normalised form)."""
    return model_dict(gp.X_train_, y, gp.kernel_.theta, feature_names)


def model_dict(X: Any, y: Any, theta: Any, feature_names: list[str]) -> dict[str, Any]:
    """A GP of this module's kernel (normalised targets) on rows ``X``, targets ``y`` and log
    hyper-parameters ``theta``, serialised: what ``gp_posterior`` and ``gp_from_dict`` read."""
    import numpy as np
    import sklearn

    return {"feature_names": list(feature_names), "X": np.asarray(X, dtype=float).tolist(),
            "y": [float(v) for v in y], "theta": [float(t) for t in theta], "kernel": kernel_spec(len(feature_names)),
            "normalize_y": True, "alpha": GP_ALPHA, "sklearn_version": sklearn.__version__}


def gp_from_dict(d: dict[str, Any]) -> GaussianProcessRegressor:
    """The fitted GP again: the stored kernel with the stored theta, no optimisation, fitted on X, y."""
    import numpy as np
    from sklearn.gaussian_process import GaussianProcessRegressor

    kernel = _kernel(len(d["feature_names"]), d["kernel"]).clone_with_theta(np.asarray(d["theta"], dtype=float))
    gp = GaussianProcessRegressor(kernel, alpha=d["alpha"], normalize_y=d["normalize_y"], optimizer=None)
    return gp.fit(np.asarray(d["X"], dtype=float), np.asarray(d["y"], dtype=float))


def gp_predict(d: dict[str, Any], X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (points; the std includes the fitted noise, as scikit-learn's does)
    at feature rows ``X``, from the serialised GP with numpy (``_solve_lower``)."""
    mean, std, _ = gp_posterior(d, X)
    return mean, std


def gp_posterior(d: dict[str, Any], X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and two stds (points) at feature rows ``X``, from one solve: with the fitted
    noise (what one more arm measured there would scatter by), and without it (the surface's own
    uncertainty about the mean)."""
    import numpy as np

    Xt, y = np.asarray(d["X"], dtype=float), np.asarray(d["y"], dtype=float)
    Xq = np.atleast_2d(np.asarray(X, dtype=float))
    c, ls, white, y_mean, y_std = _gp_scale(d)
    with blas_threads(len(Xt)):
        K = c * _rbf(Xt, Xt, ls) + (white + d["alpha"]) * np.eye(len(Xt))
        L = np.linalg.cholesky(K)
        alpha = _solve_lower(L.T, _solve_lower(L, (y - y_mean) / y_std, lower=True), lower=False)
        Ks = c * _rbf(Xq, Xt, ls)
        V = _solve_lower(L, Ks.T, lower=True)
        explained = np.einsum("ij,ij->j", V, V)
    noisy, own = (np.sqrt(np.clip(c + w - explained, 0.0, None)) * y_std for w in (white, 0.0))
    return Ks @ alpha * y_std + y_mean, noisy, own


def _gp_scale(d: dict[str, Any]) -> tuple[float, Any, float, float, float]:
    """A serialised GP's signal variance, length scales and noise variance (normalised units), and
    the mean and std that normalised its targets (0 and 1 without normalize_y)."""
    import numpy as np

    theta, y = np.exp(np.asarray(d["theta"], dtype=float)), np.asarray(d["y"], dtype=float)
    y_mean, y_std = (float(y.mean()), float(y.std())) if d["normalize_y"] else (0.0, 1.0)
    return float(theta[0]), theta[1:-1], float(theta[-1]), y_mean, y_std or 1.0


def _solve_lower(T: Any, B: Any, lower: bool) -> Any:
    """T^-1 B for a triangular T (``lower``: below the diagonal, else above): numpy's general solve
    below ONE_THREAD_ROWS rows (milliseconds there, and recommend imports no scipy), scipy's
    triangular one above (O(rows^2) a column where the general one is O(rows^3): recommend on a
    4,032-row surface took 11 s of CPU and 880 MB)."""
    import numpy as np

    if len(T) < ONE_THREAD_ROWS:
        return np.linalg.solve(T, B)
    from scipy.linalg import solve_triangular

    return solve_triangular(T, B, lower=lower, check_finite=False)


def _rbf(A: Any, B: Any, ls: Any) -> Any:
    import numpy as np

    a, b = A / ls, B / ls  # |a - b|^2 expanded: no (len(A), len(B), features) array in memory
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-0.5 * np.clip(sq, 0.0, None))


def correlation(d: dict[str, Any], a: list[float], b: list[float]) -> float:
    """The RBF kernel's correlation between two feature rows (1: the surface treats them as one point)."""
    ls = [math.exp(t) for t in d["theta"][1:-1]]
    return math.exp(-0.5 * sum(((x - z) / s) ** 2 for x, z, s in zip(a, b, ls)))


def fit_surface(df: pd.DataFrame, n_restarts_optimizer: int = N_RESTARTS) -> dict[str, Any] | None:
    """The fitted surface over every classification setting with CCE runs, serialised (None: arms
    at fewer than MIN_POINTS distinct points, too few to fit one: recommend then interpolates)."""
    rows, y = training_rows(df)
    if len({(r["psi"], r["rho"], effective_weighting(r)) for r in rows}) < MIN_POINTS:
        return None
    enc = encoding_of(rows)
    X = features(rows, enc)
    model = fit_surface_model(X, y, enc["features"], n_restarts_optimizer)
    used = model.pop("hyperparameter_rows")
    theta = model["theta"]
    return {"task": "classification",
            "target": "a DM arm's final validation accuracy (mean over its seeds) minus CCE's mean on the same "
                      "seeds (points)",
            "n_rows": len(rows), "n_baseline_rows": sum(bool(r["baseline"]) for r in rows),
            "n_negative_beta_arms": negative_beta_arms(df), "encoding": enc,
            "model": model,
            "fitted": {"hyperparameter_rows": used,
                       "signal_std": math.sqrt(math.exp(theta[0])) * _std(y),
                       "noise_std": math.sqrt(math.exp(theta[-1])) * _std(y),
                       "length_scales": dict(zip(enc["features"], (math.exp(t) for t in theta[1:-1])))},
            "grid": {"psi": list(PSI_GRID), "rho": list(RHO_GRID), "rho_spacing": "log",
                     "searched": "recommend's grid is narrowed to the (psi, rho) span the arms were measured at"},
            "settings": measured_settings(rows, y)}


NO_SURFACE_TEXT = (f"No surface was fitted: it needs DM arms at {MIN_POINTS} or more distinct (psi, rho) points "
                   "in classification settings with CCE runs (recommend then interpolates the measured settings).")


def hyperparameters_phrase(surface: dict[str, Any]) -> str:
    """'' where the kernel's hyper-parameters were optimised on every row (and in files written before
    this was recorded), else a clause saying on how many."""
    fitted, n = surface.get("fitted") or {}, surface.get("n_rows")
    rows = fitted.get("hyperparameter_rows")
    if rows is None or n is None or rows >= n:
        return ""
    return (f"; its kernel's hyper-parameters optimised on {rows:,} of the {n:,} rows (seeded at random), "
            "its posterior on all of them")


def arms_phrase(surface: dict[str, Any]) -> str:
    """How many arms the surface was fitted on, e.g. "381 arms (379 DM, 2 IMAE)"."""
    def count(key: str, otherwise: int) -> int:  # (absent, or null: not stated)
        return int(surface[key]) if surface.get(key) is not None else otherwise

    n = count("n_rows", len(surface["model"]["y"]))  # (one row per arm)
    family, negative = count("n_baseline_rows", 0), count("n_negative_beta_arms", 0)
    notes = ([f"{n - family} DM, {family} IMAE"] if family else []) + (
        [f"{negative} DM arm(s) with beta < 0 left out, the surface covers beta > 0"] if negative else [])
    return f"{n} {'arms' if family else 'DM arms'}" + (f" ({'; '.join(notes)})" if notes else "")


def _std(y: list[float]) -> float:
    m = sum(y) / len(y)
    return math.sqrt(sum((v - m) ** 2 for v in y) / len(y)) or 1.0


# --- recommending from the surface ----------------------------------------------------------

def grid(surface: dict[str, Any] | None = None) -> tuple[list[float], list[float]]:
    """recommend's psi and rho grid values (rho log-spaced): ``PSI_GRID`` x ``RHO_GRID``, narrowed
    to the span of (psi, rho) the surface's arms were measured at (``searched_span``)."""
    (p0, p1, n_psi), (r0, r1, n_rho) = PSI_GRID, RHO_GRID
    if surface is not None:
        (p0, p1), (r0, r1) = searched_span(surface)
    psis = sorted({p0 + (p1 - p0) * i / (n_psi - 1) for i in range(n_psi)})
    rhos = sorted({math.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * i / (n_rho - 1)) for i in range(n_rho)})
    return psis, rhos


def searched_span(surface: dict[str, Any]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (psi, rho) ranges of the arms the surface was fitted on, within ``PSI_GRID`` x ``RHO_GRID``
    (or theirs alone, where they lie outside it). A GP whose length scales are long predicts far
    past its points with a narrow interval (it extends their trend): a surface whose gain rose with
    rho up to 2.9 recommended rho 12 (beta 114), never run, +16.7 points [15.9, 17.5] and no
    warning; a poor beta for a lambda can collapse training (the paper)."""
    names, X = surface["model"]["feature_names"], surface["model"]["X"]
    psi = [row[names.index("psi")] for row in X]
    log_rho = [row[names.index("log_rho")] for row in X]
    (p0, p1, _), (r0, r1, _) = PSI_GRID, RHO_GRID

    def within(lo: float, hi: float, bounds: tuple[float, float]) -> tuple[float, float]:
        inside = (max(lo, bounds[0]), min(hi, bounds[1]))
        return inside if inside[0] <= inside[1] else (lo, hi)

    psi_span = within(min(psi), max(psi), (p0, p1))
    rho_span = within(math.exp(min(log_rho)), math.exp(max(log_rho)), (r0, r1))
    return psi_span, rho_span


def recommend_from_surface(surface: dict[str, Any], num_classes: int, noise_type: str, noise_rate: float,
                           imbalance: str = "none", imbalance_ratio: float = 1.0,
                           dataset: str | None = None) -> dict[str, Any]:
    """The surface's best (psi, rho, class weighting) for a setting, its near-best and plausible
    regions, the predicted gain over CCE with a 95% interval, the settings it leans on, warnings.

    The predicted mean is capped at the highest measured best gain (``best_gain``: the arm the
    per-setting analysis chose, confirmed where one was) of the settings it leans on: a GP whose
    noise is small against its signal extends a steep slope into a cell nobody ran (every arm of
    two settings lost to CCE, by 8.3 and 14.6 points, and the surface promised +3.8 [-6.8, +14.3]
    there). Their measured best, not a search arm's mean (the best of many on a seed or two: the
    winner's curse), is what the evidence says the setting reaches; the interval moves down with
    the mean (its width, the surface's uncertainty at the point, stays), and a warning says so.

    The point maximises mean - CAUTION x std over the grid (a cautious optimum), each cell's mean
    first capped at the highest the surface predicts, for this setting, at a (psi, rho) its arms of
    that class weighting ran: no cell wins on a slope extended past the arms (the setting features
    still carry a trend across noise rates, which leave-one-setting-out checks). The region holds
    the cells whose capped mean is within WITHIN_POINTS of the point's, the plausible region
    those whose 95% upper bound reaches that. For a dataset that was not measured (or none named)
    the prediction is the average over the measured datasets, and their disagreement adds to the
    variance (a new dataset is like one of them, which one unknown). A surface whose numbers
    overflow (a damaged file) raises ValueError, without numpy's warnings on the way."""
    import numpy as np

    with np.errstate(all="ignore"), _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)  # (numpy's "Mean of empty slice" is a warning of its own)
        out = _recommend_from_surface(surface, num_classes, noise_type, noise_rate, imbalance, imbalance_ratio,
                                      dataset)
    if not all(math.isfinite(v) for v in (out["predicted_gain"]["mean"], out["predicted_std"], out["surface_std"])):
        raise ValueError("its prediction is not a finite number")
    return out


def _recommend_from_surface(surface: dict[str, Any], num_classes: int, noise_type: str, noise_rate: float,
                            imbalance: str, imbalance_ratio: float, dataset: str | None) -> dict[str, Any]:
    import numpy as np

    enc, model = surface["encoding"], surface["model"]
    warnings = _extrapolation_warnings(surface, num_classes, noise_type, noise_rate, imbalance, imbalance_ratio,
                                       dataset)
    noise, rate = _noise(noise_type, noise_rate)
    if rate and noise not in _measured_types(surface):
        # A type not measured is read against the others at its fraction of wrong labels, what they
        # share (cifar100-superclass at dm-tune train's rate 0.4 is 16% wrong, as symmetric 0.16 is)
        noise_rate = wrong_label_fraction(noise_type, noise_rate)
    base = {"dataset": dataset if dataset in enc["datasets"] else "", "noise": noise_type, "noise_rate": noise_rate,
            "num_classes": num_classes, "imbalance": imbalance, "imbalance_ratio": imbalance_ratio}
    psis, rhos = grid(surface)
    ran = _ran(model, enc)
    schemes = ["none"]  # balanced: every scheme is none
    if imbalance != "none":  # those the arms ran on imbalanced data (all, where none was measured)
        measured = _imbalanced_weightings(model, enc)
        schemes = [cw for cw in enc["class_weightings"] if cw in measured] or list(enc["class_weightings"])
        if "none" not in schemes:
            warnings.append(f"every arm on imbalanced data trained with class weighting {schemes[0]!r}"
                            + (f" or {', '.join(repr(c) for c in schemes[1:])}" if len(schemes) > 1 else "")
                            + ": the weighting is kept, its gain over no weighting was not measured")
    cells = [(cw, p, r) for cw in schemes for p in psis for r in rhos]
    every = cells + ran  # the grid, then the configurations the arms ran (predicted here, never candidates)
    X = features([{**base, "psi": p, "rho": r, "class_weighting": cw} for cw, p, r in every], enc)
    # A dataset or noise type not measured: like one of those measured, which one unknown (the
    # encoding would otherwise read an unseen noise type as symmetric, an unseen dataset as none).
    datasets = enc["datasets"] if not base["dataset"] and any(f.startswith("dataset=") for f in enc["features"]) \
        else [base["dataset"]]
    mixed = _noise_mixture(surface, noise_type, noise_rate)
    noises = _noise_variants(mixed, noise_rate, num_classes) or [(noise_type, noise_rate)]
    variants = [{**base, "dataset": d, "noise": n, "noise_rate": r} for d in datasets for n, r in noises]
    rows = ([features([{**v, "psi": p, "rho": r, "class_weighting": cw} for cw, p, r in every], enc)
             for v in variants] if variants != [base] else [X])  # (none: a damaged encoding, NaN, refused)
    parts = [gp_posterior(model, x) for x in rows]
    means = np.array([m for m, _, _ in parts])
    raw = means.mean(axis=0)
    std, own = (np.sqrt(np.mean([p[k] ** 2 for p in parts], axis=0) + means.var(axis=0)) for k in (1, 2))
    n = len(cells)
    # (a scheme no arm ran takes the best of every arm: its cells would go uncapped)
    anyone = max((float(v) for v in raw[n:]), default=math.inf)
    ceiling = {cw: max((float(v) for (c, _, _), v in zip(ran, raw[n:]) if c == cw), default=anyone)
               for cw in schemes}
    X, raw, std, own = X[:n], raw[:n], std[:n], own[:n]
    # No cell is chosen for a gain above the best its class weighting's arms are predicted here.
    mean = np.minimum(raw, [ceiling[c] for c, _, _ in cells])
    score = mean - CAUTION * std
    best_of = {cw: max(float(v) for (c, _, _), v in zip(cells, score) if c == cw) for cw in schemes}
    top = max(best_of, key=lambda cw: best_of[cw])
    chosen = top if top == "none" or "none" not in best_of or best_of[top] - best_of["none"] >= CW_MIN_GAIN else "none"
    mine = np.array([c == chosen for c, _, _ in cells])
    i = int(np.argmax(np.where(mine, score, -np.inf)))
    # (leans_on compares setting features alone, x's knobs copied: the same settings at every cell)
    leaned = leans_on(surface, X[i])
    top_measured = max(leaned, key=lambda s: s["best_gain"])
    cap, predicted = float(top_measured["best_gain"]), float(mean[i])
    # The data asked for was measured: no more than its own best arm gained (its evidence is direct;
    # the settings leaned on only resemble it).
    m = max((m for m in surface["settings"] if _is_query(m, base, dataset)), key=lambda m: m["best_gain"],
            default=None)
    measured = float(m["best_gain"]) if m is not None else math.inf
    best, sd, unsure = min(predicted, cap, measured), float(std[i]), float(own[i])
    near = mine & (mean >= predicted - WITHIN_POINTS - 1e-9)
    plausible = mine & (mean + Z95 * std >= predicted - WITHIN_POINTS - 1e-9)
    _, psi, rho = cells[i]
    unmeasured = unmeasured_dimensions(surface, base, dataset)
    if mixed and len(noises) < 2:  # (one measured type reaches the query's fraction: no mixture to tell)
        unmeasured.append(f"noise type {noise!r} (measured: {', '.join(mixed)}; of them only {noises[0][0]} at "
                          f"{noise_rate:.0%} of labels wrong)")
    if unmeasured:
        # Along a dimension every measured setting shares one value of, the surface has no length
        # scale to learn: the gain may change with it slowly or at once. Far along a dimension of
        # unknown length scale a GP's posterior is its prior, so the interval is no narrower than the
        # prior's (the spread of the measured arms' gains, noise included), centred on the gain
        # predicted at the measured value; the point, region and weighting stay those of the measured
        # settings (the surface's best there), a starting point, not a calibrated answer.
        prior, prior_own = gp_prior_std(model)
        sd, unsure = max(sd, prior), max(unsure, prior_own)
        warnings.append(f"no calibrated gain: {'; '.join(unmeasured)}, outside the measured settings; the surface "
                        "cannot tell how the gain changes with it, so the 95% interval is at least its prior's (the "
                        f"spread of the measured arms' gains, std {prior:.1f} points), and psi, rho and class "
                        "weighting are the surface's best for the measured value")
    if m is not None and predicted > measured + 0.05 and measured <= cap:  # (a difference the printed tenths show)
        warnings.append(f"this setting was measured ({m['setting']}): its best arm gained {measured:+.1f} points "
                        f"at psi {m['best_psi']:.2f}, rho {m['best_rho']:.2f}, class weighting {best_weighting(m)}; "
                        f"the surface predicted {predicted:+.1f} "
                        "here: capped at the measured gain, its interval moved down with it"
                        + ("; prefer the measured arm, or search between the two"
                           if predicted > measured + WITHIN_POINTS else ""))
    elif predicted > cap + 0.05:
        warnings.append(f"the surface predicted {predicted:+.1f} points here, above every measured best of the "
                        f"settings it leans on: capped at the highest, {cap:+.1f} ({top_measured['setting']}), its "
                        "interval moved down with it")
    edges = _at_searched_edge(surface, psi, rho)
    if edges:
        warnings.append(f"the recommended point is at the edge of what was searched ({'; '.join(edges)}): the "
                        "surface predicts no further; the best may lie past it, so search beyond that edge")
    if unsure > MAX_STD and not unmeasured:  # (with the prior's std, said once above)
        warnings.append(f"the surface is unsure here: its own std {unsure:.2f} points at the recommended point "
                        f"(> {MAX_STD:g}; run-to-run noise aside); treat it as a starting point for a search")
    lam = lambda_from_mode(psi)
    return {"psi": psi, "rho": rho, "lam": lam, "beta": beta_from_rho(rho, lam), "class_weighting": chosen,
            "class_weighting_gain": ({cw: best_of[cw] - best_of["none"] for cw in best_of} if "none" in best_of
                                     else None),  # (no weighting not measured: no gain over it)
            "region": {"psi": _span(cells, near, 1), "rho": _span(cells, near, 2),
                       "plausible": {"psi": _span(cells, plausible, 1), "rho": _span(cells, plausible, 2)},
                       "within_points": WITHIN_POINTS},
            "predicted_gain": {"mean": best, "low": best - Z95 * sd, "high": best + Z95 * sd, "level": 0.95,
                               "metric": "final validation accuracy, points over CCE"},
            "predicted_std": sd, "surface_std": unsure, "leans_on": leaned, "warnings": warnings}


def gp_prior_std(d: dict[str, Any]) -> tuple[float, float]:
    """The serialised GP's prior std (points) at any point, with the fitted noise and without it:
    what ``gp_posterior`` gives infinitely far from every training row."""
    c, _, white, _, y_std = _gp_scale(d)
    return math.sqrt(c + white) * y_std, math.sqrt(c) * y_std


def _measured_types(surface: dict[str, Any]) -> set[str]:
    """The noise types the surface's settings measured (clean data as symmetric at rate 0)."""
    return {_noise(s["noise"], s["noise_rate"])[0] for s in surface["settings"]}


def _noisy_types(surface: dict[str, Any]) -> list[str]:
    """The noise types the surface's settings measured at a rate above 0."""
    return sorted({_noise(s["noise"], s["noise_rate"])[0] for s in surface["settings"]
                   if _noise(s["noise"], s["noise_rate"])[1]})


def _noise_mixture(surface: dict[str, Any], noise_type: str, noise_rate: float) -> list[str]:
    """The measured noise types to average over for a noisy query of a type not measured, where
    two or more were (their disagreement then widens the interval, as datasets' does); else []."""
    noise, rate = _noise(noise_type, noise_rate)
    types = _noisy_types(surface)
    return types if rate and noise not in _measured_types(surface) and len(types) > 1 else []


def _noise_variants(types: list[str], fraction: float, num_classes: int) -> list[tuple[str, float]]:
    """Each of the measured noise ``types`` at its own rate (as dm-tune train takes it) for a query's
    ``fraction`` of wrong labels, where it has one: cifar100-superclass makes 0.4 x its rate wrong,
    and none past its limit, 0.5."""
    rates = [(n, rate_of_fraction(n, fraction)) for n in types]
    return [(n, r) for n, r in rates if r < (rate_limit(n, num_classes) or 1.0)]


def unmeasured_dimensions(surface: dict[str, Any], query: dict[str, Any], dataset: str | None) -> list[str]:
    """Where the query (setting keys; ``dataset`` as asked) differs from the one value every measured
    setting shares: a dimension the surface dropped as constant, or a category without a feature
    (one measured noise type, or one dataset, and the query another). Each as a phrase naming it."""
    settings = surface["settings"]
    noise, rate = _noise(query["noise"], query["noise_rate"])
    out = []

    def one(values: set[Any]) -> Any:
        return next(iter(values)) if len(values) == 1 else None

    rates = {_noise(s["noise"], s["noise_rate"])[1] for s in settings}
    if len(rates) == 1 and abs(rate - one(rates)) > rate_slack(noise):
        out.append(f"noise rate {num_text(rate)} (every measured setting: {one(rates):g})")
    types = _noisy_types(surface)
    if rate and noise not in types and len(types) <= 1:  # (two or more: _noise_mixture's)
        out.append(f"noise type {noise!r} (measured: {', '.join(types) or 'clean labels only'})")
    for key, what in (("num_classes", "number of classes"), ("imbalance_ratio", "imbalance ratio")):
        values = {float(s[key]) for s in settings}
        if len(values) == 1 and abs(float(query[key]) - one(values)) > 1e-9:
            out.append(f"{what} {num_text(query[key])} (every measured setting: {one(values):g})")
    kinds = {s["imbalance"] for s in settings}
    if query["imbalance"] not in kinds:  # (an unseen kind has no indicator: it was read as none)
        out.append(f"imbalance {query['imbalance']!r} (measured: {', '.join(sorted(kinds))})")
    names = {s["dataset"] for s in settings}
    # (a dataset left out is read as the measured one where there is one: only a named other is flagged)
    if len(names) == 1 and dataset is not None and dataset != one(names):
        out.append(f"dataset {dataset!r} (every measured setting: {one(names)})")
    return out


def best_weighting(s: dict[str, Any]) -> str:
    """The class weighting a measured setting's best arm trained with (``best_class_weighting``; on
    balanced data every scheme is none): the weighting its measured gain was reached with."""
    return effective_weighting({"imbalance": s["imbalance"], "class_weighting": s.get("best_class_weighting")})


def _row_weightings(model: dict[str, Any], enc: dict[str, Any]) -> list[str]:
    """The class weighting of each of the surface's training rows, from its features. A scheme that
    every arm ran has no feature (it never varies): each row ran that one, not none."""
    names = model["feature_names"]
    cws = [(j, name[3:]) for j, name in enumerate(names) if name.startswith("cw=")]
    dropped = [cw for cw in enc["class_weightings"] if cw != "none" and f"cw={cw}" not in names]
    return [next((cw for j, cw in cws if x[j] == 1.0), dropped[0] if dropped else "none") for x in model["X"]]


def _imbalanced_weightings(model: dict[str, Any], enc: dict[str, Any]) -> set[str]:
    """The class weightings the surface's arms ran on imbalanced data. Without an imbalance feature
    every row has the same imbalance: imbalanced where any ran a weighting (balanced data has none)."""
    names = model["feature_names"]
    imbalance = [j for j, name in enumerate(names) if name.startswith("imbalance=") or name == "log_imbalance_ratio"]
    rows = zip(model["X"], _row_weightings(model, enc))
    return {cw for x, cw in rows if any(x[j] != 0.0 for j in imbalance)
            or (not imbalance and len(enc["class_weightings"]) > 1)}


def _ran(model: dict[str, Any], enc: dict[str, Any]) -> list[tuple[str, float, float]]:
    """The distinct (class weighting, psi, rho) the surface's arms ran, from its training features."""
    names = model["feature_names"]
    out = {(cw, float(x[names.index("psi")]), math.exp(float(x[names.index("log_rho")])))
           for x, cw in zip(model["X"], _row_weightings(model, enc))}
    return sorted(out)


def _at_searched_edge(surface: dict[str, Any], psi: float, rho: float) -> list[str]:
    """Where (psi, rho) lies on a bound of ``searched_span`` that is not one of the fixed grid's."""
    (p0, p1), (r0, r1) = searched_span(surface)
    (g0, g1, n_psi), (h0, h1, n_rho) = PSI_GRID, RHO_GRID
    # A searched bound within half a cell of the grid's is the grid's: a search space's own bound
    # (the decoupled space's psi 0.75, rho 12), which TPE samples up to but never exactly.
    half_psi, half_log_rho = (g1 - g0) / (n_psi - 1) / 2, (math.log(h1) - math.log(h0)) / (n_rho - 1) / 2
    out = []
    for name, value, lo, hi, fixed_lo, fixed_hi, scale, half in (
            ("psi", psi, p0, p1, g0, g1, float, half_psi), ("rho", rho, r0, r1, h0, h1, math.log, half_log_rho)):
        for bound, fixed, side in ((lo, fixed_lo, "lowest"), (hi, fixed_hi, "highest")):
            if math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-12) and abs(scale(bound) - scale(fixed)) >= half:
                out.append(f"{name} {value:.3g}, the {side} searched")
    return out


def same_noise(a: tuple[str, float], b: tuple[str, float]) -> bool:
    """Whether two (noise type, rate) are the same noise (clean is symmetric at 0; a label file's
    rates within FILE_RATE_TOLERANCE)."""
    (na, ra), (nb, rb) = _noise(*a), _noise(*b)
    return na == nb and (abs(ra - rb) <= FILE_RATE_TOLERANCE if na == "file" else ra == rb)


def _is_query(m: dict[str, Any], query: dict[str, Any], dataset: str | None) -> bool:
    """Whether measured setting ``m`` is the queried data (its dataset too, when one is named)."""
    return ((dataset is None or m["dataset"] == dataset)
            and same_noise((m["noise"], m["noise_rate"]), (query["noise"], query["noise_rate"]))
            and int(m["num_classes"]) == int(query["num_classes"]) and m["imbalance"] == query["imbalance"]
            and abs(float(m["imbalance_ratio"]) - float(query["imbalance_ratio"])) < 1e-9)


def _span(cells: list[tuple[str, float, float]], mask: Any, k: int) -> list[float]:
    values = [c[k] for c, m in zip(cells, mask) if m]
    return [min(values), max(values)]


def leans_on(surface: dict[str, Any], x: list[float], n: int = N_LEANS_ON) -> list[dict[str, Any]]:
    """The ``n`` measured settings most correlated (kernel) with feature row ``x``, at x's (psi, rho, cw)."""
    enc = surface["encoding"]
    scored = []
    for s in surface["settings"]:
        row = features([{**s, "psi": 0.5, "rho": 1.0, "class_weighting": "none"}], enc)[0]
        # keep x's DM knobs: only the setting features differ
        row = [xv if name in ("psi", "log_rho") or name.startswith("cw=") else rv
               for name, xv, rv in zip(enc["features"], x, row)]
        scored.append({"setting": s["setting"], "correlation": correlation(surface["model"], list(x), row),
                       "best_gain": s["best_gain"], "best_psi": s["best_psi"], "best_rho": s["best_rho"],
                       "best_class_weighting": s["best_class_weighting"], "model": s.get("model") or "?",
                       **{k: s[k] for k in SETTING_KEYS}})
    return sorted(scored, key=lambda d: -d["correlation"])[:n]


def _extrapolation_warnings(surface: dict[str, Any], num_classes: int, noise_type: str, noise_rate: float,
                            imbalance: str, imbalance_ratio: float, dataset: str | None) -> list[str]:
    settings = surface["settings"]
    out: list[str] = []
    noise, rate = _noise(noise_type, noise_rate)
    slack = rate_slack(noise)  # (a label file's overall rate beside the rate its setting measured)
    rates = [_noise(s["noise"], s["noise_rate"])[1] for s in settings if _noise(s["noise"], s["noise_rate"])[0] == noise]
    if not rates:
        fraction = wrong_label_fraction(noise, rate)
        mixed = _noise_variants(_noise_mixture(surface, noise_type, noise_rate), fraction, num_classes)
        out.append(f"extrapolation: noise type {noise_type!r} was not measured (measured: "
                   f"{', '.join(sorted(_measured_types(surface)))})"
                   + ("; predicted as the average over the measured noise types, their spread in the interval"
                      if len(mixed) > 1 else ""))
        # (its fraction of wrong labels against every type's: what the types share)
        rates = [wrong_label_fraction(*_noise(s["noise"], s["noise_rate"])) for s in settings]
        said = fraction_warning(noise, rate)
        if said:
            out.append(said)
        if not min(rates) - 1e-9 <= fraction <= max(rates) + 1e-9:
            out.append(f"extrapolation: noise rate {num_text(fraction)} is outside the measured range "
                       f"[{min(rates):g}, {max(rates):g}] of any noise type (as fractions of wrong labels)")
    elif not min(rates) - slack <= rate <= max(rates) + slack:
        out.append(f"extrapolation: noise rate {num_text(noise_rate)} is outside the measured range "
                   f"[{min(rates):g}, {max(rates):g}] for {noise} noise")
    classes = [s["num_classes"] for s in settings]
    if not min(classes) <= num_classes <= max(classes):
        out.append(f"extrapolation: number of classes {num_classes} is outside the measured range "
                   f"[{min(classes)}, {max(classes)}]")
    same = [s for s in settings if s["imbalance"] == imbalance]
    if not same:
        out.append(f"extrapolation: imbalance {imbalance!r} was not measured "
                   f"(measured: {', '.join(sorted({s['imbalance'] for s in settings}))})")
    elif imbalance != "none" and not any(abs(s["imbalance_ratio"] - imbalance_ratio) < 1e-9 for s in same):
        ratios = sorted({s["imbalance_ratio"] for s in same})
        where = ("was not measured" if ratios[0] < imbalance_ratio < ratios[-1]
                 else "is outside the measured range")  # (200 read as 40 does, between 10 and 50)
        out.append(f"extrapolation: imbalance ratio {num_text(imbalance_ratio)} {where} for {imbalance} "
                   f"imbalance (measured: {', '.join(f'{r:g}' for r in ratios)})")
    known = dataset is not None and dataset in surface["encoding"]["datasets"]
    if dataset is not None and not known:
        out.append(f"dataset {dataset!r} was not measured (measured: {', '.join(surface['encoding']['datasets'])}); "
                   "predicted as the average over the measured datasets, their spread in the interval")
    # Noise type and imbalance each measured somewhere (and the rate within the type's): were they
    # measured together? (whatever else is extrapolated: the number of classes, a ratio, the dataset)
    if same and not any(w.startswith(("extrapolation: noise type", "extrapolation: noise rate")) for w in out):
        out += _combination_warnings(settings, noise, rate, imbalance, dataset if known else None)
    return out


def _combination_warnings(settings: list[dict[str, Any]], noise: str, rate: float, imbalance: str,
                          dataset: str | None) -> list[str]:
    """The query's noise type, imbalance and dataset measured together, and its noise rate within
    the rates measured with them; else one line saying what the surface combines."""
    what = (f"{noise} noise" if rate else "clean labels") + (f" with {imbalance} imbalance" if imbalance != "none"
                                                            else " on balanced data")
    what += f" on {dataset}" if dataset else ""
    together = [s for s in settings if s["imbalance"] == imbalance and (dataset is None or s["dataset"] == dataset)
                and _noise(s["noise"], s["noise_rate"])[0] == noise]
    if not together:
        return [f"extrapolation: {what} was not measured together (each part was, in other settings); "
                "the surface combines their separate effects"]
    rates = [_noise(s["noise"], s["noise_rate"])[1] for s in together]
    slack = rate_slack(noise)
    if not min(rates) - slack <= rate <= max(rates) + slack:
        return [f"extrapolation: noise rate {rate:g} is outside [{min(rates):g}, {max(rates):g}], the rates "
                f"measured for {what}"]
    return []
