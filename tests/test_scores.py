"""scores: s(Q, M) = (max_q min_m ||q - m||) ** n, by hand and by brute force (METHOD.md §7).

Both arithmetics: "reference" (torch.cdist's matrix-product form, set by set, queries in the
authors' layout) and "exact"; a hand-made case where the two differ; the authors' reshape chain.
"""

import numpy as np
import pytest
import torch

from vpclib.features import spatial_vectors
from vpclib.scores import (clip_to_frames, highlevel_clip_scores, local_clip_scores, nearest_distances, set_distances,
                           set_score)

ARITHMETICS = ["reference", "exact"]


def brute_nearest(q, m):
    return np.array([min(np.sqrt(((qi - mj) ** 2).sum()) for mj in m) for qi in q])


def brute_set_score(q, m, power):
    return brute_nearest(q, m).max() ** power


@pytest.mark.parametrize("chunk", [8192, 16, 7, 1])
def test_nearest_distances_brute_force(rng, chunk):
    queries = rng.normal(size=(100, 5))
    bank = rng.normal(size=(300, 5))
    ours = nearest_distances(torch.as_tensor(queries, dtype=torch.float32),
                             torch.as_tensor(bank, dtype=torch.float32), chunk=chunk)
    assert ours.shape == (100,)
    np.testing.assert_allclose(ours.numpy(), brute_nearest(queries, bank), rtol=1e-5, atol=1e-6)


def test_nearest_distances_exact_zero_and_offset(rng):
    """A query equal to a bank vector is at distance 0 exactly; a shared offset of 100 changes nothing."""
    bank = rng.normal(size=(50, 8))
    queries = np.concatenate([bank[[3, 17]], rng.normal(size=(5, 8))])
    expected = brute_nearest(queries, bank)
    for offset in (0.0, 100.0):
        ours = nearest_distances(torch.as_tensor(queries + offset, dtype=torch.float32),
                                 torch.as_tensor(bank + offset, dtype=torch.float32)).numpy()
        assert ours[0] == 0 and ours[1] == 0
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


BANK = np.array([[0, 0], [4, 0], [0, 3]], dtype=np.float32)
# two 2-D vectors per object; nearest distances worked out by hand:
OBJECTS = np.array([
    [[1, 0], [4, 1]],   # clip 0: 1 (to (0,0)) and 1 (to (4,0)) -> max 1
    [[0, 5], [2, 0]],   # clip 0: 2 (to (0,3)) and 2 (to (0,0) and (4,0)) -> max 2
    [[7, 4], [0, 0]],   # clip 2: 5 (to (4,0): 3-4-5) and 0 -> max 5
], dtype=np.float32)
OBJECT_CLIP = np.array([0, 0, 2])


@pytest.mark.parametrize("arithmetic", ARITHMETICS)
@pytest.mark.parametrize("power, expected", [
    (1, [2, 0, 5, 0]),       # clip 0: max over its objects of (1, 2); clips 1 and 3 have no objects
    (2, [4, 0, 25, 0]),
    (4, [16, 0, 625, 0]),
])
def test_local_clip_scores_by_hand(power, expected, arithmetic):
    scores = local_clip_scores(torch.from_numpy(OBJECTS), torch.from_numpy(OBJECT_CLIP), 4,
                               torch.from_numpy(BANK), power, arithmetic)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)


def test_local_clip_scores_no_objects():
    scores = local_clip_scores(torch.zeros(0, 49, 2), torch.zeros(0, dtype=torch.long), 3, torch.from_numpy(BANK), 2)
    np.testing.assert_array_equal(scores.numpy(), [0, 0, 0])


@pytest.mark.parametrize("arithmetic", ARITHMETICS)
def test_local_clip_scores_random_vs_loop(rng, arithmetic):
    k, v, d, n_clips, power = 9, 49, 8, 6, 2
    vectors = rng.normal(size=(k, v, d))
    bank = rng.normal(size=(40, d))
    object_clip = np.array([0, 0, 0, 2, 3, 3, 5, 5, 5])
    expected = np.zeros(n_clips)
    for clip in range(n_clips):
        members = [o for o in range(k) if object_clip[o] == clip]
        if members:
            expected[clip] = max(brute_set_score(vectors[o], bank, power) for o in members)
    ours = local_clip_scores(torch.as_tensor(vectors, dtype=torch.float32), torch.as_tensor(object_clip), n_clips,
                             torch.as_tensor(bank, dtype=torch.float32), power, arithmetic)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    assert ours[1] == 0 and ours[4] == 0


