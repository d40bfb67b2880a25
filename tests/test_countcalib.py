"""The count-conditioned label-free calibration (fusion.count_bins, beyond the paper): bins, statistics
and z by hand, the default's keys unchanged, and a whole run's scores recomputed from its artifacts."""

import csv
import json
import math

import numpy as np
import pytest

from conftest import reflect_smooth
from test_pipeline import TINY
from vpclib import fusion, pipeline, velocity
from vpclib.config import STAGES, from_dict, stage_params
from vpclib.errors import ConfigError
from vpclib.store import WorkDir


# ---------------------------------------------------------------------------------------------
# bins and statistics by hand

def test_count_stats_by_hand():
    counts = np.array([1, 1, 1, 1, 2, 2, 2, 2, 5, 5, 5, 5])
    scores = np.array([1.0, 2, 3, 2, 4, 4, 6, 6, 10, 10, 10, 14])
    # the 1/3 and 2/3 quantiles ("lower"): sorted counts at floor(11/3) = 3 and floor(22/3) = 7: 1 and 2
    assert fusion.count_edges(counts, 3) == [1, 2]
    stat = fusion.count_stats(scores, counts, 3)
    assert stat["edges"] == [1, 2]
    assert stat["mean"] == pytest.approx([2.0, 5.0, 11.0])
    assert stat["std"] == pytest.approx([math.sqrt(0.5), 1.0, math.sqrt(3.0)])   # (1+0+1+0)/4, (1+1+1+1)/4, (1+1+1+9)/4
    # a test frame's z uses its count's bin; counts never seen in training go to the nearest end bin
    x, c = np.array([7.0, 3.0, 5.0, 12.0]), np.array([9, 0, 2, 3])
    e = fusion.EPS
    expected = [(7 - 11) / (math.sqrt(3) + e), (3 - 2) / (math.sqrt(0.5) + e), (5 - 5) / (1 + e), (12 - 11) / (math.sqrt(3) + e)]
    assert fusion.calibrated_z(x, stat, c) == pytest.approx(expected, rel=1e-12)
    assert fusion.calibrated_z(x, (2.0, 4.0)) == pytest.approx((x - 2) / (4 + e), rel=1e-12)   # one (mean, std)


def test_a_bin_with_too_few_frames_is_merged():
    # quantiles 0.2 .. 0.8 at sorted positions 1, 3, 5, 7: counts 5, 5, 5, 9 -> edges [5, 9]; the bin above 9
    # is empty (fewer than F / 2n = 1 frames) and joins the one before it
    counts = np.array([1, 5, 5, 5, 5, 5, 9, 9, 9, 9])
    assert fusion.count_edges(counts, 5) == [5]
    stat = fusion.count_stats(np.arange(10.0), counts, 5)
    assert stat["mean"] == pytest.approx([2.5, 7.5])                              # frames 0-5 and 6-9
    # every frame with one count: a single bin, the global mean and std
    same = fusion.count_stats(np.array([1.0, 3.0, 5.0]), np.array([4, 4, 4]), 4)
    assert same == {"edges": [], "mean": [3.0], "std": [pytest.approx(math.sqrt(8 / 3))]}


def test_one_bin_is_the_plain_calibration(rng):
    scores = {"spatial": rng.normal(size=40), "temporal": rng.normal(2, 3, size=40)}
    counts = rng.integers(0, 9, size=40)
    one = fusion.calibration_stats(scores, counts, 1)
    plain = fusion.calibration_stats(scores)
    for s in scores:
        assert one[s]["edges"] == [] and one[s]["mean"] == pytest.approx([plain[s][0]]) \
            and one[s]["std"] == pytest.approx([plain[s][1]])
    with pytest.raises(ValueError, match="object count"):
        fusion.calibration_stats(scores, None, 3)


