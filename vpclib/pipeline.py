"""Pipeline: the stage functions that the CLI and the notebooks call, in the order data flows.

    videos -> objects (boxes per clip) -> features (h5) -> memory (3 banks) -> scores -> metrics

Each stage reads its inputs from the work directory, writes its artifact atomically with the
parameters that made it, and reuses an artifact only when those parameters match.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import datasets, fusion, keys, metrics
from .config import Config, stage_params  # noqa: F401  (stage_params: the parameter part of each key)
from .encoder import build_encoder, preprocess, resolve_device
from .errors import CacheMismatchError, NoObjectsError
from .features import (global_descriptors, highlevel_vectors, local_maps, spatial_vectors,
                       temporal_vectors)
from .memory import STREAMS, Bank, build_bank, load_memory, save_memory
from .objects import BoxesFileDetector, build_detector, crop_and_resize, detect_clip_objects
from .scores import clip_to_frames, highlevel_clip_scores, local_clip_scores, nearest
from .store import WorkDir, atomic_path, check_free_space, read_json, write_json

SPLITS = ("train", "test")


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

def detect_objects(cfg: Config, work: WorkDir, split: str, videos=None, detector=None) -> dict[str, list[np.ndarray]]:
    """Boxes of every clip of every video of a split: {video: [(K_b, 4) int boxes] * B}.

    Cached in objects/<split>.json (key: keys.objects_key); an interrupted run resumes video by video.
    """
    from .objects import middle_frame_offset
    videos = videos if videos is not None else load_videos(cfg, work, split)
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

def encode(encoder, crops: torch.Tensor, mode: str, batch_size: int, reduce, channels_last: bool = False) -> torch.Tensor:
    """Run the encoder over crops (N, S, S, 3) in batches; `reduce(mid, deep)` each batch; concat.

    Each batch goes to the encoder's device, then `preprocess` makes it a contiguous NCHW float
    tensor (the reference's layout). With `channels_last` (the exact arithmetic on CUDA) it goes in
    channels-last layout instead, cuDNN's fast path, and the encoder's weights are put in that
    layout once (the same values: convolutions then need no per-call weight transposes).
    """
    if channels_last and not getattr(encoder, "channels_last", False):
        encoder.to(memory_format=torch.channels_last)
        encoder.channels_last = True
    out = []
    for i in range(0, len(crops), batch_size):
        x = preprocess(crops[i:i + batch_size].to(encoder.device, non_blocking=True), mode)  # (b, 3, 224, 224)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(reduce(*encoder(x)))
    return torch.cat(out) if out else torch.empty(0, device=encoder.device)


def cropping_device(cfg: Config, device) -> torch.device:
    """Where the frames of a chunk are cropped: the host for OpenCV's uint8 resize (reference
    arithmetic), the encoder's device for the batched float resize (exact arithmetic)."""
    return torch.device("cpu") if cfg.arithmetic == "reference" else torch.device(device)


