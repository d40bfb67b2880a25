"""Reference: the straightforward path, structured like the authors' code.

The same numbers as `vpclib.pipeline`, computed the slow, obvious way, on purpose:

- every object re-reads each frame of its clip from disk (`cv2.imread`), cuts its box with numpy
  slicing and resizes it with `cv2.resize(crop, (S, S)).astype(np.float32)` (the uint8 crop, as the
  authors do; `arithmetic: exact`: `cv2.resize(crop.astype(np.float32), (S, S))`, no rounding);
  whole frames are read again and resized to 224 x 224 the same way;
- the encoder is called once per clip for its T frames and once per clip for its objects' crops;
- the vectors go to an h5 file clip by clip and are read back, clip by clip, for the memory
  and the scores;
- the nearest-neighbour search is a Python loop over objects: torch.cdist(Q, M).min(1).max(),
  Q laid out as the authors' reshapes leave it (`arithmetic: exact`: the exact distance to the
  neighbour cdist finds).

The feature arithmetic (`vpclib.features`), the pixel scaling (`vpclib.encoder.preprocess`) and
the coreset (`vpclib.memory.build_memory`) are shared with the pipeline: what differs is the
structure, not the method. tests/test_fast_path.py checks that both give the same per-frame
scores; benchmarks/throughput.py measures the difference in speed.

    extract_features(videos, boxes, encoder, cfg, path)  -> h5: /<video>/<clip>/<vectors>
    build_memories(path, cfg)                            -> {stream: Memory}
    frame_scores(path, memories, cfg)                       -> {stream: (F,)} per-frame scores
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from .config import Config
from .datasets import clip_starts
from .encoder import INPUT_SIZE, preprocess
from .features import (global_descriptors, highlevel_vectors, local_maps, spatial_vectors,
                       temporal_vectors)
from .memory import MEMORIES, Memory, build_memory


def read_frame(video, i: int) -> np.ndarray:
    """Frame i of `video` from disk, every time: (H, W, 3) uint8 BGR."""
    paths = getattr(video, "frame_paths", None)
    if paths is None:
        return video.read_frame(i)                                          # a video file: decode again
    frame = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
    if frame is None:
        raise FileNotFoundError(f"cannot read frame {paths[i]}")
    return frame


def crop_resize(frame: np.ndarray, box, size: int, arithmetic: str = "reference") -> np.ndarray:
    """frame[y1:y2, x1:x2] resized to (size, size, 3) float32 with OpenCV's bilinear filter: the
    uint8 crop, rounded by OpenCV, then cast (reference), or the float32 crop (exact)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = frame[y1:y2, x1:x2]
    if arithmetic == "exact":
        return cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def run_encoder(encoder, images: list[np.ndarray], mode: str, reduce) -> torch.Tensor:
    """One encoder call on a list of (S, S, 3) float32 images -> reduce(mid, deep)."""
    x = torch.from_numpy(np.stack(images)).to(encoder.device)              # (N, S, S, 3)
    return reduce(*encoder(preprocess(x, mode)))


def clip_vectors(video, start: int, boxes: np.ndarray, encoder, cfg: Config) -> dict[str, np.ndarray]:
    """Vectors of one clip: highlevel (T, D); spatial (K, 49, C), temporal_mean / _max (K, T-1, C)."""
    t, c = cfg.method.clip_length, cfg.method.channel_groups
    mode, size = cfg.encoder.preprocessing, cfg.objects.crop_size

    whole = []
    for i in range(t):
        frame = read_frame(video, start + i)
        height, width = frame.shape[:2]
        whole.append(crop_resize(frame, (0, 0, width, height), INPUT_SIZE, cfg.arithmetic))
    g = run_encoder(encoder, whole, mode, global_descriptors)             # (T, D)
    out = {"highlevel": highlevel_vectors(g.T[None])[0].cpu().numpy()}    # (T, D)

    out["spatial"] = np.zeros((0, 49, c), np.float32)
    out["temporal_mean"] = out["temporal_max"] = np.zeros((0, t - 1, c), np.float32)
    if len(boxes) == 0:
        return out
    crops = []
    for box in boxes:                                                     # the authors' loop: per object,
        for i in range(t):                                                # every frame read again
            crops.append(crop_resize(read_frame(video, start + i), box, size, cfg.arithmetic))
    maps = run_encoder(encoder, crops, mode, lambda m, d: local_maps(m, d, c))  # (K*T, C, 28, 28)
    local = maps.view(len(boxes), t, c, *maps.shape[-2:]).permute(0, 2, 1, 3, 4)  # (K, C, T, 28, 28)
    out["spatial"] = spatial_vectors(local).cpu().numpy()
    out["temporal_mean"] = temporal_vectors(local, "mean").cpu().numpy()
    out["temporal_max"] = temporal_vectors(local, "max").cpu().numpy()
    return out


