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

def _hashes(cfg):
    return {f"{stage}/{split}" if split else stage: params_hash(stage_params(cfg, stage, split))
            for stage, split in (("objects", "train"), ("objects", "test"), ("features", "train"),
                                 ("features", "test"), ("memory", None), ("metrics", None))}


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
