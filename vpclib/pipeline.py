"""Pipeline: the stage functions that the CLI and the notebooks call, in the order data flows.

    videos -> objects (boxes per clip) -> features (h5) -> memory (3 banks) -> scores -> metrics

Each stage reads its inputs from the work directory, writes its artifact atomically with the
parameters that made it, and reuses an artifact only when those parameters match.
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import datasets, fusion, metrics
from .config import Config, stage_params
from .encoder import build_encoder, preprocess, resolve_device
from .errors import NoObjectsError
from .features import (global_descriptors, highlevel_vectors, local_maps, spatial_vectors,
                       temporal_vectors)
from .memory import STREAMS, Bank, build_bank, load_memory, save_memory
from .objects import build_detector, crop_and_resize, detect_clip_objects
from .scores import clip_to_frames, highlevel_clip_scores, local_clip_scores
from .store import WorkDir, atomic_path, read_json, write_json

SPLITS = ("train", "test")


def progress(iterable, **kw):
    """tqdm progress bar, silenced with VPC_PROGRESS=0 (notebooks under nbval)."""
    return tqdm(iterable, disable=os.environ.get("VPC_PROGRESS", "1") == "0", **kw)


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
    min_frames = cfg.method.clip_length + int(cfg.data.skip_first_frame)
    return datasets.load_split(layout, dataset_root(cfg, work), split, label_file=cfg.data.label_file or None,
                               skip_first_frame=cfg.data.skip_first_frame, min_frames=min_frames)


def video_clip_starts(cfg: Config, video) -> np.ndarray:
    """(B,) first frame of each clip of `video`."""
    return datasets.clip_starts(video.n_frames, cfg.method.clip_length, cfg.data.skip_first_frame)


# ---------------------------------------------------------------------------------------------
# 1. objects

def detect_objects(cfg: Config, work: WorkDir, split: str, videos=None, detector=None) -> dict[str, list[np.ndarray]]:
    """Boxes of every clip of every video of a split: {video: [(K_b, 4) int boxes] * B}.

    Cached in objects/<split>.json; an interrupted run resumes video by video.
    """
    name, params = f"objects/{split}.json", stage_params(cfg, "objects")
    if work.ready(name, params):
        return _boxes_from_json(read_json(work.path(name))["videos"])
    videos = videos if videos is not None else load_videos(cfg, work, split)
    partial = name + ".partial"
    done = read_json(work.path(partial))["videos"] if work.check_partial(name, params) else {}
    work.commit(partial, params)
    detector = detector or build_detector(cfg, resolve_device(cfg.device))
    confidence = cfg.objects.train_confidence if split == "train" else cfg.objects.test_confidence
    for video in progress(videos, desc=f"objects {split}", unit="video"):
        if video.name in done:
            continue
        boxes = detect_clip_objects(video, video_clip_starts(cfg, video), cfg.method.clip_length, detector,
                                    confidence, set(cfg.objects.classes), cfg.objects.box_growth)
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
    work.commit(name, params)
    work.manifest(work.path(partial)).unlink(missing_ok=True)
    return _boxes_from_json(done)


def _boxes_from_json(videos: dict) -> dict[str, list[np.ndarray]]:
    return {v: [np.asarray(b, dtype=np.int64).reshape(-1, 4) for b in clips] for v, clips in videos.items()}


# ---------------------------------------------------------------------------------------------
# 2. features

def encode(encoder, crops: torch.Tensor, mode: str, batch_size: int, reduce) -> torch.Tensor:
    """Run the encoder over crops (N, S, S, 3) in batches; `reduce(mid, deep)` each batch; concat."""
    out = [reduce(*encoder(preprocess(crops[i:i + batch_size], mode))) for i in range(0, len(crops), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def clip_features(frames: torch.Tensor, boxes: list[np.ndarray], encoder, cfg: Config) -> dict[str, torch.Tensor]:
    """All vectors of a run of consecutive clips.

    frames (B*T, H, W, 3) uint8 BGR on the device, clip b holding frames b*T .. b*T+T-1;
    boxes: B arrays (K_b, 4). Returns spatial (K, 49, C), temporal_mean / temporal_max
    (K, T-1, C), highlevel (B, T, D) and object_clip (K,).
    """
    t, c = cfg.method.clip_length, cfg.method.channel_groups
    mode, batch = cfg.encoder.preprocessing, cfg.encoder.batch_size
    n_frames, height, width = frames.shape[:3]
    n_clips = n_frames // t
    device = frames.device

    # global stream: every whole frame resized to 224 x 224
    full = torch.tensor([[0, 0, width, height]] * n_frames)
    whole = crop_and_resize(frames, torch.arange(n_frames), full, 224)         # (B*T, 224, 224, 3)
    g = encode(encoder, whole, mode, batch, global_descriptors)               # (B*T, D)
    g = g.view(n_clips, t, -1).transpose(1, 2)                                # (B, D, T)
    out = {"highlevel": highlevel_vectors(g)}                                 # (B, T, D)

    # local stream: each object's box cut from the T frames of its clip
    object_clip = torch.tensor([b for b, k in enumerate(boxes) for _ in range(len(k))], dtype=torch.long)
    n_obj = len(object_clip)
    out["object_clip"] = object_clip
    if n_obj == 0:
        out["spatial"] = torch.zeros(0, 49, c)
        out["temporal_mean"] = out["temporal_max"] = torch.zeros(0, t - 1, c)
        return out
    obj_boxes = torch.as_tensor(np.concatenate([k for k in boxes if len(k)]), dtype=torch.long)  # (K, 4)
    frame_index = (object_clip[:, None] * t + torch.arange(t)[None]).reshape(-1)   # (K*T,)
    size = cfg.objects.crop_size
    crops = crop_and_resize(frames, frame_index, obj_boxes.repeat_interleave(t, 0), size)  # (K*T, S, S, 3)
    maps = encode(encoder, crops, mode, batch, lambda m, d: local_maps(m, d, c))   # (K*T, C, 28, 28)
    local = maps.view(n_obj, t, c, 28, 28).permute(0, 2, 1, 3, 4)             # (K, C, T, 28, 28)
    out["spatial"] = spatial_vectors(local)                                   # (K, 49, C)
    out["temporal_mean"] = temporal_vectors(local, "mean")                    # (K, T-1, C)
    out["temporal_max"] = temporal_vectors(local, "max")                      # (K, T-1, C)
    return out


def video_features(video, starts: np.ndarray, boxes: list[np.ndarray], encoder, cfg: Config,
                   clips_per_chunk: int | None = None) -> dict[str, np.ndarray]:
    """Vectors of every clip of one video; frames are decoded once, a chunk of clips at a time."""
    t = cfg.method.clip_length
    device = encoder.device
    clips_per_chunk = clips_per_chunk or max(1, 128 // t)
    needed = [int(s) + i for s in starts for i in range(t)]
    frame_iter = video.iter_frames(needed)
    parts = []
    for lo in range(0, len(starts), clips_per_chunk):
        n = min(clips_per_chunk, len(starts) - lo)
        frames = np.stack([frame for _, frame in itertools.islice(frame_iter, n * t)])  # (n*T, H, W, 3)
        feats = clip_features(torch.from_numpy(frames).to(device), boxes[lo:lo + n], encoder, cfg)
        feats["object_clip"] = feats["object_clip"] + lo
        parts.append({k: v.cpu() for k, v in feats.items()})
    out = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    out["boxes"] = np.concatenate([b for b in boxes] or [np.zeros((0, 4))]).reshape(-1, 4).astype(np.int64)
    return out


def extract_features(cfg: Config, work: WorkDir, split: str, videos=None, encoder=None) -> Path:
    """Write features/<split>.h5: one group per video with its vectors; resumes video by video."""
    name, params = f"features/{split}.h5", stage_params(cfg, "features")
    if work.ready(name, params):
        return work.path(name)
    videos = videos if videos is not None else load_videos(cfg, work, split)
    boxes = detect_objects(cfg, work, split, videos)
    partial = work.path(name + ".partial")
    resume = work.check_partial(name, params)
    work.commit(name + ".partial", params)
    encoder = encoder or build_encoder(cfg, resolve_device(cfg.device))
    with h5py.File(partial, "a" if resume else "w") as h5:
        for video in progress(videos, desc=f"features {split}", unit="video"):
            if video.name in h5 and h5[video.name].attrs.get("complete", False):
                continue
            if video.name in h5:
                del h5[video.name]
            starts = video_clip_starts(cfg, video)
            feats = video_features(video, starts, boxes[video.name], encoder, cfg)
            group = h5.create_group(video.name)
            for key, value in feats.items():
                group.create_dataset(key, data=value)
            group.create_dataset("clip_start", data=starts)
            if video.labels is not None:
                group.create_dataset("labels", data=np.asarray(video.labels, dtype=np.uint8))
            group.attrs["n_frames"] = video.n_frames
            group.attrs["complete"] = True
            h5.flush()
        h5.attrs["videos"] = [v.name for v in videos]
    os.replace(partial, work.path(name))
    work.commit(name, params)
    work.manifest(partial).unlink(missing_ok=True)
    return work.path(name)


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


def build_memories(cfg: Config, work: WorkDir) -> dict[str, Bank]:
    """memory.npz: the spatial, temporal and high-level banks from the training features."""
    name, params = "memory.npz", stage_params(cfg, "memory")
    if work.ready(name, params):
        return load_memory(work.path(name))
    train = read_features(extract_features(cfg, work, "train"))
    per_stream = {s: [memory_vectors(f)[s] for f in train.values()] for s in STREAMS}
    device = resolve_device(cfg.device)
    m = cfg.method
    banks = {s: build_bank(per_stream[s], m.coreset_ratio, device, m.coreset_projection, m.coreset_projection_eps)
             for s in progress(STREAMS, desc="memory", unit="bank")}
    with atomic_path(work.path(name)) as tmp:
        save_memory(tmp, banks)
    work.commit(name, params)
    return banks


# ---------------------------------------------------------------------------------------------
# 4. scores

def video_clip_scores(feats: dict[str, np.ndarray], banks: dict[str, np.ndarray], power: int, device: str) -> dict[str, np.ndarray]:
    """Clip scores (B,) of each stream for one video, against banks {stream: (N, D)}."""
    n_clips = len(feats["clip_start"])
    bank = {s: torch.as_tensor(banks[s], device=device) for s in STREAMS}
    obj = torch.as_tensor(feats["object_clip"], device=device)
    as_t = lambda x: torch.as_tensor(x, device=device)
    return {
        "spatial": local_clip_scores(as_t(feats["spatial"]), obj, n_clips, bank["spatial"], power).cpu().numpy(),
        "temporal": local_clip_scores(as_t(feats["temporal_max"]), obj, n_clips, bank["temporal"], power).cpu().numpy(),
        "highlevel": highlevel_clip_scores(as_t(feats["highlevel"]), bank["highlevel"], power).cpu().numpy(),
    }


def frame_table(cfg: Config, feats_by_video: dict, banks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame scores of every video, concatenated: video (index), frame, label, and one column per stream.

    Frames that belong to no clip get no score; labels are truncated the same way (the reference).
    """
    t, device = cfg.method.clip_length, resolve_device(cfg.device)
    cols = {k: [] for k in ("video", "frame", "label", *STREAMS)}
    for v, feats in enumerate(feats_by_video.values()):
        clip = video_clip_scores(feats, banks, cfg.method.power, device)
        n = len(feats["clip_start"]) * t
        for s in STREAMS:
            cols[s].append(clip_to_frames(clip[s], t))
        cols["video"].append(np.full(n, v))
        cols["frame"].append(feats["clip_start"][0] + np.arange(n))
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
        clip = video_clip_scores(feats, others, cfg.method.power, device)
        for s in STREAMS:
            out[s].append(clip_to_frames(clip[s], t))
    return {s: np.concatenate(x) for s, x in out.items()} if out["spatial"] else None


