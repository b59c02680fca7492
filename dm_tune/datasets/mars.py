"""MARS video person re-identification (Zheng et al., ECCV 2016): 1,261 identities, 6 cameras,
about 20k tracklets. Two ways in:

``mars``: the official release under ``data_root``::

    bbox_train/<pid>/<image>         e.g. bbox_train/0001/0001C1T0001F001.jpg
    bbox_test/<pid>/<image>          test identities, plus 0000 (distractors) and 00-1 (junk)
    info/train_name.txt              one image name per line, in track order
    info/test_name.txt
    info/tracks_train_info.mat       track_train_info: rows [first, last, pid, camera] (1-based
    info/tracks_test_info.mat        track_test_info    indices into the name lists)
    info/query_IDX.mat               query_IDX: 1-based indices of the query tracks in track_test_info

Each example is one track: ``seq_len`` frames spaced evenly over it, resized to
``image_size`` x ``image_size``/2 (height x width, 256 x 128 by default) and ImageNet-normalised;
the model (``reid-resnet50``) embeds every frame and averages them into one track embedding.

``mars-features``: per-frame features computed elsewhere, ``data_root/train.npz`` and
``data_root/test.npz``, each with arrays ``features`` (frames, D), ``identity``, ``camera`` and
``track`` (one integer per frame), and optionally ``query`` in test.npz (the track ids that are
queries; without it, one track per identity and camera, drawn with a fixed seed). A track is
the mean of its frames' features.

Both follow MARS' evaluation protocol: the gallery is every test track (queries included),
identity -1 is junk (ignored in every ranking), identity 0 are distractors (non-matches), and
a gallery track of the query's identity seen by the query's camera is ignored. A query of
identity -1 or 0 has no true match: in query_IDX it is not scored (``queries_unscored`` counts
it), in a ``query`` array it is refused. Training and test identities must be disjoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import DataError, Source, Split, read_npz
from dm_tune.datasets._reid import (DISTRACTOR_ID, JUNK_ID, check_disjoint, gallery, one_query_per_camera,
                                    pool_tracks, renumber)
from dm_tune.datasets.imagefolder import IMAGENET_MEAN, IMAGENET_STD

LAYOUT = ("<data_root>/bbox_train/<pid>/<image>, bbox_test/<pid>/<image> and info/ with train_name.txt, "
          "test_name.txt, tracks_train_info.mat (track_train_info), tracks_test_info.mat (track_test_info), "
          "query_IDX.mat (query_IDX): the official MARS release")
FEATURES_LAYOUT = ("<data_root>/train.npz and test.npz, each with arrays features (frames, D), identity, "
                   "camera and track (one integer per frame); optionally query (track ids) in test.npz")

# The paper trains an ImageNet-pretrained network on MARS; these suit a pre-trained ResNet-50
# fine-tuned with SGD (the study file sets the protocol).
DEFAULTS = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "schedule": "step", "batch_size": 32,
            "epochs": 30}
FEATURE_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "none",
                    "batch_size": 64, "epochs": 60}
QUERY_SEED = 20160908  # the query draw of mars-features when test.npz names none
IMAGE_OPTIONS = {"seq_len": (1, 64, 4), "image_size": (16, 1024, 256)}  # name: (min, max, default)


def _options(name: str, options: Mapping[str, Any], allowed: Mapping[str, tuple[int, int, int]]) -> dict[str, int]:
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"dataset_options.{key}", value,
                              f"{name} takes: " + (", ".join(allowed) if allowed else "no options"))
        lo, hi, _ = allowed[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"dataset_options.{key}", value, f"expected an integer in [{lo}, {hi}]")
    return {k: int(options.get(k, default)) for k, (_, _, default) in allowed.items()}


def _on_disk(name: str, root: Path | None, download: bool) -> Path:
    if root is None:
        raise ConfigError("data_root", None, f"{name} is read from disk; give --data-root")
    if download:
        raise ConfigError("download", download, f"{name} cannot be downloaded; put the release under data_root")
    return root


# --- mars: the official image release ----------------------------------------------------------


def _read_mat(path: Path, var: str) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DataError(path, "file not found", LAYOUT)
    try:
        mat = loadmat(str(path))
    except (ValueError, OSError, TypeError, IndexError, NotImplementedError, MatReadError) as e:
        # (an empty file: MatReadError; a truncated one: IndexError, among others)
        raise DataError(path, f"could not be read as a MATLAB .mat file ({e})", LAYOUT) from None
    if var not in mat:
        raise DataError(path, f"has no variable {var!r} (present: {', '.join(k for k in mat if not k.startswith('__'))})", LAYOUT)
    arr = np.asarray(mat[var])
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(path, f"{var} is not numeric", LAYOUT)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(path, f"{var} holds complex numbers", LAYOUT)
    return arr


def _whole(path: Path, var: str) -> np.ndarray:
    """``var`` of a .mat file as int64; a value that is not a whole number (NaN, 1.5) is refused, as
    the cast would make it another track or identity (NaN: -9223372036854775808, with a warning)."""
    arr = _read_mat(path, var)
    if np.issubdtype(arr.dtype, np.floating):  # (beyond 2**62: no track or identity, and a wrapped cast)
        bad = ~np.isfinite(arr) | (np.round(arr) != arr) | (np.abs(arr) > 2.0**62)
        if bad.any():
            raise DataError(path, f"{var} holds {float(arr[bad].flat[0])!r}, not a whole number of a track or "
                            "an identity", LAYOUT)
    return arr.astype(np.int64)


def _names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "file not found", LAYOUT)
    try:
        # MARS's image names are ASCII (after a byte-order mark, as Windows editors write)
        text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("ascii")
    except UnicodeDecodeError as e:
        raise DataError(path, f"is not a list of image names (byte {e.start} is not ASCII)", LAYOUT) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _tracks(path: Path, var: str, num_names: int) -> np.ndarray:
    info = _whole(path, var)
    if info.ndim != 2 or info.shape[1] != 4 or len(info) == 0:
        raise DataError(path, f"{var} has shape {info.shape}, not (tracks, 4) rows [first, last, pid, camera]", LAYOUT)
    first, last = info[:, 0], info[:, 1]
    bad = np.flatnonzero((first < 1) | (last < first) | (last > num_names))
    if len(bad):
        raise DataError(path, f"track {bad[0] + 1} spans images {first[bad[0]]}..{last[bad[0]]}, outside "
                        f"1..{num_names} of the name list", LAYOUT)
    return info


def _check_names(path: Path, names: list[str], tracks: np.ndarray, mat: Path) -> None:
    """Refuse a name list whose frames are not of their track's identity and camera: an image name
    starts with its pid (4 characters, "00-1" for junk) and 'C' and the camera ("0001C1T0001F001.jpg"),
    and a reordered or foreign list would otherwise give every track another identity's frames."""
    pid, cam = tracks[:, 2], tracks[:, 3]
    want_pid = np.where(pid == JUNK_ID, "00-1", np.char.zfill(pid.astype(str), 4))
    head = np.asarray(names, dtype="U6")  # (numpy cuts each name to its first 6 characters)
    name_pid, name_cam = head.astype("U4"), head.view("U1").reshape(len(head), 6)[:, 5]
    lengths = tracks[:, 1] - tracks[:, 0] + 1
    track = np.repeat(np.arange(len(tracks)), lengths)  # every frame of every track
    frame = np.arange(len(track)) + np.repeat(tracks[:, 0] - 1 - (np.cumsum(lengths) - lengths), lengths)
    bad = np.flatnonzero((name_pid[frame] != want_pid[track]) | (name_cam[frame] != cam[track].astype(str)))
    if len(bad):
        t, f = track[bad[0]], frame[bad[0]]
        raise DataError(path, f"track {t + 1} of {mat.name} (pid {pid[t]}, camera {cam[t]}) lists {names[f]!r} "
                        f"(name {f + 1}), an image of another identity or camera: the name list is not in the "
                        "order of the track info", LAYOUT)


