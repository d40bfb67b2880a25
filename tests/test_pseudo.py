"""The pseudo-anomaly validation split (vpclib.pseudo): which frame lands where, the labels, the
pasted patch, and the folder dataset that `vpc run --set data.layout=folder` reads."""

import cv2
import numpy as np
import pytest

from vpclib import pseudo
from vpclib.datasets import load_split
from vpclib.errors import DatasetError

N, H, W = 24, 40, 60


def value(video: int, frame: int) -> int:
    return (10 if video == 0 else 150) + 4 * frame    # each frame its own grey level, 4 apart; video 0
                                                        # (held out) dark, the donors bright


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for v in range(3):
        folder = root / "training" / f"{v + 1:02d}"
        folder.mkdir(parents=True)
        for i in range(N):
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), np.full((H, W, 3), value(v, i), np.uint8))
    return root


def test_segments_by_hand():
    seg = pseudo.segments(24, np.random.default_rng(0))
    (fs, fe), (ps, pe) = seg["fast"], seg["pasted"]
    assert fe - fs == pe - ps == 6                                          # 0.25 * 24
    assert 0 <= fs and fs + 3 * 6 <= 24 and fs < 12 <= ps and pe <= 24       # room at 3x; halves
    with pytest.raises(DatasetError, match="too short"):
        pseudo.segments(3, np.random.default_rng(0))                        # 1 frame at 3x in 3: no room to start


def test_validation_split_frames_labels_and_patch(dataset, tmp_path):
    out = tmp_path / "val"
    plan = pseudo.validation_split("folder", dataset, out, ["01"], seed=1)
    (fs, fe), (ps, pe) = plan["01"]["fast"], plan["01"]["pasted"]
    assert sorted(p.name for p in (out / "training").iterdir()) == ["02", "03"]
    labels = np.load(out / "labels" / "01.npy")
    expected = np.zeros(N, np.uint8)
    expected[fs:fe] = expected[ps:pe] = 1
    assert np.array_equal(labels, expected)
    side = round(0.15 * H)                                                  # the pasted patch: 6 px
    for i in range(N):
        frame = cv2.imread(str(out / "testing" / "01" / f"{i:03d}.jpg")).astype(int)
        source = fs + 3 * (i - fs) if fs <= i < fe else i                   # by hand: 3x inside the segment
        if ps <= i < pe:                                                    # a foreign patch somewhere:
            off = np.abs(frame - value(0, source)).max(2) > 24              # the donor's brighter pixels
            rows, cols = np.nonzero(off)
            assert 0 < len(rows) and np.ptp(rows) < side + 4 and np.ptp(cols) < side + 4   # one patch (+ JPEG ringing)
            assert abs(cols.min() - ((i - ps) * 6) % (W - side)) <= 2      # 6 px a frame, wrapping
        else:
            assert np.abs(frame - value(0, source)).max() <= 2, i           # JPEG of a flat grey
    val = load_split("folder", out, "test")
    assert [v.name for v in val] == ["01"] and np.array_equal(val[0].labels, expected)
    assert [v.name for v in load_split("folder", out, "train")] == ["02", "03"]


