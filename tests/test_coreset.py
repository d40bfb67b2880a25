"""coreset and memory: greedy k-center against brute force, bank building, npz round trip (METHOD.md §6)."""

import math
import zipfile

import numpy as np
import pytest
import torch
from sklearn.random_projection import SparseRandomProjection

from vpclib.coreset import coreset_size, greedy_coreset, random_projection
from vpclib.memory import MEMORIES, Memory, build_memory, load_memory, save_memory


def brute_force_kcenter(x: np.ndarray, n_select: int) -> list[int]:
    """Start at 0; each step recompute every distance to the whole selected set; first argmax."""
    selected = [0]
    while len(selected) < n_select:
        dist = np.sqrt(((x[:, None, :] - x[selected][None, :, :]) ** 2).sum(-1))   # (N, len(selected))
        selected.append(int(np.argmax(dist.min(1))))
    return selected


@pytest.mark.parametrize("n, d, n_select", [(50, 3, 10), (200, 16, 37), (7, 2, 7), (30, 5, 1)])
def test_greedy_coreset_matches_brute_force(rng, n, d, n_select):
    x = rng.normal(size=(n, d))
    expected = brute_force_kcenter(x, n_select)
    for dtype in (torch.float64, torch.float32):
        ours = greedy_coreset(torch.as_tensor(x, dtype=dtype), n_select)
        assert ours.dtype == torch.long
        assert ours.tolist() == expected


def test_greedy_coreset_chunked_equals_unchunked(rng):
    x = torch.as_tensor(rng.normal(size=(103, 4)))
    expected = brute_force_kcenter(x.numpy(), 20)
    assert greedy_coreset(x, 20, chunk=7).tolist() == expected
    assert greedy_coreset(x, 20, chunk=1).tolist() == expected


def test_greedy_coreset_ties_and_duplicates_by_hand():
    """From index 0 every neighbour is at distance 1: ties go to the lowest index.

    Step 1: distances (0, 1, 1, 1, 1, 1) -> index 1. Step 2: index 5 duplicates 1 (distance 0),
    2, 3, 4 are still at 1 -> index 2, then 3, then 4. Then every distance is 0 and argmax gives 0.
    """
    x = torch.tensor([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [1, 0]], dtype=torch.float32)
    assert greedy_coreset(x, 6).tolist() == [0, 1, 2, 3, 4, 0]
    assert greedy_coreset(x, 6).tolist() == brute_force_kcenter(x.numpy(), 6)


def test_greedy_coreset_random_integer_points_with_duplicates(rng):
    # integer grid points: many exact ties and duplicates
    x = rng.integers(-2, 3, size=(60, 2)).astype(np.float64)
    x = np.concatenate([x, x[:20]])
    for n_select in (5, 15, 40):
        assert greedy_coreset(torch.as_tensor(x), n_select).tolist() == brute_force_kcenter(x, n_select)


def test_greedy_coreset_caps_at_n():
    x = torch.arange(4.0)[:, None]
    assert greedy_coreset(x, 10).tolist() == [0, 3, 1, 2]   # from 0: 3 is farthest, then 1 (tie 1 vs 2 at distance 1)


@pytest.mark.parametrize("n, ratio, size", [
    (5, 0.01, 1),        # int(0.05) = 0 -> at least one
    (1, 0.25, 1),
    (1000, 0.01, 10),
    (99, 0.1, 9),        # int(9.9) truncates
    (10, 0.25, 2),
    (100, 0.29, 28),     # Python's int(0.29 * 100) = int(28.999999999999996) = 28, as in the reference
    (40, 1.0, 40),
])
def test_coreset_size(n, ratio, size):
    assert coreset_size(n, ratio) == size


def test_random_projection_reduces_to_jl_dim(rng):
    n, d, eps = 100, 300, 0.9
    x = rng.normal(size=(n, d)).astype(np.float32)
    jl_dim = int(4 * math.log(n) / (eps ** 2 / 2 - eps ** 3 / 3))           # = 113 for n = 100
    assert jl_dim == 113
    ours = random_projection(torch.from_numpy(x), eps=eps, seed=0)
    assert ours.shape == (n, jl_dim)
    expected = SparseRandomProjection(eps=eps, random_state=0).fit(x).transform(x)
    expected = expected.toarray() if hasattr(expected, "toarray") else expected
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_random_projection_unchanged_when_jl_dim_not_smaller(rng):
    x = torch.as_tensor(rng.normal(size=(100, 113)), dtype=torch.float32)   # JL dim 113 is not < 113
    assert random_projection(x, eps=0.9) is x
    x = torch.as_tensor(rng.normal(size=(100, 50)), dtype=torch.float32)
    assert random_projection(x, eps=0.9) is x


