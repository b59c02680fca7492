"""The ``dm-tune`` command line: train, search, report, recommend.

User mistakes (bad flags, bad config values, missing data) end with exit code 2 and one line
on stderr, never a traceback. Heavy imports (torch, ray, mlflow) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dm_tune._validate import ConfigError
from dm_tune.errors import (DataError, UserError, float_argument, int_argument, is_stdout, is_stream, json_text,
                             load_yaml, output_path, path_argument, read_number, resolve_path, split_imbalance,
                             text_argument, unexaminable, write_output)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: "--mode 0.5" (train's psi) was read by search as its --model, "--bet -8"
        # missed the joining of negative values (SIGNED_FLAGS), and a flag added later would change
        # what an abbreviation in a saved command means.
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- train -----------------------------------------------------------------------------------

MAX_THREADS = 1024  # --threads

# flag -> TrainConfig field, for the flags that map one to one.
_TRAIN_FLAGS = {
    "dataset": "dataset", "data_root": "data_root", "noise": "noise", "noise_rate": "noise_rate",
    "noise_file": "noise_file", "noise_key": "noise_key", "imbalance": "imbalance",
    "imbalance_ratio": "imbalance_ratio", "model": "model", "method": "method", "lam": "lam",
    "beta": "beta", "gce_q": "gce_q", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "optimizer": "optimizer", "weight_decay": "weight_decay", "seed": "seed", "device": "device",
    "amp": "amp", "pretrained": "pretrained", "num_workers": "num_workers",
    "class_weighting": "class_weighting", "class_weighting_beta": "class_weighting_beta",
}


# list flag -> (parser of one item, what is allowed)
_LIST_FLAGS: dict[str, tuple[Any, str]] = {
    "method": (str, "expected a comma-separated list of method names, e.g. dm,cce"),
    "lam": (float, "expected a comma-separated list of numbers, e.g. 0.5,1,2"),
    "beta": (float, "expected a comma-separated list of numbers, e.g. 8,16"),
    "seed": (int, "expected a comma-separated list of integers, e.g. 0,1,2"),
}


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model with DM or a baseline and report its accuracy",
                       description="Train one model. Flags override values from --config. Comma-separated "
                       "--method, --lam, --beta and --seed train one member per combination, K at a time "
                       "in one loop (--population-size).")
    p.add_argument("--config", type=path_argument, help="YAML file of TrainConfig fields")
    p.add_argument("--dataset", help="digits (default), mnist1d, cifar10, cifar100, clothing1m, imagefolder, imdb, "
                   "features; retrieval (re-ID): reid-synth, mars, mars-features")
    p.add_argument("--data-root", type=path_argument, help="directory of an on-disk dataset")
    p.add_argument("--noise", help="none, symmetric (default; with the default --noise-rate 0 no label is "
                   "changed), pair, cifar100-superclass, file")
    p.add_argument("--noise-rate", type=float_argument, help="fraction of training labels corrupted, from 0 "
                   "to below the noise type's limit, where a wrong label would be as common as the true one "
                   "((C-1)/C for symmetric on C classes, 0.5 for pair) (cifar100-superclass: of the paired "
                   "subclasses, 2 of each superclass's 5); default 0")
    p.add_argument("--noise-file", type=path_argument,
                   help="label file for --noise file (.npy/.csv/.txt or CIFAR-N .pt)")
    p.add_argument("--noise-key", type=text_argument("a key of the .pt file, e.g. worse_label"),
                   help="key inside a CIFAR-N .pt file, e.g. worse_label")
    p.add_argument("--imbalance", help="none (default), longtail or step; or KIND:RATIO, as dm-tune search takes it "
                   "(step:10)")
    p.add_argument("--imbalance-ratio", type=float_argument, help="largest / smallest class size (default 1)")
    p.add_argument("--model", help="mlp, imdb-mlp, cnn, resnet20/32/44/56, resnet18/50, text; "
                   "reid-resnet18/50 (tracks of frames, mars); default: the dataset's")
    p.add_argument("--method", help="dm (default), cce, cce-dn, gce, gce-dn, mae, mae-dn, mse, mse-dn, sl "
                   "(a comma-separated list: one member each)")
    p.add_argument("--lam", help="DM lambda (emphasis mode psi = lam/(1+lam); default 1); a comma-separated list: one "
                   "member each")
    p.add_argument("--beta", help="DM beta (emphasis variance; default 8); a comma-separated list: one member each")
    p.add_argument("--mode", type=float_argument, help="DM emphasis mode psi in [0, 1000/1001] (instead of --lam; "
                   "lambda up to 1000)")
    p.add_argument("--spread", type=float_argument, help="DM log-spread rho (instead of --beta)")
    p.add_argument("--gce-q", type=float_argument, help="GCE's q (default 0.7)")
    p.add_argument("--class-weighting", help="none (default), inverse, sqrt-inverse, effective-number: weight "
                                             "each class's examples (any method; multiplies DM's weights)")
    p.add_argument("--class-weighting-beta", type=float_argument,
                   help="effective-number's beta in [0, 1) (Cui et al. 2019; default 0.999)")
    p.add_argument("--epochs", type=int_argument, help="training epochs (default: the dataset's)")
    p.add_argument("--batch-size", type=int_argument, help="examples per step (default: the dataset's)")
    p.add_argument("--lr", type=float_argument, help="learning rate (default: the dataset's)")
    p.add_argument("--optimizer", help="sgd or adam (default: the dataset's)")
    p.add_argument("--weight-decay", type=float_argument, help="L2 weight decay (default: the dataset's)")
    p.add_argument("--seed", "--seeds", dest="seed",
                   help="seed of the noise draw, validation split, initialisation and batch order "
                   "(integer, default 0; a comma-separated list: one member each)")
    p.add_argument("--population-size", help="with several members: how many train at once in one loop, an integer "
                   "in [1, 1024] or auto (default: chosen from the measurements for the model and device, for speed "
                   "and memory, BENCHMARKS.md; 16 where none was); the rest run in later populations")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--amp", help="auto (default), off, bf16, fp16: mixed precision on CUDA; bf16 also on the CPU "
                   "(fast where the cores have native bf16, e.g. AMX; auto and fp16 leave the CPU in float32)")
    p.add_argument("--pretrained", type=path_argument,
                   help="local weights file for resnet18/resnet50 (and reid-resnet18/50)")
    p.add_argument("--num-workers", type=int_argument, help="DataLoader workers for the datasets read a batch "
                   "at a time (clothing1m, imagefolder, mars; default 2)")
    p.add_argument("--threads", type=int_argument, help="CPU threads for torch (default: 1 for in-memory vector "
                   "and signal data, whose small models run fastest on one thread; else torch's default)")
    p.add_argument("--out", type=path_argument,
                   help="write the result as JSON to this file, - for stdout (several members: a list, one "
                        "result each)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    p.set_defaults(func=_train_cmd)


def _overridden(args: argparse.Namespace, file_values: dict[str, Any]) -> list[tuple[str, str]]:
    """The --config file's fields that a flag made unused, with the flag: flags override the file,
    so ``--noise symmetric`` drops its label file, ``--noise none`` (or ``file``) its noise rate and
    ``--imbalance none`` its ratio (said once, by _check_applies), unless given by a flag too."""
    dropped = []
    if args.noise is not None and args.noise != "file":
        dropped += [(key, f"--noise {args.noise}") for key in ("noise_file", "noise_key")]
    if args.noise in ("none", "file"):
        dropped.append(("noise_rate", f"--noise {args.noise}"))
    if args.imbalance == "none":
        dropped.append(("imbalance_ratio", "--imbalance none"))
    return [(key, flag) for key, flag in dropped if key in file_values and getattr(args, key) is None]


def _train_values(args: argparse.Namespace, file_values: dict[str, Any]) -> dict[str, Any]:
    """One member's fields: the --config file's (``file_values``), then its flags over them."""
    values = dict(file_values)
    for key, _ in _overridden(args, file_values):
        values.pop(key)
    for flag, field in _TRAIN_FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            values[field] = v
    method = values.get("method", "dm")
    dm_flags = [f for f in ("lam", "beta", "mode", "spread") if getattr(args, f) is not None]
    from dm_tune._names import METHOD_NAMES

    if method not in METHOD_NAMES:  # named first: "--lam only applies to dm, not 'DM'" hid the typo
        raise ConfigError("method", method, "expected one of: " + ", ".join(METHOD_NAMES))
    if method != "dm" and dm_flags:
        raise UserError(f"--{dm_flags[0]}: only applies to --method dm, not {method!r}")
    if args.mode is not None and args.lam is not None:
        raise UserError("--mode and --lam both set the emphasis mode; give one of them")
    if args.spread is not None and args.beta is not None:
        raise UserError("--spread and --beta both set the emphasis variance; give one of them")
    from dm_tune._param import beta_from_rho, lambda_from_mode, mode_from_lambda, rho_from_beta
    from dm_tune.config import BETA_MAX, LAM_MAX

    if args.mode is not None:
        top = mode_from_lambda(LAM_MAX)  # the mode of the largest lambda a run takes
        if not (math.isfinite(args.mode) and 0.0 <= args.mode <= top):
            raise ConfigError("--mode", args.mode, f"the emphasis mode psi must be in [0, {top:.9g}] "
                                                   f"(lambda up to {LAM_MAX:g})")
        values["lam"] = min(lambda_from_mode(args.mode), LAM_MAX)  # psi at the top: LAM_MAX, not a rounding above
    if args.spread is not None:
        try:
            lam = float(values.get("lam", 1.0))
        except (TypeError, ValueError):  # e.g. `lam: abc` in the --config file
            lam = math.nan
        if not (math.isfinite(lam) and lam >= 0):
            raise ConfigError("lam", values.get("lam"), "expected a number >= 0")
        limit = rho_from_beta(BETA_MAX, lam)  # the spread of the largest beta a run takes, at this lambda
        if not (math.isfinite(args.spread) and abs(args.spread) <= limit):
            raise ConfigError("--spread", args.spread, f"the log-spread rho must be in [-{limit:.6g}, {limit:.6g}] "
                                                       f"at this mode (lam {lam:g}; beta up to {BETA_MAX:g})")
        beta = beta_from_rho(args.spread, lam)  # at the limit: BETA_MAX, not a rounding beyond
        values["beta"] = max(-BETA_MAX, min(beta, BETA_MAX))
    return values


def _split_list(flag: str, text: str) -> list[Any]:
    parse, allowed = _LIST_FLAGS[flag]
    values = []
    for item in text.split(","):
        try:
            if not item.strip():
                raise ValueError(item)
            values.append(parse(item.strip()) if parse is str else read_number(item.strip(), parse))
        except ValueError:
            raise ConfigError(f"--{flag.replace('_', '-')}", item, allowed) from None
    if len(set(values)) != len(values):  # as search and validate: one member per value
        raise ConfigError(f"--{flag.replace('_', '-')}", text, "each value once (one member per value)")
    return values


def _members(args: argparse.Namespace, file_values: dict[str, Any]) -> list[argparse.Namespace]:
    """One namespace per member: the Cartesian product of the list flags (method x lam x beta x
    seed; the DM flags only multiply DM members). One member: ``args`` with scalar values."""
    lists = {f: _split_list(f, getattr(args, f)) if getattr(args, f) is not None else [None] for f in _LIST_FLAGS}
    file_method = file_values.get("method") if lists["method"] == [None] else None
    dm_flags = ("lam", "beta", "mode", "spread")
    members = []
    for method in lists["method"]:
        is_dm = (method or file_method or "dm") == "dm"
        for lam in lists["lam"] if is_dm else [None]:
            for beta in lists["beta"] if is_dm else [None]:
                for seed in lists["seed"]:
                    values = {**vars(args), "method": method, "lam": lam, "beta": beta, "seed": seed}
                    if not is_dm and len(lists["method"]) > 1:  # DM knobs do not apply to this member
                        values.update(mode=None, spread=None)
                    members.append(argparse.Namespace(**values))
    no_dm = not any((m.method or file_method or "dm") == "dm" for m in members)
    if no_dm and any(getattr(args, f) is not None for f in dm_flags):
        # DM knobs but no DM member: give them back, so that _train_values says it is a mistake.
        members[0] = argparse.Namespace(**{**vars(members[0]), "lam": lists["lam"][0], "beta": lists["beta"][0],
                                           "mode": args.mode, "spread": args.spread})
    return members


def _epoch_line(m: dict[str, float], epochs: int) -> str:
    """One run's epoch, as train() reports it (classification or retrieval)."""
    w = (f"  w clean/noisy {m['weight_clean']:.2f}/{m['weight_noisy']:.2f}"
         if math.isfinite(m["weight_noisy"]) else "")
    evals = (f"val mAP {100 * m['val_map']:5.1f}  test mAP {100 * m['test_map']:5.1f} "
             f"rank-1 {100 * m['test_rank1']:5.1f}" if "val_map" in m else
             (f"val {100 * m['val_acc']:5.1f}%  " if math.isfinite(m["val_acc"]) else "")
             + f"test {100 * m['test_acc']:5.1f}%")
    return (f"epoch {int(m['epoch']):>3}/{epochs}  loss {m['train_loss']:.4f}  "
            f"train {100 * m['train_acc']:5.1f}%  {evals}{w}  {m['epoch_time_s']:.2f}s")


