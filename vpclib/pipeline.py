"""Pipeline: the spine (`run`) and the stage functions it calls, in the paper's order (METHOD.md §1-§8).

    0. videos     load_videos(cfg, work, split)                          -> [Video]       (test: labels)
    1. objects    detect_objects(cfg, work, split, videos)               -> {video: [(K_b, 4)] * B}
    1b. velocity  velocity.velocity_stage(cfg, work, split, ...)         -> velocity/<split>.npz (optional,
                  velocity.enabled: beyond the paper; stages 4-6 then score and fuse a fourth stream)
    2. features   extract_features(cfg, work, split, videos, boxes)      -> features/<split>.h5
    3. memories   build_memories(cfg, work, train_videos, train_path)   -> {memory: Memory (N, D)}
    4. scores     frame_table(cfg, test_features, memories)              -> per-frame scores (F,) of each memory
    5. fusion     fuse(cfg, table, train_features, memories)             -> final scores, oracle and label-free
    6. metrics    measure(cfg, table, fused, memories, test_features)    -> metrics.json's content
                  evaluate(cfg, work, videos, memories, train_path, test_path): 4-6, scores.csv, metrics.json

Each stage takes its inputs as arguments and never calls another stage to get them: `run`, the
CLI's single stages (`run(..., until=stage)`) and the notebooks' cells pass them along, or read
a finished stage's artifact back (`read_objects`, `read_split_features`, `read_memories`); stage
2's output is its file, which stages 3-6 read only when their own artifact must be made. Caching
is the work directory's one decision (`store.WorkDir.decide`, with the keys of `vpclib.keys`): a
stage reuses its artifact when the key matches, writes it atomically with its key otherwise.
"""

from __future__ import annotations

import os
import sys
import warnings
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import datasets, fusion, keys, metrics, velocity
from .config import STAGES, Config
from .encoder import build_encoder, resolve_device
from .engine import FrameStream, video_features
from .errors import CacheMismatchError, NoObjectsError
from .memory import MEMORIES, Memory, build_memory, load_memory, save_memory
from .objects import BoxesFileDetector, build_detector, detect_clip_objects, middle_frame_offset
from .scores import clip_max, clip_object_counts, clip_to_frames, highlevel_clip_scores, object_scores
from .store import WorkDir, atomic_path, check_free_space, read_json, write_json

OBJECTS = "objects"        # the frame table's column of each frame's clip's object count
LOCAL = ("spatial", "temporal")                        # the memories whose clip score is a max over objects
PER_OBJECT = {s: f"{s}_per_object" for s in LOCAL}     # leave-one-out rows: each training object's own score

SPLITS = ("train", "test")


# ---------------------------------------------------------------------------------------------
# the spine

@keys.one_run()                                                              # inputs fingerprinted once a run
def run(cfg: Config, work_dir, overwrite: bool = False, until: str = "metrics", videos: dict | None = None,
        encoder=None):
    """Every stage in order up to `until` ('objects', 'features', 'memory' or 'metrics'), reusing
    what the work directory holds. Returns the last stage's output (the metrics for a whole run).

    work_dir: a folder or a WorkDir; videos: {"train": [...], "test": [...]} (default: both whole
    splits); encoder: one already loaded (the ablations' sweeps). Everything that can be checked is
    checked before a model loads or anything is written: both splits and the test labels, every
    cache decision (a refused run writes nothing), the work directory, the encoder's parameters;
    the encoder is loaded (a bad checkpoint fails here) before objects are detected. config.json is
    written last: the config of the finished run that `vpc score` scores new video with.

    Started by `torchrun --nproc-per-node N` (WORLD_SIZE > 1), every process runs this: stages 0
    and 1 on rank 0 first, stages 2-6 sharded over the ranks with the same artifacts as one
    process (vpclib.distributed).
    """
    from . import distributed
    resolve_device(cfg.device)                                               # cuda without a GPU: fail now
    ranks = distributed.Ranks.from_env().start(cfg.device)                   # torchrun's N processes, or 1
    work = work_dir if isinstance(work_dir, WorkDir) else WorkDir(work_dir, overwrite=overwrite)
    stages = STAGES[:STAGES.index(until) + 1]

    # 0. videos: both splits, the test videos with their per-frame labels
    with ranks.rank0_first():                                                # (synthetic scenes: made once)
        videos = videos or {s: load_videos(cfg, work, s) for s in SPLITS}
    decisions = plan(cfg, work, videos, stages)
    ranks.barrier()                                                          # every rank decided before any write
    work.check_writable()
    if "features" in stages and encoder is None and any(decisions[f"features/{s}.h5"] != "reuse" for s in SPLITS):
        encoder = load_encoder(cfg)

    # 1. objects: the boxes of each clip, found on its middle frame (several ranks: rank 0's file)
    with ranks.rank0_first():
        boxes = {s: detect_objects(cfg, work, s, videos[s]) for s in SPLITS}
    if until == "objects":
        return boxes

    # 1b. velocity (optional, beyond the paper): per object, the flow histogram inside its box
    velocity_paths = None
    if cfg.velocity.enabled:
        with ranks.rank0_first():                                            # (several ranks: rank 0's file)
            velocity_paths = {s: velocity.velocity_stage(cfg, work, s, videos[s], boxes[s],
                                                         {v.name: video_clip_starts(cfg, v) for v in videos[s]},
                                                         progress)
                              for s in SPLITS}

    # stages 2-6 of one process, or sharded over torchrun's ranks (vpclib.distributed)
    extract, build, score = ((extract_features, build_memories, evaluate) if ranks.world == 1 else
                             (partial(f, ranks=ranks) for f in (distributed.extract_features,
                                                                 distributed.build_memories, distributed.evaluate)))

    # 2. features: spatial (K, 49, C), temporal (K, T-1, C) per object, high-level (B, T, D) per clip
    paths = {s: extract(cfg, work, s, videos[s], boxes[s], encoder=encoder) for s in SPLITS}
    if until == "features":
        return paths

    # 3. memories: the coreset of the training vectors, one memory each (spatial, temporal, high-level)
    memories = build(cfg, work, videos["train"], paths["train"])
    if until == "memory":
        return memories

    # 4. scores, 5. fusion, 6. metrics: scores.csv and metrics.json
    result = score(cfg, work, videos, memories, paths["train"], paths["test"], velocity_paths)
    if ranks.main:
        write_json(work.path("config.json"), cfg.to_dict())                # the config of the finished run
    return result


