"""benchmarks/countbias.py: the label-free object-count diagnostic, by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
countbias = pytest.importorskip("countbias")


def test_frame_counts_repeat_each_clip_count_over_its_frames():
    boxes = {"a": [np.zeros((2, 4)), np.zeros((1, 4))], "b": [np.zeros((0, 4))]}
    assert countbias.frame_counts(boxes, ["b", "a"], 2).tolist() == [0, 0, 2, 2, 1, 1]


def test_count_bias_by_hand():
    r = countbias.count_bias(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 2, 3]), mean=2.0, std=1.0)
    assert r["spearman"] == pytest.approx(1.0)
    z = r["mean_z_by_objects"]                                  # z = -1, 0, 1, 2
    assert z["0-0"] == pytest.approx(-1.0) and z["1-2"] == pytest.approx(0.5) and z["3-5"] == pytest.approx(2.0)
    assert z["6-9"] is None and z["15+"] is None
    falling = countbias.count_bias(np.array([4.0, 3.0, 2.0]), np.array([1, 5, 9]), mean=0.0, std=1.0)
    assert falling["spearman"] == pytest.approx(-1.0)