def clip_features(frames: torch.Tensor, boxes: list[np.ndarray], encoder, cfg: Config) -> dict[str, torch.Tensor]:
    """All vectors of a run of consecutive clips.

    frames (B*T, H, W, 3) uint8 BGR (on the host for the reference arithmetic, else on the
    encoder's device), clip b holding frames b*T .. b*T+T-1; boxes: B arrays (K_b, 4). Returns
    spatial (K, 49, C), temporal_mean / temporal_max (K, T-1, C), highlevel (B, T, D) and
    object_clip (K,), all on the encoder's device.

    Crops are cut one encoder batch at a time, so the crops never exceed one batch; on CUDA the few
    host arrays (boxes) go through pinned memory, so nothing here waits for the device.
    """
    t, c = cfg.method.clip_length, cfg.method.channel_groups
    mode, batch = cfg.encoder.preprocessing, cfg.encoder.batch_size
    n_frames, height, width = frames.shape[:3]
    n_clips = n_frames // t
    device, where = encoder.device, frames.device                           # vectors, crops
    channels_last = cfg.arithmetic == "exact" and device.type == "cuda"

    def to(x: np.ndarray, target: torch.device) -> torch.Tensor:              # no host sync on CUDA
        x = torch.as_tensor(x, dtype=torch.long)
        return x.pin_memory().to(target, non_blocking=True) if target.type == "cuda" else x

    def encode_crops(frame_index, crop_boxes, size, reduce):                  # (N,), (N, 4) -> (N, ...)
        return torch.cat([encode(encoder, crop_and_resize(frames, frame_index[i:i + batch], crop_boxes[i:i + batch],
                                                          size, cfg.arithmetic),
                                 mode, batch, reduce, channels_last) for i in range(0, len(frame_index), batch)])

    # global stream: every whole frame resized to 224 x 224
    full = torch.zeros(n_frames, 4, dtype=torch.long, device=where)         # (B*T, 4) boxes 0, 0, W, H
    full[:, 2], full[:, 3] = width, height
    g = encode_crops(torch.arange(n_frames, device=where), full, 224, global_descriptors)  # (B*T, D)
    g = g.view(n_clips, t, -1).transpose(1, 2)                                # (B, D, T)
    out = {"highlevel": highlevel_vectors(g)}                                 # (B, T, D)

    # local stream: each object's box cut from the T frames of its clip
    counts = [len(k) for k in boxes]
    n_obj = sum(counts)
    object_clip = np.repeat(np.arange(len(boxes)), counts)                   # (K,)
    out["object_clip"] = to(object_clip, device)
    if n_obj == 0:
        out["spatial"] = torch.zeros(0, 49, c, device=device)
        out["temporal_mean"] = out["temporal_max"] = torch.zeros(0, t - 1, c, device=device)
        return out
    obj_boxes = to(np.concatenate([k for k in boxes if len(k)]).reshape(-1, 4), where)  # (K, 4)
    frame_index = (to(object_clip, where)[:, None] * t + torch.arange(t, device=where)[None]).reshape(-1)  # (K*T,)
    crop_boxes = obj_boxes[:, None].expand(n_obj, t, 4).reshape(-1, 4)       # (K*T, 4)
    maps = encode_crops(frame_index, crop_boxes, cfg.objects.crop_size,
                        lambda m, d: local_maps(m, d, c))                     # (K*T, C, 28, 28)
    local = maps.view(n_obj, t, c, 28, 28).permute(0, 2, 1, 3, 4)             # (K, C, T, 28, 28)
    out["spatial"] = spatial_vectors(local)                                   # (K, 49, C)
    out["temporal_mean"] = temporal_vectors(local, "mean")                    # (K, T-1, C)
    out["temporal_max"] = temporal_vectors(local, "max")                      # (K, T-1, C)
    return out