def test_labelfree_with_count_stats_by_hand():
    sp, tp, hl = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 1.0, 2.0]), np.array([2.0, 0.0, 1.0, 1.0])
    counts, vid = np.array([1, 1, 6, 6]), np.array([0, 0, 1, 1])
    stats = {"spatial": {"edges": [2], "mean": [1.0, 3.0], "std": [1.0, 2.0]},
             "temporal": {"edges": [2], "mean": [0.0, 1.0], "std": [0.5, 1.0]},
             "highlevel": (1.0, 1.0)}                                              # streams may mix both kinds
    a, b, sigma, e = 0.5, 0.5, 1.0, fusion.EPS
    ms, ss = [1, 1, 3, 3], [1, 1, 2, 2]
    mt, st = [0, 0, 1, 1], [0.5, 0.5, 1, 1]
    fused = [b * (a * (sp[i] - ms[i]) / (ss[i] + e) + (1 - a) * (tp[i] - mt[i]) / (st[i] + e))
             + (1 - b) * (hl[i] - 1) / (1 + e) for i in range(4)]
    expected = np.concatenate([reflect_smooth(fused[:2], sigma), reflect_smooth(fused[2:], sigma)])
    assert fusion.labelfree(sp, tp, hl, vid, stats, a, b, sigma, counts) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="object count"):
        fusion.labelfree(sp, tp, hl, vid, stats, a, b, sigma)


# ---------------------------------------------------------------------------------------------
# configuration: off by default, validated

def test_default_off_leaves_every_key_unchanged():
    cfg = from_dict({})
    assert cfg.fusion.count_bins == 0
    assert "count_bins" not in cfg.to_dict()["fusion"]
    for stage in STAGES:
        assert not any("count_bins" in k for k in stage_params(cfg, stage))
    on = from_dict({"fusion": {"count_bins": 5}})
    assert on.to_dict()["fusion"]["count_bins"] == 5 and from_dict(on.to_dict()) == on
    assert stage_params(on, "metrics")["fusion.count_bins"] == 5
    assert stage_params(on, "memory") == stage_params(cfg, "memory")       # only the fusion is remade


@pytest.mark.parametrize("fusion_params", [{"count_bins": -1}, {"count_bins": 3, "labelfree": "fixed"}])
def test_bad_count_bins_name_the_key(fusion_params):
    with pytest.raises(ConfigError, match=r"fusion\.count_bins"):
        from_dict({"fusion": fusion_params})


# ---------------------------------------------------------------------------------------------
# a whole run: the scores recomputed from its artifacts

def tiny(method: dict | None = None, **fusion_changes):
    """The tiny synthetic run with the velocity memory, its fusion (and method) values changed."""
    raw = json.loads(json.dumps(TINY))
    raw["fusion"].update(fusion_changes)
    raw["method"].update(method or {})
    raw["velocity"] = {"enabled": True}
    return from_dict(raw)


@pytest.fixture(scope="module")
def count_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("countcalib")
    runs = {}
    for bins in (0, 1, 2):                     # one work directory: the stages before the fusion are reused
        cfg = tiny(count_bins=bins)
        result = pipeline.run(cfg, root, overwrite=True)
        rows = list(csv.DictReader(open(root / "scores.csv")))
        runs[bins] = (cfg, result, rows)
    return root, runs


def independent_counts(features: dict, t: int) -> np.ndarray:
    """Each frame's clip's object count, from the features' object_clip, one video after another."""
    out = []
    for f in features.values():
        per_clip = [int(np.sum(f["object_clip"] == c)) for c in range(len(f["clip_start"]))]
        out += [n for n in per_clip for _ in range(t)]
    return np.array(out)