class TrackFrames(Dataset):
    """One MARS track per item: ``seq_len`` frames spaced evenly over it, as a (T, 3, H, W) float tensor."""

    def __init__(self, folder: Path, names: list[str], tracks: np.ndarray, seq_len: int, height: int) -> None:
        self.folder, self.seq_len, self.height, self.width = folder, seq_len, height, height // 2
        self.names = np.array([n.encode() for n in names], dtype=np.bytes_)
        self.spans = tracks[:, :2].copy() - 1  # 0-based, inclusive
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.spans)

    def content(self) -> tuple[np.ndarray, ...]:
        """What the data's fingerprint takes of it: the frames' names and each track's span (``_fingerprint``)."""
        return self.names, self.spans

    def path(self, frame: int) -> Path:
        name = self.names[frame].decode()
        return self.folder / name[:4] / name

    def frames(self, i: int) -> np.ndarray:
        first, last = self.spans[i]
        return np.round(np.linspace(first, last, self.seq_len)).astype(np.int64)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        out = []
        for frame in self.frames(i):
            path = self.path(int(frame))
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB").resize((self.width, self.height), Image.BILINEAR)
            except (OSError, Image.DecompressionBombError) as e:  # the bomb error is not an OSError
                raise DataError(path, f"could not be read as an image ({e})", LAYOUT) from None
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
            out.append((x - self.mean) / self.std)
        return torch.stack(out)