def artifact_keys(cfg: Config, videos: dict, stages=STAGES) -> dict[str, dict]:
    """{artifact: its cache key} of the stages named (vpclib.keys)."""
    k = {}
    if "objects" in stages:
        k |= {f"objects/{s}.json": keys.objects_key(cfg, s, videos[s]) for s in SPLITS}
    if "features" in stages and cfg.velocity.enabled:                           # stage 1b
        k |= {f"velocity/{s}.npz": keys.velocity_key(cfg, s, videos[s]) for s in SPLITS}
    if "features" in stages:
        k |= {f"features/{s}.h5": keys.features_key(cfg, s, videos[s]) for s in SPLITS}
    if "memory" in stages:
        k["memory.npz"] = keys.memory_key(cfg, videos["train"])
    if "metrics" in stages:
        k["metrics.json"] = k["scores.csv"] = keys.metrics_key(cfg, videos["train"], videos["test"])
    return k


def plan(cfg: Config, work: WorkDir, videos: dict, stages=STAGES) -> dict[str, str]:
    """{artifact: 'reuse' | 'resume' | 'make'} of the stages named; raises CacheMismatchError naming
    every artifact made from other inputs or parameters, before anything is written."""
    decisions, errors = {}, []
    for name, key in artifact_keys(cfg, videos, stages).items():
        try:
            decisions[name] = work.decide(name, key)
        except CacheMismatchError as err:
            errors.append(str(err))
    if errors:
        raise CacheMismatchError(" | ".join(errors))
    return decisions


# ---------------------------------------------------------------------------------------------
# reading a finished stage's artifact back (the notebooks, the ablations, the explanations)

def read_objects(cfg: Config, work: WorkDir, split: str, videos: list) -> dict[str, list[np.ndarray]]:
    """Stage 1's boxes of a split from objects/<split>.json, made with these videos and parameters."""
    path = work.require(f"objects/{split}.json", keys.objects_key(cfg, split, videos), "stage 1 (vpc objects)")
    return _boxes_from_json(read_json(path)["videos"])


def features_path(cfg: Config, work: WorkDir, split: str, videos: list) -> Path:
    """Stage 2's features/<split>.h5, made with these videos and parameters."""
    return work.require(f"features/{split}.h5", keys.features_key(cfg, split, videos), "stage 2 (vpc features)")


def read_split_features(cfg: Config, work: WorkDir, split: str, videos: list) -> dict[str, dict[str, np.ndarray]]:
    """Stage 2's features of a split (read_features of features/<split>.h5), made with these videos
    and parameters."""
    return read_features(features_path(cfg, work, split, videos))


def read_memories(cfg: Config, work: WorkDir, train_videos: list) -> dict[str, Memory]:
    """Stage 3's memories from memory.npz, made with these training videos and parameters."""
    return load_memory(work.require("memory.npz", keys.memory_key(cfg, train_videos), "stage 3 (vpc memory)"))


def evaluate_from(cfg: Config, work: WorkDir) -> dict:
    """Stages 4-6 on the finished stages 2 and 3 of the work directory: the metrics."""
    videos = {s: load_videos(cfg, work, s) for s in SPLITS}
    paths = {s: features_path(cfg, work, s, videos[s]) for s in SPLITS}
    return evaluate(cfg, work, videos, read_memories(cfg, work, videos["train"]), paths["train"], paths["test"])


# ---------------------------------------------------------------------------------------------
# progress

def progress(iterable=None, **kw):
    """tqdm progress bar, silenced with VPC_PROGRESS=0 (notebooks under nbval)."""
    return tqdm(iterable, disable=os.environ.get("VPC_PROGRESS", "1") == "0", **kw)