def test_the_objects_column_and_the_statistics(count_runs):
    root, runs = count_runs
    cfg, result, rows = runs[2]
    t = cfg.method.clip_length
    test = pipeline.read_features(root / "features" / "test.h5")
    assert [int(r["objects"]) for r in rows] == independent_counts(test, t).tolist()
    assert "objects" not in runs[0][2][0]                                   # the default's scores.csv as it was
    assert result["labelfree"]["count_bins"] == 2 and "count_bins" not in runs[0][1]["labelfree"]
    train = pipeline.read_features(root / "features" / "train.h5")
    memories = pipeline.read_memories(cfg, WorkDir(root), pipeline.load_videos(cfg, WorkDir(root), "train"))
    loo = pipeline.leave_one_out_scores(cfg, train, memories)
    counts = independent_counts(train, t)
    vtrain = velocity.read_velocities(root / "velocity" / "train.npz")
    assert independent_counts(vtrain, t).tolist() == counts.tolist()         # the same boxes, the same clips
    vmemory = velocity.build_velocity_memory(vtrain, cfg.velocity.coreset_ratio)
    loo["velocity"] = velocity.leave_one_out_scores(cfg, vtrain, vmemory)
    for s in ("spatial", "temporal", "highlevel", "velocity"):
        got = result["labelfree"]["stats"][s]
        edges = got["edges"]
        which = np.array([sum(c > e for e in edges) for c in counts])          # bin i: edges[i-1] < c <= edges[i]
        assert len(got["mean"]) == len(got["std"]) == len(edges) + 1
        for i in range(len(edges) + 1):
            part = loo[s][which == i]
            assert got["mean"][i] == pytest.approx(part.mean()) and got["std"][i] == pytest.approx(part.std())


def test_final_labelfree_recomputed_by_hand(count_runs):
    _, runs = count_runs
    cfg, result, rows = runs[2]
    f, stats, e = cfg.fusion, result["labelfree"]["stats"], fusion.EPS

    def z(x, s, c):
        st = stats[s]
        i = sum(c > edge for edge in st["edges"])
        return (x - st["mean"][i]) / (st["std"][i] + e)

    fused, videos = [], []
    for r in rows:
        c = int(r["objects"])
        local = f.a * z(float(r["spatial"]), "spatial", c) + (1 - f.a) * z(float(r["temporal"]), "temporal", c)
        fused.append(f.b * local + (1 - f.b) * z(float(r["highlevel"]), "highlevel", c)
                     + cfg.velocity.weight * z(float(r["velocity"]), "velocity", c))
        videos.append(r["video"])
    expected = []
    for v in dict.fromkeys(videos):
        expected += list(reflect_smooth([x for x, w in zip(fused, videos) if w == v], f.sigma))
    assert [float(r["final_labelfree"]) for r in rows] == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_one_bin_gives_the_plain_calibration(count_runs):
    _, runs = count_runs
    plain, one = runs[0][2], runs[1][2]
    assert [float(r["final_labelfree"]) for r in one] == pytest.approx([float(r["final_labelfree"]) for r in plain],
                                                                       rel=1e-6, abs=1e-7)   # scores.csv: 8 digits
    for s, (mean, std) in runs[0][1]["labelfree"]["stats"].items():
        got = runs[1][1]["labelfree"]["stats"][s]
        assert got["mean"] == pytest.approx([mean]) and got["std"] == pytest.approx([std])


def test_score_and_explain_give_the_runs_label_free_scores(count_runs):
    """`vpc score` of a test video and the inference notebook's fusion steps, on a run with the
    velocity memory and a count-conditioned calibration: the run's scores.csv, column by column."""
    from vpclib import explain, notebooks, score_video
    root, runs = count_runs
    cfg, result, rows = runs[2]
    run = score_video.finished_run(root)
    assert run.velocity_memory is not None
    for video in pipeline.load_videos(cfg, WorkDir(root), "test"):
        mine = score_video.score_video(run, video)
        theirs = [r for r in rows if r["video"] == video.name]
        assert len(theirs) == len(mine["frame"]) > 0
        for column in ("spatial", "temporal", "highlevel", "velocity", "final_labelfree"):
            assert mine[column] == pytest.approx([float(r[column]) for r in theirs], rel=1e-6, abs=1e-7), column
        assert mine["objects"].tolist() == [int(r["objects"]) for r in theirs]
    table = notebooks.read_frame_table(pipeline.read_scores(root / "scores.csv"))
    steps = explain.fusion_steps(table, np.ones(len(rows), bool), result)
    assert steps["labelfree"]["final"] == pytest.approx([float(r["final_labelfree"]) for r in rows], rel=1e-6, abs=1e-7)
    assert "zV" in explain.fusion_table(steps, table, result, np.arange(len(rows)))
