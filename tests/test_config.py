"""config: defaults, key and type validation, params files, stage cache keys."""

import hashlib
import json
from pathlib import Path

import pytest

from vpclib.config import Config, from_dict, load_params, params_hash, stage_params
from vpclib.errors import ConfigError

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"


def test_defaults_are_the_papers_avenue_settings():
    cfg = from_dict()
    assert cfg == Config()
    m, o = cfg.method, cfg.objects
    assert (m.clip_length, m.channel_groups, m.coreset_ratio, m.power) == (10, 32, 0.01, 4)
    assert m.coreset_projection is False
    assert o.classes == [0, 1, 2, 3, 7]
    assert (o.train_confidence, o.test_confidence, o.box_growth, o.crop_size) == (0.7, 0.6, 1.0, 64)
    assert cfg.encoder.backbone == "clip_rn101" and cfg.encoder.preprocessing == "faithful"
    assert cfg.fusion.a_grid == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert cfg.fusion.b_grid == cfg.fusion.a_grid
    assert cfg.fusion.sigma_grid == list(range(20))
    assert cfg.data.layout == "synthetic"


def test_defaults_are_not_shared_between_instances():
    a, b = Config(), Config()
    a.objects.classes.append(99)
    a.fusion.a_grid[0] = 5.0
    assert b.objects.classes == [0, 1, 2, 3, 7] and b.fusion.a_grid[0] == 0.0


def test_overrides_and_to_dict_roundtrip():
    cfg = from_dict({"method": {"clip_length": 4, "coreset_ratio": 1}, "objects": {"classes": [0, 2]},
                     "data": {"synthetic": {"n_train": 2}}, "device": "cpu"})
    assert cfg.method.clip_length == 4
    assert cfg.method.coreset_ratio == 1.0 and isinstance(cfg.method.coreset_ratio, float)  # int -> float is fine
    assert cfg.objects.classes == [0, 2] and cfg.data.synthetic.n_train == 2 and cfg.device == "cpu"
    assert cfg.method.channel_groups == 32                                  # untouched defaults stay
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, key", [
    ({"method": {"clip_lenght": 4}}, "method.clip_lenght"),
    ({"methods": {}}, "methods"),
    ({"data": {"synthetic": {"n_trian": 2}}}, "data.synthetic.n_trian"),
])
def test_unknown_key_names_the_dotted_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(overrides)


@pytest.mark.parametrize("overrides, key", [
    ({"method": {"clip_length": "10"}}, "method.clip_length"),     # string for int
    ({"method": {"clip_length": 10.0}}, "method.clip_length"),     # float for int
    ({"method": {"clip_length": True}}, "method.clip_length"),     # bool is not an int
    ({"encoder": {"fp16": 1}}, "encoder.fp16"),                    # int for bool
    ({"encoder": {"fp16": "yes"}}, "encoder.fp16"),
    ({"fusion": {"a": "0.5"}}, "fusion.a"),                        # string for float
    ({"fusion": {"a": False}}, "fusion.a"),
    ({"objects": {"weights": 5}}, "objects.weights"),              # int for str
    ({"objects": {"classes": 0}}, "objects.classes"),              # not a list
    ({"objects": {"classes": [0, "1"]}}, r"objects.classes\[1\]"),
    ({"fusion": {"sigma_grid": [0, 1.5]}}, r"fusion.sigma_grid\[1\]"),
    ({"data": 5}, "data"),                                         # a section that is not a mapping
])
def test_wrong_type_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(overrides)


@pytest.mark.parametrize("overrides, key", [
    ({"method": {"clip_length": 2}}, "method.clip_length"),
    ({"method": {"coreset_ratio": 0.0}}, "method.coreset_ratio"),
    ({"method": {"coreset_ratio": 1.5}}, "method.coreset_ratio"),
    ({"objects": {"box_growth": 0.9}}, "objects.box_growth"),
    ({"objects": {"test_confidence": 1.0}}, "objects.test_confidence"),
    ({"objects": {"detector": "yolo"}}, "objects.detector"),
    ({"objects": {"detector": "boxes"}}, "objects.boxes_file"),
    ({"data": {"layout": "avenue"}}, "data.root"),
    ({"encoder": {"backbone": "resnet50"}}, "encoder.backbone"),
    ({"encoder": {"preprocessing": "rgb"}}, "encoder.preprocessing"),
    ({"fusion": {"b": 1.1}}, "fusion.b"),
    ({"device": "gpu"}, "device"),
])
def test_impossible_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(overrides)


