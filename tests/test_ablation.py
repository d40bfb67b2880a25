"""ablation: coverage radius, memory combinations, the encoder cache and the sweep grids, on small inputs."""

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from vpclib import ablation
from vpclib.config import from_dict
from vpclib.coreset import greedy_coreset


def test_coverage_radius_is_the_greedy_coresets_by_brute_force(rng):
    x = rng.normal(size=(60, 5)).astype(np.float32)
    radius = ablation.coverage_radius(x, 60)
    for l in (1, 2, 7, 30):
        kept = greedy_coreset(torch.from_numpy(x), l).numpy()
        distances = np.linalg.norm(x[:, None] - x[kept][None], axis=2)       # (N, l)
        assert abs(radius[l - 1] - distances.min(1).max()) < 1e-5
    assert np.all(np.diff(radius) <= 1e-6)                                  # never grows
    assert radius[-1] == 0.0                                                # every vector kept


def test_coverage_radius_on_a_line_by_hand():
    x = np.array([[0.0], [1.0], [4.0], [10.0]])
    # picks 0, then 10 (radius 4: the point 4 is 4 from 0), then 4 (radius 1), then 1 (radius 0)
    np.testing.assert_allclose(ablation.coverage_radius(x, 4), [10.0, 4.0, 1.0, 0.0])


def _table(rng, n=80):
    labels = (np.arange(n) % 40 >= 25).astype(int)
    return {"spatial": rng.random(n) + labels, "temporal": rng.random(n) + 0.3 * labels,
            "highlevel": rng.random(n) + 0.5 * labels, "label": labels, "video": np.repeat([0, 1], n // 2)}


def test_spatial_only_oracle_is_the_best_smoothing_of_the_spatial_score(rng):
    cfg = from_dict({"fusion": {"sigma_grid": [0, 1, 3]}})
    table = _table(rng)
    rows = {r["memories"]: r for r in ablation.combination_aucs(cfg, table, stats=None)}
    # with b = 1 and a = 1 the fused score is minmax(smooth(z(spatial))): the AUC of smooth(spatial)
    expected = max(roc_auc_score(table["label"], gaussian_filter1d(table["spatial"], s) if s else table["spatial"])
                   for s in (0, 1, 3))
    assert abs(rows["S"]["oracle"] - expected) < 1e-12
    assert list(rows) == ["S", "T", "H", "S+T", "S+T+H"]
    assert rows["S+T+H"]["oracle"] >= max(rows[k]["oracle"] for k in ("S", "T", "H")) - 1e-12  # the full grid holds them


def test_labelfree_calibrated_spatial_only_by_hand(rng):
    cfg = from_dict({"fusion": {"sigma": 0}})
    table = _table(rng)
    stats = {"spatial": (0.5, 2.0), "temporal": (0.0, 1.0), "highlevel": (0.0, 1.0)}
    free = ablation.labelfree_scores(table, stats, a=1.0, b=1.0, sigma=0)
    np.testing.assert_allclose(free, (table["spatial"] - 0.5) / (2.0 + 1e-8))


def test_fusion_grid_shape_and_a_cell(rng):
    cfg = from_dict({"fusion": {"b_grid": [0.0, 1.0], "sigma_grid": [0, 2]}})
    table = _table(rng)
    grid = ablation.fusion_grid(cfg, table, a=1.0)
    assert grid.shape == (2, 2)
    # b = 1, sigma = 0, a = 1: the spatial score alone
    assert abs(grid[1, 0] - roc_auc_score(table["label"], table["spatial"])) < 1e-12


class CountingEncoder:
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * 2, x.sum(1, keepdim=True)


def test_cached_encoder_encodes_each_batch_once():
    inner = CountingEncoder()
    cached = ablation.CachedEncoder(inner)
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    first = cached(a)
    again = cached(a.clone())
    cached(b)
    assert inner.calls == 2 and cached.hits == 1
    torch.testing.assert_close(first[0], again[0])
    torch.testing.assert_close(again[1], a.sum(1, keepdim=True))
    assert cached.device == torch.device("cpu")


def test_default_grids_around_the_params():
    cfg = from_dict({"method": {"channel_groups": 38, "clip_length": 4}, "data": {"layout": "synthetic"}})
    assert ablation.default_grids(cfg) == {"channel_groups": [19, 38, 76], "clip_length": [3, 4, 6], "n_videos": 3}
    real = from_dict({"method": {"channel_groups": 19, "clip_length": 3}, "data": {"layout": "ucsd", "root": "/x"}})
    assert ablation.default_grids(real) == {"channel_groups": [19, 38], "clip_length": [3, 5], "n_videos": 2}
    assert ablation.default_grids(real, [8], [10], 0)["n_videos"] == 0


def test_with_method_copies():
    cfg = from_dict({})
    other = ablation.with_method(cfg, clip_length=6)
    assert other.method.clip_length == 6 and cfg.method.clip_length == 10
