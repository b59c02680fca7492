"""``dm-tune search``: flags and study files -> a validated Study -> run_study -> summary."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from dm_tune._validate import ConfigError
from dm_tune.errors import (UserError, absolute_paths, float_argument, int_argument, is_server, load_yaml,
                            no_room, output_path, parse_url, path_argument, read_number, resolve_path, text_argument,
                            write_output)

DEFAULT_WORKSPACE = "./dmtune-runs"


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search DM's emphasis mode x variance and measure the baselines (Ray Tune + Optuna + MLflow)",
        description="With no arguments: the embedded default study (digits, 40% symmetric noise). "
                    "List flags take comma-separated values (e.g. --noise-rate 0.2,0.4).")
    p.add_argument("--config", type=path_argument, help="study YAML file (see studies/)")
    p.add_argument("--name", help="study name (default: the config's, else 'default')")
    p.add_argument("--workspace", type=path_argument, default=DEFAULT_WORKSPACE,
                   help="where everything is written (default ./dmtune-runs)")
    p.add_argument("--resume", metavar="NAME", type=text_argument("a study name"),
                   help="resume the interrupted study NAME in the workspace")
    p.add_argument("--dataset", help="datasets, e.g. digits,mnist1d (default digits)")
    p.add_argument("--data-root", type=path_argument, help="root of an on-disk dataset")
    p.add_argument("--pretrained", type=path_argument,
                   help="local ImageNet weights (a torchvision state dict) for resnet18/resnet50")
    p.add_argument("--noise", help="noise types, e.g. symmetric,pair (default symmetric)")
    p.add_argument("--noise-rate", help="noise rates, e.g. 0,0.2,0.4 (default 0.4)")
    p.add_argument("--imbalance", help="imbalance profiles, e.g. none,step:10 (default none)")
    p.add_argument("--model", help="models (default: each dataset's)")
    p.add_argument("--num-samples", type=int_argument, help="DM trials per setting (default 30)")
    p.add_argument("--epochs", type=int_argument, help="training budget per trial (default: the dataset's)")
    p.add_argument("--space", help="decoupled (default), paper, paper-grid")
    p.add_argument("--sampler", help="tpe (default), gp, cmaes, random, grid")
    p.add_argument("--seeds", type=text_argument("comma-separated seeds"),
                   help="seeds for the confirm stage (default 0,1,2)")
    p.add_argument("--top-k", type=int_argument, help="DM arms confirmed over all seeds (default 3)")
    p.add_argument("--warm-start", metavar="GUIDELINES", type=text_argument("true, false or a guidelines.json path"),
                   help="a guidelines.json ('dm-tune report'): search each setting inside the region it "
                        "recommends, starting at its point (default: start at the paper's suggestions)")
    p.add_argument("--sampler-seed", type=int_argument, help="seed of the sampler (the search order; default 0)")
    p.add_argument("--search-seeds", type=int_argument, help="seeds each search arm trains on (the first of --seeds; "
                   "default 2): the search maximises the arm's mean final validation accuracy over them")
    p.add_argument("--class-weighting", help="class weighting schemes searched with DM's knobs, e.g. "
                   "none,inverse,sqrt-inverse,effective-number (default none: not searched)")
    p.add_argument("--baselines", help="baselines, e.g. cce,gce,imae ('none' for no baselines; default "
                   "cce,cce-dn,gce,mae,mse,sl,dm-beta0,imae)")
    p.add_argument("--max-concurrent", type=int_argument, help="trials at once (default 2)")
    p.add_argument("--cpus-per-trial", type=float_argument, help="CPU cores Ray gives each trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float_argument, help="GPUs per trial; fractions share a GPU (default 0)")
    p.add_argument("--population-size", help="DM configurations trained together in one trial: an integer "
                   "in [1, 1024] (1: one per trial) or auto (default: chosen per model and device)")
    p.add_argument("--scheduler", help="none (default) or asha")
    p.add_argument("--address", help="an existing Ray cluster: auto or HOST:PORT")
    p.add_argument("--storage-path", type=path_argument,
                   help="Ray results dir (shared storage on a multi-node cluster)")
    p.add_argument("--tracking-uri", type=text_argument("an MLflow tracking URI"),
                   help="MLflow tracking URI (default sqlite in the workspace)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(func=search_cmd)


def _split(flag: str, text: str) -> list[str]:
    """A comma-separated flag's items; an empty item (``0,,1``, a trailing comma) is a mistake."""
    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise ConfigError(f"--{flag.replace('_', '-')}", text, "comma-separated values, none of them empty")
    return items


