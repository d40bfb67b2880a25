"""store: atomic writes, manifests and cache checks of the work directory."""

import hashlib
import json
import shutil

import pytest

from vpclib.errors import CacheMismatchError, WorkDirError
from vpclib.store import FileSet, WorkDir, atomic_path, file_digest, folder_digest, read_json, write_json

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
    assert manifest == {"version": 2, "key": PARAMS}
    assert work.ready("memory.npz", PARAMS)
    assert work.ready("memory.npz", json.loads(json.dumps(PARAMS)))         # equal params, another object


def test_ready_mismatch_names_file_key_and_both_values(tmp_path):
    work = WorkDir(tmp_path)
    work.path("objects.json").write_text("{}")
    work.commit("objects.json", PARAMS)
    other = {**PARAMS, "method.clip_length": 4}
    with pytest.raises(CacheMismatchError) as info:
        work.ready("objects.json", other)
    message = str(info.value)
    assert str(tmp_path / "objects.json") in message
    assert "method.clip_length: 10 -> 4" in message and "objects:" not in message
    assert "--overwrite" in message and "\n" not in message
    assert read_json(work.manifest(work.path("objects.json")))["key"] == PARAMS   # untouched
    with pytest.raises(CacheMismatchError, match=r"extra: \"\(absent\)\" -> 1"):
        work.ready("objects.json", {**PARAMS, "extra": 1})


def test_manifest_of_an_older_version_is_a_mismatch(tmp_path):
    work = WorkDir(tmp_path)
    work.path("a.npz").write_bytes(b"x")
    write_json(work.manifest(work.path("a.npz")), {"key": "0123456789abcdef", "params": PARAMS})
    with pytest.raises(CacheMismatchError, match="older vpc"):
        work.ready("a.npz", PARAMS)


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
    assert work.decide("features.h5", PARAMS) == "resume"
    assert work.check_partial("features.h5", PARAMS)                        # resume
    assert partial.read_bytes() == b"half"
    with pytest.raises(CacheMismatchError) as info:
        work.check_partial("features.h5", {**PARAMS, "method.clip_length": 4})
    assert str(partial) in str(info.value) and "interrupted" in str(info.value)
    assert partial.exists()                                                 # kept without --overwrite
    overwriting = WorkDir(tmp_path, overwrite=True)
    assert not overwriting.check_partial("features.h5", {**PARAMS, "method.clip_length": 4})
    assert not partial.exists()                                             # stale partial removed


# ---------------------------------------------------------------------------------------------
# input fingerprints

def _frames(folder, contents):
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(contents):
        (folder / f"{i:03d}.jpg").write_bytes(c)
    return [(f"v/{i:03d}.jpg", folder / f"{i:03d}.jpg") for i in range(len(contents))]


def test_fileset_same_files_elsewhere_match(tmp_path):
    a = FileSet(_frames(tmp_path / "a", [b"one", b"two"]))
    stored = json.loads(json.dumps(a.to_json()))
    assert stored["content"] == hashlib.sha256(b"onetwo").hexdigest()[:16]  # computed here independently
    import shutil
    shutil.copytree(tmp_path / "a", tmp_path / "b")                         # copy2: same mtimes
    assert FileSet(_frames(tmp_path / "b", [b"one", b"two"])).matches(stored)
    c = FileSet(_frames(tmp_path / "c", [b"one", b"two"]))                   # rewritten: new mtimes, same bytes
    assert c.summary["mtimes"] != stored["mtimes"] and c.matches(stored)


def test_fileset_other_content_does_not_match(tmp_path):
    stored = FileSet(_frames(tmp_path / "a", [b"one", b"two"])).to_json()
    assert not FileSet(_frames(tmp_path / "b", [b"one", b"twx"])).matches(stored)   # same size, other bytes
    assert not FileSet(_frames(tmp_path / "c", [b"one"])).matches(stored)            # a frame fewer
    assert not FileSet(_frames(tmp_path / "d", [b"one", b"three"])).matches(stored)  # another size


