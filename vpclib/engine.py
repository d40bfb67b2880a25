"""Engine: the streaming feature extractor behind stage 2 (features) of METHOD.md §3-§5.

    video_features(video, starts, boxes, encoder, cfg)   one video's vectors, a chunk of clips at a time
    clip_features(frames, boxes, encoder, cfg)            the vectors of a run of consecutive clips
    encode(encoder, crops, mode, batch_size, reduce)      the encoder over crops, in batches
    cropping_device(cfg, device)                          where crops are cut (host or encoder device)

Frames are decoded by a pool of threads ahead of the encoder, cropped on the host (OpenCV, the
reference arithmetic) or on the device (batched float bilinear, the exact one), and encoded in
batches; on CUDA through pinned memory and CUDA events, one host sync per video. The arithmetic
of each vector is `vpclib.features`'; this module only decides where and in what order it runs.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch

from .config import Config
from .datasets import decoder_check
from .encoder import preprocess
from .features import (global_descriptors, highlevel_vectors, local_maps, spatial_vectors,
                       temporal_vectors)
from .objects import crop_and_resize


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
    with decoder_check(video), ThreadPoolExecutor(1) as ahead, ThreadPoolExecutor(n_readers) as readers:
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