def _result_line(result: Any) -> str:
    """A finished run's outcome: final accuracy (or mAP and CMC), best over training, time."""
    r = result.retrieval
    if r:
        return (f"{result.status}: final test mAP {100 * r['test_map']:.2f}, rank-1/5/10 {100 * r['test_rank1']:.2f}/"
                f"{100 * r['test_rank5']:.2f}/{100 * r['test_rank10']:.2f}% (val mAP {100 * r['val_map']:.2f}); "
                f"best test mAP over training {100 * r['best_test_map']:.2f}; {result.train_time_s:.1f}s")
    val = f"val {100 * result.val_accuracy:.2f}%" if math.isfinite(result.val_accuracy) else "no validation split"
    return (f"{result.status}: final test accuracy {100 * result.test_accuracy:.2f}% "
            f"({val}); best over training {100 * result.best_test_accuracy:.2f}% "
            f"at epoch {result.best_epoch}; {result.train_time_s:.1f}s")


def _progress(quiet: bool, epochs_hint: list[int]):
    def report(m: dict[str, float], _snapshot: Any) -> None:
        if not quiet:
            print(_epoch_line(m, epochs_hint[0]), file=sys.stderr, flush=True)

    return report


def _out_path(args: argparse.Namespace, configs: list[Any]) -> Path | None:
    """--out, checked before the work; never one of the run's own input files (the result would
    replace the config or the labels it was read from)."""
    if not args.out:
        return None
    out = output_path("--out", args.out)
    inputs = [("--config", args.config)] + [(name, getattr(c, field)) for c in configs for field, name in
                                            (("noise_file", "its noise labels"), ("pretrained", "its weights"))]
    for name, value in inputs:
        if value and resolve_path(value, name if name == "--config" else f"{name} ({value})") == out:
            raise UserError(f"--out {args.out}: is the run's input ({name}); write the result elsewhere")
    for root in {c.data_root for c in configs if c.data_root and not unexaminable(c.data_root)}:
        where = resolve_path(root, f"data_root ({root})")  # (a features file, or a file of a data folder)
        if where == out or (where.is_dir() and out.is_file() and where in out.parents):
            raise UserError(f"--out {args.out}: is the run's input (its data, data_root {root}); "
                            "write the result elsewhere")
    return out