def test_load_params_with_dotted_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  layout: avenue\n  root: /from/file\nmethod:\n  clip_length: 4\n  power: 2\n")
    cfg = load_params(path, **{"data.root": "/from/cli", "method.power": 3, "fusion.sigma": None,
                               "objects.crop_size": 224})
    assert cfg.data.root == "/from/cli"
    assert cfg.method.clip_length == 4 and cfg.method.power == 3
    assert cfg.fusion.sigma == 8.0                                          # None: not overridden
    assert cfg.objects.crop_size == 224
    # a dotted override of a section the file does not have
    cfg = load_params(path, **{"encoder.batch_size": 8})
    assert cfg.encoder.batch_size == 8 and cfg.data.root == "/from/file"


def test_load_params_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_params(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        load_params(bad)
    assert "YAML" in str(info.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_params(listing)
    typo = tmp_path / "typo.yaml"
    typo.write_text("method:\n  clip_lenght: 4\n")
    with pytest.raises(ConfigError) as info:
        load_params(typo)
    assert str(typo) in str(info.value) and "'method.clip_lenght'" in str(info.value)
    with pytest.raises(ConfigError, match="'method.clip_length'"):
        load_params(_write(tmp_path / "t.yaml", "{}"), **{"method.clip_length": "4"})   # a bad override
    scalar_section = _write(tmp_path / "scalar.yaml", "method: 5\n")
    with pytest.raises(ConfigError, match="'method'") as info:                # a dotted override into it
        load_params(scalar_section, **{"method.power": 2})
    assert str(scalar_section) in str(info.value)
    empty = _write(tmp_path / "empty.yaml", "")
    assert load_params(empty) == Config()                                   # an empty file is all defaults


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS_DIR.glob("*.yaml")))
def test_shipped_params_files_load(name):
    cfg = load_params(PARAMS_DIR / name, **{"data.root": "/data/x"})
    assert cfg.method.clip_length >= 3


# ---------------------------------------------------------------------------------------------
# cache keys

STAGE_SPLITS = (("objects", "train"), ("objects", "test"), ("features", "train"), ("features", "test"),
                ("memory", None), ("metrics", None))


def _hashes(cfg):
    return {f"{stage}/{split}" if split else stage: params_hash(stage_params(cfg, stage, split))
            for stage, split in STAGE_SPLITS}


def test_params_hash_is_sha256_of_sorted_json():
    params = {"b": [1, 2], "a": {"y": 1.5, "x": "s"}}
    expected = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    assert params_hash(params) == expected
    assert params_hash({"a": {"x": "s", "y": 1.5}, "b": [1, 2]}) == expected   # key order does not matter
    assert params_hash({"b": [2, 1], "a": {"y": 1.5, "x": "s"}}) != expected


def test_stage_params_contents():
    cfg = from_dict()
    objects = stage_params(cfg, "objects", "train")
    assert objects["method.clip_length"] == 10 and objects["objects.train_confidence"] == 0.7
    assert "objects.test_confidence" not in objects and "objects.crop_size" not in objects
    assert "objects.weights" not in objects                                 # the motion detector has none
    assert not any(k.startswith("encoder.") or k == "data.root" or k == "data.name" for k in objects)
    features = stage_params(cfg, "features", "test")
    assert "encoder.batch_size" not in features and features["encoder.backbone"] == "clip_rn101"
    assert features["objects.crop_size"] == 64 and features["objects.test_confidence"] == 0.6
    assert cfg.encoder.batch_size == 64                                      # the config is not modified
    assert set(stage_params(cfg, "memory")) >= {"method.coreset_ratio", "method.channel_groups"}
    assert set(stage_params(cfg, "metrics")) >= {"method.power", "fusion.a", "fusion.sigma_grid",
                                                  "objects.test_confidence", "method.coreset_ratio"}
    # a checkpoint path enters the key as its content hash (vpclib.keys), never as its spelling
    assert "encoder.pretrained" not in stage_params(from_dict({"encoder": {"pretrained": "/x/w.pt"}}), "features")


