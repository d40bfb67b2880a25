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
from test_countcalib import tiny as count_tiny
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


def test_tied_training_scores_give_the_upper_side_of_the_jump():
    """Many equal training scores (static objects' velocity: distance 0) tie the low quantiles; F at
    the tied value is the last tied knot's probability (right-continuous, as an empirical CDF)."""
    stat = fusion.object_stats(np.r_[np.zeros(100), np.arange(1.0, 101.0)])     # 200 objects, half at 0
    # positions p * 199: the knots up to p = 0.495 (position 98.5) lie among the zeros; p = 0.5 at 99.5 -> 0.5
    assert stat["quantiles"][:100] == [0.0] * 100 and stat["quantiles"][100] == pytest.approx(0.5)
    z = fusion.object_z(np.array([0.0, 0.0, 0.25]), stat, np.array([1, 2, 1]))
    assert z == pytest.approx([PHI_INV(0.495), PHI_INV(0.495 ** 2), PHI_INV(0.4975)], rel=1e-9)


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
    return count_tiny({"power": 2}, **fusion_changes)         # power 2: the power enters every object score


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


def hand_stats(x) -> dict:
    """object_stats written out: the linear quantile at p = 0, 0.005, ..., 0.9 (position p (n - 1),
    between the two order statistics around it) and the mean excess above the last one."""
    srt, n = sorted(float(v) for v in x), len(x)
    quantiles = []
    for i in range(181):
        pos = 0.005 * i * (n - 1)
        lo = int(math.floor(pos))
        quantiles.append(srt[lo] + (pos - lo) * (srt[min(lo + 1, n - 1)] - srt[lo]))
    above = [v - quantiles[-1] for v in srt if v > quantiles[-1]]
    return {"quantiles": quantiles, "tail_scale": sum(above) / len(above), "objects": n}


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
    for s, x in objects.items():
        got, want = stats[s], hand_stats(x)
        assert got["objects"] == want["objects"] > 10
        assert got["quantiles"] == pytest.approx(want["quantiles"], rel=1e-4, abs=1e-6), s
        assert got["tail_scale"] == pytest.approx(want["tail_scale"], rel=1e-3, abs=1e-6), s
    # the high-level stream keeps its (mean, std) of the leave-one-out clip scores
    assert isinstance(stats["highlevel"], list) and len(stats["highlevel"]) == 2


def hand_z(x: float, st: dict, k: int) -> float:
    """Phi^-1(F(x)^K) written out: F linear between the quantiles at 0, 0.005, ..., 0.9, the
    exponential tail above, u kept in [1/2N, 1 - 1e-16], the standard library's normal quantile."""
    probs = [0.005 * i for i in range(181)]
    q, n = st["quantiles"], st["objects"]
    if x > q[-1]:
        big_f = 1 - 0.1 * math.exp(-(x - q[-1]) / (st["tail_scale"] + fusion.EPS))
    elif x < q[0]:
        big_f = 0.0
    else:
        i = max(j for j in range(len(q)) if q[j] <= x)
        big_f = probs[i] if i == len(q) - 1 or q[i + 1] == q[i] else \
            probs[i] + (x - q[i]) / (q[i + 1] - q[i]) * (probs[i + 1] - probs[i])
    return PHI_INV(min(max(big_f ** max(k, 1), 0.5 / n), 1 - 1e-16))


def test_final_labelfree_recomputed_by_hand(object_run):
    _, cfg, result, rows = object_run
    f, stats, e = cfg.fusion, result["labelfree"]["stats"], fusion.EPS

    def z(x, s, k):
        return hand_z(x, stats[s], k)

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


def test_countbias_per_object_table(object_run, tmp_path):
    """benchmarks/countbias.py --object-calibration on the run: each stream's mean per-object z per
    count bin, against the training clips' maxima recomputed by brute force and z written out."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import countbias
    root, cfg, result, _ = object_run
    out = tmp_path / "bias.json"
    assert countbias.main([str(root), "--object-calibration", "--out", str(out)]) == 0
    got = json.loads(out.read_text())["streams_per_object"]
    t = cfg.method.clip_length
    train = pipeline.read_features(root / "features" / "train.h5")
    memories = pipeline.read_memories(cfg, WorkDir(root), pipeline.load_videos(cfg, WorkDir(root), "train"))
    vtrain = velocity.read_velocities(root / "velocity" / "train.npz")
    vmemory = velocity.build_velocity_memory(vtrain, cfg.velocity.coreset_ratio)
    sources = {"spatial": (train, memories["spatial"], "spatial", cfg.method.power),
               "temporal": (train, memories["temporal"], "temporal_max", cfg.method.power),
               "velocity": (vtrain, vmemory, "vectors", 1)}
    # F from the brute-force object scores themselves (not the run's statistics): a clip max that
    # equals a tied training score sits on a jump of F, and float32 vs float64 would pick its sides
    for s, (feats, memory, key, power) in sources.items():
        objects = independent_object_scores(feats, memory.vectors, memory.video, key, power)
        st = hand_stats(objects)
        per_object = iter(objects)
        zs, counts = [], []
        for f in feats.values():
            clip = np.asarray(f["object_clip"])
            scores = [next(per_object) for _ in clip]
            for c in range(len(f["clip_start"])):
                mine = [x for x, owner in zip(scores, clip) if owner == c]
                zs += [hand_z(max(mine) if mine else 0.0, st, len(mine))] * t
                counts += [len(mine)] * t
        zs, counts = np.array(zs), np.array(counts)
        for (lo, hi), name in zip(countbias.BINS, countbias.BIN_NAMES):
            inside = (counts >= lo) & (counts <= hi)
            want = round(float(zs[inside].mean()), 3) if inside.any() else None
            assert got[s]["mean_z_by_objects"][name] == pytest.approx(want, abs=2e-3), (s, name)