def check_threads(threads: int | None) -> None:
    """--threads within [1, MAX_THREADS] (torch fails to start 100,000 threads with a traceback)."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ConfigError("--threads", threads, f"expected an integer in [1, {MAX_THREADS}]")


def _threads_and_model(args: argparse.Namespace, data: Any, resolved: Any) -> None:
    """Torch's threads (--threads, else 1 for small in-memory models, which run fastest on one),
    and the model built once, so that a model that does not fit the data fails before training."""
    from dm_tune.models import ModelSpec, build_model
    from dm_tune.train import torch_threads

    check_threads(args.threads)
    torch_threads(args.threads, data)
    build_model(resolved.model, ModelSpec(data.input_shape, data.input_kind, data.num_classes,
                                          resolved.hidden_dim, resolved.pretrained, data.vocab_size))


def _check_applies(args: argparse.Namespace, given: dict[str, Any], configs: list[Any],
                   file_values: dict[str, Any], resolved: bool = False) -> None:
    """A field given (in --config or by a flag) that no member uses is a mistake: it would be
    silently ignored (``--gce-q`` with DM, ``lam`` in a file that trains CCE). Only a warning where
    a flag changed what decides it (``--method cce`` over a --config file of DM knobs: flags
    override the file). ``resolved``: ``configs`` carry the dataset's defaults (checked again once
    the data is loaded), and only the fields that a default decides are checked."""
    import dataclasses

    from dm_tune.config import APPLIES, TrainConfig

    if resolved:
        for field, (applies, where, decider) in APPLIES.items():
            if field in given and given[field] != "" and decider not in given and not any(map(applies, configs)):
                raise ConfigError(field, given[field], f"only applies to {where}; this run's {decider} is "
                                  f"{getattr(configs[0], decider)} (the dataset's default), which would ignore it")
        return
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    as_filed = argparse.Namespace(**{d: file_values.get(d, defaults[d]) for _, _, d in APPLIES.values()})
    inert = {"noise_rate": 0, "imbalance_ratio": 1}  # (a value that changes nothing: no word about it)
    for key, flag in _overridden(args, file_values):  # dropped by _train_values
        if file_values[key] not in (None, "") and file_values[key] != inert.get(key):
            print(f"dm-tune: warning: {key} from --config {args.config} is ignored: {flag} overrides the file",
                  file=sys.stderr)
    for field, (applies, where, decider) in APPLIES.items():
        if field not in given or given[field] == "" or any(applies(c) for c in configs):
            continue
        flagged = getattr(args, decider, None)
        if field in file_values and getattr(args, field, None) is None and flagged is not None \
                and _applies_safely(applies, as_filed):  # the file was consistent; the flag changed it
            print(f"dm-tune: warning: {field} from --config {args.config} is ignored: it applies to {where}, and "
                  f"--{decider.replace('_', '-')} {flagged} overrides the file", file=sys.stderr)
            continue
        raise ConfigError(field, given[field], f"only applies to {where}; this run would ignore it")


def _applies_safely(applies: Callable[[Any], bool], config: Any) -> bool:
    try:
        return bool(applies(config))
    except (KeyError, TypeError):  # e.g. a dataset name the file got wrong: TrainConfig says so
        return False


def _noise_text(config: Any) -> str:
    """The noise a run adds, for its first line (a dataset's own noise, Clothing1M's, with none added
    read "symmetric noise 0 (realised 0.179)")."""
    if config.noise == "file":
        return "file noise"
    return f"{config.noise} noise {config.noise_rate:g}" if config.noise != "none" and config.noise_rate \
        else "no noise added"


def _imbalance_text(config: Any, data: Any = None) -> str:
    """The imbalance a run trains on and its class weighting, for its first line ("" when balanced
    and unweighted): ", longtail imbalance 20:1 (realised 19.8:1), class weighting sqrt-inverse" (no
    realised ratio without ``data``: a population's members draw theirs by seed, as their noise)."""
    text = ""
    if config.imbalance != "none":
        from dm_tune.reports._text import ratio_text

        realised = None if data is None else data.info.get("imbalance_ratio_realised")
        text = f", {config.imbalance} imbalance {ratio_text(config.imbalance_ratio)}" + (
            f" (realised {realised:.1f}:1)" if realised is not None else "")
    return text + (f", class weighting {config.class_weighting}" if config.class_weighting != "none" else "")


def _train_cmd(args: argparse.Namespace) -> int:
    from dm_tune.config import TrainConfig

    split_imbalance(args)
    file_values = load_yaml(args.config, "--config") if args.config else {}  # read once, for every member
    members = _members(args, file_values)
    args.population_size = _population_size(args.population_size)
    member_values = [_train_values(m, file_values) for m in members]
    configs = [TrainConfig.from_dict(v) for v in member_values]
    given = {k: v for values in member_values for k, v in values.items() if v is not None}
    _check_applies(args, given, configs, file_values)
    pretrained = configs[0].pretrained  # (one value for every member: not a list flag)
    why = unexaminable(pretrained) if pretrained else None
    if pretrained and (why or not Path(pretrained).expanduser().is_file()):  # as a study checks it, before any work
        raise ConfigError("pretrained", pretrained, "expected an existing local weights file"
                          + (f" (it cannot be examined: {why})" if why else ""))
    if len(members) > 1:
        return _train_population_cmd(args, configs, given, file_values)
    if args.population_size not in (None, 1):
        raise ConfigError("--population-size", args.population_size, "only applies to several members (lists "
                          "in --lam, --beta, --method or --seed); this run trains one")
    args = members[0]
    config = configs[0]
    from dm_tune.data import prepare
    from dm_tune.train import select_device, train

    try:
        select_device(config.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    out = _out_path(args, [config])
    data = prepare(config, strict_imbalance=True)
    resolved = config.resolve(data.defaults, data.default_model, data.input_kind)
    _check_applies(args, given, [resolved], file_values, resolved=True)
    _threads_and_model(args, data, resolved)
    if not args.quiet:
        dm = f" lam={_shortest(resolved.lam)} beta={_shortest(resolved.beta)}" if resolved.method == "dm" else ""
        print(f"dm-tune train: {resolved.dataset} ({len(data.train)} train / {len(data.val)} val / "
              f"{len(data.test)} test), {_noise_text(resolved)} (realised {data.noise_rate:.3f})"
              f"{_imbalance_text(resolved, data)}, model {resolved.model}, "
              f"{resolved.method}{dm}, seed {resolved.seed}", file=sys.stderr)
    result = train(config, data, _progress(args.quiet, [resolved.epochs]))
    said = sys.stderr if is_stdout(out) else sys.stdout
    print(_result_line(result), file=said)
    if out is not None:
        write_output(out, json_text(result.to_dict()))
        print(f"wrote {out}", file=said)
    return 0


def _population_size(text: str | None) -> int | None:
    """--population-size: an integer in [1, 1024] as a study's, or auto (None: the default)."""
    if text is None or text.strip() == "auto":
        return None
    try:
        size = read_number(text.strip(), int)
    except ValueError:
        size = None
    if size is None or not 1 <= size <= 1024:
        raise ConfigError("--population-size", text, "expected 'auto' or an integer in [1, 1024]")
    return size


def _shortest(x: float) -> str:
    """``x`` in :g form, or in full where :g (6 digits) would round it: two members' labels differ."""
    text = f"{x:g}"
    return text if float(text) == x else repr(float(x))


def _member_label(config: Any) -> str:
    knobs = f" lam={_shortest(config.lam)} beta={_shortest(config.beta)}" if config.method == "dm" else ""
    return f"{config.method}{knobs} seed={config.seed}"


def population_progress(quiet: bool, epochs: int, labels: list[str], indent: str = ""):
    """A population's report (``train_population``): each epoch as one line on stderr (a member
    trained alone: its own line), ``indent`` before each."""
    def report(metrics: dict[int, dict[str, float]], _snapshot: Any) -> None:
        if quiet or not metrics:
            return
        rows = list(metrics.values())
        if "population_epoch_time_s" not in rows[0]:  # trained one member at a time: its own epoch
            for k, m in metrics.items():
                print(f"{indent}[{labels[k]}] {_epoch_line(m, epochs)}", file=sys.stderr, flush=True)
            return
        size = len(labels)
        # (a member that diverged this epoch leaves the range: its accuracy is the frozen model's)
        test = sorted(100 * m["test_acc"] for m in rows if not m.get("diverged"))
        diverged = ", ".join(labels[k] for k, m in metrics.items() if m.get("diverged"))
        scores = (f"test {test[0]:5.1f}-{test[-1]:5.1f}% (median {statistics.median(test):5.1f}%)" if test else
                  "none still training")
        print(f"{indent}epoch {int(rows[0]['epoch']):>3}/{epochs}  {len(rows)}/{size} members  {scores}"
              f"{f'  diverged: {diverged}' if diverged else ''}  {rows[0]['population_epoch_time_s']:.2f}s",
              file=sys.stderr, flush=True)

    return report


def _train_population_cmd(args: argparse.Namespace, configs: list[Any], given: dict[str, Any],
                          file_values: dict[str, Any]) -> int:
    """Several members: populations of --population-size, one result per member."""
    from dm_tune.data import load_source, prepare
    from dm_tune.population import solo_reason, suggested_population_size, train_population
    from dm_tune.train import select_device

    try:
        device = select_device(configs[0].device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    out = _out_path(args, configs)
    source = load_source(configs[0])  # every member reads the same dataset; prepare() per seed
    cache: dict[Any, Any] = {}

    def data_of(config: Any) -> Any:
        key = config.data_seed if config.data_seed is not None else config.seed
        if key not in cache:
            cache[key] = prepare(config, source, strict_imbalance=True)
        return cache[key]

    first = data_of(configs[0])
    resolved = configs[0].resolve(first.defaults, first.default_model, first.input_kind)
    _check_applies(args, given, [c.resolve(first.defaults, first.default_model, first.input_kind) for c in configs],
                   file_values, resolved=True)
    _threads_and_model(args, first, resolved)
    size = args.population_size or suggested_population_size(str(resolved.model), device.type)
    # Members that must train alone, every one of them (data read from disk, a retrieval task): said
    # once here, where the header said "1 population(s) of up to 16" and the population then trained
    # one member at a time (the data's reasons hold for every member: first's data stands for theirs).
    alone = solo_reason(configs[0], first)
    if alone is not None and all(solo_reason(c, first) for c in configs[1:]):
        size = 1
    else:
        alone = None
    groups = [list(range(i, min(i + size, len(configs)))) for i in range(0, len(configs), size)]
    if not args.quiet:
        print(f"dm-tune train: {resolved.dataset} ({len(first.train)} train / {len(first.val)} val / "
              f"{len(first.test)} test), {_noise_text(resolved)}{_imbalance_text(resolved)}, "
              f"model {resolved.model}; "
              + (f"{len(configs)} members, one at a time: {alone}" if alone and args.population_size != 1
                 else f"{len(configs)} members in {len(groups)} population(s) of up to {size}"), file=sys.stderr)
    results: list[Any] = []
    said = sys.stderr if is_stdout(out) else sys.stdout
    # A file --out holds every member that has ended, rewritten whole as each population ends: an
    # interrupted or failed run keeps those (a stream, stdout or a pipe, gets the one list at the end).
    as_they_end = out is not None and not is_stream(out)
    for group in groups:
        cache.clear()
        members = [configs[i] for i in group]
        if not args.quiet:
            print(f"population {len(results) // size + 1}/{len(groups)}: "
                  + ", ".join(_member_label(c) for c in members), file=sys.stderr)
        datas = [data_of(c) for c in members]
        ended = train_population(members, datas, population_progress(
            args.quiet, int(resolved.epochs or 0), [_member_label(c) for c in members]))
        results += ended
        if as_they_end and len(results) < len(configs):
            write_output(out, json_text([r.to_dict() for r in results]))
        for config, result in zip(members, ended):
            print(f"[{_member_label(config)}] {_result_line(result)}", file=said, flush=True)
    if out is not None:
        write_output(out, json_text([r.to_dict() for r in results]))
        print(f"wrote {out}", file=said)
    return 0


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from dm_tune import __version__

    parser = _Parser(prog="dm-tune", description="Tune and understand Derivative Manipulation (DM).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    from dm_tune.search.cli import add_search_parser
    from dm_tune.reports._cli import add_recommend_parser, add_report_parser
    from dm_tune.reports._stability import add_stability_parser
    from dm_tune.validate import add_validate_parser

    add_search_parser(sub)
    add_report_parser(sub)
    add_recommend_parser(sub)
    add_validate_parser(sub)
    add_stability_parser(sub)
    return parser


# Flags whose value may start with a minus: argparse takes "--beta -8,8" or "--spread -1e3" for an
# option ("expected one argument"); such a value is joined to its flag (--beta=-8,8) before parsing.
# The number flags whose negative values are mistakes too: so that they are told what is allowed
# (argparse reads -5 as a value, but not -1e-3 or -inf).
SIGNED_FLAGS = ("--lam", "--beta", "--mode", "--spread", "--gce-q", "--noise-rate", "--imbalance-ratio", "--lr",
                "--weight-decay", "--class-weighting-beta", "--num-classes", "--epochs", "--batch-size", "--seed",
                "--seeds", "--cpus-per-trial", "--gpus-per-trial", "--num-samples", "--top-k", "--max-concurrent",
                "--sampler-seed", "--search-seeds", "--threads", "--num-workers", "--population-size")


def _signed_values(argv: list[str]) -> list[str]:
    def numbers(token: str) -> bool:
        try:
            [float(part) for part in token.split(",")]
        except ValueError:
            return False
        return True

    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SIGNED_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and numbers(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


_terminated = False


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler's or a service manager's stop) as Ctrl-C: the same graceful end (a
    search's trials stopped, its resume command told; a training's finished members kept), then
    exit status 143. It died silently (train), or by Ray's handler with a stack dump (search)."""
    global _terminated
    _terminated = True
    import signal

    handler = signal.getsignal(signal.SIGINT)  # (not raise_signal: a process started with SIGINT ignored,
    if callable(handler):                      # as `cmd &` in a script is, would then ignore SIGTERM too)
        handler(signal.SIGINT, frame)  # Tune's graceful stop in a search, Python's KeyboardInterrupt elsewhere
    else:
        raise KeyboardInterrupt


def on_sigterm_interrupt() -> Any:
    """Take SIGTERM as above (again after ``ray.init``, whose handler replaces Python's); the
    handler it replaced, None where it cannot (not the main thread) or none was Python's."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def main(argv: list[str] | None = None) -> int:
    import signal

    global _terminated
    _terminated = False
    before = on_sigterm_interrupt()
    try:
        parser = build_parser()
        args = parser.parse_args(_signed_values(sys.argv[1:] if argv is None else list(argv)))
        rc = int(args.func(args) or 0)
        return 143 if _terminated and rc == 130 else rc
    except (ConfigError, DataError, UserError) as e:
        print(f"dm-tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dm-tune: terminated" if _terminated else "dm-tune: interrupted", file=sys.stderr)
        return 143 if _terminated else 130
    except BrokenPipeError:  # the output went to a pipe that closed (`dm-tune recommend ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the output went to a full disk (`> /dev/full`) or a device that failed
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (what is left to flush, dropped)
        print(f"dm-tune: error: {e.filename or 'the output'}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if before is not None:  # (as it was: main is also called in-process)
            signal.signal(signal.SIGTERM, before)


def console_main() -> int:
    """The ``dm-tune`` console script: ``main``, then a quick exit.

    With torch, Ray, MLflow and Optuna loaded, the interpreter's collections at exit walk millions
    of objects that are about to be freed anyway: 1.5-2 s after the last line is printed.
    ``gc.freeze`` leaves them out of those walks. The ``atexit`` handlers (Ray's shutdown among
    them) still run, and objects are still freed when their last reference goes."""
    rc = main()
    import gc

    gc.freeze()
    return rc


if __name__ == "__main__":
    sys.exit(console_main())