ALL = {"objects/train", "objects/test", "features/train", "features/test", "memory", "metrics"}


@pytest.mark.parametrize("overrides, changed", [
    ({"encoder": {"batch_size": 8}}, set()),                     # performance only
    ({"device": "cpu"}, set()),
    ({"data": {"root": "/elsewhere", "name": "other"}}, set()),  # a path's spelling and a name
    ({"objects": {"weights": "other.pt", "hub_model": "yolov5s"}}, set()),   # not the motion detector's
    ({"method": {"power": 2}}, {"metrics"}),
    ({"fusion": {"a": 0.7}}, {"metrics"}),
    ({"method": {"clip_length": 4}}, ALL),
    ({"objects": {"test_confidence": 0.5}}, {"objects/test", "features/test", "metrics"}),
    ({"objects": {"train_confidence": 0.5}}, {"objects/train", "features/train", "memory", "metrics"}),
    ({"data": {"synthetic": {"seed": 1}}}, ALL),
    ({"objects": {"crop_size": 32}}, ALL - {"objects/train", "objects/test"}),
    ({"method": {"channel_groups": 64}}, ALL - {"objects/train", "objects/test"}),
    ({"encoder": {"pretrained": "random"}}, ALL - {"objects/train", "objects/test"}),
    ({"encoder": {"preprocessing": "clip"}}, ALL - {"objects/train", "objects/test"}),
    ({"method": {"coreset_ratio": 0.1}}, {"memory", "metrics"}),
    ({"method": {"coreset_projection": True}}, {"memory", "metrics"}),
])
def test_stage_hashes_change_only_with_relevant_values(overrides, changed):
    base, other = _hashes(from_dict()), _hashes(from_dict(overrides))
    assert {stage for stage in base if base[stage] != other[stage]} == changed


# ---------------------------------------------------------------------------------------------
# detector keys

def test_detector_keys_defaults_and_validation():
    o = from_dict().objects
    assert (o.hub_repo, o.detector_size, o.hub_model) == ("", 640, "yolov5l")   # online: the paper's download
    with pytest.raises(ConfigError, match="'objects.detector_size'"):
        from_dict({"objects": {"detector_size": 16}})
    with pytest.raises(ConfigError, match="'objects.detector_size'"):
        from_dict({"objects": {"detector_size": "640"}})
    with pytest.raises(ConfigError, match="'objects.hub_repo'"):
        from_dict({"objects": {"hub_repo": 5}})
    # the inference size is part of the objects stage's cache identity; with a local hub repo the
    # weights file enters as its content (vpclib.keys), the download name no longer counts
    hub = {"detector": "yolov5-hub"}
    base = params_hash(stage_params(from_dict({"objects": hub}), "objects"))
    assert params_hash(stage_params(from_dict({"objects": {**hub, "detector_size": 1280}}), "objects")) != base
    assert stage_params(from_dict({"objects": hub}), "objects")["objects.hub_model"] == "yolov5l"
    assert "objects.hub_model" not in stage_params(from_dict({"objects": {**hub, "hub_repo": "/m/yolov5"}}), "objects")


# ---------------------------------------------------------------------------------------------
# --set KEY=VALUE on the command line (through vpclib.cli.main)

TINY_PARAMS = {
    "data": {"name": "tiny", "layout": "synthetic",
             "synthetic": {"seed": 3, "n_train": 2, "n_test": 2, "n_frames": 24, "width": 120, "height": 80}},
    "objects": {"detector": "motion", "train_confidence": 0.5, "test_confidence": 0.5, "crop_size": 32,
                "motion_min_area": 20},
    "encoder": {"backbone": "timm:tf_efficientnet_lite0", "pretrained": "random", "preprocessing": "inception",
                "batch_size": 32},
    "method": {"clip_length": 4, "channel_groups": 38, "coreset_ratio": 0.2, "power": 1},
    "fusion": {"sigma_grid": [0, 2], "sigma": 2},
    "device": "cpu",
}


@pytest.fixture
def tiny_params(tmp_path):
    import yaml
    return _write(tmp_path / "tiny.yaml", yaml.safe_dump(TINY_PARAMS))


