"""Engine: the streaming feature extractor behind stage 2 (features) of METHOD.md §3-§5.

    video_features(video, starts, boxes, encoder, cfg)   one video's vectors, a chunk of clips at a time
    FrameStream(items, cfg, device)                       the decoded chunks of a run of videos, ahead of the encoder
    clip_features(frames, boxes, encoder, cfg)            the vectors of a run of consecutive clips
    encode(encoder, crops, mode, batch_size, reduce)      the encoder over crops, in batches
    cropping_device(cfg, device)                          where crops are cut (host or encoder device)

Frames are decoded by a pool of threads ahead of the encoder (across videos: the next video's
first chunk while this one's last is encoded), cropped on the host (OpenCV, the
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
from .datasets import native_stderr, raise_if_damaged
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


class FrameStream:
    """The decoded frames of a run of videos, a chunk of clips at a time, in the videos' order.

    One decoder thread runs up to `ahead` chunks ahead of the encoder, across video boundaries:
    the next video's first chunk is decoded while this video's last chunks are encoded, so the
    encoder never waits at the start of a video. A chunk of a frame folder is read by a pool of
    threads; a video file is decoded sequentially. On CUDA a chunk is decoded straight into
    pinned memory. The decodes run one at a time, so the decoders' messages (damaged frames) are
    counted per chunk and blamed on their own video (`datasets.raise_if_damaged`), never on the
    video being encoded meanwhile.

        with FrameStream([(video, starts), ...], cfg, device) as stream:
            for video, starts in ...:                   # the same order
                for lo, n, frames in stream.chunks(video):   # clips lo .. lo+n-1, frames (n*T, H, W, 3)
                    ...
    """

    def __init__(self, items, cfg: Config, device, clips_per_chunk: int | None = None, ahead: int = 2):
        from concurrent.futures import ThreadPoolExecutor
        self.t, self.cuda, self.ahead = cfg.method.clip_length, torch.device(device).type == "cuda", ahead
        per_chunk = clips_per_chunk or max(1, (256 if self.cuda else 128) // self.t)
        self.videos = [video for video, _ in items]
        self.tasks = [(v, lo, min(per_chunk, len(starts) - lo))               # (video index, first clip, clips)
                      for v, (_, starts) in enumerate(items) for lo in range(0, len(starts), per_chunk)]
        self.needed = [[int(s) + i for s in starts for i in range(self.t)] for _, starts in items]
        self.frame_iters = {}                                               # video index -> iter_frames
        n_readers = min(16, os.cpu_count() or 1) if any(getattr(v, "frame_paths", None) for v in self.videos) else 1
        self.decoder, self.readers = ThreadPoolExecutor(1), ThreadPoolExecutor(n_readers)
        self.pending, self.submitted, self.next_video = [], 0, 0
        self._stderr = native_stderr()
        self.err = self._stderr.__enter__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop decoding (chunks not started are dropped) and release the threads."""
        self.decoder.shutdown(wait=True, cancel_futures=True)
        self.readers.shutdown(wait=True)
        self.frame_iters.clear()                                            # video files left open by a skip
        self._stderr.__exit__(None, None, None)

    def _decode(self, v: int, lo: int, n: int):                            # -> (n*T, H, W, 3) uint8, messages
        video, t, needed = self.videos[v], self.t, self.needed[v]
        before = self.err.mark()
        width, height = video.frame_size
        buf = torch.empty((n * t, height, width, 3), dtype=torch.uint8, pin_memory=self.cuda)
        arr = buf.numpy()
        if getattr(video, "frame_paths", None) is None:                     # one pass over the file
            if v not in self.frame_iters:
                self.frame_iters[v] = video.iter_frames(needed)              # checks the indices first
            for j, (_, frame) in enumerate(itertools.islice(self.frame_iters[v], n * t)):
                arr[j] = frame
        else:
            def read(j):
                arr[j] = video.decode(needed[lo * t + j])                    # checked: complete, same size
            list(self.readers.map(read, range(n * t)))
        if lo + n == len(needed) // t:
            self.frame_iters.pop(v, None)                                   # the file is released
        return buf, self.err.messages[before:self.err.mark()]

    def _top_up(self) -> None:
        while self.submitted < len(self.tasks) and len(self.pending) < self.ahead:
            task = self.tasks[self.submitted]
            self.pending.append((task, self.decoder.submit(self._decode, *task)))
            self.submitted += 1

    def _next_chunk(self, v: int):
        """(lo, n, frames, messages) of video v's next chunk; chunks of videos skipped are dropped."""
        while True:
            self._top_up()
            (u, lo, n), future = self.pending.pop(0)
            if u == v:
                return (lo, n, *future.result())
            future.cancel()                                                 # a video nobody asked for

    def chunks(self, video):
        """Yield (lo, n, frames (n*T, H, W, 3) uint8) for every chunk of `video`, a later video of
        the stream than the last one asked for (those between are skipped); a DatasetError naming
        the files if the decoder reported damaged frames."""
        later = [u for u in range(self.next_video, len(self.videos)) if self.videos[u] is video]
        if not later:
            raise ValueError(f"video {getattr(video, 'name', video)} is not a later video of the stream")
        v = self.next_video = later[0]
        self.next_video += 1
        n_clips, messages = len(self.needed[v]) // self.t, []
        for _ in range(sum(task[0] == v for task in self.tasks)):
            lo, n, frames, found = self._next_chunk(v)
            messages += found
            if messages and lo + n == n_clips:                              # the video's last chunk
                for _, future in self.pending:                              # no other decode while files are checked
                    future.result()
                raise_if_damaged(video, messages, self.err)
            self._top_up()                                                  # the next chunk decodes while this one encodes
            yield lo, n, frames


def video_features(video, starts: np.ndarray, boxes: list[np.ndarray], encoder, cfg: Config,
                   clips_per_chunk: int | None = None, on_clips=None, frames=None) -> dict[str, np.ndarray]:
    """Vectors of every clip of one video; frames are decoded once, a chunk of clips at a time.

    frames: this video's `FrameStream.chunks` (extract_features' stream over a whole split: the
    next video's first chunk decodes while this one's last is encoded); by default a stream of
    this video alone, with `clips_per_chunk` clips a chunk. Decoding runs up to two chunks ahead
    of the encoder. On CUDA a chunk is copied to the device without blocking, and the vectors stay
    on the device until the video ends: one host sync per video, so decoding, copies and the
    encoder overlap. `on_clips(n)` is called after each chunk of n clips (progress).
    """
    if frames is None:
        with FrameStream([(video, starts)], cfg, encoder.device, clips_per_chunk) as stream:
            return video_features(video, starts, boxes, encoder, cfg, on_clips=on_clips, frames=stream.chunks(video))
    from collections import deque

    device = encoder.device
    crop_device = cropping_device(cfg, device)
    parts, in_flight = [], deque()
    for lo, n, chunk in frames:                                               # (n*T, H, W, 3)
        feats = clip_features(chunk.to(crop_device, non_blocking=True), boxes[lo:lo + n], encoder, cfg)
        feats["object_clip"] = feats["object_clip"] + lo
        parts.append(feats)
        if on_clips is not None:
            on_clips(n)
        if device.type == "cuda":                                             # at most 2 chunks queued on the device
            in_flight.append(torch.cuda.Event())
            in_flight[-1].record(torch.cuda.current_stream(device))
            if len(in_flight) > 2:
                in_flight.popleft().synchronize()
    out = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
    out["boxes"] = np.concatenate([b for b in boxes] or [np.zeros((0, 4))]).reshape(-1, 4).astype(np.int64)
    return out
