"""The optional velocity memory (vpclib.velocity, beyond the paper): the flow histogram of a known
motion, the memory and score arithmetic against brute force, the fusion by hand, the cache keys,
and the default-off path leaving every key and output as it was."""

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import reflect_smooth
from vpclib import fusion, pipeline, velocity
from vpclib.config import STAGES, from_dict, load_params, stage_params
from vpclib.store import WorkDir
from test_pipeline import TINY

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the feature

def texture(h, w, seed):
    noise = np.random.default_rng(seed).uniform(0, 255, (h, w)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 1.5) * 2 - 127, 0, 255)


def translating_square(d, t=4, side=48, origin=(30, 20)):
    """T grayscale frames (96 x 128): a textured square moving by d = (dx, dy) pixels per frame over a
    static textured background; the box inside the square at every frame that starts a pair."""
    background, square = texture(96, 128, 1), texture(side, side, 2)
    frames = []
    for k in range(t):
        frame = background.copy()
        x, y = origin[0] + k * d[0], origin[1] + k * d[1]
        frame[y:y + side, x:x + side] = square
        frames.append(frame.astype(np.uint8))
    reach = (t - 2) * np.array(d)                                       # the square's shift up to the last pair's start
    x1, y1 = origin[0] + max(0, reach[0]) + 4, origin[1] + max(0, reach[1]) + 4
    x2, y2 = origin[0] + side + min(0, reach[0]) - 4, origin[1] + side + min(0, reach[1]) - 4
    return np.stack(frames), np.array([[x1, y1, x2, y2]])


# (dx, dy) per frame, the sector of atan2(dy, dx) among 8 centred on 0, 45, ..., 315 degrees (y down),
# and the speed |(dx, dy)|, all by hand
@pytest.mark.parametrize("d, sector, speed", [((2, 2), 1, 2 * math.sqrt(2)), ((-3, 0), 4, 3.0), ((0, -2), 6, 2.0)])
def test_flow_histogram_of_a_translating_square(d, sector, speed):
    frames, box = translating_square(d)
    h = velocity.clip_velocities(frames, box, 8, velocity.flow_estimator("medium"))[0]
    assert h.shape == (8,)
    assert h[sector] == pytest.approx(speed, rel=0.12)                  # every pixel of the box moves by |d|
    assert np.delete(h, sector).sum() < 0.05 * speed


def test_orientation_bins_by_hand():
    deg = np.deg2rad
    flows = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1], [-1, -1],
                      [math.cos(deg(22)), math.sin(deg(22))], [math.cos(deg(23)), math.sin(deg(23))],
                      [math.cos(deg(-22)), math.sin(deg(-22))], [math.cos(deg(-23)), math.sin(deg(-23))]])
    assert velocity.orientation_bins(flows, 8).tolist() == [0, 2, 4, 6, 1, 5, 0, 1, 0, 7]
    assert velocity.orientation_bins(flows[:4], 4).tolist() == [0, 1, 2, 3]


def test_flow_histogram_by_hand():
    flow = np.zeros((4, 5, 2), np.float32)
    flow[1, 1] = (3, 0)                                                  # right, |3|
    flow[1, 2] = (0, 4)                                                  # down, |4|
    flow[2, 1] = (-1, 0)                                                 # left, |1|
    flow[2, 2] = (3, 4)                                                  # 53 degrees: sector 1 of 8, |5|
    flow[0, 0] = (100, 0)                                                # outside the box
    h = velocity.flow_histogram(flow, (1, 1, 4, 3), 8)                  # x 1..3, y 1..2: 6 pixels
    assert h.tolist() == pytest.approx([3 / 6, 5 / 6, 4 / 6, 0, 1 / 6, 0, 0, 0])
    assert velocity.flow_histogram(flow, (2, 2, 2, 3), 8).tolist() == [0.0] * 8   # an empty box
    assert velocity.flow_histogram(flow, (1, 1, 4, 3), 1).tolist() == pytest.approx([(3 + 4 + 1 + 5) / 6])  # speed only