def test_parse_sets_reads_yaml_values():
    from vpclib.cli import parse_sets
    assert parse_sets(["method.power=2", "fusion.a=0.5", "objects.classes=[0, 1]", "encoder.fp16=true",
                       "objects.weights=../m/yolov5n.pt", "objects.hub_repo=", "data.name=a=b",
                       "method.power=3"]) == {
        "fusion.a": 0.5, "objects.classes": [0, 1], "encoder.fp16": True, "objects.weights": "../m/yolov5n.pt",
        "objects.hub_repo": "", "data.name": "a=b", "method.power": 3}     # the last --set of a key wins


def test_cli_set_reaches_the_run(tiny_params, tmp_path, capsys):
    from vpclib.cli import main as vpc
    work = tmp_path / "w"
    assert vpc(["run", str(tiny_params), "--work-dir", str(work), "--set", "method.power=2",
                "--set", "fusion.sigma=3", "--set", "data.synthetic={n_test: 3}"]) == 0
    capsys.readouterr()
    metrics = json.loads((work / "metrics.json").read_text())
    cfg = metrics["config"]
    assert cfg["method"]["power"] == 2 and cfg["fusion"]["sigma"] == 3.0
    assert cfg["data"]["synthetic"]["n_test"] == 3 and cfg["data"]["synthetic"]["n_train"] == 2   # merged
    assert metrics["n_test_frames"] == 3 * 24                               # three test videos were made
    assert cfg["method"]["clip_length"] == 4                                # the file's value stays


@pytest.mark.parametrize("command", ["objects", "features", "memory", "metrics"])
def test_cli_set_reaches_the_single_stages(tiny_params, tmp_path, command, monkeypatch):
    from vpclib import pipeline
    from vpclib.cli import main as vpc
    seen = []
    for stage in ("detect_objects", "extract_features", "build_memories", "evaluate"):
        result = {} if stage == "build_memories" else {"auc_micro_oracle": 0.5, "auc_micro_labelfree": 0.5}
        monkeypatch.setattr(pipeline, stage, lambda cfg, *a, stage=stage, result=result, **k:
                            seen.append((stage, cfg)) or result)
    assert vpc([command, str(tiny_params), "--work-dir", str(tmp_path / "w"), "--set", "objects.motion_min_area=33",
                "--set", "method.clip_length=6"]) == 0
    assert seen and all(cfg.objects.motion_min_area == 33 and cfg.method.clip_length == 6 for _, cfg in seen)


