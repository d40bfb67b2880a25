"""The synthetic default dataset: deterministic, loads as UCSD, labels where the anomaly is."""

import json
from pathlib import Path

import numpy as np
import pytest

from vpclib.datasets import load_split
from vpclib.errors import DatasetError
from vpclib.synthetic import KINDS, make_synthetic_dataset

SMALL = dict(seed=3, n_train=1, n_test=5, n_frames=48, width=120, height=80)


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """The default dataset (4 training, 6 test videos of 96 frames, 240 x 160), made once."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "synthetic")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def runs(mask: np.ndarray) -> list[list[int]]:
    """0-based inclusive [start, end] runs of 1s, computed with a plain loop."""
    spans, start = [], None
    for t, value in enumerate(list(mask) + [0]):
        if value and start is None:
            start = t
        elif not value and start is not None:
            spans.append([start, t - 1])
            start = None
    return spans


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path):
    first = all_files(make_synthetic_dataset(tmp_path / "a", **SMALL))
    second = all_files(make_synthetic_dataset(tmp_path / "b", **SMALL))
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert len([n for n in first if n.endswith(".png")]) == (1 + 5) * 48
    other = all_files(make_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 4}))
    assert other["testing/frames/01/010.png"] != first["testing/frames/01/010.png"]


def test_layout_loads_as_ucsd_with_labels_matching_anomalies(default_root):
    test = load_split("ucsd", default_root, "test", min_frames=10)
    anomalies = read_json(default_root / "anomalies.json")["videos"]
    assert [v.name for v in test] == ["01", "02", "03", "04", "05", "06"]
    assert [a["video"] for a in anomalies] == [v.name for v in test]
    assert {a["kind"] for a in anomalies} == set(KINDS)                    # all five kinds
    for video, anomaly in zip(test, anomalies):
        assert video.n_frames == 96 and video.labels.dtype == np.uint8
        assert runs(video.labels) == [[anomaly["start"], anomaly["end"]]], anomaly  # one span
        assert anomaly["start"] >= 5                                        # normal frames first
        assert int(video.labels.sum()) == anomaly["n_anomalous"]
    fraction = sum(int(v.labels.sum()) for v in test) / sum(v.n_frames for v in test)
    assert 0.30 <= fraction <= 0.50, fraction


def test_training_videos_are_unlabelled(default_root):
    train = load_split("ucsd", default_root, "train")
    assert len(train) == 4
    assert all(v.labels is None and v.n_frames == 96 for v in train)
    assert train[0].frame_size == (240, 160)
    frame = train[0].read_frame(0)
    assert frame.shape == (160, 240, 3)
    assert np.array_equal(frame[..., 0], frame[..., 2])                    # grey, like UCSD


def grey_frames(video) -> np.ndarray:
    return np.stack([frame[..., 0] for _, frame in video.iter_frames()]).astype(np.int16)  # (F, H, W)


def test_background_static_up_to_noise_far_from_walkers(default_root):
    scene = read_json(default_root / "manifest.json")["scene"]
    static_rows, noise_max = scene["static_rows"], scene["noise_max"]
    walk_top, walk_bottom = scene["walkway_rows"]
    assert 0.2 * 160 < static_rows < walk_top + 10                          # a real band above the walkers
    for video in load_split("ucsd", default_root, "train"):
        diffs = np.abs(np.diff(grey_frames(video), axis=0))                 # (F-1, H, W)
        far = diffs[:, :static_rows]
        assert far.max() <= 2 * noise_max                                   # only sensor noise there
        assert 0.5 < far.mean() < 3.0                                       # ... and noise is there
        moving = diffs > 2 * noise_max + 10
        assert moving[:, static_rows:walk_bottom + 3].sum() > 0             # the walkers move
        assert np.mean(moving.any(axis=(1, 2))) > 0.9                       # in nearly every frame
        assert moving[:, walk_bottom + 3:].sum() == 0                       # never below the walkway


def test_wrong_direction_walker_appears_exactly_when_labelled(default_root):
    """The crosser is the only thing outside the normal walkers' rows: the first labelled frame
    is the first one with changes there."""
    scene = read_json(default_root / "manifest.json")["scene"]
    static_rows, noise_max = scene["static_rows"], scene["noise_max"]
    walk_bottom = scene["walkway_rows"][1]
    anomalies = read_json(default_root / "anomalies.json")["videos"]
    index = next(i for i, a in enumerate(anomalies) if a["kind"] == "wrong_direction")
    video = load_split("ucsd", default_root, "test")[index]
    frames = grey_frames(video)
    outside = np.concatenate([frames[:, :static_rows], frames[:, walk_bottom + 3:]], axis=1)
    changed = np.abs(outside - outside[0]).max(axis=(1, 2)) > 2 * noise_max  # (F,) vs frame 0
    start = anomalies[index]["start"]
    assert not changed[:start].any()
    assert changed[start]


def test_idempotent_refuses_other_parameters_and_overwrites(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", **SMALL)
    (root / "marker.txt").write_text("kept")
    assert make_synthetic_dataset(tmp_path / "s", **SMALL) == root         # returns at once
    assert (root / "marker.txt").exists()
    with pytest.raises(DatasetError, match=r"other parameters.*overwrite=True"):
        make_synthetic_dataset(root, **{**SMALL, "n_frames": 40})
    make_synthetic_dataset(root, **{**SMALL, "n_frames": 40}, overwrite=True)
    assert not (root / "marker.txt").exists()
    assert read_json(root / "manifest.json")["parameters"]["n_frames"] == 40
    assert len(list((root / "training" / "frames" / "01").glob("*.png"))) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]              # no temporary leftovers


def test_refuses_a_foreign_folder_and_bad_parameters(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(DatasetError, match=r"mine exists, is not empty and has no manifest\.json"):
        make_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "thesis.tex").exists()
    with pytest.raises(DatasetError, match="n_frames=5"):
        make_synthetic_dataset(tmp_path / "x", **{**SMALL, "n_frames": 5})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (make_synthetic_dataset(empty, **SMALL) / "manifest.json").is_file()


def test_ground_truth_mat_is_interval_format(default_root):
    import scipy.io
    gt = scipy.io.loadmat(str(default_root / "synthetic.mat"))["gt"]
    anomalies = read_json(default_root / "anomalies.json")["videos"]
    assert gt.shape == (1, 6) and gt.dtype == object
    for entry, anomaly in zip(gt[0], anomalies):
        assert entry.tolist() == [[anomaly["start"] + 1], [anomaly["end"] + 1]]   # 1-based inclusive
