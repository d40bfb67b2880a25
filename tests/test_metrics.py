"""metrics: micro, per-video and macro frame-level AUC.

The oracle is a second, plain implementation: the AUC as the Mann-Whitney statistic, the share of
(anomalous, normal) frame pairs ordered right, ties counting one half. (It is not scikit-learn,
which vpclib.metrics calls: comparing against it would test sklearn against itself.)
"""

import math

import numpy as np

from vpclib.metrics import auc, macro_auc, per_video_auc


def pairwise_auc(labels, scores) -> float:
    pos, neg = np.asarray(scores)[np.asarray(labels) == 1], np.asarray(scores)[np.asarray(labels) == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_by_hand_and_pairwise(rng):
    # 2 positives x 2 negatives: pairs (0.8 > 0.1), (0.8 > 0.4), (0.35 > 0.1), (0.35 < 0.4) -> 3/4
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.4, 0.35])) == 0.75
    # positives 0.5, 0.9 against negatives 0.1, 0.5: 1 + 0.5 (the tie counts one half) + 1 + 1 -> 3.5/4
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == 0.875
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 2)                      # rounded: many ties
    assert abs(auc(labels, scores) - pairwise_auc(labels, scores)) < 1e-12


def test_auc_single_class_is_nan():
    assert math.isnan(auc(np.zeros(5), np.arange(5.0)))
    assert math.isnan(auc(np.ones(3, dtype=np.uint8), np.arange(3.0)))


def test_per_video_and_macro_auc(rng):
    ids = np.repeat([3, 5, 8, 9], [20, 15, 10, 12])
    labels = rng.integers(0, 2, len(ids))
    labels[ids == 8] = 0                                      # all normal: NaN, skipped by macro
    labels[ids == 9] = 1                                      # all anomalous: NaN, skipped by macro
    scores = rng.random(len(ids)) + 0.5 * labels
    per = per_video_auc(labels, scores, ids)
    assert list(per) == [3, 5, 8, 9]
    for v in (3, 5):
        assert abs(per[v] - pairwise_auc(labels[ids == v], scores[ids == v])) < 1e-12
    assert math.isnan(per[8]) and math.isnan(per[9])
    expected = (pairwise_auc(labels[ids == 3], scores[ids == 3]) + pairwise_auc(labels[ids == 5], scores[ids == 5])) / 2
    assert abs(macro_auc(labels, scores, ids) - expected) < 1e-12
    # micro AUC is one ROC over all frames, not the mean of the videos
    assert abs(auc(labels, scores) - pairwise_auc(labels, scores)) < 1e-12
    assert abs(auc(labels, scores) - macro_auc(labels, scores, ids)) > 1e-3


def test_macro_auc_all_single_class_is_nan():
    ids = np.repeat([0, 1], 3)
    assert math.isnan(macro_auc(np.array([0, 0, 0, 1, 1, 1]), np.arange(6.0), ids))