def video_features(video, starts: np.ndarray, boxes: list[np.ndarray], encoder, cfg: Config,
                   clips_per_chunk: int | None = None, on_clips=None) -> dict[str, np.ndarray]:
    """Vectors of every clip of one video; frames are decoded once, a chunk of clips at a time.

    Decoding runs in background threads (a pool over frame files; one thread over a video file),
    up to two chunks ahead of the encoder. On CUDA a chunk is decoded straight into pinned memory
    and copied without blocking, and the vectors stay on the device until the video ends: one
    host sync per video, so decoding, copies and the encoder overlap. `on_clips(n)` is called
    after each chunk of n clips (progress).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    t = cfg.method.clip_length
    device = encoder.device
    crop_device = cropping_device(cfg, device)
    cuda = device.type == "cuda"
    clips_per_chunk = clips_per_chunk or max(1, (256 if cuda else 128) // t)
    chunks = [(lo, min(clips_per_chunk, len(starts) - lo)) for lo in range(0, len(starts), clips_per_chunk)]
    needed = [int(s) + i for s in starts for i in range(t)]
    width, height = video.frame_size
    paths = getattr(video, "frame_paths", None)                               # None: decode sequentially
    frame_iter = video.iter_frames(needed)                                    # checks the indices up front

    def decode(lo: int, n: int) -> torch.Tensor:                              # -> (n*T, H, W, 3) uint8
        buf = torch.empty((n * t, height, width, 3), dtype=torch.uint8, pin_memory=cuda)
        arr = buf.numpy()
        if paths is None:
            for j, (_, frame) in enumerate(itertools.islice(frame_iter, n * t)):
                arr[j] = frame
        else:
            def read(j):
                arr[j] = video.decode(needed[lo * t + j])                     # checked: complete, same size
            list(readers.map(read, range(n * t)))
        return buf

    n_readers = 1 if paths is None else min(16, os.cpu_count() or 1)
    parts, in_flight = [], deque()
    # damaged frames (the decoder's messages on stderr): an error naming the files, after the pools end
    with datasets.decoder_check(video), ThreadPoolExecutor(1) as ahead, ThreadPoolExecutor(n_readers) as readers:
        pending = deque(ahead.submit(decode, lo, n) for lo, n in chunks[:2])
        for k, (lo, n) in enumerate(chunks):
            frames = pending.popleft().result()                               # (n*T, H, W, 3)
            if k + 2 < len(chunks):
                pending.append(ahead.submit(decode, *chunks[k + 2]))
            feats = clip_features(frames.to(crop_device, non_blocking=True), boxes[lo:lo + n], encoder, cfg)
            feats["object_clip"] = feats["object_clip"] + lo
            parts.append(feats)
            if on_clips is not None:
                on_clips(n)
            if cuda:                                                          # at most 2 chunks queued on the device
                in_flight.append(torch.cuda.Event())
                in_flight[-1].record(torch.cuda.current_stream(device))
                if len(in_flight) > 2:
                    in_flight.popleft().synchronize()
    out = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
    out["boxes"] = np.concatenate([b for b in boxes] or [np.zeros((0, 4))]).reshape(-1, 4).astype(np.int64)
    return out


def extract_features(cfg: Config, work: WorkDir, split: str, videos=None, encoder=None) -> Path:
    """Write features/<split>.h5: one group per video with its vectors; resumes video by video.

    Key: keys.features_key (the objects' key, the encoder, C; the test labels, kept in the file).
    """
    videos = videos if videos is not None else load_videos(cfg, work, split)
    name, key = f"features/{split}.h5", keys.features_key(cfg, split, videos)
    if work.ready(name, key):
        return work.path(name)
    boxes = detect_objects(cfg, work, split, videos)
    partial = work.path(name + ".partial")
    resume = work.check_partial(name, key)
    work.commit(name + ".partial", key)
    encoder = encoder or load_encoder(cfg)
    starts = {v.name: video_clip_starts(cfg, v) for v in videos}
    with h5py.File(partial, "a" if resume else "w") as h5, \
            progress(total=sum(len(s) for s in starts.values()), desc=f"features {split}", unit="clip") as bar:
        kept = [v.name for v in videos if v.name in h5 and h5[v.name].attrs.get("complete", False)]
        if kept:
            note(f"{name}: resuming at video {len(kept) + 1} of {len(videos)} ({len(kept)} kept from the interrupted run)")
        for video in videos:
            if video.name in kept:
                bar.update(len(starts[video.name]))
                continue
            if video.name in h5:
                del h5[video.name]
            bar.set_postfix_str(f"video {video.name}")
            feats = video_features(video, starts[video.name], boxes[video.name], encoder, cfg, on_clips=bar.update)
            check_free_space(work.root, sum(v.nbytes for v in feats.values()) + video.n_frames, work.path(name))
            group = h5.create_group(video.name)
            for k, value in feats.items():
                group.create_dataset(k, data=value)
            group.create_dataset("clip_start", data=starts[video.name])
            if video.labels is not None:
                group.create_dataset("labels", data=np.asarray(video.labels, dtype=np.uint8))
            group.attrs["n_frames"] = video.n_frames
            group.attrs["complete"] = True
            h5.flush()
        h5.attrs["videos"] = [v.name for v in videos]
    os.replace(partial, work.path(name))
    work.commit(name, key)
    work.manifest(partial).unlink(missing_ok=True)
    return work.path(name)


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


def read_features(path) -> dict[str, dict[str, np.ndarray]]:
    """features/<split>.h5 -> {video: {array name: array}} in the split's video order."""
    with h5py.File(path, "r") as h5:
        order = [str(v) for v in h5.attrs["videos"]]
        return {v: {k: h5[v][k][()] for k in h5[v]} | {"n_frames": int(h5[v].attrs["n_frames"])} for v in order}


# ---------------------------------------------------------------------------------------------
# 3. memory

def memory_vectors(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One training video's memory candidates: spatial (K*49, C), temporal (K*(T-1), C), high-level (B*T, D)."""
    return {
        "spatial": feats["spatial"].reshape(-1, feats["spatial"].shape[-1]),
        "temporal": feats["temporal_mean"].reshape(-1, feats["temporal_mean"].shape[-1]),  # MEAN for memory
        "highlevel": feats["highlevel"].reshape(-1, feats["highlevel"].shape[-1]),
    }


def build_memories(cfg: Config, work: WorkDir, train_videos=None) -> dict[str, Bank]:
    """memory.npz: the spatial, temporal and high-level banks from the training features (of
    `train_videos`, by default the whole training split)."""
    train_videos = train_videos if train_videos is not None else load_videos(cfg, work, "train")
    name, key = "memory.npz", keys.memory_key(cfg, train_videos)
    if work.ready(name, key):
        return load_memory(work.path(name))
    train = read_features(extract_features(cfg, work, "train", videos=train_videos))
    per_stream = {s: [memory_vectors(f)[s] for f in train.values()] for s in STREAMS}
    device = resolve_device(cfg.device)
    m = cfg.method
    banks = {s: build_bank(per_stream[s], m.coreset_ratio, device, m.coreset_projection, m.coreset_projection_eps)
             for s in progress(STREAMS, desc="memory", unit="bank")}
    with atomic_path(work.path(name)) as tmp:
        save_memory(tmp, banks)
    work.commit(name, key)
    return banks


# ---------------------------------------------------------------------------------------------
# 4. scores

def video_clip_scores(feats: dict[str, np.ndarray], banks: dict[str, np.ndarray], power: int, device: str,
                      arithmetic: str = "reference") -> dict[str, np.ndarray]:
    """Clip scores (B,) of each stream for one video, against banks {stream: (N, D)}."""
    n_clips = len(feats["clip_start"])
    bank = {s: torch.as_tensor(banks[s], device=device) for s in STREAMS}
    obj = torch.as_tensor(feats["object_clip"], device=device)
    as_t = lambda x: torch.as_tensor(x, device=device)
    return {
        "spatial": local_clip_scores(as_t(feats["spatial"]), obj, n_clips, bank["spatial"], power, arithmetic).cpu().numpy(),
        "temporal": local_clip_scores(as_t(feats["temporal_max"]), obj, n_clips, bank["temporal"], power,
                                      arithmetic).cpu().numpy(),
        "highlevel": highlevel_clip_scores(as_t(feats["highlevel"]), bank["highlevel"], power, arithmetic).cpu().numpy(),
    }


def frame_table(cfg: Config, feats_by_video: dict, banks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame scores of every video, concatenated: video (index), frame, label, label_frame, and
    one column per stream.

    Frames that belong to no clip get no score; labels are truncated the same way (the reference).
    `frame` is the frame a score belongs to, `label_frame` the frame whose label stands beside it:
    the same frame, except with skip_first_frame (IITB), where the reference pairs the scores of
    frames 1..B*T with the labels of frames 0..B*T-1 (kept for the AUC; METHOD.md §9).
    """
    t, device = cfg.method.clip_length, resolve_device(cfg.device)
    cols = {k: [] for k in ("video", "frame", "label", "label_frame", *STREAMS)}
    for v, feats in enumerate(feats_by_video.values()):
        clip = video_clip_scores(feats, banks, cfg.method.power, device, cfg.arithmetic)
        n = len(feats["clip_start"]) * t
        for s in STREAMS:
            cols[s].append(clip_to_frames(clip[s], t))
        cols["video"].append(np.full(n, v))
        cols["frame"].append(feats["clip_start"][0] + np.arange(n))
        cols["label_frame"].append(np.arange(n))
        labels = feats.get("labels")
        cols["label"].append(labels[:n] if labels is not None else np.zeros(n, np.uint8))
    return {k: np.concatenate(c) for k, c in cols.items()}


def leave_one_out_scores(cfg: Config, train_feats: dict, banks: dict[str, Bank]) -> dict[str, np.ndarray] | None:
    """Training videos scored like test videos against memories of the OTHER training videos.

    Returns per-frame scores of each stream (normal data only), or None with one training video.
    """
    if len(train_feats) < 2:
        return None
    t, device = cfg.method.clip_length, resolve_device(cfg.device)
    out = {s: [] for s in STREAMS}
    for v, feats in enumerate(train_feats.values()):
        others = {s: banks[s].without_video(v) for s in STREAMS}
        if any(len(x) == 0 for x in others.values()):
            continue
        clip = video_clip_scores(feats, others, cfg.method.power, device, cfg.arithmetic)
        for s in STREAMS:
            out[s].append(clip_to_frames(clip[s], t))
    return {s: np.concatenate(x) for s, x in out.items()} if out["spatial"] else None


# ---------------------------------------------------------------------------------------------
# 5. metrics

def evaluate(cfg: Config, work: WorkDir, videos: dict | None = None) -> dict:
    """Score the test set, fuse both ways, write scores.csv and metrics.json; return the metrics.

    videos: {"train": [...], "test": [...]} (default: both whole splits). Key: keys.metrics_key
    (memory, test features and labels, power, fusion); a matching metrics.json is returned as is.
    """
    videos = videos or {}
    videos = {s: videos[s] if s in videos else load_videos(cfg, work, s) for s in SPLITS}
    key = keys.metrics_key(cfg, videos["train"], videos["test"])
    if work.ready("metrics.json", key) and work.ready("scores.csv", key):
        return read_json(work.path("metrics.json"))
    banks = build_memories(cfg, work, videos["train"])
    test = read_features(extract_features(cfg, work, "test", videos=videos["test"]))
    train = read_features(work.path("features/train.h5"))
    with progress(total=3, desc="scores and fusion", unit="step") as bar:
        bar.set_postfix_str("scoring the test videos")
        table = frame_table(cfg, test, {s: b.vectors for s, b in banks.items()})
        bar.update(1)
        bar.set_postfix_str("oracle grid search")
        labels, vid = table["label"], table["video"]
        sp, tp, hl = table["spatial"], table["temporal"], table["highlevel"]
        f = cfg.fusion
        oracle = fusion.oracle_search(sp, tp, hl, labels, vid, f.a_grid, f.b_grid, f.sigma_grid)
        final_oracle = fusion.reference_all_streams(sp, tp, hl, vid, oracle.a, oracle.b, oracle.sigma)
        bar.update(1)
        bar.set_postfix_str("label-free calibration (training videos, leave one out)")
        loo = leave_one_out_scores(cfg, train, banks) if f.labelfree == "calibrated" else None
        stats = fusion.calibration_stats(loo) if loo is not None else None
        mode = "calibrated" if stats else "fixed"
        final_free = fusion.labelfree(sp, tp, hl, vid, stats, f.a, f.b, f.sigma)
        bar.update(1)

    names = list(test)
    per_oracle = metrics.per_video_auc(labels, final_oracle, vid)
    per_free = metrics.per_video_auc(labels, final_free, vid)
    result = {
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
        "labelfree": {"mode": mode, "a": f.a, "b": f.b, "sigma": f.sigma, "stats": stats},
        "auc_stream": {s: metrics.auc(labels, table[s]) for s in STREAMS},
        "per_video": {names[v]: {"oracle": per_oracle[v], "labelfree": per_free[v]} for v in per_oracle},
        "memory": {s: {"vectors": int(b.vectors.shape[0]), "dims": int(b.vectors.shape[1]),
                       "megabytes": round(b.megabytes, 3)} for s, b in banks.items()},
        "videos_without_objects": [n for n, feats in test.items() if len(feats["object_clip"]) == 0],
        "config": cfg.to_dict(),
    }
    write_scores_csv(work.path("scores.csv"), names, table, final_oracle, final_free)
    write_json(work.path("metrics.json"), result)
    work.commit("scores.csv", key)
    work.commit("metrics.json", key)
    return read_json(work.path("metrics.json"))                             # the same value as a later cached call


def write_scores_csv(path, names, table, final_oracle, final_free) -> None:
    """scores.csv: video, frame, label, label_frame, spatial, temporal, highlevel, final_oracle,
    final_labelfree. `label` is the label of frame `label_frame` (see frame_table)."""
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        out.write("video,frame,label,label_frame,spatial,temporal,highlevel,final_oracle,final_labelfree\n")
        for i in range(len(table["label"])):
            out.write(f"{names[table['video'][i]]},{table['frame'][i]},{table['label'][i]},{table['label_frame'][i]},"
                      f"{table['spatial'][i]:.8g},{table['temporal'][i]:.8g},{table['highlevel'][i]:.8g},"
                      f"{final_oracle[i]:.8g},{final_free[i]:.8g}\n")


def plan(cfg: Config, work: WorkDir, videos: dict) -> dict[str, str]:
    """{artifact: 'reuse' | 'resume' | 'make'} of a whole run; raises CacheMismatchError naming every
    artifact made from other inputs or parameters, before anything is written."""
    k = {f"objects/{s}.json": keys.objects_key(cfg, s, videos[s]) for s in SPLITS}
    k |= {f"features/{s}.h5": keys.features_key(cfg, s, videos[s]) for s in SPLITS}
    k["memory.npz"] = keys.memory_key(cfg, videos["train"])
    k["metrics.json"] = k["scores.csv"] = keys.metrics_key(cfg, videos["train"], videos["test"])
    decisions, errors = {}, []
    for name, key in k.items():
        try:
            decisions[name] = work.decide(name, key)
        except CacheMismatchError as err:
            errors.append(str(err))
    if errors:
        raise CacheMismatchError(" | ".join(errors))
    return decisions


def run(cfg: Config, work_dir, overwrite: bool = False) -> dict:
    """Every stage, in order, reusing what is cached. Returns the metrics.

    Everything that can be checked is checked before a model loads or anything is written: both
    splits and the test labels, every cache decision (a refused run writes nothing), the work
    directory, the encoder's parameters; the encoder is loaded (a bad checkpoint fails here) before
    objects are detected. config.json is written last: it is the config of the finished run that
    `vpc score` scores new video with (memory.npz, metrics.json).
    """
    resolve_device(cfg.device)                                               # cuda without a GPU: fail now
    work = WorkDir(work_dir, overwrite=overwrite)
    videos = {s: load_videos(cfg, work, s) for s in SPLITS}
    decisions = plan(cfg, work, videos)
    work.check_writable()
    encoder = None
    if any(decisions[f"features/{s}.h5"] != "reuse" for s in SPLITS):
        encoder = load_encoder(cfg)
    for split in SPLITS:
        detect_objects(cfg, work, split, videos[split])
    for split in SPLITS:
        extract_features(cfg, work, split, videos[split], encoder=encoder)
    result = evaluate(cfg, work, videos)
    write_json(work.path("config.json"), cfg.to_dict())                    # the config of the finished run
    return result


# ---------------------------------------------------------------------------------------------
# 6. reading results back, and explaining a score (the notebooks)

def read_scores(path) -> dict[str, np.ndarray]:
    """scores.csv -> {column: (F,) array}: video names as str, frame and label as int, scores as float."""
    import csv
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    kinds = {"video": str, "frame": np.int64, "label": np.int64, "label_frame": np.int64}
    return {name: np.array([r[j] for r in rows], dtype=kinds.get(name, np.float64)) for j, name in enumerate(header)}


@torch.no_grad()
def nearest_memory(queries: np.ndarray, bank: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest memory vector: (Q, D), (N, D) -> exact distances (Q,), indices (Q,) into the bank."""
    distance, index = nearest(torch.as_tensor(queries, dtype=torch.float32), torch.as_tensor(bank, dtype=torch.float32),
                              chunk=chunk)
    return distance.numpy(), index.numpy()


def crop_object(video, frame: int, box, size: int) -> np.ndarray:
    """frame[y1:y2, x1:x2] of a video resized to size x size (BGR uint8), for display."""
    import cv2
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(video.read_frame(int(frame))[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)


def explain_spatial(cfg: Config, work: WorkDir, n_examples: int = 4, crop_size: int = 112) -> list[dict]:
    """The most anomalous test objects by spatial score (one per video, highest first), each with
    its worst patch and the training patch nearest to that patch in the spatial memory.

    The memory remembers where each vector came from (Bank.video, Bank.row): for the spatial bank,
    object = row // 49 and patch = row % 49 among that training video's objects. Crops are cut
    from the clip's middle frame (the frame the detector saw).
    """
    from .objects import middle_frame_offset
    banks = build_memories(cfg, work)
    bank = banks["spatial"]
    test = read_features(extract_features(cfg, work, "test"))
    train = read_features(extract_features(cfg, work, "train"))
    worst = []                                                                # (distance, video, object, patch)
    for name, feats in test.items():
        k, n_patches, c = feats["spatial"].shape
        if k == 0:
            continue
        dist, _ = nearest_memory(feats["spatial"].reshape(-1, c), bank.vectors)
        dist = dist.reshape(k, n_patches)                                     # (K, 49)
        obj = int(dist.max(1).argmax())
        worst.append((float(dist[obj].max()), name, obj, int(dist[obj].argmax())))
    worst.sort(key=lambda w: -w[0])
    videos = {s: {v.name: v for v in load_videos(cfg, work, s)} for s in SPLITS}
    train_names, offset = list(train), middle_frame_offset(cfg.method.clip_length)
    out = []
    for distance, name, obj, patch in worst[:n_examples]:
        feats = test[name]
        _, (m,) = nearest_memory(feats["spatial"][obj, patch][None], bank.vectors)
        mem_name = train_names[int(bank.video[m])]
        mem_obj, mem_patch = divmod(int(bank.row[m]), feats["spatial"].shape[1])
        mem = train[mem_name]
        frame = int(feats["clip_start"][feats["object_clip"][obj]]) + offset
        mem_frame = int(mem["clip_start"][mem["object_clip"][mem_obj]]) + offset
        out.append({
            "test_video": name, "test_frame": frame, "test_box": feats["boxes"][obj].tolist(), "test_patch": patch,
            "distance": distance, "score": distance ** cfg.method.power,
            "memory_video": mem_name, "memory_frame": mem_frame, "memory_box": mem["boxes"][mem_obj].tolist(),
            "memory_patch": mem_patch,
            "test_crop": crop_object(videos["test"][name], frame, feats["boxes"][obj], crop_size),
            "memory_crop": crop_object(videos["train"][mem_name], mem_frame, mem["boxes"][mem_obj], crop_size),
            "test_title": f"test {name} frame {frame}, patch {patch}\ndistance to memory {distance:.2f}",
            "memory_title": f"nearest: train {mem_name} frame {mem_frame}, patch {mem_patch}",
        })
    return out