@pytest.mark.parametrize("item, key", [
    ("method.powr=2", "method.powr"),                       # unknown key
    ("methods.power=2", "methods"),                         # unknown section
    ("method.power=two", "method.power"),                   # wrong type
    ("method.power=2.5", "method.power"),
    ("objects.weights=null", "objects.weights"),            # null is no string
    ("objects.weights=5", "objects.weights"),
    ("method.clip_length=2", "method.clip_length"),         # a value the validation refuses
    ("objects.detector=yolo", "objects.detector"),
    ("method.power.x=1", "method.power"),                   # into a value that is not a section
])
def test_cli_set_is_validated_like_the_params_file(tiny_params, tmp_path, capsys, item, key):
    from vpclib.cli import main as vpc
    assert vpc(["run", str(tiny_params), "--work-dir", str(tmp_path / "w"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "--set" in err and "tiny.yaml" in err
    assert not (tmp_path / "w").exists()                                    # refused before any work


@pytest.mark.parametrize("item, says", [("method.power", "KEY=VALUE"), ("=2", "KEY=VALUE"),
                                        ("method.power=[1, 2", "YAML")])
def test_cli_set_malformed(tiny_params, tmp_path, capsys, item, says):
    from vpclib.cli import main as vpc
    assert vpc(["objects", str(tiny_params), "--work-dir", str(tmp_path / "w"), "--set", item]) == 2
    assert says in capsys.readouterr().err


def test_cli_set_reaches_every_notebook(tiny_params, tmp_path, monkeypatch, capsys):
    """vpc notebooks --set: the overrides are written with the params file into <out>/params.yaml,
    which every notebook gets as PARAMS; a relative path that exists is made absolute (the
    notebooks run in notebooks/)."""
    papermill = pytest.importorskip("papermill")
    from vpclib.cli import main as vpc
    from vpclib.runner import NOTEBOOKS
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, parameters, **k: calls.append(
        (Path(src).stem, parameters)))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("video,frame,x1,y1,x2,y2,confidence,class\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    assert vpc(["notebooks", str(tiny_params), "--work-dir", "w", "--out", str(out), "--figures", "f",
                "--set", "method.power=2", "--set", "objects.detector=boxes", "--set", "objects.boxes_file=boxes.csv",
                "--set", "objects.weights=not/a/file.pt", "-p", "ABLATION_VIDEOS", "0"]) == 0
    capsys.readouterr()
    assert [name for name, _ in calls] == list(NOTEBOOKS)
    for name, parameters in calls:
        assert parameters["PARAMS"] == str(out / "params.yaml")
        cfg = load_params(parameters["PARAMS"])
        assert cfg.method.power == 2 and cfg.objects.detector == "boxes"
        assert cfg.objects.boxes_file == str(boxes)                         # absolute now
        assert cfg.objects.weights == "not/a/file.pt"                       # no such path: kept as given
        assert cfg.method.clip_length == 4 and cfg.data.name == "tiny"      # the file's own values
    assert dict(calls)["04_visualization"]["ABLATION_VIDEOS"] == 0
    # without --set the notebooks read the params file itself
    calls.clear()
    assert vpc(["notebooks", str(tiny_params), "--work-dir", "w", "--out", str(tmp_path / "r2"), "--figures", "f"]) == 0
    assert {p["PARAMS"] for _, p in calls} == {str(tiny_params.resolve())}
    # a bad --set stops before any notebook runs
    calls.clear()
    assert vpc(["notebooks", str(tiny_params), "--out", str(out), "--set", "method.powr=2"]) == 2
    assert calls == [] and "'method.powr'" in capsys.readouterr().err


def test_local_yolov5_weights_enter_the_objects_key_by_content(tmp_path):
    from vpclib.keys import objects_key
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    cfg = from_dict({"objects": {"detector": "yolov5-hub", "hub_repo": str(tmp_path), "weights": str(weights)}})
    first = objects_key(cfg, "test", [])["objects.weights"]
    weights.write_bytes(b"two")
    assert objects_key(cfg, "test", [])["objects.weights"] != first and str(tmp_path) not in first


def test_ped2_candidate_is_the_recorded_row():
    """params/ped2-candidate.yaml is params/ped2.yaml with the `--set`s of the row it was fixed
    from, as benchmarks/realvideo.py recorded them (benchmarks/results/realvideo.jsonl: YOLO11n
    INT8 + Lite1 + 1-bin velocity + object_calibration, tag speed-sidak): every stage's parameters
    equal, and the same detector export (by name: the recorded path is a machine's). Without
    stage_params too: the two configurations' every value differs only in the name, the export's
    path and the motion detector's settings, which the YOLO detector never reads."""
    rows = [json.loads(line) for line in (PARAMS_DIR.parent / "benchmarks/results/realvideo.jsonl").open()]
    row = next(r for r in rows if (r["detector"], r["encoder"], r.get("tag")) == ("yolo11n-ov", "lite1", "speed-sidak"))
    sets = {k: v for k, v in row["sets"].items() if k != "device"}
    recorded = load_params(PARAMS_DIR / "ped2.yaml", **{**sets, "data.root": "/data/x"})
    candidate = load_params(PARAMS_DIR / "ped2-candidate.yaml", **{"data.root": "/data/x"})
    for stage, split in STAGE_SPLITS:
        assert stage_params(candidate, stage, split) == stage_params(recorded, stage, split), (stage, split)

    def values(cfg):
        return {f"{section}.{key}": v for section, d in cfg.to_dict().items()
                for key, v in (d.items() if isinstance(d, dict) else [("", d)])}
    a, b = values(candidate), values(recorded)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= {
        "data.name", "objects.weights", "objects.motion_threshold", "objects.motion_min_area"}
    assert Path(candidate.objects.weights).name == Path(sets["objects.weights"]).name
    assert candidate.velocity.bins == 1 and candidate.fusion.object_calibration      # read off the file itself
    assert row["auc_micro_labelfree"] > 0.95          # the row it names is the one the README calls "not counted"