def test_set_score():
    assert set_score(torch.tensor([1.0, 3.0, 2.0]), 2).item() == 9.0
    np.testing.assert_array_equal(set_score(torch.tensor([[1.0, 2.0], [0.5, 0.0]]), 3).numpy(), [8.0, 0.125])


def test_highlevel_clip_scores_by_hand():
    # clip 0: vectors at distances 1 and 2 from the bank -> 2 ** 2; clip 1: (7, 4) at 5 -> 25
    vectors = torch.tensor([[[1, 0], [0, 5]], [[7, 4], [4, 0]]], dtype=torch.float32)   # (B=2, T=2, D=2)
    np.testing.assert_allclose(highlevel_clip_scores(vectors, torch.from_numpy(BANK), 2).numpy(), [4, 25], rtol=1e-6)


@pytest.mark.parametrize("arithmetic", ARITHMETICS)
def test_highlevel_clip_scores_random_vs_loop(rng, arithmetic):
    vectors = rng.normal(size=(3, 4, 6))
    bank = rng.normal(size=(40, 6))                                          # > 25 rows: cdist's mm form
    expected = [brute_set_score(vectors[b], bank, 4) for b in range(3)]
    ours = highlevel_clip_scores(torch.as_tensor(vectors, dtype=torch.float32),
                                 torch.as_tensor(bank, dtype=torch.float32), 4, arithmetic)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4)


def test_clip_to_frames():
    np.testing.assert_array_equal(clip_to_frames(np.array([1.5, 2.0, 3.0]), 2), [1.5, 1.5, 2, 2, 3, 3])
    np.testing.assert_array_equal(clip_to_frames([7.0], 3), [7, 7, 7])


def test_reference_distances_cancel_where_exact_do_not():
    """q = (1000, 0), bank m_j = (1000, 0.01 + j), 30 rows (more than 25: torch.cdist takes its
    matrix-product form). Exact nearest distance: 0.01. In float32 |m_0|^2 = 1e6 + 1e-4 rounds to
    1e6 (the spacing there is 0.0625), so |q|^2 + |m|^2 - 2 q.m = 1e6 + 1e6 - 2e6 = 0: distance 0."""
    bank = torch.tensor([[1000.0, 0.01 + j] for j in range(30)])
    queries = torch.tensor([[[1000.0, 0.0]]])                                 # (S=1, V=1, D=2)
    assert set_distances(queries, bank, "reference").item() == 0.0
    assert set_distances(queries, bank, "exact").item() == pytest.approx(0.01, rel=1e-3)


def test_reference_distances_equal_the_authors_chain(rng):
    """Spatial vectors made as the authors make them (per object: mean + max over T, AdaptiveAvgPool3d
    to (1, 7, 7), squeeze, permute(0, 2, 3, 1), reshape(-1, C): a view laid out (1, 49)), scored by
    their `torch.cdist(Q, M)` min; ours from vpclib.features, stored contiguous (as in the h5
    features) and scored set by set: the same float32 bits."""
    k, c, t = 6, 32, 4
    local = torch.as_tensor(rng.normal(size=(k, c, t, 28, 28)), dtype=torch.float32)   # F (K, C, T, 28, 28)
    bank = torch.as_tensor(rng.normal(size=(300, c)) * 0.3, dtype=torch.float32)
    expected = []
    for obj in range(k):
        f = local[obj:obj + 1]                                                # (1, C, T, 28, 28)
        f = f.mean(2, keepdim=True) + f.amax(2, keepdim=True)                 # (1, C, 1, 28, 28)
        f = torch.nn.AdaptiveAvgPool3d((1, 7, 7))(f)                           # (1, C, 1, 7, 7)
        q = f.squeeze(2).permute(0, 2, 3, 1).reshape(-1, c)                   # (49, C), strides (1, 49)
        assert q.stride() == (1, 49)
        expected.append(torch.cdist(q, bank, p=2.0).min(1).values)
    expected = torch.stack(expected)                                          # (K, 49)
    stored = torch.from_numpy(np.ascontiguousarray(spatial_vectors(local).numpy()))  # (K, 49, C) as read from h5
    ours = set_distances(stored, bank, "reference")
    assert torch.equal(ours, expected)