def test_video_velocities_decodes_only_clips_with_objects(fake_video_cls):
    frames, box = translating_square((2, 0), t=8)
    video = fake_video_cls(np.repeat(frames[..., None], 3, axis=3))
    clip_boxes = [np.zeros((0, 4), np.int64), np.concatenate([box, box])]    # clip 0 empty, clip 1 two objects
    out = velocity.video_velocities(video, np.array([0, 4]), clip_boxes, 4, 8, "medium")
    assert video.requests == [[4, 5, 6, 7]]
    assert out["vectors"].shape == (2, 8) and out["object_clip"].tolist() == [1, 1]
    assert out["clip_start"].tolist() == [0, 4]
    assert out["vectors"][0].argmax() == 0 and out["vectors"][0, 0] == pytest.approx(2.0, rel=0.12)


# ---------------------------------------------------------------------------------------------
# memory and scores against brute force

def brute_clip_scores(vectors, object_clip, n_clips, memory):
    out = np.zeros(n_clips)
    for q, c in zip(vectors, object_clip):
        out[c] = max(out[c], min(np.sqrt(((q - m) ** 2).sum()) for m in memory))
    return out


def random_videos(rng, n_videos, t=3):
    videos = {}
    for v in range(n_videos):
        n_clips = 5
        object_clip = np.sort(rng.choice([0, 1, 3, 4], size=6))          # clip 2 has no object
        videos[f"{v:02d}"] = {"vectors": rng.normal(size=(6, 8)).astype(np.float32), "object_clip": object_clip,
                              "clip_start": np.arange(n_clips) * t}
    return videos


def test_scores_and_leave_one_out_against_brute_force(rng):
    cfg = from_dict({"method": {"clip_length": 3}, "velocity": {"enabled": True}})
    train, test = random_videos(rng, 3), random_videos(rng, 2)
    memory = velocity.build_velocity_memory(train, 1.0)
    all_train = np.concatenate([v["vectors"] for v in train.values()])
    assert sorted(map(tuple, memory.vectors)) == sorted(map(tuple, all_train))   # ratio 1 keeps every vector

    expected = np.concatenate([np.repeat(brute_clip_scores(v["vectors"], v["object_clip"], 5, all_train), 3)
                               for v in test.values()])
    got = velocity.frame_scores(cfg, test, memory.vectors, list(test))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got[6:9].tolist() == [0.0, 0.0, 0.0]                            # clip 2 of video 00: no object

    loo = []
    for name, v in train.items():
        others = np.concatenate([o["vectors"] for n, o in train.items() if n != name])
        loo.append(np.repeat(brute_clip_scores(v["vectors"], v["object_clip"], 5, others), 3))
    loo = np.concatenate(loo)
    assert velocity.leave_one_out_scores(cfg, train, memory) == pytest.approx(loo, rel=1e-5, abs=1e-6)
    mean, std = velocity.calibration(cfg, train, memory)
    assert (mean, std) == pytest.approx((loo.mean(), loo.std()), rel=1e-5)
    assert velocity.calibration(cfg, {"00": train["00"]}, velocity.build_velocity_memory({"00": train["00"]}, 1.0)) is None


def test_save_and_read_velocities(tmp_path, rng):
    videos = random_videos(rng, 2)
    videos["02"] = {"vectors": np.zeros((0, 8), np.float32), "object_clip": np.zeros(0, np.int64),
                    "clip_start": np.arange(4) * 3}
    velocity.save_velocities(tmp_path / "v.npz", videos)
    back = velocity.read_velocities(tmp_path / "v.npz")
    assert list(back) == ["00", "01", "02"]
    for name in videos:
        for k in ("vectors", "object_clip", "clip_start"):
            assert np.array_equal(back[name][k], videos[name][k])


# ---------------------------------------------------------------------------------------------
# the fusion by hand