# ---------------------------------------------------------------------------------------------
# 5. metrics

def evaluate(cfg: Config, work: WorkDir) -> dict:
    """Score the test set, fuse both ways, write scores.csv and metrics.json; return the metrics."""
    banks = build_memories(cfg, work)
    test = read_features(extract_features(cfg, work, "test"))
    train = read_features(work.path("features/train.h5"))
    table = frame_table(cfg, test, {s: b.vectors for s, b in banks.items()})
    labels, vid = table["label"], table["video"]
    sp, tp, hl = table["spatial"], table["temporal"], table["highlevel"]
    f = cfg.fusion

    oracle = fusion.oracle_search(sp, tp, hl, labels, vid, f.a_grid, f.b_grid, f.sigma_grid)
    final_oracle = fusion.reference_all_streams(sp, tp, hl, vid, oracle.a, oracle.b, oracle.sigma)

    loo = leave_one_out_scores(cfg, train, banks) if f.labelfree == "calibrated" else None
    if loo is not None:
        stats = fusion.calibration_stats(loo)
        final_free = fusion.labelfree_calibrated(sp, tp, hl, vid, stats, f.a, f.b, f.sigma)
        mode = "calibrated"
    else:
        stats = None
        final_free = fusion.reference_all_streams(sp, tp, hl, vid, f.a, f.b, f.sigma)
        mode = "fixed"

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
    return result


def write_scores_csv(path, names, table, final_oracle, final_free) -> None:
    """scores.csv: video, frame, label, spatial, temporal, highlevel, final_oracle, final_labelfree."""
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        out.write("video,frame,label,spatial,temporal,highlevel,final_oracle,final_labelfree\n")
        for i in range(len(table["label"])):
            out.write(f"{names[table['video'][i]]},{table['frame'][i]},{table['label'][i]},"
                      f"{table['spatial'][i]:.8g},{table['temporal'][i]:.8g},{table['highlevel'][i]:.8g},"
                      f"{final_oracle[i]:.8g},{final_free[i]:.8g}\n")


def run(cfg: Config, work_dir, overwrite: bool = False) -> dict:
    """Every stage, in order, reusing what is cached. Returns the metrics."""
    work = WorkDir(work_dir, overwrite=overwrite)
    write_json(work.path("config.json"), cfg.to_dict())
    for split in SPLITS:
        detect_objects(cfg, work, split)
    encoder = build_encoder(cfg, resolve_device(cfg.device))
    for split in SPLITS:
        extract_features(cfg, work, split, encoder=encoder)
    return evaluate(cfg, work)
