"""MARS in both formats on tiny fake trees generated here: the official image layout (``mars``)
and per-frame features (``mars-features``); one-epoch runs; bad input ends in one line, exit 2."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from dm_tune._names import STREAMED
from dm_tune._validate import ConfigError
from dm_tune.cli import main
from dm_tune.config import TrainConfig
from dm_tune.data import prepare
from dm_tune.datasets import DataError
from dm_tune.train import train

# (pid, camera) of each track; 3 frames per track
TRAIN_TRACKS = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (7, 1), (7, 2)]
TEST_TRACKS = [(4, 1), (4, 2), (4, 2), (5, 3), (5, 1), (0, 1), (-1, 2)]
QUERY = [1, 4, 5]  # 1-based, as in query_IDX.mat: tracks (4, 1), (5, 3)... see below
FRAMES = 3


def _pid(pid: int) -> str:
    return "00-1" if pid == -1 else f"{pid:04d}"


def _write_split(root: Path, folder: str, tracks: list[tuple[int, int]], rng) -> tuple[list[str], np.ndarray]:
    from PIL import Image

    names, info = [], []
    for t, (pid, cam) in enumerate(tracks, 1):
        first = len(names) + 1
        for f in range(1, FRAMES + 1):
            name = f"{_pid(pid)}C{cam}T{t:04d}F{f:03d}.jpg"
            path = root / folder / _pid(pid) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).save(path)
            names.append(name)
        info.append([first, len(names), pid, cam])
    return names, np.asarray(info, dtype=np.float64)  # MATLAB stores doubles


def make_mars(root: Path, train_tracks=TRAIN_TRACKS) -> Path:
    rng = np.random.default_rng(0)
    (root / "info").mkdir(parents=True)
    tr_names, tr_info = _write_split(root, "bbox_train", train_tracks, rng)
    te_names, te_info = _write_split(root, "bbox_test", TEST_TRACKS, rng)
    (root / "info" / "train_name.txt").write_text("\n".join(tr_names) + "\n")
    (root / "info" / "test_name.txt").write_text("\n".join(te_names) + "\n")
    savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": tr_info})
    savemat(root / "info" / "tracks_test_info.mat", {"track_test_info": te_info})
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([QUERY], dtype=np.float64)})
    return root


def _frames(tracks: list[tuple[int, int]], rng, dim: int = 6) -> dict[str, np.ndarray]:
    rows = [(pid, cam, t) for t, (pid, cam) in enumerate(tracks) for _ in range(FRAMES)]
    pid, cam, track = (np.asarray(c, np.int64) for c in zip(*rows))
    return {"features": rng.normal(size=(len(rows), dim)).astype(np.float32),
            "identity": pid, "camera": cam, "track": track + 100}


def make_features(root: Path, train_tracks=TRAIN_TRACKS, with_query: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "train.npz", **_frames(train_tracks, rng))
    test = _frames(TEST_TRACKS, rng)
    if with_query:
        test["query"] = np.asarray([100, 103])
    np.savez(root / "test.npz", **test)
    return root


def cfg(dataset: str, root: Path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": dataset, "data_root": str(root), "device": "cpu",
                                  "num_workers": 0, "val_fraction": 0.25, **kw})


# --- mars ------------------------------------------------------------------------------------


def test_mars_tracks_gallery_and_protocol(tmp_path):
    root = make_mars(tmp_path / "MARS")
    data = prepare(cfg("mars", root, noise="symmetric", noise_rate=0.5, dataset_options={"seq_len": 2, "image_size": 32}))
    assert data.task == "retrieval" and data.input_kind == "video"
    assert not data.train.in_memory and "mars" in STREAMED  # (num_workers applies: config.APPLIES)
    assert data.input_shape == (2, 3, 32, 16)  # seq_len frames of image_size x image_size/2
    # 4 training identities, one held out for validation (a gallery of its 2 tracks)
    assert data.num_classes == 3 and len(data.train) == 6 and len(data.val_gallery) == 2
    assert len(data.val_gallery.query) == 2  # one per camera
    g = data.test_gallery
    assert g.ids.tolist() == [p for p, _ in TEST_TRACKS] and g.cams.tolist() == [c for _, c in TEST_TRACKS]
    assert g.query.tolist() == [q - 1 for q in QUERY]
    assert g.junk.tolist() == [p == -1 for p, _ in TEST_TRACKS]
    # noise per track: 3 of the 6 training tracks carry another identity
    assert int(data.is_noisy.sum()) == 3
    # frames are spread over the track
    assert data.test_gallery.inputs.frames(0).tolist() == [0, 2]


def test_mars_one_epoch_with_the_reid_backbone(tmp_path):
    root = make_mars(tmp_path / "MARS")
    c = cfg("mars", root, model="reid-resnet18", epochs=1, batch_size=4,
            dataset_options={"seq_len": 2, "image_size": 32})
    result = train(c, prepare(c))
    assert result.status == "finished"
    for key in ("test_map", "test_rank1", "test_rank5", "test_rank10", "val_map"):
        assert 0.0 <= result.retrieval[key] <= 1.0


def _one_line_exit_2(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dm-tune: error:") and "Traceback" not in err
    for f in fragments:
        assert f in err
    return err


def test_mars_missing_mat_file(tmp_path, capsys):
    root = make_mars(tmp_path / "MARS")
    (root / "info" / "tracks_test_info.mat").unlink()
    _one_line_exit_2(capsys, ["train", "--dataset", "mars", "--data-root", str(root), "--quiet"],
                     "tracks_test_info.mat: file not found", "Expected layout")


def test_mars_overlapping_identities(tmp_path, capsys):
    root = make_mars(tmp_path / "MARS", TRAIN_TRACKS + [(5, 2)])
    _one_line_exit_2(capsys, ["train", "--dataset", "mars", "--data-root", str(root), "--quiet"],
                     "1 identities are in both the training and the test set (first: 5)")


def test_mars_malformed_info(tmp_path):
    root = make_mars(tmp_path / "MARS")
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([[99]], dtype=np.float64)})
    with pytest.raises(DataError, match="query_IDX must index the 7 test tracks"):
        prepare(cfg("mars", root))
    savemat(root / "info" / "tracks_train_info.mat", {"something": np.zeros((2, 4))})
    with pytest.raises(DataError, match="no variable 'track_train_info'"):
        prepare(cfg("mars", root))
    savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": np.asarray([[1, 999, 1, 1]], float)})
    with pytest.raises(DataError, match="outside 1..24"):
        prepare(cfg("mars", root))
    # not whole numbers: cast to another track (1.5 -> 1) or identity (NaN -> -2**63, with a numpy warning)
    savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": np.asarray([[1, 2, np.nan, 1]], float)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="track_train_info holds nan, not a whole number"):
            prepare(cfg("mars", root))
    root = make_mars(tmp_path / "half")
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([[1.5]], dtype=np.float64)})
    with pytest.raises(DataError, match="query_IDX holds 1.5, not a whole number"):
        prepare(cfg("mars", root))


def test_mars_distractor_queries_are_not_scored_and_odd_numbers_are_refused(tmp_path):
    """A distractor (identity 0) query was scored with the other distractors as its true matches;
    1e20 in a track table was cast to -2**63 with numpy's warning, complex numbers to their real part."""
    root = make_mars(tmp_path / "MARS")
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([QUERY + [6, 7]], dtype=np.float64)})
    data = prepare(cfg("mars", root, dataset_options={"seq_len": 2, "image_size": 32}))
    assert data.test_gallery.query.tolist() == [q - 1 for q in QUERY] and data.info["queries_unscored"] == 2
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([[6, 7]], dtype=np.float64)})
    with pytest.raises(DataError, match=r"query_IDX.mat: query_IDX names 2 tracks, all of identity -1 \(junk\) or "
                                        r"0 \(distractor\)"):  # (was: "none of the test gallery's 0 queries")
        prepare(cfg("mars", root, dataset_options={"seq_len": 2, "image_size": 32}))
    savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.asarray([QUERY], dtype=np.float64)})
    info = root / "info" / "tracks_train_info.mat"
    table = loadmat(info)["track_train_info"]
    for value, words in ((1e20, r"holds 1e\+20, not a whole number of a track or an identity"),
                         (1 + 1j, "track_train_info holds complex numbers")):
        bad = table.astype(type(value))
        bad[0, 2] = value
        savemat(info, {"track_train_info": bad})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=words):
                prepare(cfg("mars", root))


