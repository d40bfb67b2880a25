"""explain (the notebooks' open-the-box cells): every value they print, against values worked out by
hand or computed by plain loops here (numpy, scikit-learn), never by vpclib itself."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import markdown_rows, reflect_smooth
from sklearn.metrics import roc_auc_score

from vpclib import explain, features

# ---------------------------------------------------------------------------------------------
# F of one object: spatial and temporal vectors


def _random_f(rng, c=3, t=4):
    return torch.as_tensor(rng.normal(size=(1, c, t, 28, 28)), dtype=torch.float32)


def _loop_spatial(f):
    """(C, T, 28, 28) -> mean_T, max_T, sum (C, 28, 28) and the 7 x 7 grid of 4 x 4 block means."""
    f = np.asarray(f, dtype=np.float64)
    c, t = f.shape[:2]
    mean = np.zeros((c, 28, 28))
    top = np.full((c, 28, 28), -np.inf)
    for k in range(t):
        mean += f[:, k] / t
        top = np.maximum(top, f[:, k])
    s = mean + top
    pooled = np.zeros((c, 7, 7))
    for i in range(7):
        for j in range(7):
            pooled[:, i, j] = s[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((1, 2))
    return mean, top, s, pooled


def test_spatial_levels_and_table_match_loops(rng):
    f = _random_f(rng)
    levels = features.spatial_levels(f)
    mean, top, s, pooled = _loop_spatial(f[0])
    for key, expected in (("mean", mean), ("max", top), ("sum", s), ("pooled", pooled)):
        np.testing.assert_allclose(levels[key][0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # the spatial vectors are the pooled grid read patch by patch: patch p = row p // 7, column p % 7
    vectors = features.spatial_vectors(f)[0].numpy()                          # (49, C)
    for p in range(49):
        np.testing.assert_allclose(vectors[p], pooled[:, p // 7, p % 7], rtol=1e-5, atol=1e-5)
    # the channel group shown: the one whose 7 x 7 grid has the largest (sample) std
    group = int(np.argmax([np.std(pooled[g].ravel(), ddof=1) for g in range(3)]))
    assert explain.busiest_group(levels["pooled"][0]) == group
    rows = markdown_rows(explain.spatial_table(levels["pooled"][0], group))
    assert [r[0] for r in rows] == [str(i) for i in range(7)]
    printed = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(printed, pooled[group], atol=5.1e-4)


def test_temporal_table_mean_for_memory_max_for_test(rng):
    f = _random_f(rng, c=5, t=4)
    x = f[0].double().numpy()                                                # (C, T, 28, 28)
    diffs = [x[:, t + 1] - x[:, t] for t in range(3)]                          # (C, 28, 28) each
    mean = np.array([[d[g].mean() for g in range(5)] for d in diffs])          # (T-1, C)
    top = np.array([[d[g].max() for g in range(5)] for d in diffs])
    memory_side, test_side = features.temporal_vectors(f, "mean")[0], features.temporal_vectors(f, "max")[0]
    np.testing.assert_allclose(memory_side.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(test_side.numpy(), top, rtol=1e-5, atol=1e-5)
    rows = markdown_rows(explain.temporal_table(memory_side, test_side, groups=[0, 3]))
    assert [r[0] for r in rows] == ["0", "1", "2"]
    for t, r in enumerate(rows):                                               # group 0 mean, max, group 3 mean, max
        np.testing.assert_allclose([float(v) for v in r[1:]], [mean[t, 0], top[t, 0], mean[t, 3], top[t, 3]],
                                   atol=5.1e-4)
        assert float(r[2]) >= float(r[1]) and float(r[4]) >= float(r[3])       # max over the grid >= its mean


# ---------------------------------------------------------------------------------------------
# the high-level pyramid

# the notebook's hand-made G = [4, 1, 0, 6] (one channel, T = 4), every level worked out by hand:
#   H1 = max of neighbours = [4, 1, 6];  H2 = [4, 6]
#   adaptive max pool 2 -> 3 (bins [0,1), [0,2), [1,2)) = [4, 6, 6];  U = H2_up + H1 = [8, 7, 12]
#   adaptive max pool 3 -> 4 (bins [0,1), [0,2), [1,3), [2,3)) = [8, 8, 12, 12];  H = U_up + G = [12, 9, 12, 18]
PYRAMID_BY_HAND = {"G": [4, 1, 0, 6], "H1": [4, 1, 6], "H2": [4, 6], "H2_up": [4, 6, 6], "U": [8, 7, 12],
                   "U_up": [8, 8, 12, 12], "H": [12, 9, 12, 18]}


def test_pyramid_levels_by_hand():
    levels = features.highlevel_levels(torch.tensor([[[4.0, 1.0, 0.0, 6.0]]]))
    assert {k: v[0, 0].tolist() for k, v in levels.items()} == PYRAMID_BY_HAND
    rows = markdown_rows(explain.pyramid_table(levels))
    assert [(r[0], int(r[2]), r[3]) for r in rows] == [
        (k, len(v), "[" + ", ".join(str(x) for x in v) + "]") for k, v in PYRAMID_BY_HAND.items()]
    assert features.highlevel_vectors(torch.tensor([[[4.0, 1.0, 0.0, 6.0]]]))[0, :, 0].tolist() == [12, 9, 12, 18]


def _adaptive_max(x, out):
    n = len(x)
    return [max(x[math.floor(i * n / out):math.ceil((i + 1) * n / out)]) for i in range(out)]


@pytest.mark.parametrize("t", [3, 4, 6, 10])
def test_pyramid_levels_match_loops(rng, t):
    g = rng.normal(size=(2, 3, t))
    levels = features.highlevel_levels(torch.as_tensor(g, dtype=torch.float64))
    for b in range(2):
        for d in range(3):
            x = list(g[b, d])
            h1 = [max(x[i], x[i + 1]) for i in range(t - 1)]
            h2 = [max(h1[i], h1[i + 1]) for i in range(t - 2)]
            u = [p + q for p, q in zip(_adaptive_max(h2, t - 1), h1)]
            h = [p + q for p, q in zip(_adaptive_max(u, t), x)]
            np.testing.assert_allclose(levels["U"][b, d].numpy(), u)
            np.testing.assert_allclose(levels["H"][b, d].numpy(), h)


# ---------------------------------------------------------------------------------------------
# the greedy coreset

NOTEBOOK_POINTS = [[0, 0], [1, 0], [4, 0], [4, 3], [0, 3], [2, 1.5], [5, 5], [1, 4.5]]
# worked by hand: from (0,0) the farthest is (5,5) at sqrt(50); then (1,4.5), sqrt(4^2 + 0.5^2) from
# (5,5), is farther than (4,0) at 4 from (0,0); then (4,0) at 4; then (2,1.5) at 2.5 from both (0,0)
# and (4,0); what is left farthest is (4,3), sqrt(5) from (5,5).
CORESET_BY_HAND = [(0, None, math.sqrt(50)), (6, math.sqrt(50), math.sqrt(16.25)), (7, math.sqrt(16.25), 4.0),
                   (2, 4.0, 2.5), (5, 2.5, math.sqrt(5))]


def test_coreset_steps_by_hand():
    steps = explain.coreset_steps(torch.tensor(NOTEBOOK_POINTS), 5)
    assert [s["index"] for s in steps] == [i for i, _, _ in CORESET_BY_HAND]
    for s, (index, distance, radius) in zip(steps, CORESET_BY_HAND):
        assert s["point"] == NOTEBOOK_POINTS[index]
        assert (s["distance"] is None) == (distance is None)
        if distance is not None:
            assert s["distance"] == pytest.approx(distance, abs=1e-6)
        assert s["radius"] == pytest.approx(radius, abs=1e-6)
    rows = markdown_rows(explain.coreset_table(steps))
    assert [r[:3] for r in rows] == [["1", "0", "(0, 0)"], ["2", "6", "(5, 5)"], ["3", "7", "(1, 4.5)"],
                                     ["4", "2", "(4, 0)"], ["5", "5", "(2, 1.5)"]]
    assert [r[3] for r in rows] == ["start (index 0)", "7.071", "4.031", "4.000", "2.500"]
    assert [r[4] for r in rows] == ["7.071", "4.031", "4.000", "2.500", "2.236"]


def test_coreset_steps_match_a_loop(rng):
    x = rng.normal(size=(40, 3))
    dist = lambda i, j: math.sqrt(sum((x[i, k] - x[j, k]) ** 2 for k in range(3)))
    picks, nearest = [0], [dist(i, 0) for i in range(40)]
    radii = [max(nearest)]
    for _ in range(6):
        best = max(range(40), key=lambda i: (nearest[i], -i))                   # farthest, lowest index on ties
        picks.append(best)
        nearest = [min(nearest[i], dist(i, best)) for i in range(40)]
        radii.append(max(nearest))
    steps = explain.coreset_steps(torch.as_tensor(x, dtype=torch.float32), 7)
    assert [s["index"] for s in steps] == picks
    np.testing.assert_allclose([s["radius"] for s in steps], radii, rtol=1e-5)
    np.testing.assert_allclose([s["distance"] for s in steps[1:]], radii[:-1], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# s(Q, M) for one clip

BANK = np.array([[0, 0], [4, 0], [0, 3]], dtype=np.float32)


def test_clip_set_scores_by_hand():
    # clip 1 holds objects 1 and 2; object 1's queries are at 2 (to (0,0)) and 5 (to (4,0): 3-4-5),
    # object 2's at 1 and 0; temporal queries the same; high-level: the clip's 2 vectors at 1 and 2
    feats = {"object_clip": np.array([0, 1, 1]),
             "spatial": np.array([[[9, 9], [9, 9]], [[2, 0], [7, 4]], [[1, 0], [0, 0]]], np.float32),
             "temporal_max": np.array([[[9, 9]], [[0, 5]], [[4, 1]]], np.float32),
             "highlevel": np.array([[[9, 9], [9, 9]], [[0, 4], [4, 2]]], np.float32)}
    banks = {s: BANK for s in ("spatial", "temporal", "highlevel")}
    opened = explain.clip_set_scores(feats, banks, clip=1, power=2)
    sp = opened["spatial"]
    assert sp["objects"].tolist() == [1, 2]
    np.testing.assert_allclose(sp["distances"], [[2, 5], [1, 0]], atol=1e-6)
    assert sp["worst"].tolist() == [1, 0]
    np.testing.assert_allclose(sp["object_scores"], [25, 1], rtol=1e-6)
    assert sp["clip_score"] == pytest.approx(25)
    tp = opened["temporal"]                                                    # (0,5): 2 to (0,3); (4,1): 1 to (4,0)
    np.testing.assert_allclose(tp["distances"], [[2], [1]], atol=1e-6)
    assert tp["clip_score"] == pytest.approx(4)
    hl = opened["highlevel"]                                                   # (0,4): 1 to (0,3); (4,2): 2 to (4,0)
    assert hl["objects"].tolist() == [1]
    np.testing.assert_allclose(hl["distances"], [[1, 2]], atol=1e-6)
    assert hl["clip_score"] == pytest.approx(4)
    tables = explain.set_score_tables(opened, power=2)
    rows = markdown_rows(tables["temporal"])
    assert rows[0] == ["object 1", "[2.000]; largest: t 0", "2.000", "4.000"]
    assert rows[-1] == ["**clip score**", "max over objects", "", "**4.000**"]
    rows = markdown_rows(tables["spatial"])
    assert rows[0][2:] == ["5.000", "25.000"] and "patch 1 (row 0, col 1)" in rows[0][1]
    assert markdown_rows(tables["highlevel"])[0] == ["clip 1", "[1.000, 2.000]; largest: frame 1", "2.000", "4.000"]


def test_clip_set_scores_match_brute_force(rng):
    k, c, t = 5, 4, 4
    feats = {"object_clip": np.array([0, 2, 2, 2, 3]), "spatial": rng.normal(size=(k, 49, c)).astype(np.float32),
             "temporal_max": rng.normal(size=(k, t - 1, c)).astype(np.float32),
             "highlevel": rng.normal(size=(4, t, 6)).astype(np.float32)}
    banks = {"spatial": rng.normal(size=(60, c)), "temporal": rng.normal(size=(30, c)),
             "highlevel": rng.normal(size=(20, 6))}
    nearest = lambda q, m: min(math.sqrt(sum((a - b) ** 2 for a, b in zip(q, row))) for row in m)
    opened = explain.clip_set_scores(feats, banks, clip=2, power=3)
    for stream, key in (("spatial", "spatial"), ("temporal", "temporal_max")):
        expected = [[nearest(q, banks[stream]) for q in feats[key][o]] for o in (1, 2, 3)]
        np.testing.assert_allclose(opened[stream]["distances"], expected, rtol=1e-4, atol=1e-5)
        assert opened[stream]["clip_score"] == pytest.approx(max(max(d) for d in expected) ** 3, rel=1e-4)
    expected = [nearest(q, banks["highlevel"]) for q in feats["highlevel"][2]]
    assert opened["highlevel"]["clip_score"] == pytest.approx(max(expected) ** 3, rel=1e-4)
    grid = markdown_rows(explain.set_score_tables(opened, 3)["spatial_grid"])
    worst = int(np.argmax([max(d) for d in opened["spatial"]["distances"]]))
    printed = np.array([[float(v) for v in r[1:]] for r in grid]).ravel()
    np.testing.assert_allclose(printed, [nearest(q, banks["spatial"]) for q in feats["spatial"][[1, 2, 3][worst]]],
                               atol=5.1e-4)


def test_a_clip_without_objects_scores_zero():
    feats = {"object_clip": np.array([0]), "spatial": np.zeros((1, 49, 2), np.float32),
             "temporal_max": np.zeros((1, 3, 2), np.float32), "highlevel": np.ones((2, 4, 2), np.float32)}
    opened = explain.clip_set_scores(feats, {s: BANK for s in ("spatial", "temporal", "highlevel")}, clip=1, power=1)
    assert opened["spatial"]["clip_score"] == 0.0 and opened["temporal"]["clip_score"] == 0.0
    assert opened["highlevel"]["clip_score"] == pytest.approx(math.sqrt(2))   # (1, 1) is sqrt(2) from (0, 0)


# ---------------------------------------------------------------------------------------------
# fusion, step by step


def _scores(rng, lengths=(12, 16)):
    n = sum(lengths)
    video = np.concatenate([np.full(m, v) for v, m in enumerate(lengths)])
    label = (rng.random(n) < 0.35).astype(int)
    label[0], label[1] = 0, 1
    return {"video": video, "label": label, "spatial": rng.normal(5, 1, n), "temporal": rng.normal(2, 0.5, n),
            "highlevel": rng.normal(9, 2, n)}


def _z(x):
    x = np.asarray(x, dtype=np.float64)
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))
    return (x - mean) / (std + 1e-8)


def _minmax(x):
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def test_fusion_steps_match_formulas_written_out(rng):
    table = _scores(rng)
    stats = {"spatial": [4.0, 2.0], "temporal": [1.0, 0.5], "highlevel": [10.0, 4.0]}
    result = {"a": 0.7, "b": 0.3, "sigma": 2,
              "labelfree": {"mode": "calibrated", "a": 0.5, "b": 0.6, "sigma": 1.5, "stats": stats}}
    frames = np.zeros(28, bool)
    frames[[4, 5, 6, 7]] = True
    steps = explain.fusion_steps(table, frames, result)
    vid = table["video"]
    # label-free, calibrated: z with the training statistics, weighted, smoothed within each video
    z = {s: (table[s] - m) / (sd + 1e-8) for s, (m, sd) in stats.items()}
    fused = 0.6 * (0.5 * z["spatial"] + 0.5 * z["temporal"]) + 0.4 * z["highlevel"]
    final = np.concatenate([reflect_smooth(fused[vid == v], 1.5) for v in (0, 1)])
    np.testing.assert_allclose(steps["labelfree"]["fused"], fused, rtol=1e-12)
    np.testing.assert_allclose(steps["labelfree"]["final"], final, rtol=1e-10)
    # oracle: z(L) over all frames smoothed across both videos; z(H) and its smoothing per video
    local = 0.7 * table["spatial"] + 0.3 * table["temporal"]
    smooth_local = reflect_smooth(_z(local), 2)
    smooth_high = np.concatenate([reflect_smooth(_z(table["highlevel"][vid == v]), 2) for v in (0, 1)])
    oracle = _minmax(0.3 * smooth_local + 0.7 * smooth_high)
    np.testing.assert_allclose(steps["oracle"]["smooth_local"], smooth_local, rtol=1e-10)
    np.testing.assert_allclose(steps["oracle"]["smooth_high"], smooth_high, rtol=1e-10)
    np.testing.assert_allclose(steps["oracle"]["final"], oracle, rtol=1e-9, atol=1e-12)
    rows = markdown_rows(explain.fusion_table(steps, table, result, np.arange(28)[frames]))
    named = {r[0]: [float(v) for v in r[1:]] for r in rows}
    np.testing.assert_allclose(named["spatial S (clip score)"], table["spatial"][4:8], atol=5.1e-4)
    np.testing.assert_allclose(named["zT"], z["temporal"][4:8], atol=5.1e-4)
    np.testing.assert_allclose(named["smoothed in the video (sigma 1.5): final_labelfree"], final[4:8], atol=5.1e-4)
    np.testing.assert_allclose(named["min-max over all test frames: final_oracle"], oracle[4:8], atol=5.1e-4)
    assert len(rows) == 3 + 6 + 7


def test_fusion_steps_fixed_mode_is_the_reference_formula(rng):
    table = _scores(rng)
    result = {"a": 0.7, "b": 0.3, "sigma": 2, "labelfree": {"mode": "fixed", "a": 0.5, "b": 0.5, "sigma": 3, "stats": None}}
    steps = explain.fusion_steps(table, np.ones(28, bool), result)
    vid = table["video"]
    smooth_local = reflect_smooth(_z(0.5 * table["spatial"] + 0.5 * table["temporal"]), 3)
    smooth_high = np.concatenate([reflect_smooth(_z(table["highlevel"][vid == v]), 3) for v in (0, 1)])
    np.testing.assert_allclose(steps["labelfree"]["final"], _minmax(0.5 * smooth_local + 0.5 * smooth_high), rtol=1e-9)
    rows = markdown_rows(explain.fusion_table(steps, table, result, np.arange(28)))
    assert rows[3][0] == "label-free (fixed): L = 0.5 S + 0.5 T"


# ---------------------------------------------------------------------------------------------
# the oracle's two stages and the label-free protocol


def test_oracle_stages_every_cell_and_the_picks(rng):
    table = _scores(rng, (20, 24))
    table["spatial"] = table["spatial"] + 2.0 * table["label"]                 # a signal to find
    grid = SimpleNamespace(a_grid=[0.0, 0.5, 1.0], b_grid=[0.0, 0.5, 1.0], sigma_grid=[0, 1, 3])
    stages = explain.oracle_stages(table, grid)
    y, vid = table["label"], table["video"]
    local = np.array([[roc_auc_score(y, _minmax(reflect_smooth(a * table["spatial"] + (1 - a) * table["temporal"], s)))
                       for s in grid.sigma_grid] for a in grid.a_grid])
    np.testing.assert_allclose(stages["local"], local, rtol=1e-12)
    # the reference's order: sigma outer, the weight from the largest down, the first best kept
    best = max(((local[i, j], -j, i) for j in range(3) for i in range(3)))
    a = grid.a_grid[best[2]]
    assert (stages["pick"].a, stages["pick"].sigma_local) == (a, grid.sigma_grid[-best[1]])
    z_local = _z(a * table["spatial"] + (1 - a) * table["temporal"])
    both = np.empty((3, 3))
    for i, b in enumerate(grid.b_grid):
        for j, s in enumerate(grid.sigma_grid):
            high = np.concatenate([reflect_smooth(_z(table["highlevel"][vid == v]), s) for v in (0, 1)])
            both[i, j] = roc_auc_score(y, _minmax(b * reflect_smooth(z_local, s) + (1 - b) * high))
    np.testing.assert_allclose(stages["all"], both, rtol=1e-12)
    assert stages["pick"].auc == pytest.approx(both.max()) and stages["pick"].auc_local == pytest.approx(local.max())


def test_protocol_table_names_what_each_protocol_looks_at():
    result = {"a": 0.7, "b": 0.2, "sigma": 3, "sigma_local": 4, "auc_local_oracle": 0.88123,
              "auc_micro_oracle": 0.91049, "auc_micro_labelfree": 0.8956,
              "labelfree": {"mode": "calibrated", "a": 0.5, "b": 0.5, "sigma": 4.0,
                            "stats": {"spatial": [14.4691, 2.3212], "temporal": [20.5, 3.7], "highlevel": [39.3, 5.96]}}}
    rows = markdown_rows(explain.protocol_table(result))
    assert rows[0] == ["oracle, stage 1", "a, sigma on the local stream", "test labels", "0.7", "-", "4",
                       "min-max over the test set", "0.881"]
    assert rows[1][3:6] == ["0.7", "0.2", "3"] and rows[1][-1] == "0.910"
    assert rows[2][:6] == ["label-free (calibrated)", "fixed in the params file", "none", "0.5", "0.5", "4"]
    assert "spatial 14.469 ± 2.321" in rows[2][6] and rows[2][-1] == "0.896"