def note(text: str) -> None:
    """One line to stderr that the user must see (a resumed stage), progress bars on or off."""
    print(text, file=sys.stderr, flush=True)


class _CountedVideo:
    """A Video whose frames decoded for the clips' middle frames advance a progress bar (the
    detector's other reads, e.g. the motion detector's background frames, do not)."""

    def __init__(self, video, middles, bar):
        self._video, self._middles, self._bar = video, sorted(set(middles)), bar

    def __getattr__(self, name):
        return getattr(self._video, name)

    def iter_frames(self, indices=None):
        counted = indices is not None and sorted({int(i) for i in indices}) == self._middles
        for i, frame in self._video.iter_frames(indices):
            yield i, frame
            if counted:
                self._bar.update(1)


# ---------------------------------------------------------------------------------------------
# 0. videos

def dataset_root(cfg: Config, work: WorkDir) -> Path:
    """The dataset root; the synthetic scenes are generated on first use (in the work dir by default)."""
    if cfg.data.layout != "synthetic":
        return Path(cfg.data.root).expanduser()
    from .synthetic import make_synthetic_dataset
    s = cfg.data.synthetic
    root = Path(cfg.data.root).expanduser() if cfg.data.root else work.path("synthetic-data")
    return make_synthetic_dataset(root, seed=s.seed, n_train=s.n_train, n_test=s.n_test,
                                  n_frames=s.n_frames, width=s.width, height=s.height)


def load_videos(cfg: Config, work: WorkDir, split: str) -> list:
    """The videos of a split ('train' or 'test'), test videos with per-frame labels."""
    layout = "ucsd" if cfg.data.layout == "synthetic" else cfg.data.layout
    return datasets.load_split(layout, dataset_root(cfg, work), split, label_file=cfg.data.label_file or None,
                               skip_first_frame=cfg.data.skip_first_frame, min_frames=cfg.method.clip_length)


def video_clip_starts(cfg: Config, video) -> np.ndarray:
    """(B,) first frame of each clip of `video`."""
    return datasets.clip_starts(video.n_frames, cfg.method.clip_length, cfg.data.skip_first_frame)


# ---------------------------------------------------------------------------------------------
# 1. objects

def detect_objects(cfg: Config, work: WorkDir, split: str, videos: list, detector=None) -> dict[str, list[np.ndarray]]:
    """Stage 1. Boxes of every clip of every video of a split: {video: [(K_b, 4) int boxes] * B}.

    Writes objects/<split>.json (key: keys.objects_key); an interrupted run resumes video by video.
    A boxes file without a split column needs the other split's video names to tell its rows
    apart: they are listed from the dataset (stage 0), no stage runs for them.
    """
    name, key = f"objects/{split}.json", keys.objects_key(cfg, split, videos)
    if work.ready(name, key):
        return _boxes_from_json(read_json(work.path(name))["videos"])
    partial = name + ".partial"
    done = read_json(work.path(partial))["videos"] if work.check_partial(name, key) else {}
    if done:
        note(f"{name}: resuming at video {len(done) + 1} of {len(videos)} ({len(done)} kept from the interrupted run)")
    work.commit(partial, key)
    if detector is None:
        from .checks import warm_up_detector
        detector = build_detector(cfg, resolve_device(cfg.device))
        warm_up_detector(detector, cfg)                                      # a bad weight file fails here
    if isinstance(detector, BoxesFileDetector):                              # the file's rows of this split
        other = load_videos(cfg, work, "test" if split == "train" else "train")
        detector.begin_split(split, videos, other)
    final = cfg.objects.detector == "boxes" and cfg.objects.boxes_final
    confidence = cfg.objects.train_confidence if split == "train" else cfg.objects.test_confidence
    offset = middle_frame_offset(cfg.method.clip_length)
    starts = {v.name: video_clip_starts(cfg, v) for v in videos}
    with progress(total=sum(len(starts[v.name]) for v in videos), desc=f"objects {split}", unit="clip") as bar:
        for video in videos:
            if video.name in done:
                bar.update(len(starts[video.name]))
                continue
            bar.set_postfix_str(f"video {video.name}")
            n_before = bar.n
            counted = _CountedVideo(video, [int(s) + offset for s in starts[video.name]], bar)
            boxes = detect_clip_objects(counted, starts[video.name], cfg.method.clip_length, detector,
                                        confidence, set(cfg.objects.classes), cfg.objects.box_growth, final)
            bar.update(len(starts[video.name]) - (bar.n - n_before))          # detectors that read no frames
            done[video.name] = [b.tolist() for b in boxes]
            write_json(work.path(partial), {"videos": done})
    n_objects = sum(len(b) for clips in done.values() for b in clips)
    if n_objects == 0:
        raise NoObjectsError(
            f"the detector '{cfg.objects.detector}' kept no object in the whole {split} split "
            f"({len(videos)} videos) at confidence > {confidence}. Lower objects.{split}_confidence, "
            f"check objects.classes, or use another detector.")
    for video_name, clips in done.items():
        if not any(clips):
            warnings.warn(f"no object detected in {split} video '{video_name}': its local scores are 0")
    os.replace(work.path(partial), work.path(name))
    work.commit(name, key)
    work.manifest(work.path(partial)).unlink(missing_ok=True)
    return _boxes_from_json(done)