def test_mismatch_shows_fileset_old_and_new(tmp_path):
    work = WorkDir(tmp_path / "w")
    work.path("o.json").write_text("{}")
    work.commit("o.json", {"frames.train": FileSet(_frames(tmp_path / "a", [b"one", b"two"]))})
    with pytest.raises(CacheMismatchError) as info:
        work.ready("o.json", {"frames.train": FileSet(_frames(tmp_path / "b", [b"one"]))})
    assert "frames.train: 2 files" in str(info.value) and "-> 1 files" in str(info.value)


def test_file_digest(tmp_path):
    (tmp_path / "x.csv").write_bytes(b"video,frame\n")
    assert file_digest(tmp_path / "x.csv") == f"sha256:{hashlib.sha256(b'video,frame' + bytes([10])).hexdigest()[:16]} (12 bytes)"


def test_folder_digest_by_hand(tmp_path):
    model = tmp_path / "a" / "yolo_openvino_model"
    (model / "sub").mkdir(parents=True)
    (model / "m.xml").write_bytes(b"<net/>")
    (model / "sub" / "w.bin").write_bytes(b"\x01\x02")
    expected = hashlib.sha256(b"m.xml\x006\x00<net/>" + b"sub/w.bin\x002\x00\x01\x02").hexdigest()[:16]
    assert folder_digest(model) == f"sha256:{expected} (2 files, 8 bytes)"
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(model, moved)
    assert folder_digest(moved) == folder_digest(model)                        # where it lies does not enter
    (moved / "sub" / "w.bin").write_bytes(b"\x01\x03")
    assert folder_digest(moved) != folder_digest(model)                        # one byte changed
    (moved / "sub" / "w.bin").write_bytes(b"\x01\x02")
    (moved / "sub" / "w.bin").rename(moved / "w.bin")
    assert folder_digest(moved) != folder_digest(model)                        # a file moved


def test_a_weights_folder_is_keyed_by_content_not_path(tmp_path):
    from vpclib import keys
    from vpclib.config import from_dict
    model = tmp_path / "yolo11n_int8_openvino_model"
    model.mkdir()
    (model / "yolo11n.xml").write_bytes(b"<net/>")
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    key = lambda m: keys.objects_key(from_dict({"objects": {"detector": "ultralytics", "weights": str(m)}}), "test", [])
    assert key(model)["objects.weights"] == key(copy)["objects.weights"] == folder_digest(model)
    (copy / "yolo11n.xml").write_bytes(b"<net2/>")
    assert key(copy)["objects.weights"] != key(model)["objects.weights"]
    assert key(tmp_path / "absent")["objects.weights"] == str(tmp_path / "absent")   # a download name stays a name


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    import errno
    import os
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    (tmp_path / "m.json").write_text("old")
    with pytest.raises(WorkDirError, match=r"disk full while writing .*m\.json.*nothing cached was lost"):
        write_json(tmp_path / "m.json", {"a": 1})
    monkeypatch.undo()
    assert (tmp_path / "m.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_frames_fingerprint_once_per_run_and_fresh_between_runs(tmp_path):
    """Inside keys.one_run() a split's frames are stat-ed once (a run reads its inputs as they
    were at its start); the next run sees an edited frame. Names are relative to the video's
    parent folder, as with pathlib's relative_to."""
    from vpclib import keys
    from vpclib.datasets import Video
    folder = tmp_path / "frames" / "01"
    folder.mkdir(parents=True)
    frames = [folder / f"{i:03d}.jpg" for i in range(3)]
    for i, f in enumerate(frames):
        f.write_bytes(b"x" * (10 + i))
    video = Video("01", folder, frames, 3)
    expected_names = hashlib.sha256(json.dumps([["01/000.jpg", 10], ["01/001.jpg", 11], ["01/002.jpg", 12]]).encode())
    with keys.one_run():
        first = keys.frames_fingerprint([video])
        assert first.summary["names"] == expected_names.hexdigest()[:16] and first.summary["bytes"] == 33
        frames[1].write_bytes(b"y" * 50)                                   # edited during the run: not seen
        assert keys.frames_fingerprint([video]) is first
    after = keys.frames_fingerprint([video])                                # the next run: 10 + 50 + 12 bytes
    assert after.summary["bytes"] == 72 and not after.matches(first.to_json())
    assert keys.frames_fingerprint([video]) is not after                   # outside a run: no memo
