"""The per-object (Sidak) label-free calibration of the clip max (fusion.object_calibration, beyond
the paper): F and z by hand, the Sidak property on simulated normal objects, the default's keys
unchanged, and a whole run's statistics and scores recomputed from its artifacts without vpclib's
arithmetic (brute-force nearest distances, the standard library's normal quantile)."""

import csv
import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from conftest import reflect_smooth
from test_pipeline import TINY
from vpclib import fusion, pipeline, velocity
from vpclib.config import STAGES, from_dict, stage_params
from vpclib.errors import ConfigError
from vpclib.store import WorkDir

PHI_INV = NormalDist().inv_cdf


# ---------------------------------------------------------------------------------------------
# F and z by hand

def test_object_stats_by_hand():
    x = np.arange(1.0, 201.0)                              # 200 training objects, 1 .. 200, shuffled
    stat = fusion.object_stats(np.random.default_rng(0).permutation(x))
    # numpy's linear quantile of 1..200 at p is 1 + 199 p; the knots are p = 0, 0.005, ..., 0.9
    assert len(stat["quantiles"]) == 181
    assert stat["quantiles"] == pytest.approx([1 + 199 * 0.005 * i for i in range(181)], rel=1e-12)
    # above u = 1 + 199 * 0.9 = 180.1: 181 .. 200, mean 190.5, mean excess 10.4
    assert stat["tail_scale"] == pytest.approx(10.4, rel=1e-12)
    assert stat["objects"] == 200


def test_object_z_by_hand():
    stat = {"quantiles": [1 + 199 * 0.005 * i for i in range(181)], "tail_scale": 10.4, "objects": 200}
    u = 180.1
    x = np.array([100.5, 100.5, 100.5, 190.5, 0.5, 1e6, 60.7])
    k = np.array([1, 3, 0, 2, 4, 5, 2])
    f_tail = 1 - 0.1 * math.exp(-(190.5 - u) / 10.4)
    expected = [PHI_INV(0.5),                      # F(100.5) = (100.5 - 1) / 199 = 0.5, one object
                PHI_INV(0.5 ** 3),                 # three objects
                PHI_INV(0.5),                      # no object counts as one
                PHI_INV(f_tail ** 2),              # the exponential tail
                PHI_INV(0.5 / 200),                # below every training object: the floor 1 / 2N
                None,                              # far above: finite
                PHI_INV(0.3 ** 2)]                 # F(60.7) = 59.7 / 199 = 0.3
    z = fusion.object_z(x, stat, k)
    for got, want in zip(z, expected):
        if want is not None:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert np.isfinite(z[5]) and z[5] > 30
    assert fusion.calibrated_z(x, stat, k) == pytest.approx(z)      # the dispatch on an object_stats dict
    with pytest.raises(ValueError, match="object count"):
        fusion.calibrated_z(x, stat)
    # monotone: up with the score, down with the number of objects the max runs over
    grid = np.linspace(0, 400, 801)
    for kk in (1, 7):
        assert np.all(np.diff(fusion.object_z(grid, stat, np.full(len(grid), kk))) >= 0)
    assert np.all(fusion.object_z(grid, stat, np.full(len(grid), 7)) <= fusion.object_z(grid, stat, np.ones(len(grid))))


@pytest.mark.parametrize("k", [1, 5, 20])
def test_the_max_of_k_normal_objects_is_standard_normal(rng, k):
    """Sidak on simulated data: objects from one distribution (exponential above any quantile, so
    the tail model is exact there), F from 40,000 of them; the max of k fresh ones gives z ~ N(0, 1)
    whatever k, where the raw max grows like log k."""
    train = rng.exponential(2.0, size=40_000)
    stat = fusion.object_stats(train)
    clips = rng.exponential(2.0, size=(20_000, k)).max(1)
    z = fusion.object_z(clips, stat, np.full(len(clips), k))
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    # and a crowded clip is not anomalous for being crowded: P(z > 2) stays ~ 1 - Phi(2)
    assert abs(np.mean(z > 2) - (1 - NormalDist().cdf(2))) < 0.006