def _boxes_from_json(videos: dict) -> dict[str, list[np.ndarray]]:
    return {v: [np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in clips] for v, clips in videos.items()}


# ---------------------------------------------------------------------------------------------
# 2. features

def extract_features(cfg: Config, work: WorkDir, split: str, videos: list, boxes: dict[str, list[np.ndarray]],
                     encoder=None) -> Path:
    """Stage 2. features/<split>.h5: one group per video with its vectors (`engine.video_features`:
    spatial (K, 49, C), temporal_mean / temporal_max (K, T-1, C), highlevel (B, T, D), object_clip
    (K,), boxes (K, 4), clip_start (B,), the test labels); resumes video by video. Returns its path.

    boxes: stage 1's {video: [(K_b, 4)] * B}. Key: keys.features_key (the objects' key, the
    encoder, C; the test labels, kept in the file).

    While a video is encoded, the next video's first frames are decoded (`engine.FrameStream`) and
    the previous video is written by a background thread, the one thread that touches the h5 file
    (`H5Writer`). A video's group is marked complete when written; an interruption waits for the
    write in progress, so a rerun resumes after the last video encoded.
    """
    name, key = f"features/{split}.h5", keys.features_key(cfg, split, videos)
    if work.ready(name, key):
        return work.path(name)
    partial = work.path(name + ".partial")
    resume = work.check_partial(name, key)
    work.commit(name + ".partial", key)
    encoder = encoder or load_encoder(cfg)
    starts = {v.name: video_clip_starts(cfg, v) for v in videos}
    with H5Writer(partial, "a" if resume else "w") as h5, \
            progress(total=sum(len(s) for s in starts.values()), desc=f"features {split}", unit="clip") as bar:
        kept = h5.call(lambda f: {v.name for v in videos if v.name in f and f[v.name].attrs.get("complete", False)})
        if kept:
            note(f"{name}: resuming at video {len(kept) + 1} of {len(videos)} ({len(kept)} kept from the interrupted run)")
            bar.update(sum(len(starts[v]) for v in kept))
        todo = [v for v in videos if v.name not in kept]
        with FrameStream([(v, starts[v.name]) for v in todo], cfg, encoder.device) as stream:
            for video in todo:
                bar.set_postfix_str(f"video {video.name}")
                feats = video_features(video, starts[video.name], boxes[video.name], encoder, cfg,
                                       on_clips=bar.update, frames=stream.chunks(video))
                h5.submit(_write_video, video, feats, starts[video.name], work, name)
        h5.call(lambda f: f.attrs.__setitem__("videos", [v.name for v in videos]))
    os.replace(partial, work.path(name))
    work.commit(name, key)
    work.manifest(partial).unlink(missing_ok=True)
    return work.path(name)


def _write_video(h5: h5py.File, video, feats: dict[str, np.ndarray], starts: np.ndarray, work: WorkDir, name: str) -> None:
    """One video's group of features/<split>.h5 (replacing an incomplete one), marked complete."""
    check_free_space(work.root, sum(v.nbytes for v in feats.values()) + video.n_frames, work.path(name))
    if video.name in h5:
        del h5[video.name]
    group = h5.create_group(video.name)
    for k, value in feats.items():
        group.create_dataset(k, data=value)
    group.create_dataset("clip_start", data=starts)
    if video.labels is not None:
        group.create_dataset("labels", data=np.asarray(video.labels, dtype=np.uint8))
    group.attrs["n_frames"] = video.n_frames
    group.attrs["complete"] = True
    h5.flush()


class H5Writer:
    """An h5 file that only one background thread opens, reads and writes (h5py is not thread-safe).

    `call(fn)` runs fn(h5) on that thread and returns its result; `submit(fn, *args)` first waits
    for the previously submitted call (raising its error here), then queues fn(h5, *args) and
    returns at once: one write runs while the caller goes on. Leaving the block waits for the
    queued write, even on an exception (what was encoded is kept), then closes the file.
    """

    def __init__(self, path, mode: str):
        from concurrent.futures import ThreadPoolExecutor
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="h5-writer")
        self.h5, self.last = self.thread.submit(h5py.File, path, mode).result(), None

    def __enter__(self):
        return self

    def call(self, fn):
        self.wait()
        return self.thread.submit(fn, self.h5).result()

    def submit(self, fn, *args) -> None:
        self.wait()
        self.last = self.thread.submit(fn, self.h5, *args)

    def wait(self) -> None:
        last, self.last = self.last, None
        if last is not None:
            last.result()

    def __exit__(self, exc_type, *_):
        from concurrent.futures import wait
        try:
            if exc_type is None:
                self.wait()
            elif self.last is not None:
                wait([self.last])                                           # the first error is the one raised
        finally:
            self.thread.submit(self.h5.close).result()
            self.thread.shutdown()