# flag -> (path in the study dict, is a list)
_STUDY_FLAGS: dict[str, tuple[tuple[str, ...], bool]] = {
    "dataset": (("settings", "dataset"), True),
    "noise": (("settings", "noise"), True),
    "noise_rate": (("settings", "noise_rate"), True),
    "imbalance": (("settings", "imbalance"), True),
    "model": (("settings", "model"), True),
    "num_samples": (("search", "num_samples"), False),
    "space": (("search", "space"), False),
    "sampler": (("search", "sampler"), False),
    "top_k": (("search", "top_k"), False),
    "search_seeds": (("search_seeds",), False),
    "sampler_seed": (("search", "sampler_seed"), False),
    "warm_start": (("search", "warm_start"), False),
    "class_weighting": (("search", "class_weighting"), True),
    "seeds": (("seeds",), True),
    "baselines": (("baselines",), True),
    "max_concurrent": (("resources", "max_concurrent"), False),
    "cpus_per_trial": (("resources", "cpus_per_trial"), False),
    "gpus_per_trial": (("resources", "gpus_per_trial"), False),
    "scheduler": (("scheduler", "kind"), False),
    "epochs": (("training", "epochs"), False),
    "population_size": (("population_size",), False),
    "data_root": (("training", "data_root"), False),
    "pretrained": (("training", "pretrained"), False),
}


def study_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = load_yaml(args.config, "--config") if args.config else {}
    for flag, (path, is_list) in _STUDY_FLAGS.items():
        v = getattr(args, flag)
        if v is None:
            continue
        if is_list:
            v = [] if flag == "baselines" and v == "none" else _split(flag, str(v))
            if flag in ("noise_rate",):
                v = [_number(flag, x) for x in v]
            if flag == "seeds":
                v = [_number(flag, x, int) for x in v]
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path[:-1]), node, "expected a mapping")
        if flag == "population_size" and str(v).strip().isascii() and str(v).strip().isdigit():  # (else the study
            v = int(v)                                                                            # says what it takes)
        node[path[-1]] = v
        if flag == "scheduler" and str(v).strip() == "none":  # ASHA's fields, in a file whose ASHA the flag turns off
            for key in ("grace_period", "reduction_factor"):
                node.pop(key, None)
    if args.name is not None:
        values["name"] = args.name
    # Paths are stored absolute (the study is stored, and read again by --resume from wherever that
    # runs); warm_start's true/false stay switches, not files named "true" or "false".
    training, search = values.get("training"), values.get("search")
    if isinstance(training, dict):
        values["training"] = absolute_paths(training)
    if isinstance(search, dict) and isinstance(search.get("warm_start"), str) and search["warm_start"].strip():
        text = search["warm_start"].strip()
        search["warm_start"] = ({"true": True, "false": False}[text.lower()] if text.lower() in ("true", "false")
                                else str(resolve_path(text, "search.warm_start")))
    return values


def _number(flag: str, text: str, kind=float):
    try:
        return read_number(text, kind)
    except ValueError:
        raise ConfigError(f"--{flag.replace('_', '-')}", text, f"expected {'integers' if kind is int else 'numbers'}") from None