def test_mars_damaged_files_and_junk_training_tracks(tmp_path):
    """Each was a traceback, or (junk training tracks) a class made of junk, where mars-features refuses it."""
    root = make_mars(tmp_path / "MARS")
    (root / "info" / "query_IDX.mat").write_bytes(b"")  # scipy: MatReadError, no OSError
    with pytest.raises(DataError, match="query_IDX.mat: could not be read as a MATLAB .mat file"):
        prepare(cfg("mars", root))
    info = root / "info" / "tracks_train_info.mat"
    info.write_bytes(info.read_bytes()[:100])  # cut short (a copy that stopped): scipy's IndexError
    with pytest.raises(DataError, match="tracks_train_info.mat: could not be read as a MATLAB .mat file"):
        prepare(cfg("mars", root))
    root = make_mars(tmp_path / "latin1")
    names = root / "info" / "test_name.txt"
    names.write_bytes(names.read_bytes().replace(b"F001", b"F\xe901", 1))
    with pytest.raises(DataError, match="test_name.txt: is not a list of image names"):
        prepare(cfg("mars", root))
    # a byte-order mark (a list saved by a Windows editor) read as "byte 0 is not ASCII"
    root = make_mars(tmp_path / "bom")
    data = prepare(cfg("mars", root))
    for split in ("train", "test"):
        names = root / "info" / f"{split}_name.txt"
        names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes().replace(b"\n", b"\r\n"))
    again = prepare(cfg("mars", root))
    assert torch.equal(again.train.labels, data.train.labels) and again.info == data.info
    root = make_mars(tmp_path / "junk", TRAIN_TRACKS + [(-1, 3)])
    with pytest.raises(DataError, match="training tracks include junk"):
        prepare(cfg("mars", root))