def extract_features(videos, boxes: dict[str, list[np.ndarray]], encoder, cfg: Config, path) -> Path:
    """Write every clip's vectors to h5, clip by clip: /<video>/<clip index>/<name>."""
    t = cfg.method.clip_length
    with h5py.File(path, "w") as h5:
        for video in videos:
            group = h5.create_group(video.name)
            starts = clip_starts(video.n_frames, t, cfg.data.skip_first_frame)
            group.attrs["n_clips"] = len(starts)
            for b, start in enumerate(starts):
                clip = group.create_group(str(b))
                for name, value in clip_vectors(video, int(start), boxes[video.name][b], encoder, cfg).items():
                    clip.create_dataset(name, data=value)
        h5.attrs["videos"] = [v.name for v in videos]
    return Path(path)


def _clips(path):
    """Yield (video index, clip count, clip index, {name: array}) from an h5 of `extract_features`."""
    with h5py.File(path, "r") as h5:
        for v, name in enumerate(str(x) for x in h5.attrs["videos"]):
            n_clips = int(h5[name].attrs["n_clips"])
            for b in range(n_clips):
                yield v, n_clips, b, {k: h5[name][str(b)][k][()] for k in h5[name][str(b)]}


def build_memories(path, cfg: Config, device: str = "cpu") -> dict[str, Memory]:
    """The three memories from training vectors read back clip by clip (the pipeline's coreset)."""
    per_video = {s: [] for s in MEMORIES}
    current = {s: [] for s in MEMORIES}
    for v, n_clips, b, vec in _clips(path):
        c = vec["spatial"].shape[-1]
        current["spatial"].append(vec["spatial"].reshape(-1, c))
        current["temporal"].append(vec["temporal_mean"].reshape(-1, c))   # MEAN for memory
        current["highlevel"].append(vec["highlevel"])
        if b == n_clips - 1:
            for s in MEMORIES:
                per_video[s].append(np.concatenate(current[s]))
            current = {s: [] for s in MEMORIES}
    m = cfg.method
    return {s: build_memory(per_video[s], m.coreset_ratio, device, m.coreset_projection, m.coreset_projection_eps)
            for s in MEMORIES}


def set_score(queries: np.ndarray, memory: torch.Tensor, power: int, arithmetic: str = "reference") -> float:
    """s(Q, M) = (max over q of min over m of ||q - m||) ** n, straight from torch.cdist.

    queries (V, D) are laid out as the authors' reshapes leave them: the transpose of a contiguous
    (D, V) array. exact: the distance to the neighbour cdist finds, recomputed as ||q - m||.
    """
    q = torch.as_tensor(np.ascontiguousarray(np.asarray(queries).T), device=memory.device).T  # (V, D)
    d, nearest = torch.cdist(q, memory).min(1)                                # (V,)
    if arithmetic == "exact":
        d = torch.linalg.vector_norm(q - memory[nearest], dim=1)
    return float(d.max() ** power)


def frame_scores(path, memories: dict[str, np.ndarray], cfg: Config, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per-frame scores of every stream, all videos concatenated, with a Python loop over objects."""
    t, power = cfg.method.clip_length, cfg.method.power
    memory = {s: torch.as_tensor(np.asarray(memories[s]), dtype=torch.float32, device=device) for s in MEMORIES}
    out = {s: [] for s in MEMORIES}
    for _, _, _, vec in _clips(path):
        spatial = temporal = 0.0                                          # a clip without objects scores 0
        for k in range(len(vec["spatial"])):
            spatial = max(spatial, set_score(vec["spatial"][k], memory["spatial"], power, cfg.arithmetic))
            temporal = max(temporal, set_score(vec["temporal_max"][k], memory["temporal"], power,  # MAX at test
                                               cfg.arithmetic))
        clip = {"spatial": spatial, "temporal": temporal,
                "highlevel": set_score(vec["highlevel"], memory["highlevel"], power, cfg.arithmetic)}
        for s in MEMORIES:
            out[s].extend([clip[s]] * t)
    return {s: np.asarray(v, dtype=np.float32) for s, v in out.items()}