def test_labelfree_with_object_stats_by_hand():
    one = {"quantiles": [1 + 199 * 0.005 * i for i in range(181)], "tail_scale": 10.4, "objects": 200}
    sp, tp, hl = np.array([100.5, 60.7, 100.5, 20.9]), np.array([40.8, 100.5, 60.7, 60.7]), np.array([2.0, 0.0, 1.0, 1.0])
    counts, vid = np.array([1, 2, 3, 1]), np.array([0, 0, 1, 1])
    stats = {"spatial": one, "temporal": one, "highlevel": (1.0, 2.0)}       # the high-level stream: (mean, std)
    F = {100.5: 0.5, 60.7: 0.3, 40.8: 0.2, 20.9: 0.1}                        # (x - 1) / 199
    a, b, sigma, e = 0.5, 0.5, 1.0, fusion.EPS
    fused = [b * (a * PHI_INV(F[sp[i]] ** counts[i]) + (1 - a) * PHI_INV(F[tp[i]] ** counts[i]))
             + (1 - b) * (hl[i] - 1) / (2 + e) for i in range(4)]
    expected = np.concatenate([reflect_smooth(fused[:2], sigma), reflect_smooth(fused[2:], sigma)])
    assert fusion.labelfree(sp, tp, hl, vid, stats, a, b, sigma, counts) == pytest.approx(expected, rel=1e-9)


def test_calibration_stats_per_object():
    frames = {"spatial": np.array([1.0, 3.0]), "highlevel": np.array([2.0, 2.0, 5.0])}
    objects = np.arange(1.0, 201.0)
    stats = fusion.calibration_stats(frames, None, 0, {"spatial": objects})
    assert stats["spatial"]["objects"] == 200 and stats["spatial"]["tail_scale"] == pytest.approx(10.4)
    assert stats["highlevel"] == (3.0, pytest.approx(math.sqrt(2.0)))      # mean 3, var (1+1+4)/3


# ---------------------------------------------------------------------------------------------
# configuration: off by default, validated

def test_default_off_leaves_every_key_unchanged():
    cfg = from_dict({})
    assert cfg.fusion.object_calibration is False
    assert "object_calibration" not in cfg.to_dict()["fusion"]
    for stage in STAGES:
        assert not any("object_calibration" in k for k in stage_params(cfg, stage))
    on = from_dict({"fusion": {"object_calibration": True}})
    assert on.to_dict()["fusion"]["object_calibration"] is True and from_dict(on.to_dict()) == on
    assert stage_params(on, "metrics")["fusion.object_calibration"] is True
    assert stage_params(on, "memory") == stage_params(cfg, "memory")       # only the fusion is remade


@pytest.mark.parametrize("fusion_params", [{"object_calibration": "yes"},
                                           {"object_calibration": True, "labelfree": "fixed"},
                                           {"object_calibration": True, "count_bins": 3}])
def test_bad_object_calibration_names_the_key(fusion_params):
    with pytest.raises(ConfigError, match=r"fusion\.object_calibration"):
        from_dict({"fusion": fusion_params})


# ---------------------------------------------------------------------------------------------
# a whole run: the statistics and scores recomputed from its artifacts

def tiny(**fusion_changes):
    raw = json.loads(json.dumps(TINY))
    raw["fusion"].update(fusion_changes)
    raw["method"]["power"] = 2
    raw["velocity"] = {"enabled": True}
    return from_dict(raw)


@pytest.fixture(scope="module")
def object_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectcalib")
    cfg = tiny(object_calibration=True)
    result = pipeline.run(cfg, root, overwrite=True)
    rows = list(csv.DictReader(open(root / "scores.csv")))
    return root, cfg, result, rows