def test_mars_name_list_out_of_track_order_is_refused(tmp_path):
    """A reordered name list loaded silently, every track reading frames of other identities."""
    root = make_mars(tmp_path / "MARS")
    names_file = root / "info" / "train_name.txt"
    names = names_file.read_text().split()
    names_file.write_text("\n".join(names[3:] + names[:3]) + "\n")  # track 1 now holds track 2's frames
    with pytest.raises(DataError, match=r"train_name.txt: track 1 of tracks_train_info.mat \(pid 1, camera 1\) "
                       r"lists '0001C2T0002F001.jpg' \(name 1\), an image of another identity or camera"):
        prepare(cfg("mars", root))
    root = make_mars(tmp_path / "camera")  # a test track's camera in the info is not its frames'
    info = loadmat(root / "info" / "tracks_test_info.mat")["track_test_info"]
    info[6, 3] = 5  # the junk track ("00-1C2...")
    savemat(root / "info" / "tracks_test_info.mat", {"track_test_info": info})
    with pytest.raises(DataError, match=r"test_name.txt: track 7 of tracks_test_info.mat \(pid -1, camera 5\) "
                       r"lists '00-1C2T0007F001.jpg' \(name 19\)"):
        prepare(cfg("mars", root))


def test_mars_a_frame_too_large_to_decode_is_one_line(tmp_path, monkeypatch):
    """PIL's DecompressionBombError is no OSError: it escaped as a traceback."""
    from PIL import Image

    from dm_tune.datasets.mars import load_images

    source = load_images(make_mars(tmp_path / "MARS"), {"seq_len": 2, "image_size": 32})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # the 20 x 10 frames are over twice this: refused
    with pytest.raises(DataError, match="0001C1T0001F001.jpg: could not be read as an image"):
        source.train.inputs[0]


# --- mars-features -------------------------------------------------------------------------------


def test_mars_features_pools_frames_per_track(tmp_path):
    root = make_features(tmp_path / "feat")
    data = prepare(cfg("mars-features", root, noise="pair", noise_rate=0.45))
    assert data.input_kind == "vector" and data.input_shape == (6,)
    assert data.num_classes == 3 and len(data.train) == 6 and len(data.val_gallery) == 2
    frames = np.load(root / "train.npz")
    pids = sorted({p for p, _ in TRAIN_TRACKS})  # the loader numbers identities in sorted order
    held = {pids[i] for i in data.val_gallery.ids.tolist()}
    keep = [t for t, (p, _) in enumerate(TRAIN_TRACKS) if p not in held]
    expected = np.stack([frames["features"][frames["track"] == 100 + t].mean(0) for t in keep])
    assert torch.allclose(data.train.inputs, torch.from_numpy(expected), atol=1e-6)
    g = data.test_gallery
    assert g.query.tolist() == [0, 3] and g.junk.tolist() == [p == -1 for p, _ in TEST_TRACKS]
    # pair noise per track relabels fewer than half of an identity's tracks (half is the refused
    # rate 0.5): none of two, one of three, as identity k -> k+1
    assert int(data.is_noisy.sum()) == 0
    three = prepare(cfg("mars-features", make_features(tmp_path / "three", [(p, c) for p in (1, 2, 3, 7)
                                                                          for c in (1, 2, 3)]),
                        noise="pair", noise_rate=0.45))
    flipped = three.is_noisy
    assert three.num_classes == 3 and int(flipped.sum()) == 3
    assert torch.equal(three.train.labels[flipped], (three.clean_train_labels[flipped] + 1) % 3)


def test_a_validation_fraction_that_rounds_to_no_identity_holds_one_out(tmp_path):
    """0.2 of 3 training identities rounded to none: a run without validation, said nowhere."""
    root = make_features(tmp_path / "three", TRAIN_TRACKS[:6])
    data = prepare(cfg("mars-features", root, val_fraction=0.1))
    assert data.num_classes == 2 and data.info["val_identities"] == 1
    root = make_features(tmp_path / "two", TRAIN_TRACKS[:4])
    with pytest.raises(ConfigError, match="cannot hold out 1 of 2 training identities"):
        prepare(cfg("mars-features", root, val_fraction=0.2))
    assert len(prepare(cfg("mars-features", root, val_fraction=0.0)).val_gallery) == 0