def test_labelfree_velocity_by_hand():
    sp, tp = np.array([1.0, 2.0, 3.0, 4.0, 0.0]), np.array([0.5, 0.5, 1.5, 2.5, 1.0])
    hl, vel = np.array([2.0, 2.0, 1.0, 0.0, 3.0]), np.array([0.0, 1.0, 4.0, 2.0, 2.0])
    vid = np.array([0, 0, 0, 1, 1])
    stats = {"spatial": (1.0, 2.0), "temporal": (0.5, 0.5), "highlevel": (1.0, 1.0), "velocity": (1.0, 0.5)}
    a, b, sigma, w = 0.25, 0.75, 1.0, 0.5
    e = fusion.EPS
    expected = []
    for i in range(5):
        zs, zt = (sp[i] - 1.0) / (2.0 + e), (tp[i] - 0.5) / (0.5 + e)
        zh, zv = (hl[i] - 1.0) / (1.0 + e), (vel[i] - 1.0) / (0.5 + e)
        expected.append(b * (a * zs + (1 - a) * zt) + (1 - b) * zh + w * zv)
    expected = np.concatenate([reflect_smooth(expected[:3], sigma), reflect_smooth(expected[3:], sigma)])
    got = fusion.labelfree_velocity(sp, tp, hl, vel, vid, stats, a, b, sigma, w)
    assert got == pytest.approx(expected, rel=1e-9)
    # weight 0: the three-stream label-free score
    assert fusion.labelfree_velocity(sp, tp, hl, vel, vid, stats, a, b, sigma, 0.0) == \
        pytest.approx(fusion.labelfree(sp, tp, hl, vid, stats, a, b, sigma), rel=1e-12)

    # fixed mode: the reference's fused score + w * smooth(z(V)) over the whole sequence, then minmax
    def z(x):
        return (x - x.mean()) / (x.std() + e)
    local = z(a * sp + (1 - a) * tp)
    high = np.concatenate([reflect_smooth(z(hl[:3]), sigma), reflect_smooth(z(hl[3:]), sigma)])
    fused = b * reflect_smooth(local, sigma) + (1 - b) * high + w * reflect_smooth(z(vel), sigma)
    minmax = (fused - fused.min()) / (fused.max() - fused.min() + e)
    assert fusion.labelfree_velocity(sp, tp, hl, vel, vid, None, a, b, sigma, w) == pytest.approx(minmax, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# off by default: the keys stay as they were

@pytest.mark.parametrize("params", [None, "params/ped2.yaml", "params/synthetic.yaml"])
def test_default_off_leaves_every_key_unchanged(params):
    cfg = from_dict({}) if params is None else load_params(ROOT / params, {"data.root": "/x"})
    assert not cfg.velocity.enabled
    for stage in STAGES:
        for split in (None, "train", "test"):
            if stage in ("objects", "features") or split is None:
                assert not any("velocity" in k for k in stage_params(cfg, stage, split))
    assert "velocity" not in cfg.to_dict()                                # config.json and metrics.json as before
    assert from_dict(cfg.to_dict()) == cfg
    changed = from_dict({"velocity": {"bins": 16}})                       # a changed default is kept
    assert changed.to_dict()["velocity"]["bins"] == 16 and from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize("override, key", [({"bins": 0}, "velocity.bins"), ({"dis_preset": "slow"}, "velocity.dis_preset"),
                                           ({"coreset_ratio": 0.0}, "velocity.coreset_ratio"),
                                           ({"weight": -1.0}, "velocity.weight"), ({"enabled": "yes"}, "velocity.enabled")])
def test_bad_velocity_parameters_name_the_key(override, key):
    from vpclib.errors import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict({"velocity": override})


# ---------------------------------------------------------------------------------------------
# a whole run, its artifacts and its cache

def tiny(**velocity_changes):
    raw = json.loads(json.dumps(TINY))
    raw["velocity"] = {"enabled": True, **velocity_changes}
    return from_dict(raw)


@pytest.fixture(scope="module")
def velocity_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("velocity")
    cfg = tiny()
    off = from_dict(json.loads(json.dumps(TINY)))
    return cfg, root / "on", pipeline.run(cfg, root / "on"), root / "off", pipeline.run(off, root / "off")


def test_run_scores_the_velocity_stream(velocity_run):
    cfg, work, result, _, _ = velocity_run
    rows = list(csv.DictReader(open(work / "scores.csv")))
    assert list(rows[0]) == ["video", "frame", "label", "label_frame", "spatial", "temporal", "highlevel", "velocity",
                             "final_oracle", "final_labelfree"]
    train = velocity.read_velocities(work / "velocity" / "train.npz")
    test = velocity.read_velocities(work / "velocity" / "test.npz")
    memory = np.concatenate([v["vectors"] for v in train.values()])
    t = cfg.method.clip_length
    expected = np.concatenate([np.repeat(brute_clip_scores(v["vectors"], v["object_clip"], len(v["clip_start"]), memory), t)
                               for v in test.values()])
    assert np.array([float(r["velocity"]) for r in rows]) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert set(result["auc_stream"]) == {"spatial", "temporal", "highlevel", "velocity"}
    assert result["memory"]["velocity"]["vectors"] == len(memory)
    assert set(result["labelfree"]["stats"]) == {"spatial", "temporal", "highlevel", "velocity"}
    assert result["labelfree"]["velocity_weight"] == 0.5


def test_off_run_is_the_three_stream_run(velocity_run):
    _, on_work, on, off_work, off = velocity_run
    assert not (off_work / "velocity").exists()
    assert "velocity" not in off["auc_stream"] and "velocity" not in off["memory"] and "velocity" not in off["config"]
    assert "velocity_weight" not in off["labelfree"] and "velocity" not in off["labelfree"]["stats"]
    for k in ("auc_micro_oracle", "a", "b", "sigma", "auc_local_oracle"):    # the oracle stays the three streams'
        assert on[k] == off[k]
    for s in ("spatial", "temporal", "highlevel"):
        assert on["auc_stream"][s] == off["auc_stream"][s]
        assert on["labelfree"]["stats"][s] == off["labelfree"]["stats"][s]
    header = open(off_work / "scores.csv").readline().strip().split(",")
    assert "velocity" not in header


def test_a_velocity_parameter_invalidates_only_velocity_and_metrics(velocity_run):
    cfg, work, _, _, _ = velocity_run
    videos = {s: pipeline.load_videos(cfg, WorkDir(work), s) for s in pipeline.SPLITS}
    assert set(pipeline.plan(cfg, WorkDir(work), videos).values()) == {"reuse"}
    flow = pipeline.plan(tiny(bins=4), WorkDir(work, overwrite=True), videos)
    weight = pipeline.plan(tiny(weight=1.0), WorkDir(work, overwrite=True), videos)
    ratio = pipeline.plan(tiny(coreset_ratio=0.5), WorkDir(work, overwrite=True), videos)
    remade = {"velocity/train.npz", "velocity/test.npz", "metrics.json", "scores.csv"}
    assert {k for k, v in flow.items() if v != "reuse"} == remade
    assert {k for k, v in weight.items() if v != "reuse"} == {"metrics.json", "scores.csv"}
    assert {k for k, v in ratio.items() if v != "reuse"} == {"metrics.json", "scores.csv"}
    from vpclib.errors import CacheMismatchError
    with pytest.raises(CacheMismatchError, match="velocity.bins"):
        pipeline.plan(tiny(bins=4), WorkDir(work), videos)


def test_metrics_from_the_work_directory_read_the_velocity_artifacts_back(velocity_run, tmp_path):
    import shutil
    from vpclib.errors import MissingArtifactError
    cfg, work, result, _, _ = velocity_run
    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    for name in ("metrics.json", "scores.csv"):
        (copy / name).unlink()
        (copy / f"{name}.params.json").unlink()
    again = pipeline.evaluate_from(cfg, WorkDir(copy))                 # the notebooks' path: stages 4-6 only
    assert again["auc_stream"] == result["auc_stream"] and again["auc_micro_labelfree"] == result["auc_micro_labelfree"]
    shutil.rmtree(copy / "velocity")
    (copy / "metrics.json").unlink()
    with pytest.raises(MissingArtifactError, match="velocity/train.npz"):
        pipeline.evaluate_from(cfg, WorkDir(copy))
