"""fusion: z-score, min-max, smoothing and the reference / label-free protocols (METHOD.md §8).

Gaussian smoothing is recomputed here by hand (scipy's kernel and 'reflect' border, written out)
and AUCs with sklearn directly, so nothing below reuses vpclib's own helpers.
"""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from vpclib.fusion import (EPS, calibration_stats, labelfree_calibrated, local_stream, minmax, oracle_search,
                           per_video, reference_all_streams, reference_local_only, smooth, zscore)


def hand_gaussian(x, sigma):
    """scipy.ndimage.gaussian_filter1d(x, sigma) written out: radius int(4 sigma + 0.5), 'reflect' border."""
    x = np.asarray(x, dtype=np.float64)
    if sigma == 0:
        return x.copy()
    n = len(x)
    radius = int(4 * sigma + 0.5)
    weights = np.array([math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)])
    weights /= weights.sum()

    def reflect(i):                      # (d c b a | a b c d | d c b a), repeated
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i

    return np.array([sum(w * x[reflect(i + k)] for w, k in zip(weights, range(-radius, radius + 1)))
                     for i in range(n)])


def hand_z(x):
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))             # population std
    return np.array([(v - mean) / (std + 1e-8) for v in x])


def hand_minmax(x):
    lo, hi = min(x), max(x)
    return np.array([(v - lo) / (hi - lo + 1e-8) for v in x])


def test_hand_gaussian_is_scipy(rng):
    x = rng.normal(size=30)
    for sigma in (0.5, 2, 7, 19):      # 19: the kernel is wider than the signal (repeated reflection)
        np.testing.assert_allclose(hand_gaussian(x, sigma), gaussian_filter1d(x, sigma), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------

def test_zscore_by_hand():
    # mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    std = math.sqrt(1.25)
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0, 4.0])),
                               [-1.5 / (std + 1e-8), -0.5 / (std + 1e-8), 0.5 / (std + 1e-8), 1.5 / (std + 1e-8)],
                               rtol=1e-14)
    np.testing.assert_array_equal(zscore(np.full(5, 3.7)), np.zeros(5))
    # tiny scores: mean 1e-8, std 1e-8 -> (+-1e-8) / 2e-8 = +-0.5, not +-1
    np.testing.assert_allclose(zscore(np.array([0.0, 2e-8])), [-0.5, 0.5], rtol=1e-12)
    assert EPS == 1e-8


def test_minmax_by_hand():
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 6.0])), [0, 2 / (4 + 1e-8), 4 / (4 + 1e-8)], rtol=1e-14)
    np.testing.assert_array_equal(minmax(np.full(4, -2.0)), np.zeros(4))
    # tiny scores: (1e-8 - 0) / (1e-8 + 1e-8) = 0.5
    np.testing.assert_allclose(minmax(np.array([0.0, 1e-8])), [0.0, 0.5], rtol=1e-12)


def test_smooth(rng):
    x = rng.normal(size=40).astype(np.float32)
    out = smooth(x, 0)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.astype(np.float64))
    for sigma in (1, 3.5, 12):
        np.testing.assert_allclose(smooth(x, sigma), gaussian_filter1d(x.astype(np.float64), sigma), rtol=1e-12)
        np.testing.assert_allclose(smooth(x, sigma), hand_gaussian(x, sigma), rtol=1e-9, atol=1e-12)


def test_per_video(rng):
    x = rng.normal(size=9)
    ids = np.array([4, 4, 4, 1, 1, 7, 7, 7, 7])
    expected = np.concatenate([hand_z(x[:3]), hand_z(x[3:5]), hand_z(x[5:])])
    np.testing.assert_allclose(per_video(zscore, x, ids), expected, rtol=1e-12)


def test_local_stream():
    np.testing.assert_allclose(local_stream(np.array([1.0, 2.0]), np.array([10.0, 20.0]), 0.3), [7.3, 14.6])


# ---------------------------------------------------------------------------------------------
# the reference protocol


@pytest.fixture
def streams(rng):
    ids = np.repeat([0, 1, 2], [12, 8, 10])                                  # three test videos
    n = len(ids)
    labels = np.zeros(n, dtype=int)
    labels[[5, 6, 7, 15, 16, 24, 25, 26, 27]] = 1
    spatial = rng.random(n) + 0.8 * labels
    temporal = rng.random(n) + 0.3 * labels
    highlevel = rng.random(n) * 5 + 2 * labels + 3 * ids                     # per-video offsets
    return spatial, temporal, highlevel, labels, ids


def test_reference_local_only(streams):
    spatial, temporal, _, _, _ = streams
    for a, sigma in ((0.3, 0), (0.7, 2), (1.0, 5)):
        local = [a * s + (1 - a) * t for s, t in zip(spatial, temporal)]
        expected = hand_minmax(hand_gaussian(local, sigma))                  # across video borders
        np.testing.assert_allclose(reference_local_only(spatial, temporal, a, sigma), expected, rtol=1e-9, atol=1e-12)


def _hand_all_streams(spatial, temporal, highlevel, ids, a, b, sigma):
    local = hand_gaussian(hand_z([a * s + (1 - a) * t for s, t in zip(spatial, temporal)]), sigma)
    high = np.concatenate([hand_gaussian(hand_z(highlevel[ids == v]), sigma) for v in (0, 1, 2)])
    return hand_minmax(b * local + (1 - b) * high)


def test_reference_all_streams(streams):
    spatial, temporal, highlevel, _, ids = streams
    for a, b, sigma in ((0.3, 0.6, 2), (1.0, 0.0, 0), (0.5, 1.0, 4), (0.2, 0.9, 13)):
        ours = reference_all_streams(spatial, temporal, highlevel, ids, a, b, sigma)
        np.testing.assert_allclose(ours, _hand_all_streams(spatial, temporal, highlevel, ids, a, b, sigma),
                                   rtol=1e-9, atol=1e-12)