def brute_nearest(queries: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """(Q, D), (N, D) -> (Q,) the distance to the nearest memory vector, in float64, a loop per query."""
    q, m = queries.astype(np.float64), memory.astype(np.float64)
    return np.array([math.sqrt(float(np.min(((m - v) ** 2).sum(1)))) for v in q])


def independent_object_scores(train: dict, vectors: np.ndarray, owner: np.ndarray, key: str, power: int) -> np.ndarray:
    """Each training object's own score against the memory less its video: max over its vectors
    of the nearest distance, to the power n; videos in order, objects in order."""
    out = []
    for v, feats in enumerate(train.values()):
        others = vectors[owner != v]
        for obj in np.asarray(feats[key]).reshape(len(feats["object_clip"]), -1, vectors.shape[1]):
            out.append(max(brute_nearest(obj, others)) ** power)
    return np.array(out)


def test_the_statistics_recomputed(object_run):
    root, cfg, result, rows = object_run
    assert result["labelfree"]["object_calibration"] is True
    stats = result["labelfree"]["stats"]
    train = pipeline.read_features(root / "features" / "train.h5")
    memories = pipeline.read_memories(cfg, WorkDir(root), pipeline.load_videos(cfg, WorkDir(root), "train"))
    vtrain = velocity.read_velocities(root / "velocity" / "train.npz")
    vmemory = velocity.build_velocity_memory(vtrain, cfg.velocity.coreset_ratio)
    objects = {s: independent_object_scores(train, memories[s].vectors, memories[s].video, key, cfg.method.power)
               for s, key in (("spatial", "spatial"), ("temporal", "temporal_max"))}
    objects["velocity"] = independent_object_scores(vtrain, vmemory.vectors, vmemory.video, "vectors", 1)
    probs = [0.005 * i for i in range(181)]
    for s, x in objects.items():
        got = stats[s]
        assert got["objects"] == len(x) > 10
        srt = np.sort(x)
        # linear quantile written out: position p (n - 1), between the two order statistics around it
        want = [srt[int(math.floor(p * (len(x) - 1)))] + (p * (len(x) - 1) - math.floor(p * (len(x) - 1)))
                * (srt[min(int(math.floor(p * (len(x) - 1))) + 1, len(x) - 1)] - srt[int(math.floor(p * (len(x) - 1)))])
                for p in probs]
        assert got["quantiles"] == pytest.approx(want, rel=1e-4, abs=1e-6), s
        above = [v - want[-1] for v in x if v > want[-1]]
        assert got["tail_scale"] == pytest.approx(sum(above) / len(above), rel=1e-3, abs=1e-6), s
    # the high-level stream keeps its (mean, std) of the leave-one-out clip scores
    assert isinstance(stats["highlevel"], list) and len(stats["highlevel"]) == 2


def test_final_labelfree_recomputed_by_hand(object_run):
    _, cfg, result, rows = object_run
    f, stats, e = cfg.fusion, result["labelfree"]["stats"], fusion.EPS
    probs = [0.005 * i for i in range(181)]

    def z(x, s, k):
        st = stats[s]
        q, n = st["quantiles"], st["objects"]
        if x > q[-1]:
            big_f = 1 - 0.1 * math.exp(-(x - q[-1]) / (st["tail_scale"] + e))
        elif x < q[0]:
            big_f = 0.0
        else:
            i = max(j for j in range(len(q)) if q[j] <= x)
            big_f = probs[i] if i == len(q) - 1 or q[i + 1] == q[i] else \
                probs[i] + (x - q[i]) / (q[i + 1] - q[i]) * (probs[i + 1] - probs[i])
        u = min(max(big_f ** max(k, 1), 0.5 / n), 1 - 1e-16)
        return PHI_INV(u)

    mean_h, std_h = stats["highlevel"]
    fused, videos = [], []
    for r in rows:
        k = int(r["objects"])
        local = f.a * z(float(r["spatial"]), "spatial", k) + (1 - f.a) * z(float(r["temporal"]), "temporal", k)
        fused.append(f.b * local + (1 - f.b) * (float(r["highlevel"]) - mean_h) / (std_h + e)
                     + cfg.velocity.weight * z(float(r["velocity"]), "velocity", k))
        videos.append(r["video"])
    expected = []
    for v in dict.fromkeys(videos):
        expected += list(reflect_smooth([x for x, w in zip(fused, videos) if w == v], f.sigma))
    assert [float(r["final_labelfree"]) for r in rows] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_score_and_explain_give_the_runs_label_free_scores(object_run):
    """`vpc score` of a test video and the inference notebook's fusion steps equal the run's scores.csv."""
    from vpclib import explain, notebooks, score_video
    root, cfg, result, rows = object_run
    run = score_video.finished_run(root)
    for video in pipeline.load_videos(cfg, WorkDir(root), "test"):
        mine = score_video.score_video(run, video)
        theirs = [r for r in rows if r["video"] == video.name]
        assert len(theirs) == len(mine["frame"]) > 0
        for column in ("spatial", "temporal", "highlevel", "velocity", "final_labelfree"):
            assert mine[column] == pytest.approx([float(r[column]) for r in theirs], rel=1e-6, abs=1e-7), column
    table = notebooks.read_frame_table(pipeline.read_scores(root / "scores.csv"))
    steps = explain.fusion_steps(table, np.ones(len(rows), bool), result)
    assert steps["labelfree"]["final"] == pytest.approx([float(r["final_labelfree"]) for r in rows], rel=1e-6, abs=1e-7)
    assert "per object" in explain.protocol_table(result)