def load_images(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    opts = _options("mars", options, IMAGE_OPTIONS)
    root = _on_disk("mars", root, download)
    info = root / "info"
    tr_names, te_names = _names(info / "train_name.txt"), _names(info / "test_name.txt")
    tr = _tracks(info / "tracks_train_info.mat", "track_train_info", len(tr_names))
    te = _tracks(info / "tracks_test_info.mat", "track_test_info", len(te_names))
    _check_names(info / "train_name.txt", tr_names, tr, info / "tracks_train_info.mat")
    _check_names(info / "test_name.txt", te_names, te, info / "tracks_test_info.mat")
    query = _whole(info / "query_IDX.mat", "query_IDX").reshape(-1) - 1
    if len(query) == 0 or query.min() < 0 or query.max() >= len(te):
        raise DataError(info / "query_IDX.mat", f"query_IDX must index the {len(te)} test tracks (1-based)", LAYOUT)
    check_disjoint(info / "tracks_test_info.mat", tr[:, 2], te[:, 2], LAYOUT)
    train_set = TrackFrames(root / "bbox_train", tr_names, tr, opts["seq_len"], opts["image_size"])
    test_set = TrackFrames(root / "bbox_test", te_names, te, opts["seq_len"], opts["image_size"])
    for ds in (train_set, test_set):  # a cheap check that data_root holds the images
        if not ds.path(int(ds.spans[0, 0])).is_file():
            raise DataError(ds.path(int(ds.spans[0, 0])), "image file not found", LAYOUT)
    if (tr[:, 2] < 0).any():  # as mars-features: a junk track (-1) is no training identity
        raise DataError(info / "tracks_train_info.mat", "training tracks include junk (identity -1); training "
                        "tracks need identities", LAYOUT)
    labels, classes = renumber(tr[:, 2])
    query = np.unique(query)
    # A junk or distractor query has no true match (the others of its kind are none): not scored.
    unscored = np.isin(te[query, 2], (JUNK_ID, DISTRACTOR_ID))
    if unscored.all():  # (was "none of the test gallery's 0 queries has a match")
        raise DataError(info / "query_IDX.mat", f"query_IDX names {len(query)} tracks, all of identity -1 (junk) "
                        "or 0 (distractor), which have no true match: none can be scored", LAYOUT)
    test = gallery(test_set, te[:, 2], te[:, 3], query[~unscored], te[:, 2] == JUNK_ID)
    return Source(
        name="mars", train=Split(train_set, torch.from_numpy(labels)), test=Split(test_set, test.ids),
        num_classes=len(classes), input_kind="video", default_model="reid-resnet50",
        defaults=dict(DEFAULTS), gallery=test, train_cams=torch.from_numpy(tr[:, 3].copy()),
        info={"data_dir": str(root), **opts, "train_tracks": len(tr), "test_tracks": len(te),
              "queries": len(test.query), "queries_unscored": int(unscored.sum())},
    )


# --- mars-features: per-frame features ---------------------------------------------------------


def _npz(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(path, "is a directory, not a file" if path.is_dir() else
                        "is a link to a file that is not there (or a loop)" if path.is_symlink() else "file not found",
                        FEATURES_LAYOUT)
    arrays = {k: np.asarray(v) for k, v in read_npz(path, FEATURES_LAYOUT).items()}
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(path, f"lacks the arrays {', '.join(missing)} (present: {', '.join(sorted(arrays))})", FEATURES_LAYOUT)
    unread = sorted(set(arrays) - set(required) - set(optional))
    if unread:  # (a misspelt "queries" was ignored, and queries drawn instead of those given)
        raise DataError(path, f"holds arrays dm-tune does not read: {', '.join(unread)} (it reads "
                        f"{', '.join(required + optional)})", FEATURES_LAYOUT)
    x = arrays["features"]
    if (x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating)
            or len(x) == 0):
        raise DataError(path, f"features is {x.dtype} {x.shape}, not a non-empty (frames, D) array of real numbers",
                        FEATURES_LAYOUT)
    if not np.isfinite(x).all():
        raise DataError(path, "features hold NaN or infinite values", FEATURES_LAYOUT)
    top = float(np.finfo(np.float32).max)
    if np.issubdtype(x.dtype, np.floating) and (float(x.max()) > top or float(x.min()) < -top):
        raise DataError(path, f"features hold values beyond float32's range ({top:.3g}), which training computes in",
                        FEATURES_LAYOUT)
    for k in ("identity", "camera", "track"):
        a = arrays[k]
        if a.shape != (len(x),) or not np.issubdtype(a.dtype, np.integer):
            raise DataError(path, f"{k} is {a.dtype} {a.shape}, not one integer per frame ({len(x)})", FEATURES_LAYOUT)
    return arrays


def _pooled(path: Path, a: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(track vectors, identity, camera, track id) per track; a track has one identity and camera."""
    x, tracks = pool_tracks(a["features"].astype(np.float64), a["track"])
    _, first, inverse = np.unique(a["track"], return_index=True, return_inverse=True)
    per_track = []
    for k in ("identity", "camera"):
        values = a[k][first].astype(np.int64)
        mixed = np.flatnonzero(a[k] != values[inverse])
        if len(mixed):
            raise DataError(path, f"track {a['track'][mixed[0]]} has frames with different {k} values", FEATURES_LAYOUT)
        per_track.append(values)
    return x, per_track[0], per_track[1], tracks


def load_features(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    _options("mars-features", options, {})
    root = _on_disk("mars-features", root, download)
    base = ("features", "identity", "camera", "track")
    tr_path, te_path = root / "train.npz", root / "test.npz"
    x_tr, id_tr, cam_tr, _ = _pooled(tr_path, _npz(tr_path, base))
    te_arrays = _npz(te_path, base, ("query",))
    x_te, id_te, cam_te, tracks_te = _pooled(te_path, te_arrays)
    if x_te.shape[1] != x_tr.shape[1]:
        raise DataError(te_path, f"features have {x_te.shape[1]} dimensions but train.npz has {x_tr.shape[1]}", FEATURES_LAYOUT)
    check_disjoint(te_path, id_tr, id_te, FEATURES_LAYOUT)
    if (id_tr < 0).any():
        raise DataError(tr_path, "identity holds negative (junk) ids; training tracks need identities", FEATURES_LAYOUT)
    if "query" in te_arrays:
        wanted = np.asarray(te_arrays["query"]).reshape(-1)
        unknown = np.setdiff1d(wanted, tracks_te)
        if len(unknown) or len(wanted) == 0:
            raise DataError(te_path, f"query names {len(unknown)} track ids that are not in track (first: "
                            f"{unknown[0] if len(unknown) else 'none given'})", FEATURES_LAYOUT)
        query = np.flatnonzero(np.isin(tracks_te, wanted))
        special = query[np.isin(id_te[query], (JUNK_ID, DISTRACTOR_ID))]
        if len(special):  # (scored with the other distractors as its true matches: mAP 100)
            raise DataError(te_path, f"query names {len(special)} tracks of identity {JUNK_ID} (junk) or "
                            f"{DISTRACTOR_ID} (distractor), first track {int(tracks_te[special[0]])}; a query "
                            "needs an identity its matches share", FEATURES_LAYOUT)
    else:
        query = one_query_per_camera(id_te, cam_te, np.random.default_rng(QUERY_SEED),
                                     never=(id_te == JUNK_ID) | (id_te == DISTRACTOR_ID))
    labels, classes = renumber(id_tr)
    test = gallery(torch.from_numpy(x_te), id_te, cam_te, query, id_te == JUNK_ID)
    return Source(
        name="mars-features", train=Split(torch.from_numpy(x_tr), torch.from_numpy(labels)),
        test=Split(test.inputs, test.ids), num_classes=len(classes), input_kind="vector", default_model="mlp",
        defaults=dict(FEATURE_DEFAULTS), gallery=test, train_cams=torch.from_numpy(cam_tr),
        info={"data_dir": str(root), "feature_dim": int(x_tr.shape[1]), "train_tracks": len(x_tr),
              "test_tracks": len(x_te), "queries": len(query)},
    )
