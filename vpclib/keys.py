"""Cache keys: one function per stage, each the parameters that change the stage's result
(`config.stage_params`) plus a fingerprint of every input file it reads.

    objects_key(cfg, split, videos)      frames of the split, the detector's weights or boxes file
    features_key(cfg, split, videos)     + the encoder checkpoint; test: + the labels (kept in the h5)
    memory_key(cfg, train)               the training features' key + the coreset
    metrics_key(cfg, train, test)        memory + test features + power and fusion (+ velocity, when on)
    velocity_key(cfg, split, videos)     the objects' key + the flow and histogram (velocity.enabled only)

Frames are fingerprinted by their names relative to the video's folder (`01/000.jpg`), sizes and
mtimes, with a content hash for copied data (`store.FileSet`); single files by a content hash
(`store.file_digest`), a model folder by its files' names and contents (`store.folder_digest`);
labels by a hash of the per-frame masks they give. A path's spelling never enters a key. `WorkDir.decide` compares keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from .config import Config, is_checkpoint_path, stage_params, velocity_params
from .store import FileSet, file_digest, folder_digest


_RUN_MEMO: dict | None = None          # inside one_run(): {the videos' files: their FileSet}


@contextlib.contextmanager
def one_run():
    """Inside, each list of videos is fingerprinted once: a run reads its input files as they
    were when it started (stat-ing a split's thousands of frames for each of a run's ~20 keys
    took 9 s of full Ped2's 33 s on the H200). Outside, every call reads the files again."""
    global _RUN_MEMO
    outer = _RUN_MEMO
    if outer is None:
        _RUN_MEMO = {}
    try:
        yield
    finally:
        if outer is None:
            _RUN_MEMO = None


def frames_fingerprint(videos) -> FileSet:
    """FileSet of every frame file (or video file) of a list of `datasets.Video`s."""
    listed = tuple((str(v.source), tuple(map(str, v.frame_paths)) if v.frame_paths is not None else None)
                   for v in videos)
    if _RUN_MEMO is not None and listed in _RUN_MEMO:
        return _RUN_MEMO[listed]
    files = []
    for source, paths in listed:
        base = os.path.dirname(source)
        files += [(os.path.relpath(p, base).replace(os.sep, "/"), p) for p in (paths or [source])]
    fingerprint = FileSet(files)
    if _RUN_MEMO is not None:
        _RUN_MEMO[listed] = fingerprint
    return fingerprint


def labels_fingerprint(videos) -> str:
    """'<V> videos, <F> frames, <A> anomalous, sha256:<16 hex>' of the per-frame labels of test videos."""
    h = hashlib.sha256()
    n_frames = n_anomalous = 0
    for video in videos:
        labels = np.asarray(video.labels if video.labels is not None else [], dtype=np.uint8)
        h.update(video.name.encode() + b"\0" + labels.tobytes() + b"\0")
        n_frames, n_anomalous = n_frames + len(labels), n_anomalous + int(labels.sum())
    return f"{len(videos)} videos, {n_frames} frames, {n_anomalous} anomalous, sha256:{h.hexdigest()[:16]}"


def _file_or_name(value: str) -> str:
    """A local file or folder (an OpenVINO export) by its content; anything else (a hub download
    name such as yolov5l) as written."""
    path = Path(value).expanduser()
    if path.is_file():
        return file_digest(path)
    return folder_digest(path) if path.is_dir() else value


def objects_key(cfg: Config, split: str, videos) -> dict:
    """Key of objects/<split>.json."""
    key = stage_params(cfg, "objects", split)
    key[f"frames.{split}"] = frames_fingerprint(videos)
    if cfg.objects.detector == "ultralytics" or (cfg.objects.detector == "yolov5-hub" and cfg.objects.hub_repo):
        key["objects.weights"] = _file_or_name(cfg.objects.weights)    # a download name stays a name
    elif cfg.objects.detector == "boxes":
        key["objects.boxes_file"] = _file_or_name(cfg.objects.boxes_file)
    return key


def features_key(cfg: Config, split: str, videos) -> dict:
    """Key of features/<split>.h5 (which also holds the test labels)."""
    key = {**objects_key(cfg, split, videos), **stage_params(cfg, "features", split)}
    if is_checkpoint_path(cfg.encoder.pretrained):
        key["encoder.pretrained"] = _file_or_name(cfg.encoder.pretrained)
    if split == "test":
        key["labels"] = labels_fingerprint(videos)
    return key


def memory_key(cfg: Config, train_videos) -> dict:
    """Key of memory.npz."""
    return {**features_key(cfg, "train", train_videos), **stage_params(cfg, "memory")}


def metrics_key(cfg: Config, train_videos, test_videos) -> dict:
    """Key of metrics.json and scores.csv. With velocity.enabled, stage_params adds the flow's
    parameters, the velocity memory's coreset ratio and its fusion weight (the boxes are in already)."""
    return {**memory_key(cfg, train_videos), **features_key(cfg, "test", test_videos), **stage_params(cfg, "metrics")}


def velocity_key(cfg: Config, split: str, videos) -> dict:
    """Key of velocity/<split>.npz: the boxes (objects/<split>.json's key) and the flow's parameters."""
    return {**objects_key(cfg, split, videos), **velocity_params(cfg)}
