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
