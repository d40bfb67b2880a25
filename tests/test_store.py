"""store: atomic writes, manifests and cache checks of the work directory."""

import json

import pytest

from vpclib.config import params_hash
from vpclib.errors import CacheMismatchError
from vpclib.store import WorkDir, atomic_path, read_json, write_json

PARAMS = {"method.clip_length": 10, "objects": {"crop_size": 64, "classes": [0, 2]}}


def test_atomic_path_success(tmp_path):
    target = tmp_path / "sub" / "a.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()                                          # nothing visible while writing
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert [p.name for p in target.parent.iterdir()] == ["a.npz"]           # no temporary left


def test_atomic_path_leaves_nothing_on_exception(tmp_path):
    target = tmp_path / "a.npz"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_exception(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_read_json(tmp_path):
    import numpy as np
    write_json(tmp_path / "m.json", {"x": np.float32(1.5), "v": np.arange(3), "n": np.int64(2)})
    assert read_json(tmp_path / "m.json") == {"x": 1.5, "v": [0, 1, 2], "n": 2}


def test_ready_false_true(tmp_path):
    work = WorkDir(tmp_path / "w")
    assert not work.ready("memory.npz", PARAMS)                             # nothing yet
    work.path("memory.npz").write_bytes(b"x")
    assert not work.ready("memory.npz", PARAMS)                             # no manifest: never finished
    work.commit("memory.npz", PARAMS)
    manifest = read_json(tmp_path / "w" / "memory.npz.params.json")
    assert manifest == {"key": params_hash(PARAMS), "params": PARAMS}
    assert work.ready("memory.npz", PARAMS)
    assert work.ready("memory.npz", json.loads(json.dumps(PARAMS)))         # equal params, another object


def test_ready_mismatch_names_file_and_key(tmp_path):
    work = WorkDir(tmp_path)
    work.path("objects.json").write_text("{}")
    work.commit("objects.json", PARAMS)
    other = {**PARAMS, "method.clip_length": 4}
    with pytest.raises(CacheMismatchError) as info:
        work.ready("objects.json", other)
    message = str(info.value)
    assert str(tmp_path / "objects.json") in message
    assert "method.clip_length" in message and "objects" not in message.split("differing:")[1].split(")")[0]
    assert "--overwrite" in message
    # the artifact and its manifest are untouched
    assert read_json(work.manifest(work.path("objects.json")))["params"] == PARAMS
    # a key present on one side only is named too
    with pytest.raises(CacheMismatchError, match="extra"):
        work.ready("objects.json", {**PARAMS, "extra": 1})


def test_ready_overwrite(tmp_path):
    WorkDir(tmp_path).commit("a.npz", PARAMS)
    (tmp_path / "a.npz").write_bytes(b"x")
    work = WorkDir(tmp_path, overwrite=True)
    assert not work.ready("a.npz", {**PARAMS, "method.clip_length": 4})     # recompute, no error
    assert work.ready("a.npz", PARAMS)                                      # the same params are still reused


def test_check_partial_resume_semantics(tmp_path):
    work = WorkDir(tmp_path)
    partial = tmp_path / "features.h5.partial"
    assert not work.check_partial("features.h5", PARAMS)                    # nothing to resume
    partial.write_bytes(b"half")
    assert not work.check_partial("features.h5", PARAMS)                    # no manifest: discarded
    assert not partial.exists()
    partial.write_bytes(b"half")
    work.commit("features.h5.partial", PARAMS)
    assert work.check_partial("features.h5", PARAMS)                        # resume
    assert partial.read_bytes() == b"half"
    with pytest.raises(CacheMismatchError) as info:
        work.check_partial("features.h5", {**PARAMS, "method.clip_length": 4})
    assert str(partial) in str(info.value)
    assert partial.exists()                                                 # kept without --overwrite
    overwriting = WorkDir(tmp_path, overwrite=True)
    assert not overwriting.check_partial("features.h5", {**PARAMS, "method.clip_length": 4})
    assert not partial.exists()                                             # stale partial removed