def test_reference_all_streams_filter_crosses_borders_for_local_only(streams):
    """Local: smoothed over the concatenation (quirk); high-level: smoothed inside each video."""
    spatial, temporal, highlevel, _, ids = streams
    step = np.zeros(len(ids))
    step[ids == 1] = 1.0                                                     # a local step at the borders
    flat_h = np.zeros(len(ids))
    with_local = reference_all_streams(step, step, flat_h, ids, 0.5, 1.0, 3)
    assert with_local[11] > 0                                                # video 0 sees video 1's scores
    only_high = reference_all_streams(np.zeros(len(ids)), np.zeros(len(ids)), ids.astype(float), ids, 0.5, 0.0, 3)
    np.testing.assert_array_equal(only_high, np.zeros(len(ids)))             # each video constant -> z = 0


def test_oracle_search_brute_force(streams):
    spatial, temporal, highlevel, labels, ids = streams
    a_grid, b_grid, sigma_grid = [0.0, 0.3, 0.7, 1.0], [0.0, 0.4, 1.0], [0, 1, 4]
    result = oracle_search(spatial, temporal, highlevel, labels, ids, a_grid, b_grid, sigma_grid)

    local_table = {}
    for a in a_grid:
        for sigma in sigma_grid:
            local = [a * s + (1 - a) * t for s, t in zip(spatial, temporal)]
            local_table[a, sigma] = roc_auc_score(labels, hand_minmax(hand_gaussian(local, sigma)))
    best_local = max(local_table.values())
    assert result.auc_local == pytest.approx(best_local, abs=1e-12)
    assert local_table[result.a, result.sigma_local] == pytest.approx(best_local, abs=1e-12)

    all_table = {}
    for b in b_grid:
        for sigma in sigma_grid:
            fused = _hand_all_streams(spatial, temporal, highlevel, ids, result.a, b, sigma)
            all_table[b, sigma] = roc_auc_score(labels, fused)
    best = max(all_table.values())
    assert result.auc == pytest.approx(best, abs=1e-12)
    assert all_table[result.b, result.sigma] == pytest.approx(best, abs=1e-12)


def test_oracle_search_unique_optimum():
    """A stream that is perfect only when alone: the search must find a = 1 and b = 1."""
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 0])
    spatial = labels + 0.01 * np.arange(10)                                  # perfect ranking
    temporal = -5.0 * labels                                                 # anti-correlated
    highlevel = -3.0 * labels                                                # anti-correlated
    ids = np.repeat([0, 1], 5)
    r = oracle_search(spatial, temporal, highlevel, labels, ids, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [0])
    assert (r.a, r.sigma_local, r.auc_local) == (1.0, 0, 1.0)
    assert (r.b, r.sigma, r.auc) == (1.0, 0, 1.0)


def test_oracle_search_ties_follow_the_reference_loop_order():
    """Equal streams make every weight tie: the reference keeps the first of its loops,
    sigma outer ascending and the weight inner from 1.0 down, so a = 1.0, sigma = 0."""
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    same = np.array([0.1, 0.9, 0.3, 0.7, 0.2, 0.4, 0.1, 0.8])
    ids = np.zeros(8, int)
    r = oracle_search(same, same, same, labels, ids, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [0, 1])
    assert (r.a, r.sigma_local) == (1.0, 0)
    assert r.b == 1.0 and r.sigma in (0, 1)


# ---------------------------------------------------------------------------------------------
# label-free


def test_calibration_stats():
    stats = calibration_stats({"spatial": np.array([1.0, 3.0]), "temporal": np.array([2.0, 2.0, 5.0])})
    assert stats["spatial"] == (2.0, 1.0)
    assert stats["temporal"] == (3.0, pytest.approx(math.sqrt(2.0)))        # population std


def test_labelfree_calibrated_by_hand():
    stats = {"spatial": (1.0, 2.0), "temporal": (0.5, 0.25), "highlevel": (3.0, 1.0)}
    spatial = np.array([1.0, 3.0, 5.0])       # z: 0, 1, 2
    temporal = np.array([0.5, 1.0, 0.0])      # z: 0, 2, -2
    highlevel = np.array([3.0, 4.0, 2.0])     # z: 0, 1, -1
    ids = np.array([0, 0, 1])
    # a = 0.5: local = (0, 1.5, 0); b = 0.5: final = 0.5 * local + 0.5 * zH = (0, 1.25, -0.5)
    ours = labelfree_calibrated(spatial, temporal, highlevel, ids, stats, 0.5, 0.5, 0)
    np.testing.assert_allclose(ours, [0, 1.25, -0.5], rtol=1e-7, atol=1e-12)
    # a = 1, b = 0.25: local = zS = (0, 1, 2); final = 0.25 * zS + 0.75 * zH = (0, 1, -0.25)
    ours = labelfree_calibrated(spatial, temporal, highlevel, ids, stats, 1.0, 0.25, 0)
    np.testing.assert_allclose(ours, [0, 1.0, -0.25], rtol=1e-7, atol=1e-12)
    # smoothing stays inside each video: video 0 = (0, 1.25) smoothed alone, video 1 = one frame
    ours = labelfree_calibrated(spatial, temporal, highlevel, ids, stats, 0.5, 0.5, 1.5)
    np.testing.assert_allclose(ours, np.concatenate([hand_gaussian([0, 1.25], 1.5), [-0.5]]), rtol=1e-7, atol=1e-9)