def test_validation_split_refuses_bad_requests(dataset, tmp_path):
    with pytest.raises(DatasetError, match="unknown: \\['07'\\]"):
        pseudo.validation_split("folder", dataset, tmp_path / "a", ["07"])
    with pytest.raises(DatasetError, match="some, not all"):
        pseudo.validation_split("folder", dataset, tmp_path / "b", ["01", "02", "03"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("kept")
    with pytest.raises(DatasetError, match="not empty"):
        pseudo.validation_split("folder", dataset, tmp_path / "c", ["01"])
    assert (tmp_path / "c" / "x").read_text() == "kept"


def test_an_interrupted_split_leaves_no_dataset(dataset, tmp_path):
    """A held-out video too short for its segments stops the run: nothing appears under `out`;
    the next run (other videos) succeeds and leaves no .partial folder."""
    short = dataset / "training" / "04"
    short.mkdir()
    for i in range(3):
        cv2.imwrite(str(short / f"{i:03d}.jpg"), np.full((H, W, 3), 99, np.uint8))
    out = tmp_path / "val"
    with pytest.raises(DatasetError, match="too short"):
        pseudo.validation_split("folder", dataset, out, ["04"])
    assert not out.exists()
    pseudo.validation_split("folder", dataset, out, ["01"])
    assert sorted(p.name for p in out.iterdir()) == ["labels", "testing", "training"]
    assert not (tmp_path / "val.partial").exists()


def test_held_out_folds_are_consecutive_natural_runs():
    names = [str(i) for i in (10, 2, 1, 16, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15)]    # shuffled, "10" < "2" as text
    assert pseudo.held_out_folds(names, 4) == [["1", "2", "3", "4"], ["5", "6", "7", "8"],
                                               ["9", "10", "11", "12"], ["13", "14", "15", "16"]]
    # 10 videos in 3: bounds 0, 3.33, 6.67, 10 rounded to 0, 3, 7, 10
    assert [len(f) for f in pseudo.held_out_folds([f"{i:02d}" for i in range(10)], 3)] == [3, 4, 3]
    for k in (1, 9):                                                    # every fold keeps half for its memories
        with pytest.raises(DatasetError, match="folds"):
            pseudo.held_out_folds([f"{i:02d}" for i in range(16)], k)


def pairwise_auc(labels, scores):
    """AUC as the share of (anomalous, normal) pairs ordered right, ties half: by hand."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_labelfree_aucs_fuse_a_finished_runs_scores_again():
    # two videos of 4 frames; sigma 0 (no smoothing), so the fused score is a weighted sum of z-scores
    scores = {"video": np.array(["a"] * 4 + ["b"] * 4), "label": np.array([0, 1, 1, 0, 0, 0, 1, 0]),
              "spatial": np.array([1.0, 3, 2, 1, 2, 1, 5, 1]), "temporal": np.array([2.0, 1, 4, 2, 1, 3, 1, 2]),
              "highlevel": np.array([0.0, 1, 1, 0, 2, 0, 0, 1]), "velocity": np.array([1.0, 1, 1, 1, 0, 2, 9, 0])}
    stats = {"spatial": (1.0, 2.0), "temporal": (2.0, 1.0), "highlevel": (0.0, 1.0), "velocity": (1.0, 4.0)}
    # a = 0.25, b = 0.75: 0.75 * (0.25 * (S - 1) / 2 + 0.75 * (T - 2)) + 0.25 * H, worked frame by frame
    fused = [0.75 * (0.25 * (s - 1) / 2 + 0.75 * (t - 2)) + 0.25 * h
             for s, t, h in zip(scores["spatial"], scores["temporal"], scores["highlevel"])]
    assert np.allclose(fused[:4], [0.0, -0.125, 1.46875, 0.0], atol=1e-12)   # video a, by hand
    micro, macro = pseudo.labelfree_aucs(scores, stats, 0.25, 0.75, 0)
    assert micro == pytest.approx(pairwise_auc(scores["label"], fused), abs=1e-7)
    assert macro == pytest.approx((pairwise_auc([0, 1, 1, 0], fused[:4]) + pairwise_auc([0, 0, 1, 0], fused[4:])) / 2,
                                  abs=1e-7)
    # + weight * (V - 1) / 4 with weight 2: frame 6's velocity (9) lifts it above every other frame
    with_velocity = [f + 2 * (v - 1) / 4 for f, v in zip(fused, scores["velocity"])]
    micro, _ = pseudo.labelfree_aucs(scores, stats, 0.25, 0.75, 0, velocity_weight=2.0)
    assert micro == pytest.approx(pairwise_auc(scores["label"], with_velocity), abs=1e-7)
    assert micro != pytest.approx(pairwise_auc(scores["label"], fused), abs=1e-3)