def test_a_search_asks_its_retrieval_settings_of_the_identities_the_trials_train_on(tmp_path):
    """The search's pre-flight checked the noise rate against every training identity (3 here) and
    not the hold-out at all, while each trial trains on those validation leaves (2) and refuses
    past them: every trial failed three times, and the search ended with none finished."""
    from dm_tune.search._preflight import load_sources
    from dm_tune.search._study import Study

    def study(root: Path, rate: float, val_fraction: float) -> Study:
        return Study.from_dict({"settings": {"dataset": ["mars-features"], "noise": ["symmetric"],
                                             "noise_rate": [rate]},
                                "training": {"data_root": str(root), "val_fraction": val_fraction}})

    three = make_features(tmp_path / "three", TRAIN_TRACKS[:6])
    assert set(load_sources(study(three, 0.45, 0.1))) == {"mars-features"}
    with pytest.raises(ConfigError, match=r"settings.noise_rate: 0.6 .* on 2 classes"):
        load_sources(study(three, 0.6, 0.1))
    with pytest.raises(ConfigError, match=r"symmetric noise on 2 classes"):
        prepare(cfg("mars-features", three, noise="symmetric", noise_rate=0.6, val_fraction=0.1))  # as a trial
    two = make_features(tmp_path / "two", TRAIN_TRACKS[:4])
    with pytest.raises(ConfigError, match=r"training.val_fraction: 0.2 .*cannot hold out 1 of 2 training "
                                          r"identities.*\(dataset 'mars-features'\)"):
        load_sources(study(two, 0.2, 0.2))

def test_mars_features_default_queries_and_one_epoch(tmp_path):
    root = make_features(tmp_path / "feat", with_query=False)
    c = cfg("mars-features", root, epochs=1, batch_size=4)
    data = prepare(c)
    # one per identity and camera, for identities seen by two cameras; never junk or distractors
    assert sorted(data.test_gallery.ids[data.test_gallery.query].tolist()) == [4, 4, 5, 5]
    assert train(c, data).status == "finished"


def test_mars_features_bad_input(tmp_path, capsys):
    root = make_features(tmp_path / "feat")
    (root / "test.npz").unlink()
    _one_line_exit_2(capsys, ["train", "--dataset", "mars-features", "--data-root", str(root), "--quiet"],
                     "test.npz: file not found")
    (root / "test.npz").mkdir()  # (was "file not found", as a link round a loop was)
    _one_line_exit_2(capsys, ["train", "--dataset", "mars-features", "--data-root", str(root), "--quiet"],
                     "test.npz: is a directory, not a file")
    (root / "test.npz").rmdir()
    (root / "test.npz").symlink_to(root / "test.npz")
    _one_line_exit_2(capsys, ["train", "--dataset", "mars-features", "--data-root", str(root), "--quiet"],
                     "test.npz: is a link to a file that is not there (or a loop)")
    root = make_features(tmp_path / "overlap", TRAIN_TRACKS + [(4, 3)])
    _one_line_exit_2(capsys, ["train", "--dataset", "mars-features", "--data-root", str(root), "--quiet"],
                     "identities are in both the training and the test set (first: 4)")
    # queries that nothing can match (a distractor, a junk track): every test metric was NaN, exit 0;
    # with other distractors in the gallery, a distractor query scored them as its matches (mAP 100)
    root = make_features(tmp_path / "unmatched")
    test = dict(np.load(root / "test.npz"))
    np.savez(root / "test.npz", **{**test, "query": np.asarray([100, 105, 106])})
    _one_line_exit_2(capsys, ["train", "--dataset", "mars-features", "--data-root", str(root), "--quiet"],
                     "query names 2 tracks of identity -1 (junk) or 0 (distractor), first track 105")
    # a misspelt array was ignored (queries drawn instead of those given); values beyond float32 went
    # NaN in training, a "diverged" run; complex features lost their imaginary part with a warning
    for name, arrays, words in (
            ("queries", {**test, "queries": test.pop("query")}, "holds arrays dm-tune does not read: queries"),
            ("huge", {**test, "features": np.full(test["features"].shape, 1e300)}, "beyond float32's range"),
            ("complex", {**test, "features": test["features"] * (1 + 1j)}, "array of real numbers")):
        np.savez(root / "test.npz", **arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=words):
                prepare(cfg("mars-features", root))
    bad = _frames(TRAIN_TRACKS, np.random.default_rng(0))
    bad["camera"][1] = 9  # a track seen by two cameras
    np.savez(root / "train.npz", **bad)
    with pytest.raises(DataError, match="track 100 has frames with different camera values"):
        prepare(cfg("mars-features", root))