def _stored_study(path: Path) -> Any:
    """The study a workspace stored when its search began (``studies/NAME.json``)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON {type(stored).__name__}, not an object")
        return stored
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path}: damaged stored study ({e}); restore it (the study as its search began) "
                        "or start a new search under another --name") from None
    except OSError as e:
        raise UserError(f"{path}: the stored study cannot be read ({e.strerror or e}); make it readable "
                        "for this user") from None


def _warn_ignored(study: Any, path: Path) -> None:
    """A study stored by an earlier dm-tune with training fields its trials ignore: say so."""
    for key, where in study.ignored_training():
        print(f"dm-tune: warning: {path}: training.{key} is ignored (set by {where})", file=sys.stderr)
    for key, where in study.unused_training():
        print(f"dm-tune: warning: {path}: training.{key} is ignored (it only applies to {where})", file=sys.stderr)


# Where a study's trials are recorded and checkpointed, kept beside the stored study
# (studies/NAME.places): not part of the study, but a search of it elsewhere would split it.
PLACES = ("tracking_uri", "storage_path")

# 's3:/bucket/x', 's3:bucket/x', 'gs:/x': a remote storage's URI with a slash missing (a scheme then a
# single slash, or a storage scheme Ray's filesystems know then no slash), not a local folder 's3:'.
_MISSPELT_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)|(?:s3|gs|gcs|hdfs|file|abfs|abfss|az|adl|memory):")


def _places_file(workspace: Path, name: str) -> Path:
    return workspace / "studies" / f"{name}.places"  # not *.json: that is a stored study


def _same_places(args: argparse.Namespace, workspace: Path, name: str) -> None:
    """A study goes on in the MLflow store and Ray storage it began with: a search of it without
    --tracking-uri / --storage-path uses those; one with others is refused (a resume recorded its
    trials, finished ones again, in a second store, leaving the first one's runs open)."""
    path = _places_file(workspace, name)
    if not path.is_file():
        return
    try:
        began = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(began, dict):
            raise ValueError("not a JSON object")
        for key in PLACES:
            if not isinstance(began.get(key), (str, type(None))):
                raise ValueError(f"its {key} is {began[key]!r}, not a string or null")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({e}); it says where study {name!r} records its trials: restore "
                        "it, or remove it and give the study's --tracking-uri and --storage-path") from None
    for key in PLACES:
        flag, given, first = "--" + key.replace("_", "-"), getattr(args, key), began.get(key)
        if key == "storage_path" and first and "://" not in first:  # kept relative to the workspace if in it
            first = str(workspace / first)
        if given is None:
            setattr(args, key, first)
        elif given.rstrip("/") != (first or "").rstrip("/"):  # (http://host:5000/ is http://host:5000)
            where = f"{flag} {first}" if first else f"the workspace's own (no {flag})"
            raise UserError(f"{flag} {given}: study {name!r} began with {where} ({path}); its runs and checkpoints "
                            "are there: give that (or nothing), or search under another --name")


def _write_places(args: argparse.Namespace, workspace: Path, name: str) -> None:
    """Keep where a new study records and checkpoints its trials (``_same_places``); a storage path
    inside the workspace relative to it, so that a workspace moved elsewhere finds it there."""
    places = {key: getattr(args, key) for key in PLACES}
    storage = places["storage_path"]
    if storage and "://" not in storage and Path(storage).is_relative_to(workspace):
        places["storage_path"] = Path(storage).relative_to(workspace).as_posix()
    write_output(_places_file(workspace, name), json.dumps(places, indent=1) + "\n")


def _data_file(workspace: Path, name: str) -> Path:
    return workspace / "studies" / f"{name}.data"  # not *.json: that is a stored study


