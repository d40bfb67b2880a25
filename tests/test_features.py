"""features: every vector of METHOD.md §4-§5 against a plain-loop numpy implementation."""

import math

import numpy as np
import pytest
import torch

from vpclib.errors import ConfigError
from vpclib.features import (channel_pool, global_descriptors, highlevel_vectors, local_maps, pooled_maps,
                             spatial_vectors, temporal_vectors)

# ---------------------------------------------------------------------------------------------
# plain-loop references (float64)


def _window(i, n_in, n_out):
    """PyTorch's adaptive pooling window of output i: [floor(i*n/m), ceil((i+1)*n/m))."""
    return math.floor(i * n_in / n_out), math.ceil((i + 1) * n_in / n_out)


def ref_avg3(x):
    """AvgPool2d(3, stride 1, no padding) of (C, H, W)."""
    c, h, w = x.shape
    out = np.zeros((c, h - 2, w - 2))
    for i in range(h - 2):
        for j in range(w - 2):
            out[:, i, j] = x[:, i:i + 3, j:j + 3].reshape(c, -1).mean(1)
    return out


def ref_adaptive_avg2d(x, size):
    c, h, w = x.shape
    out = np.zeros((c, size, size))
    for i in range(size):
        y0, y1 = _window(i, h, size)
        for j in range(size):
            x0, x1 = _window(j, w, size)
            out[:, i, j] = x[:, y0:y1, x0:x1].reshape(c, -1).mean(1)
    return out


def ref_pooled_maps(mid, deep, size):
    """(B, C2, h, w), (B, C3, h', w') -> (B, C2 + C3, size, size), one image at a time."""
    out = []
    for b in range(len(mid)):
        maps = [ref_adaptive_avg2d(ref_avg3(m[b]), size) for m in (mid, deep)]
        out.append(np.concatenate(maps, 0))
    return np.stack(out)


def ref_channel_pool(maps, n_groups):
    b, d, h, w = maps.shape
    size = d // n_groups
    out = np.zeros((b, n_groups, h, w))
    for g in range(n_groups):
        total = np.zeros((b, h, w))
        for c in range(g * size, (g + 1) * size):
            total += maps[:, c]
        out[:, g] = total / size
    return out


def ref_adaptive_max1d(x, n_out):
    """(L,) -> (n_out,)."""
    return np.array([x[slice(*_window(i, len(x), n_out))].max() for i in range(n_out)])