def load_encoder(cfg: Config):
    """build_encoder on cfg.device, its parameters checked first (timm stages, channel groups)."""
    from .checks import check_channel_groups, check_encoder_params
    from .config import is_checkpoint_path
    check_encoder_params(cfg)
    e = cfg.encoder
    weights = Path(e.pretrained).name if is_checkpoint_path(e.pretrained) else e.pretrained
    with progress(total=1, desc=f"encoder {e.backbone} ({weights})", unit="model") as bar:
        encoder = build_encoder(cfg, resolve_device(cfg.device))
        bar.update(1)
    check_channel_groups(cfg, encoder.channels)
    return encoder


def read_features(path, names=None) -> dict[str, dict[str, np.ndarray]]:
    """features/<split>.h5 -> {video: {array name: array}} in the split's video order (only the
    videos named in `names`, when given)."""
    with h5py.File(path, "r") as h5:
        order = [str(v) for v in h5.attrs["videos"] if names is None or str(v) in names]
        return {v: {k: h5[v][k][()] for k in h5[v]} | {"n_frames": int(h5[v].attrs["n_frames"])} for v in order}


# ---------------------------------------------------------------------------------------------
# 3. memories

def memory_vectors(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One training video's memory candidates: spatial (K*49, C), temporal (K*(T-1), C), high-level (B*T, D)."""
    return {
        "spatial": feats["spatial"].reshape(-1, feats["spatial"].shape[-1]),
        "temporal": feats["temporal_mean"].reshape(-1, feats["temporal_mean"].shape[-1]),  # MEAN for memory
        "highlevel": feats["highlevel"].reshape(-1, feats["highlevel"].shape[-1]),
    }


def build_memories(cfg: Config, work: WorkDir, train_videos: list, train_path) -> dict[str, Memory]:
    """Stage 3. memory.npz: the spatial, temporal and high-level memories, each the coreset of the
    training vectors (memory_vectors of each video of stage 2's features/train.h5, `train_path`)."""
    name, key = "memory.npz", keys.memory_key(cfg, train_videos)
    if work.ready(name, key):
        return load_memory(work.path(name))
    train = read_features(train_path)
    per_memory = {s: [memory_vectors(f)[s] for f in train.values()] for s in MEMORIES}
    device = resolve_device(cfg.device)
    m = cfg.method
    memories = {s: build_memory(per_memory[s], m.coreset_ratio, device, m.coreset_projection, m.coreset_projection_eps)
                for s in progress(MEMORIES, desc="memory", unit="memory")}
    with atomic_path(work.path(name)) as tmp:
        save_memory(tmp, memories)
    work.commit(name, key)
    return memories


# ---------------------------------------------------------------------------------------------
# 4. scores

def video_clip_scores(feats: dict[str, np.ndarray], memories: dict[str, np.ndarray], power: int, device: str,
                      arithmetic: str = "reference", knn: str = "exact", candidates: int = 16,
                      per_object: bool = False) -> dict[str, np.ndarray]:
    """Clip scores (B,) against each memory for one video, memories {memory: (N, D)}; with
    per_object, also each object's own spatial and temporal score {PER_OBJECT[memory]: (K,)}
    (what a clip's max runs over).

    knn, candidates: the exact arithmetic's nearest-neighbour search (`scoring.knn`, `scores.set_distances`)."""
    n_clips = len(feats["clip_start"])
    on_device = {s: torch.as_tensor(memories[s], device=device) for s in MEMORIES}    # (N, D) each
    obj = torch.as_tensor(feats["object_clip"], device=device)
    as_t = lambda x: torch.as_tensor(x, device=device)
    search = dict(arithmetic=arithmetic, knn=knn, candidates=candidates)
    objects = {"spatial": object_scores(as_t(feats["spatial"]), on_device["spatial"], power, **search),      # (K,)
               "temporal": object_scores(as_t(feats["temporal_max"]), on_device["temporal"], power, **search)}
    clip = {**{s: clip_max(objects[s], obj, n_clips) for s in LOCAL},
            "highlevel": highlevel_clip_scores(as_t(feats["highlevel"]), on_device["highlevel"], power, **search)}
    if per_object:
        clip.update({PER_OBJECT[s]: objects[s] for s in LOCAL})
    return {s: c.cpu().numpy() for s, c in clip.items()}


def frame_table(cfg: Config, feats_by_video: dict, memories: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame scores of every video, concatenated: video (index), frame, label, label_frame, one
    column per memory (spatial, temporal, highlevel) and objects (the object count of the frame's
    clip: what a count-conditioned calibration reads); each video's rows are `video_frame_scores`.

    Frames that belong to no clip get no score; labels are truncated the same way (the reference).
    `frame` is the frame a score belongs to, `label_frame` the frame whose label stands beside it:
    the same frame, except with skip_first_frame (IITB), where the reference pairs the scores of
    frames 1..B*T with the labels of frames 0..B*T-1 (kept for the AUC; METHOD.md §9).
    """
    rows = [video_frame_scores(cfg, v, feats, memories) for v, feats in enumerate(feats_by_video.values())]
    return concatenate_rows(rows)


def video_frame_scores(cfg: Config, v: int, feats: dict[str, np.ndarray], memories: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """frame_table's rows of one video, video v of the split: {column: (B*T,)}."""
    t, device = cfg.method.clip_length, resolve_device(cfg.device)
    clip = video_clip_scores(feats, memories, cfg.method.power, device, cfg.arithmetic,
                             cfg.scoring.knn, cfg.scoring.knn_candidates)
    n = len(feats["clip_start"]) * t
    labels = feats.get("labels")
    return {"video": np.full(n, v), "frame": feats["clip_start"][0] + np.arange(n),
            "label": labels[:n] if labels is not None else np.zeros(n, np.uint8), "label_frame": np.arange(n),
            **{s: clip_to_frames(clip[s], t) for s in MEMORIES}, OBJECTS: frame_object_counts(feats, t)}


def frame_object_counts(feats: dict[str, np.ndarray], clip_length: int) -> np.ndarray:
    """The object count of each frame's clip, one video: (B*T,)."""
    return clip_to_frames(clip_object_counts(feats["object_clip"], len(feats["clip_start"])), clip_length)


def concatenate_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """[{column: (F_v,)}] of the videos in order -> {column: (F,)}."""
    columns = ("video", "frame", "label", "label_frame", *MEMORIES, OBJECTS)
    return {k: np.concatenate([r[k] for r in rows]) for k in columns}


def leave_one_out_scores(cfg: Config, train_feats: dict, memories: dict[str, Memory]) -> dict[str, np.ndarray] | None:
    """Training videos scored like test videos against memories of the OTHER training videos.

    Returns per-frame scores against each memory (normal data only) and each frame's object count
    {memory: (F,), "objects": (F,)} (fusion.object_calibration: + each training object's own spatial
    and temporal score {PER_OBJECT[memory]: (K_train,)}), or None with one training video.
    """
    if len(train_feats) < 2:
        return None
    per_video = [leave_one_out_video(cfg, v, feats, memories) for v, feats in enumerate(train_feats.values())]
    return join_leave_one_out(per_video)


def leave_one_out_video(cfg: Config, v: int, feats: dict, memories: dict[str, Memory]) -> dict[str, np.ndarray] | None:
    """Training video v's per-frame scores {memory: (B*T,)} against the memories less its own
    vectors, and its frames' object counts {"objects": (B*T,)}; with fusion.object_calibration also
    its objects' own scores {PER_OBJECT[memory]: (K,)}; None when a memory would be empty."""
    others = {s: memories[s].without_video(v) for s in MEMORIES}
    if any(len(x) == 0 for x in others.values()):
        return None
    clip = video_clip_scores(feats, others, cfg.method.power, resolve_device(cfg.device), cfg.arithmetic,
                             cfg.scoring.knn, cfg.scoring.knn_candidates, per_object=cfg.fusion.object_calibration)
    return {**{s: clip_to_frames(clip[s], cfg.method.clip_length) for s in MEMORIES},
            OBJECTS: frame_object_counts(feats, cfg.method.clip_length),
            **{k: clip[k] for k in PER_OBJECT.values() if k in clip}}


def join_leave_one_out(per_video: list) -> dict[str, np.ndarray] | None:
    """leave_one_out_video of each training video in order -> {memory: (F,), "objects": (F,)[,
    PER_OBJECT[memory]: (K_train,)]}, None if none."""
    kept = [x for x in per_video if x is not None]
    return {s: np.concatenate([x[s] for x in kept]) for s in kept[0]} if kept else None


def calibrate(cfg: Config, train_features: dict, memories: dict[str, Memory],
              velocity_stream: velocity.VelocityStream | None = None) -> dict | None:
    """The label-free calibration: {memory: (mean, std)} of the training videos' leave-one-out
    scores (with a velocity stream: + "velocity", the same for its memory); None in 'fixed' mode,
    or when it cannot be computed (one training video)."""
    if cfg.fusion.labelfree != "calibrated":
        return None
    return calibration_from_scores(cfg, leave_one_out_scores(cfg, train_features, memories), velocity_stream)


def calibration_from_scores(cfg: Config, loo: dict[str, np.ndarray] | None,
                            velocity_stream: velocity.VelocityStream | None = None) -> dict | None:
    """calibrate's arithmetic from the leave-one-out scores {memory: (F,), "objects": (F,)[,
    PER_OBJECT[memory]: (K_train,)]} (None: none) -> {memory: (mean, std)} (fusion.count_bins > 0:
    fusion.count_stats dicts; fusion.object_calibration: fusion.object_stats of the spatial and
    temporal memories), + "velocity" with a velocity stream; None without them."""
    bins, per_object = cfg.fusion.count_bins, cfg.fusion.object_calibration
    stats = (fusion.calibration_stats({s: loo[s] for s in MEMORIES}, loo[OBJECTS], bins,
                                      {s: loo[PER_OBJECT[s]] for s in LOCAL} if per_object else None)
             if loo is not None else None)
    if stats and velocity_stream is not None:
        moving = velocity_stream.calibration(cfg)
        stats = {**stats, "velocity": moving} if moving is not None else None
    return stats


# ---------------------------------------------------------------------------------------------
# 5. fusion

def fuse(cfg: Config, table: dict[str, np.ndarray], train_features: dict | None, memories: dict[str, Memory], bar=None,
         velocity_stream: velocity.VelocityStream | None = None, stats: dict | None = None) -> dict:
    """Both fusions of the per-frame scores (F,): the reference (oracle) protocol, its weights and
    sigma searched on the test labels, and the label-free one, calibrated on the training videos
    (`calibrate`; with train_features None, `stats` is that calibration, computed elsewhere: a
    sharded run). With a velocity stream (table["velocity"]), the label-free fusion adds
    velocity.weight * z(velocity) (fusion.labelfree_velocity); the oracle stays the reference's
    three-stream search.

    Returns {"oracle": fusion.OracleResult, "final_oracle" (F,), "stats", "mode", "final_labelfree" (F,)}.
    """
    labels, vid = table["label"], table["video"]
    sp, tp, hl = table["spatial"], table["temporal"], table["highlevel"]
    f = cfg.fusion
    if bar is not None:
        bar.set_postfix_str("oracle grid search")
    oracle = fusion.oracle_search(sp, tp, hl, labels, vid, f.a_grid, f.b_grid, f.sigma_grid)
    final_oracle = fusion.reference_all_streams(sp, tp, hl, vid, oracle.a, oracle.b, oracle.sigma)
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str("label-free calibration (training videos, leave one out)")
    if train_features is not None:
        stats = calibrate(cfg, train_features, memories, velocity_stream)
    final_free = fusion.labelfree_streams(table, vid, stats, f.a, f.b, f.sigma,
                                          None if velocity_stream is None else cfg.velocity.weight)
    if bar is not None:
        bar.update(1)
    return {"oracle": oracle, "final_oracle": final_oracle, "stats": stats,
            "mode": "calibrated" if stats else "fixed", "final_labelfree": final_free}


# ---------------------------------------------------------------------------------------------
# 6. metrics

def measure(cfg: Config, table: dict[str, np.ndarray], fused: dict, memories: dict[str, Memory], test_features: dict) -> dict:
    """metrics.json's content: micro and macro AUC of both fusions, each memory's AUC alone, the
    oracle's weights, the label-free calibration, per-video AUCs and the memories' sizes."""
    labels, vid, f = table["label"], table["video"], cfg.fusion
    oracle, final_oracle, final_free = fused["oracle"], fused["final_oracle"], fused["final_labelfree"]
    names = list(test_features)
    per_oracle = metrics.per_video_auc(labels, final_oracle, vid)
    per_free = metrics.per_video_auc(labels, final_free, vid)
    streams = (*MEMORIES, "velocity") if "velocity" in table else MEMORIES      # velocity: when enabled
    labelfree = {"mode": fused["mode"], "a": f.a, "b": f.b, "sigma": f.sigma, "stats": fused["stats"]}
    if f.count_bins:                                      # off (the default): metrics.json as it was
        labelfree["count_bins"] = f.count_bins
    if f.object_calibration:                              # off (the default): metrics.json as it was
        labelfree["object_calibration"] = True
    if "velocity" in table:
        labelfree["velocity_weight"] = cfg.velocity.weight
    return {
        "dataset": cfg.data.name,
        "n_test_videos": len(names),
        "n_test_frames": int(len(labels)),
        "n_anomalous_frames": int(labels.sum()),
        "auc_micro_oracle": metrics.auc(labels, final_oracle),
        "auc_macro_oracle": metrics.macro_auc(labels, final_oracle, vid),
        "auc_micro_labelfree": metrics.auc(labels, final_free),
        "auc_macro_labelfree": metrics.macro_auc(labels, final_free, vid),
        "auc_local_oracle": oracle.auc_local,
        "a": oracle.a, "b": oracle.b, "sigma": oracle.sigma, "sigma_local": oracle.sigma_local,
        "labelfree": labelfree,
        "auc_stream": {s: metrics.auc(labels, table[s]) for s in streams},    # (the key's old name: each memory alone)
        "per_video": {names[v]: {"oracle": per_oracle[v], "labelfree": per_free[v]} for v in per_oracle},
        "memory": {s: {"vectors": int(b.vectors.shape[0]), "dims": int(b.vectors.shape[1]),
                       "megabytes": round(b.megabytes, 3)} for s, b in memories.items()},
        "videos_without_objects": [n for n, feats in test_features.items() if len(feats["object_clip"]) == 0],
        "config": cfg.to_dict(),
    }


def evaluate(cfg: Config, work: WorkDir, videos: dict, memories: dict[str, Memory], train_path, test_path,
             velocity_paths: dict | None = None) -> dict:
    """Stages 4-6: score the test set (frame_table), fuse both ways (fuse), measure; write scores.csv
    and metrics.json; return the metrics.

    videos: {"train": [...], "test": [...]} (the key); memories: stage 3's; train_path, test_path:
    stage 2's features files; velocity_paths: stage 1b's {"train": path, "test": path} (velocity.enabled;
    None: read back from the work directory), which add the velocity stream (its memory, column and fusion term). Key: keys.metrics_key (memory,
    test features and labels, power, fusion, velocity); a matching metrics.json is returned as is.
    """
    key = keys.metrics_key(cfg, videos["train"], videos["test"])
    if work.ready("metrics.json", key) and work.ready("scores.csv", key):
        return read_json(work.path("metrics.json"))
    velocity_paths = stage_velocity_paths(cfg, work, videos, velocity_paths)
    test_features, train_features = read_features(test_path), read_features(train_path)
    with progress(total=3, desc="scores and fusion", unit="step") as bar:
        bar.set_postfix_str("scoring the test videos")
        table = frame_table(cfg, test_features, {s: b.vectors for s, b in memories.items()})     # 4.
        stream = velocity_column(cfg, table, list(test_features), velocity_paths)          # 4b.
        if stream is not None:
            memories = {**memories, "velocity": stream.memory}
        bar.update(1)
        fused = fuse(cfg, table, train_features, memories, bar, stream)                         # 5.
    result = measure(cfg, table, fused, memories, test_features)                                 # 6.
    write_results(work, key, list(test_features), table, fused, result)
    return read_json(work.path("metrics.json"))                             # the same value as a later cached call


def write_results(work: WorkDir, key: dict, names: list[str], table: dict[str, np.ndarray], fused: dict,
                  result: dict) -> None:
    """scores.csv and metrics.json (stage 6's artifacts), each committed with the metrics' key."""
    write_scores_csv(work.path("scores.csv"), names, table, fused["final_oracle"], fused["final_labelfree"],
                     counts=bool(result["labelfree"].get("count_bins") or result["labelfree"].get("object_calibration")))
    write_json(work.path("metrics.json"), result)
    work.commit("scores.csv", key)
    work.commit("metrics.json", key)


def stage_velocity_paths(cfg: Config, work: WorkDir, videos: dict, velocity_paths: dict | None) -> dict | None:
    """Stage 1b's {"train": path, "test": path}: as given, read back from the work directory when
    None and velocity.enabled, None when it is off."""
    if cfg.velocity.enabled and velocity_paths is None:
        velocity_paths = {s: velocity.velocity_path(cfg, work, s, videos[s]) for s in SPLITS}
    return velocity_paths


def velocity_column(cfg: Config, table: dict[str, np.ndarray], names: list[str],
                    velocity_paths: dict | None) -> velocity.VelocityStream | None:
    """4b. the velocity memory: adds table["velocity"] (F,), each test frame's velocity score in
    the table's frame order, and returns the stream (its memory, its calibration); None when
    velocity_paths is None (velocity off)."""
    if velocity_paths is None:
        return None
    stream = velocity.VelocityStream(cfg, velocity_paths["train"], velocity_paths["test"], resolve_device(cfg.device))
    table["velocity"] = velocity.aligned(stream.frame_scores(cfg, names), table["label"])
    return stream


# ---------------------------------------------------------------------------------------------
# scores.csv

def write_scores_csv(path, names, table, final_oracle, final_free, counts: bool = False) -> None:
    """scores.csv: video, frame, label, label_frame, spatial, temporal, highlevel, [velocity,]
    [objects,] final_oracle, final_labelfree. `label` is the label of frame `label_frame` (see
    frame_table); the velocity column only when the table has it (velocity.enabled), the objects
    column with `counts` (a count-conditioned or per-object calibration: fusion.count_bins > 0,
    fusion.object_calibration)."""
    moving = "velocity" in table
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        out.write("video,frame,label,label_frame,spatial,temporal,highlevel," + ("velocity," if moving else "")
                  + ("objects," if counts else "") + "final_oracle,final_labelfree\n")
        for i in range(len(table["label"])):
            out.write(f"{names[table['video'][i]]},{table['frame'][i]},{table['label'][i]},{table['label_frame'][i]},"
                      f"{table['spatial'][i]:.8g},{table['temporal'][i]:.8g},{table['highlevel'][i]:.8g},"
                      + (f"{table['velocity'][i]:.8g}," if moving else "")
                      + (f"{table[OBJECTS][i]}," if counts else "")
                      + f"{final_oracle[i]:.8g},{final_free[i]:.8g}\n")


def read_scores(path) -> dict[str, np.ndarray]:
    """scores.csv -> {column: (F,) array}: video names as str, frame and label as int, scores as float."""
    import csv
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    kinds = {"video": str, "frame": np.int64, "label": np.int64, "label_frame": np.int64, OBJECTS: np.int64}
    return {name: np.array([r[j] for r in rows], dtype=kinds.get(name, np.float64)) for j, name in enumerate(header)}
