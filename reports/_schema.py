"""Reading a guidelines file back: schema validation with one clear line per problem."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dm_tune._names import CLASS_WEIGHTING_NAMES, IMBALANCE_KINDS, NOISE_NAMES
from dm_tune._validate import config_error, in_range, one_of, rule, violation
from dm_tune.errors import UserError, read_input
from dm_tune.reports._text import ANALYSIS_VERSION, SCHEMA_VERSION
from dm_tune.reports._stability import check_doc

# The file is JSON that recommend() computes with as it is: no coercion ("0.3" is not a number),
# no NaN; keys beyond these are the report's and pass through.
_JSON = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

Range = Annotated[list[float], rule(lambda v: len(v) == 2 and v[0] <= v[1],
                                    "expected a [low, high] pair of numbers")]


class _Setting(BaseModel):
    """What recommend() relies on in each setting."""

    model_config = _JSON
    noise: Annotated[str, one_of(NOISE_NAMES)]
    imbalance: Annotated[str, one_of(IMBALANCE_KINDS)]
    num_classes: Annotated[int, in_range(2)]
    noise_rate: Annotated[float, in_range(0, 1, hi_open=True)]
    imbalance_ratio: Annotated[float, in_range(1)]
    psi: Annotated[float, in_range(0, 1, hi_open=True)]
    lam: Annotated[float, in_range(0)]
    rho: float
    beta: float
    psi_range: Range
    rho_range: Range
    n_seeds: Annotated[int, in_range(1)]
    vs_baselines: dict[str, Any]
    task: Literal["classification", "retrieval"] = "classification"


# The features fit_surface writes (reports/_surface.py): these names, and indicators by prefix.
PLAIN_FEATURES = ("psi", "log_rho", "noise_rate", "log_num_classes", "log_imbalance_ratio")
FEATURE_PREFIXES = ("cw=", "noise=", "imbalance=", "dataset=")
MAX_LOG_HYPER = 700.0  # exp(710) overflows a double


class _Model(BaseModel):
    """What gp_predict() relies on: the serialised Gaussian process."""

    model_config = _JSON
    feature_names: list[str]
    X: list[list[float]]
    y: list[float]
    theta: list[float]
    kernel: dict[str, Any]
    normalize_y: bool
    alpha: float

    @model_validator(mode="after")
    def _shapes(self) -> "_Model":
        """One row of features per target, one length scale per feature (a theta one short would be
        broadcast over every feature: a different surface, silently)."""
        n = len(self.feature_names)
        if not self.X or len(self.y) != len(self.X):
            raise violation(f"expected one target per row of X ({len(self.X)} rows)", "y", f"{len(self.y)} targets")
        width = next((len(row) for row in self.X if len(row) != n), None)
        if width is not None:
            raise violation(f"expected rows of {n} values, one per feature name", "X", f"a row of {width}")
        if len(self.theta) != n + 2:
            raise violation(f"expected {n + 2} values: log signal variance, {n} log length scales, log noise",
                            "theta", f"{len(self.theta)} values")
        bad = next((t for t in self.theta if not (math.isfinite(t) and abs(t) <= MAX_LOG_HYPER)), None)
        if bad is not None:  # exp() of it overflows: no kernel
            raise violation(f"expected finite log hyper-parameters within ±{MAX_LOG_HYPER:g}", "theta", bad)
        # Within the bounds the fit had (kernel.*_bounds, where recorded): one far outside them gave
        # intervals of 1e154 points, answered as a recommendation.
        parts = (("constant_value_bounds", self.theta[:1]), ("length_scale_bounds", self.theta[1:-1]),
                 ("noise_level_bounds", self.theta[-1:]))
        for key, values in parts:
            bounds = self.kernel.get(key)
            if bounds is None:
                continue
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < math.inf for b in bounds)):
                raise violation("expected [low, high], two positive numbers", f"kernel.{key}", bounds)
            lo, hi = math.log(bounds[0]) - 1e-6, math.log(bounds[1]) + 1e-6
            bad = next((t for t in values if not lo <= t <= hi), None)
            if bad is not None:
                raise violation(f"expected log values within the fit's kernel.{key} {bounds}", "theta", bad)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise violation("expected a finite jitter >= 0", "alpha", self.alpha)
        unknown = next((f for f in self.feature_names if not (f in PLAIN_FEATURES or f.startswith(FEATURE_PREFIXES))),
                       None)
        if unknown is not None or not {"psi", "log_rho"} <= set(self.feature_names):
            raise violation(f"expected psi, log_rho and features among {', '.join(PLAIN_FEATURES)} or "
                            f"{', '.join(p + '...' for p in FEATURE_PREFIXES)}", "feature_names",
                            unknown or self.feature_names)
        return self


class _Encoding(BaseModel):
    model_config = _JSON
    features: list[str]
    class_weightings: list[Annotated[str, one_of(CLASS_WEIGHTING_NAMES)]]  # (else recommended, and trained)
    noise_types: list[Annotated[str, one_of(NOISE_NAMES)]]
    imbalances: list[Annotated[str, one_of(IMBALANCE_KINDS)]]
    datasets: list[str]


class _SurfaceSetting(BaseModel):
    model_config = _JSON
    setting: str
    dataset: str
    noise: Annotated[str, one_of(NOISE_NAMES)]
    noise_rate: Annotated[float, in_range(0, 1, hi_open=True)]
    num_classes: Annotated[int, in_range(2)]
    imbalance: Annotated[str, one_of(IMBALANCE_KINDS)]
    imbalance_ratio: Annotated[float, in_range(1)]
    best_gain: float
    best_psi: float
    best_rho: float
    best_class_weighting: str


class _Surface(BaseModel):
    """What recommend() relies on in the response surface (written by ``fit_surface``)."""

    model_config = _JSON
    task: Literal["classification"]
    encoding: _Encoding
    model: _Model
    settings: Annotated[list[_SurfaceSetting], rule(bool, "expected at least one measured setting")]
    # counts its text states (absent from older files: the model's rows are counted instead)
    n_rows: Annotated[int, in_range(1)] | None = None
    n_baseline_rows: Annotated[int, in_range(0)] | None = None
    n_negative_beta_arms: Annotated[int, in_range(0)] | None = None

    @model_validator(mode="after")
    def _same_features(self) -> "_Surface":
        if self.encoding.features != self.model.feature_names:
            raise violation("expected the model's feature_names", "encoding.features", self.encoding.features)
        return self


class _Guidelines(BaseModel):
    model_config = _JSON
    schema_version: Annotated[int, rule(lambda v: v == SCHEMA_VERSION,
                                        f"expected {SCHEMA_VERSION} (a file of schema version 1 must be "
                                        "regenerated with 'dm-tune report'; a later version was written by a "
                                        "newer dm-tune)")]
    # (absent: written before it was recorded, 1; a later one than this dm-tune's ran silently)
    analysis_version: Annotated[int, rule(lambda v: 1 <= v <= ANALYSIS_VERSION,
                                          f"expected 1 to {ANALYSIS_VERSION} (a later version was written by a "
                                          "newer dm-tune)")] = 1
    settings: list[_Setting]
    rules: list[Any]
    provenance: dict[str, Any]
    surface: _Surface | None = None      # absent: no classification setting with CCE runs
    loso: dict[str, Any] | None = None   # absent: no setting could be held out


def default_guidelines_path() -> Path:
    """The guidelines shipped with the package (generated by the maintainers from a real campaign)."""
    return Path(__file__).resolve().parent / "default_guidelines.json"


def read_guidelines_file(path: Path) -> Any:
    """The JSON of a guidelines file, unchecked; a missing, unreadable, malformed or too deeply
    nested file -> UserError naming it (``load_guidelines``, and ``dm-tune stability``'s reader)."""
    try:
        return json.loads(read_input(path, "guidelines file", "a guidelines JSON file"))
    except FileNotFoundError:
        raise UserError(f"guidelines file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read guidelines file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"guidelines file {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise UserError(f"guidelines file {path} is nested too deeply to read") from None


def load_guidelines(path: str | Path) -> dict[str, Any]:
    """Read and validate a guidelines.json; any problem -> UserError naming the file and the field."""
    path = Path(path)
    doc = read_guidelines_file(path)
    try:
        problem = validate_guidelines(doc)
    except RecursionError:
        raise UserError(f"guidelines file {path} is nested too deeply to read") from None
    if problem:
        raise UserError(f"guidelines file {path}: {problem}")
    # (stability's check of the entries both rely on, each setting's name once and the rules' keys:
    # recommend refuses what stability refuses; a setting without its name, or listed twice, was
    # recommended from)
    check_doc(doc, f"guidelines file {path}")
    return doc


def surface_problem(surface: Any) -> str | None:
    """The first schema problem of a guidelines document's ``surface`` block, or None."""
    return _first_problem(_Surface, surface, where="surface")


# The other JSON files dm-tune writes, by keys they have and guidelines lack: passed as guidelines
# they were told "schema_version: missing; this field is required".
OTHER_OUTPUTS = ((("summary", "schema_versions"), "a stability.json written by 'dm-tune stability'"),
                 (("seeds", "verdict_rule"), "a validation.json written by 'dm-tune validate'"))


def validate_guidelines(doc: Any) -> str | None:
    """The first schema problem in ``doc`` as one line naming the field, or None when it is valid."""
    if isinstance(doc, dict) and "schema_version" not in doc:
        what = next((what for keys, what in OTHER_OUTPUTS if all(k in doc for k in keys)), None)
        if what is not None:
            return (f"this is {what}, not guidelines; pass the guidelines.json that 'dm-tune report' writes "
                    "(WORKSPACE/report)")
    return _first_problem(_Guidelines, doc, root="the top level")


def _first_problem(model: type[BaseModel], value: Any, where: str = "", root: str = "") -> str | None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return str(config_error(exc, model, value, where=where, root=root))
    return None