def data_fingerprints(study, sources: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per setting of ``study``: the fingerprints of its data as ``sources`` hold it (``setting_data``)."""
    from dm_tune.search._preflight import setting_data

    return {setting.key: setting_data(study, setting, sources[setting.dataset]) for setting in study.expand()}


def _same_data(workspace: Path, study, prints: dict[str, dict[str, str]]) -> None:
    """A study goes on with the data it began with: a resume whose dataset or label file changed since
    (another copy of CIFAR-10, a relabelled folder, an edited label file) is refused, as its trials would
    join results trained on other data. A study an earlier dm-tune stored without them is not checked."""
    path = _data_file(workspace, study.name)
    if not path.is_file():
        return
    try:
        began = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(began, dict) or not all(isinstance(v, dict) for v in began.values()):
            raise ValueError("not a JSON object of objects")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({e}); it holds the fingerprints of the data study {study.name!r} "
                        "began with: restore it, or remove it to go on with the data as it is now") from None
    for setting in study.expand():
        for part, now in prints[setting.key].items():
            was = began.get(setting.key, {}).get(part)
            if was is None or was == now:
                continue
            training = study.train_config(setting)
            what = (f"label file {training.noise_file}" if part == "noise_file" else f"dataset {setting.dataset}"
                    + (f" under {training.data_root}" if training.data_root else ""))
            raise UserError(f"study {study.name!r}, setting {setting.key}: the {what} is not the data the study "
                            f"began with (its fingerprint is {now}, was {was}; {path}); the study's finished "
                            "trials trained on that data: restore it, or search this data under another --name "
                            "(to go on mixing the two, remove the file)")


def _write_data(workspace: Path, name: str, prints: dict[str, dict[str, str]]) -> None:
    write_output(_data_file(workspace, name), json.dumps(prints, indent=1, sort_keys=True) + "\n")


def _load_study(args: argparse.Namespace, workspace: Path):
    from dm_tune.search._study import Study

    stored_dir = workspace / "studies"
    if args.resume is not None:
        shaping = [f for f in (*_STUDY_FLAGS, "config", "name") if getattr(args, f) is not None]
        if shaping:
            raise UserError(f"--resume {args.resume}: cannot be combined with --{shaping[0].replace('_', '-')} "
                            "(a resumed study keeps its configuration)")
        from dm_tune.search._study import STUDY_NAME

        path = stored_dir / f"{args.resume}.json"  # a study name: never a path out of the workspace
        if not STUDY_NAME.match(args.resume) or not path.is_file():
            if STUDY_NAME.match(args.resume) and path.exists():
                raise UserError(f"--resume {args.resume}: {path} is not a file; the stored study should be "
                                "there, as the JSON file the search wrote")
            known = sorted(p.stem for p in stored_dir.glob("*.json") if p.is_file()) if stored_dir.is_dir() else []
            raise UserError(f"--resume {args.resume}: no such study in {workspace} "
                            f"(studies there: {', '.join(known) or 'none'}; a search stopped before it stored "
                            "its study goes on with the command that started it)")
        try:
            study = Study.from_dict(_stored_study(path), stored=True)
        except ConfigError as e:  # edited by hand, or written by a newer dm-tune: say which file
            raise UserError(f"{path}: the stored study is not valid here ({e}); restore it, or start a new "
                            "search under another --name") from None
        _warn_ignored(study, path)
        return study, True
    values = study_values(args)
    try:
        study = Study.from_dict(values)
    except ConfigError:
        # The same command as a search an earlier dm-tune stored with a training field its trials
        # ignore: it goes on, as --resume does, with the warning.
        try:
            study = Study.from_dict(values, stored=True)
        except ConfigError:
            study = None
        path = stored_dir / f"{study.name}.json" if study is not None else None
        if study is None or not (study.ignored_training() or study.unused_training()) or path is None \
                or not path.is_file() \
                or _stored_study(path) != study.to_dict():
            raise
        _warn_ignored(study, path)
        return study, True
    path = stored_dir / f"{study.name}.json"
    if path.is_file():
        if _stored_study(path) != study.to_dict():
            raise UserError(f"study {study.name!r} already exists in {workspace} with a different "
                            f"configuration; continue it with --resume {study.name} or pick another --name")
        return study, True
    return study, False


def search_cmd(args: argparse.Namespace) -> int:
    from dm_tune.search._preflight import is_local_address

    if not args.address or is_local_address(args.address):  # before anything imports ray: a local
        from dm_tune.search._local_ray import LOCAL_ONLY_ENV  # Ray listens on 127.0.0.1 only, and a

        os.environ[LOCAL_ONLY_ENV] = "0"  # cluster on this machine is reached at its own address
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the search passes JSON + CSV itself
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # A trial's error that Tune stopped before reading (a search ended by a full or read-only disk)
    # is told by the tracker in one line and kept in the trial's folder: Ray would print it whole.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # MLflow prints two "View run/experiment at: URL" lines for every run it ends on a server: two
    # lines a trial on the search's own output, --quiet or not (the summary gives the server's URL).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # The study, the flags and the stores are checked before torch, Ray, MLflow or Optuna is
    # imported: a mistyped flag is answered in a fraction of a second.
    from dm_tune.search._preflight import (check_address, check_local_cpus, check_local_gpus, check_storage,
                                            check_tracking, load_sources, probe_ray)
    from dm_tune.search._run import RunOptions
    from dm_tune.search._stores import check_workspace, refuse_if_searched, study_lock

    workspace = resolve_path(args.workspace, "--workspace")
    if workspace.exists() and not workspace.is_dir():
        raise UserError(f"--workspace {args.workspace}: exists and is not a directory")
    study, resuming = _load_study(args, workspace)
    if args.storage_path and args.storage_path.startswith("file:/"):  # a local folder (file:///x, file:/x)
        from urllib.parse import unquote

        args.storage_path = unquote(parse_url("--storage-path", args.storage_path).path) or "/"
    if args.storage_path and "://" not in args.storage_path:
        if _MISSPELT_URI.match(args.storage_path):  # (else a local folder named 's3:' in the current one)
            raise UserError(f"--storage-path {args.storage_path}: a URI has '://' after its scheme "
                            "(s3://bucket/path, gs://bucket/path, file:///abs/path); a local folder whose "
                            "name has a colon is written with ./ before it")
        args.storage_path = str(resolve_path(args.storage_path, "--storage-path"))
    refuse_if_searched(workspace, study.name, resuming=bool(args.resume))
    _same_places(args, workspace, study.name)
    opts = RunOptions(workspace=workspace, address=args.address, storage_path=args.storage_path,
                      tracking_uri=args.tracking_uri, echo=not args.quiet)
    if isinstance(study.search.warm_start, str) and not opts.warm_start_copy(study.name).is_file():
        from dm_tune.reports._schema import load_guidelines

        try:  # a bad file is answered before anything is written
            load_guidelines(Path(study.search.warm_start))
        except UserError as e:
            raise UserError(f"search.warm_start (--warm-start): {e}") from None
    twins, kept = study.clean_twins()
    if twins and opts.echo:
        print(f"dm-tune: note: settings.noise {' and '.join(twins)} at noise_rate 0 "
              f"{'flips' if len(twins) == 1 else 'flip'} no label: the clean setting is trained once, as {kept!r}"
              + (" (a study an earlier dm-tune began keeps the runs it trained of those at rate 0, and this search "
                 "does not go on with them)" if resuming else ""), file=sys.stderr)
    # Pre-flight: nothing is written before these pass.
    if args.storage_path and "://" not in args.storage_path:  # Ray writes trial results there
        output_path("--storage-path", args.storage_path, directory=True)
    elif args.storage_path:
        check_storage(args.storage_path)
    check_tracking(opts.tracking)
    check_address(args.address)
    joined = probe_ray(args.address) if args.address else None  # auto: the cluster it found
    if args.address == "auto" and joined:  # (with --quiet too: not a trial's line)
        print(f"dm-tune: --address auto: the Ray cluster at {joined}", file=sys.stderr)
    for warning in check_workspace(workspace, opts.tracking, opts.written_folders(study.name),
                                   opts.ledger_dir(study.name)):  # damaged stores, read-only workspace
        print(f"dm-tune: warning: {warning}", file=sys.stderr)
    moved = opts.moved_artifacts(study.name)
    if moved is not None and opts.echo:
        print(f"dm-tune: note: MLflow keeps study {study.name!r}'s artifacts at {moved}, where the workspace was "
              "when the study began: the result files of the trials that end now go there", file=sys.stderr)
    if not args.address:  # a local Ray's resources, known before it starts (a cluster's are checked once joined)
        check_local_gpus(study)
        check_local_cpus(study, resuming)
    sources = load_sources(study, new=not resuming)
    _quieten_libraries()
    created = not workspace.exists()
    workspace.mkdir(parents=True, exist_ok=True)
    with study_lock(workspace, study.name, resuming=bool(args.resume)):  # a second search of the study is refused
        # Again under the lock: a search of this name that ended meanwhile may have stored it.
        study, resuming = _load_study(args, workspace)
        prints = data_fingerprints(study, sources)
        if resuming:  # a damaged ledger, or changed data, is told now, not after Ray has started (tens of seconds)
            from dm_tune.search._ledger import Ledger

            _same_data(workspace, study, prints)
            for setting in study.expand():
                if (path := opts.ledger(study.name, setting.key)).exists():
                    Ledger(path, workspace)
        return _search(args, study, resuming, opts, sources, workspace, created, joined, prints)


def _quieten_libraries() -> None:
    import logging

    from dm_tune._tracking_server import quieten_store_migrations

    quieten_store_migrations()  # (imports MLflow, which configures its loggers: they are quietened after)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Its failed writes are told in one line by the tracker (and redone); MLflow would log each with
    # the whole chain of exceptions behind it, hundreds of lines on a full or read-only disk.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A failed trial is reported in one line by the tracker (its traceback stays in the trial
    # folder); Tune would print the whole traceback to the terminal.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study load or trial


def browse_runs(tracking_uri: str) -> str:
    """How to look at a study's runs: ``mlflow ui`` over a store; a server is its own UI (``mlflow ui
    --backend-store-uri http://...`` ends in a traceback: a server is not a store it can open)."""
    if is_server(tracking_uri):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def _on(args: argparse.Namespace) -> str:
    """The cluster a resume should run on (the stores and storage it finds in the workspace)."""
    return f" --address {shlex.quote(args.address)}" if args.address else ""


def _search(args: argparse.Namespace, study, resuming: bool, opts, sources: dict[str, Any],
            workspace: Path, created: bool, joined: str | None, prints: dict[str, dict[str, str]]) -> int:
    """The search proper, run while this process holds the study's lock."""
    from dm_tune.search._preflight import check_resources, check_shared_storage, connect_ray
    from dm_tune.search._run import Interrupted, run_study
    from dm_tune.search._stores import prepare_stores, remove_if_only_ours
    from dm_tune.search._summary import print_summary, write_summary
    from dm_tune.search._tracking import experiment_id

    # New sqlite stores take seconds to create (schema migrations): they are created while Ray
    # starts, one process at a time, and removed again if Ray, the resources or the stores are
    # unusable (a study name another workspace holds in the tracking store, say).
    local = opts.artifact_root is not None  # a server's experiments are created after pre-flight, checked now
    failed: list[BaseException] = []

    def stores() -> None:
        try:
            prepare_stores(workspace, opts.tracking, opts.optuna_url)
            experiment_id(opts.tracking, study.name, opts.artifact_root, workspace, create=local)
        except BaseException as e:  # noqa: BLE001 - raised again in the main thread
            failed.append(e)

    store = threading.Thread(target=stores, daemon=True)
    store.start()
    try:
        connect_ray(joined or args.address)
        from dm_tune.cli import on_sigterm_interrupt

        on_sigterm_interrupt()  # (ray.init put its own in place: a stack dump and SIGABRT)
        check_resources(study)
        if args.address and "://" not in opts.storage:  # (a URI is Ray's to reach from every node)
            check_shared_storage(Path(opts.storage), "--storage-path" if args.storage_path
                                 else f"--workspace {args.workspace}: its Ray results folder")
        store.join()
        if failed:
            raise failed[0]
    except BaseException:
        store.join()
        if created:
            try:
                remove_if_only_ours(workspace, study.name)
            except UserError:  # the stores lock held past its wait: the workspace stays, the first error is told
                pass
        raise
    if not resuming:  # stored once, whole: a resume reads it, and a kill never leaves it torn
        (workspace / "studies").mkdir(exist_ok=True)
        write_output(workspace / "studies" / f"{study.name}.json", json.dumps(study.to_dict(), indent=1) + "\n")
        # (not for a study an earlier dm-tune began: where it went is unknown, the flags given now may be wrong)
        _write_places(args, workspace, study.name)
    if not _data_file(workspace, study.name).is_file():  # (one an earlier dm-tune began: from now on)
        _write_data(workspace, study.name, prints)
    import time

    t0 = time.perf_counter()
    resume = f"dm-tune search --resume {study.name} --workspace {shlex.quote(args.workspace)}{_on(args)}"
    try:
        summaries = run_study(study, opts, sources, resuming)
    except Interrupted as e:
        print(f"dm-tune: interrupted ({e}); finished trials are kept. Resume with:\n  {resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's stop ran: said, with the way back
        print(f"dm-tune: interrupted; finished trials are kept. Resume with:\n  {resume}", file=sys.stderr)
        return 130
    except Exception as e:
        full = no_room(e)
        if full is None:
            raise
        print(f"dm-tune: error: the search's stores cannot be written: their disk is full or they are read-only "
              f"({full}); finished trials are kept. Make room or make them writable, then resume with:\n"
              f"  dm-tune search --resume {study.name} --workspace {shlex.quote(args.workspace)}{_on(args)}",
              file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    print_summary(summaries, study, wall)
    paths = write_summary(summaries, study, workspace, wall)
    print(f"\nMLflow runs:   {opts.tracking}  (experiment {study.name!r}; {browse_runs(opts.tracking)})")
    print(f"Optuna studies: {opts.optuna_url}  (optuna-dashboard {shlex.quote(opts.optuna_url)})")
    print(f"Ray results:   {opts.storage}/{study.name}")
    print(f"Summary:       {paths['md']}")
    print(f"Next:          dm-tune report --workspace {shlex.quote(args.workspace)}"  # a command to paste
          + (f" --tracking-uri {shlex.quote(args.tracking_uri)}" if args.tracking_uri else "")
          + f" --experiment {study.name}")
    ended: Counter[str] = Counter()
    for s in summaries:
        ended.update(s.search_statuses)
        ended.update(status for arm in s.arms for status in arm.statuses)
    if not any(arm.n_results for s in summaries for arm in s.arms) and not ended["finished"]:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(ended.items()))
        print(f"dm-tune: error: no trial of study {study.name!r} finished ({counts}); each trial's error is in "
              f"its folder under {opts.storage}/{study.name}", file=sys.stderr)
        return 1
    return 0