# ---------------------------------------------------------------------------------------------
# memory banks

def test_build_bank_per_video_coreset_then_concat(rng):
    per_video = [rng.normal(size=(20, 3)), rng.normal(size=(7, 3)), np.zeros((0, 3)), rng.normal(size=(13, 3))]
    bank = build_memory(per_video, ratio=0.2)
    # l = int(0.2 * N): 4, int(1.4) = 1, (empty video skipped), int(2.6) = 2
    expected = [per_video[0][brute_force_kcenter(per_video[0], 4)],
                per_video[1][brute_force_kcenter(per_video[1], 1)],
                per_video[3][brute_force_kcenter(per_video[3], 2)]]
    assert bank.vectors.dtype == np.float32
    np.testing.assert_allclose(bank.vectors, np.concatenate(expected), rtol=1e-6)
    np.testing.assert_array_equal(bank.video, [0, 0, 0, 0, 1, 3, 3])
    # the row of each kept vector among its own video's vectors
    np.testing.assert_array_equal(bank.row, brute_force_kcenter(per_video[0], 4) + [0] + brute_force_kcenter(per_video[3], 2))
    for vec, v, r in zip(bank.vectors, bank.video, bank.row):
        np.testing.assert_allclose(vec, per_video[v][r], rtol=1e-6)
    np.testing.assert_allclose(bank.without_video(0), np.concatenate(expected[1:]), rtol=1e-6)
    np.testing.assert_allclose(bank.without_video(3), np.concatenate(expected[:2]), rtol=1e-6)
    np.testing.assert_allclose(bank.without_video(2), bank.vectors)
    assert bank.megabytes == pytest.approx(7 * 3 * 4 / 2 ** 20)


def test_build_bank_not_a_global_coreset(rng):
    """Per-video selection differs from one coreset over all vectors: each video keeps its index 0."""
    a, b = rng.normal(size=(10, 2)), rng.normal(size=(10, 2)) + 100
    bank = build_memory([a, b], ratio=0.1)
    np.testing.assert_allclose(bank.vectors, np.stack([a[0], b[0]]), rtol=1e-6)


def test_build_bank_with_projection(rng):
    x = rng.normal(size=(100, 300)).astype(np.float32)
    bank = build_memory([x], ratio=0.1, projection=True, projection_eps=0.9)
    projected = SparseRandomProjection(eps=0.9, random_state=0).fit(x).transform(x)
    projected = projected.toarray() if hasattr(projected, "toarray") else projected
    expected = brute_force_kcenter(projected.astype(np.float64), 10)
    np.testing.assert_array_equal(bank.vectors, x[expected])                # the original vectors are kept


def test_build_bank_all_empty():
    with pytest.raises(ValueError):
        build_memory([np.zeros((0, 4))], 0.5)


def test_memory_npz_roundtrip(tmp_path, rng):
    banks = {name: Memory(rng.normal(size=(n, d)).astype(np.float32), np.arange(n, dtype=np.int32) % 3,
                        np.arange(n, dtype=np.int64)[::-1].copy())
             for name, n, d in zip(MEMORIES, (11, 5, 7), (4, 4, 9))}
    path = tmp_path / "memory.npz"
    save_memory(path, banks)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{s}_{k}.npy" for s in MEMORIES for k in ("vectors", "video", "row"))
    with np.load(path, allow_pickle=False) as z:                           # no object arrays inside
        assert all(z[k].dtype != object for k in z.files)
    loaded = load_memory(path)
    assert set(loaded) == set(MEMORIES)
    for name in MEMORIES:
        np.testing.assert_array_equal(loaded[name].vectors, banks[name].vectors)
        np.testing.assert_array_equal(loaded[name].video, banks[name].video)
        np.testing.assert_array_equal(loaded[name].row, banks[name].row)
        assert loaded[name].vectors.dtype == np.float32 and loaded[name].video.dtype == np.int32