def t64(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mid_hw, deep_hw, size", [
    ((28, 28), (14, 14), 28),    # the local stream: 26 -> 28 and 12 -> 28 (adaptive pooling upsamples)
    ((28, 28), (14, 14), 14),    # the global stream: 26 -> 14 and 12 -> 14
    ((11, 9), (7, 7), 4),        # odd sizes, overlapping windows
])
def test_pooled_maps(rng, mid_hw, deep_hw, size):
    mid = rng.normal(size=(2, 3, *mid_hw))
    deep = rng.normal(size=(2, 5, *deep_hw))
    ours = pooled_maps(t64(mid), t64(deep), size)
    assert ours.shape == (2, 8, size, size)
    np.testing.assert_allclose(ours.numpy(), ref_pooled_maps(mid, deep, size), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_groups", [1, 2, 3, 6, 12])
def test_channel_pool(rng, n_groups):
    maps = rng.normal(size=(2, 12, 5, 4))
    np.testing.assert_allclose(channel_pool(t64(maps), n_groups).numpy(), ref_channel_pool(maps, n_groups),
                               rtol=1e-10, atol=1e-12)


def test_channel_pool_paper_groups(rng):
    """1536 channels: C = 32 averages channels 48g..48g+47, C = 64 channels 24g..24g+23."""
    maps = rng.normal(size=(1, 1536, 2, 2))
    for n_groups, size in ((32, 48), (64, 24)):
        ours = channel_pool(t64(maps), n_groups).numpy()
        for g in (0, 7, n_groups - 1):
            np.testing.assert_allclose(ours[0, g], maps[0, g * size:(g + 1) * size].mean(0), rtol=1e-10)


def test_channel_pool_groups_must_divide():
    with pytest.raises(ConfigError, match="channel_groups=5"):
        channel_pool(torch.zeros(1, 12, 2, 2), 5)


def test_local_maps(rng):
    mid = rng.normal(size=(2, 4, 28, 28))
    deep = rng.normal(size=(2, 8, 14, 14))
    expected = ref_channel_pool(ref_pooled_maps(mid, deep, 28), 3)
    np.testing.assert_allclose(local_maps(t64(mid), t64(deep), 3).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_global_descriptors(rng):
    mid = rng.normal(size=(3, 2, 28, 28))
    deep = rng.normal(size=(3, 4, 14, 14))
    maps = ref_pooled_maps(mid, deep, 14)                                   # (B, D, 14, 14)
    expected = np.zeros((3, 6))
    for b in range(3):
        for d in range(6):
            cells = [maps[b, d, i, j] for i in range(14) for j in range(14)]
            expected[b, d] = sum(cells) / len(cells) + max(cells)
    np.testing.assert_allclose(global_descriptors(t64(mid), t64(deep)).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_spatial_vectors(rng):
    k, c, t = 2, 3, 4
    local = rng.normal(size=(k, c, t, 28, 28))
    expected = np.zeros((k, 49, c))
    for o in range(k):
        for ch in range(c):
            s = np.zeros((28, 28))
            for y in range(28):
                for x in range(28):
                    values = [local[o, ch, f, y, x] for f in range(t)]
                    s[y, x] = sum(values) / t + max(values)
            for py in range(7):
                for px in range(7):
                    # 28 -> 7: patch (py, px) averages the 4 x 4 cells rows 4py..4py+3, columns 4px..4px+3
                    expected[o, py * 7 + px, ch] = s[4 * py:4 * py + 4, 4 * px:4 * px + 4].mean()
    np.testing.assert_allclose(spatial_vectors(t64(local)).numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_temporal_vectors(rng, reduce):
    k, c, t = 2, 3, 5
    local = rng.normal(size=(k, c, t, 6, 7))
    expected = np.zeros((k, t - 1, c))
    for o in range(k):
        for step in range(t - 1):
            for ch in range(c):
                diff = local[o, ch, step + 1] - local[o, ch, step]
                expected[o, step, ch] = diff.mean() if reduce == "mean" else diff.max()
    np.testing.assert_allclose(temporal_vectors(t64(local), reduce).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_temporal_vectors_mean_vs_max_differ(rng):
    local = t64(rng.normal(size=(1, 2, 3, 4, 4)))
    assert (temporal_vectors(local, "max") > temporal_vectors(local, "mean")).all()


def _ref_highlevel(g):
    """g (D, T) -> (T, D) with explicit Python max loops over t."""
    d, t = g.shape
    out = np.zeros((t, d))
    for ch in range(d):
        x = list(g[ch])
        h1 = [max(x[i], x[i + 1]) for i in range(t - 1)]                  # maxpool(2, 1): T-1
        h2 = [max(h1[i], h1[i + 1]) for i in range(t - 2)]                # T-2
        u = ref_adaptive_max1d(np.array(h2), t - 1) + np.array(h1)          # T-1
        out[:, ch] = ref_adaptive_max1d(u, t) + np.array(x)                # T
    return out


@pytest.mark.parametrize("t", [3, 4, 5, 10])
def test_highlevel_vectors(rng, t):
    g = rng.normal(size=(2, 6, t))
    ours = highlevel_vectors(t64(g)).numpy()
    assert ours.shape == (2, t, 6)
    for b in range(2):
        np.testing.assert_allclose(ours[b], _ref_highlevel(g[b]), rtol=1e-10, atol=1e-12)


def test_highlevel_vectors_by_hand():
    """T = 4, one channel G = (1, 3, 2, 0).

    H1 = (3, 3, 2); H2 = (3, 3); adaptive max of H2 to 3: windows [0,1) [0,2) [1,2) -> (3, 3, 3);
    U = (6, 6, 5); adaptive max of U to 4: windows [0,1) [0,2) [1,3) [2,3) -> (6, 6, 6, 5);
    H = (7, 9, 8, 5).
    """
    g = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    np.testing.assert_array_equal(highlevel_vectors(g).numpy().ravel(), [7, 9, 8, 5])


def test_temporal_vectors_unknown_reduce_is_an_error():
    """Only 'mean' (memory) and 'max' (test) exist; anything else used to mean max silently."""
    with pytest.raises(ValueError, match="'mean'.*'max'.*'avg'"):
        temporal_vectors(torch.zeros(1, 2, 3, 28, 28), "avg")
