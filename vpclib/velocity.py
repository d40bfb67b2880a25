"""Velocity: an optional fourth memory, of how fast and which way each object moves. Beyond the
paper, after AI-VAD (Reiss & Hoshen 2023, "Attribute-based representations for accurate and
interpretable video anomaly detection"), whose velocity attribute is its strongest Ped2 cue. Off by
default (`velocity.enabled`); the faithful method never reads this module.

Stage 1b of `pipeline.run`, between the objects and the features:

    objects (stage 1)  {video: [(K_b, 4) boxes] * B}, the boxes the spatial memory uses (found on
                       the middle frame of each clip of T frames)
    flow               dense optical flow between consecutive frames of each clip that has an
                       object: OpenCV DIS (`velocity.dis_preset`) on grayscale frames, no weights;
                       computed once per frame pair and shared by the clip's objects -> (H, W, 2)
    velocity vector    per object, the orientation histogram of the flow inside its box, averaged
                       over the clip's T-1 frame pairs -> (K, D_v), D_v = `velocity.bins`
    artifact           velocity/<split>.npz (vpclib.keys.velocity_key: the objects' key and the flow's
                       parameters), written atomically; cheap, so made again rather than resumed

The feature, decided from AI-VAD's description before any Ped2 number: for every pixel p of the box,
its flow f_p (pixels per frame) has magnitude |f_p| and orientation atan2(f_y, f_x) (image axes:
x right, y down); the magnitude is added to the orientation's bin (`bins` equal sectors, bin k
centred on 2*pi*k/bins, so that the four axis directions fall in the middle of a bin, not on an
edge), and the sums are divided by the number of pixels of the box:

    h_k = (1 / |box|) * sum over p in box with orientation in sector k of |f_p|

So sum_k h_k is the mean speed in the box and h points in the direction of motion; static
background inside a grown box adds no mass (its flow is ~0). AI-VAD's histogram is magnitude
weighted with 8 bins; dividing by the box's pixel count (not by each bin's count) keeps a bin that
holds a few noisy pixels from weighing like one that holds the whole object. bins = 1 is AI-VAD's
own Ped2 setting (their feature extraction uses one bin on Ped2, eight elsewhere): h = (mean speed,),
no direction.

Memory and scores, like the other memories (vpclib.memory, vpclib.scores): one Memory of the
training vectors, per training video (`velocity.coreset_ratio`; 1 keeps every vector: D_v = 8 is
small); an object's score is its distance to the nearest memory vector (power 1: AI-VAD's kNN
distance; the exact arithmetic, as there is no reference to reproduce), a clip's score the max
over its objects (0 without objects), each clip's score given to its T frames. The label-free
fusion adds weight * z(velocity), z from the training videos' leave-one-video-out scores
(`fusion.labelfree`, `velocity.weight`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from . import fusion, keys
from .config import Config
from .memory import Memory, build_memory
from .scores import clip_max, clip_object_counts, clip_to_frames, object_scores
from .store import WorkDir, atomic_path

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
STREAM = "velocity"


# ---------------------------------------------------------------------------------------------
# the feature

def flow_estimator(preset: str):
    """An OpenCV DIS optical flow estimator at `preset` (one of PRESETS); reuse it within a video."""
    return cv2.DISOpticalFlow_create(PRESETS[preset])


def dense_flow(estimator, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Flow from one grayscale frame to the next: (H, W) uint8, (H, W) uint8 -> (H, W, 2) float32
    (dx, dy) in pixels, such that previous[y, x] ~ following[y + dy, x + dx]."""
    return estimator.calc(previous, following, None)


def orientation_bins(flow: np.ndarray, bins: int) -> np.ndarray:
    """(..., 2) flow -> (...) int sector of each vector's orientation atan2(dy, dx), sector k
    centred on 2*pi*k / bins (0: right, bins/4: down, bins/2: left, 3*bins/4: up)."""
    theta = np.arctan2(flow[..., 1], flow[..., 0])                       # (-pi, pi]
    return np.floor(theta / (2 * np.pi / bins) + 0.5).astype(np.int64) % bins


def flow_histogram(flow: np.ndarray, box, bins: int) -> np.ndarray:
    """Magnitude of the flow inside `box` (x1, y1, x2, y2: flow[y1:y2, x1:x2]) summed per
    orientation sector, divided by the box's pixel count: (H, W, 2) -> (bins,) float64. An empty
    box gives zeros."""
    x1, y1, x2, y2 = (int(v) for v in box)
    inside = flow[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)].reshape(-1, 2)    # (P, 2)
    if len(inside) == 0:
        return np.zeros(bins)
    magnitude = np.hypot(inside[:, 0], inside[:, 1])
    return np.bincount(orientation_bins(inside, bins), weights=magnitude, minlength=bins) / len(inside)


def clip_velocities(gray: np.ndarray, boxes: np.ndarray, bins: int, estimator) -> np.ndarray:
    """Velocity vectors of one clip's objects: frames (T, H, W) uint8, boxes (K, 4) -> (K, bins)
    float32, each object's flow histogram averaged over the T-1 consecutive frame pairs."""
    out = np.zeros((len(boxes), bins))
    for t in range(len(gray) - 1):
        flow = dense_flow(estimator, gray[t], gray[t + 1])                    # (H, W, 2), once per pair
        for k, box in enumerate(boxes):
            out[k] += flow_histogram(flow, box, bins)
    return (out / (len(gray) - 1)).astype(np.float32)


def video_velocities(video, starts: np.ndarray, clip_boxes: list[np.ndarray], clip_length: int, bins: int,
                     preset: str, on_clip=None) -> dict[str, np.ndarray]:
    """Velocity vectors of every object of one video: {"vectors" (K, bins) float32, "object_clip"
    (K,) int64 (clip of each object, in stage 1's order), "clip_start" (B,)}. Only the frames of
    clips with objects are decoded. on_clip: called once per clip (a progress bar's update)."""
    estimator = flow_estimator(preset)
    vectors, owner = [], []
    wanted = [i for s, b in zip(starts, clip_boxes) if len(b) for i in range(int(s), int(s) + clip_length)]
    frames = {}
    decoded = iter(video.iter_frames(wanted)) if wanted else iter(())
    for b, (start, boxes) in enumerate(zip(starts, clip_boxes)):
        if len(boxes):
            needed = range(int(start), int(start) + clip_length)
            while any(i not in frames for i in needed):
                i, frame = next(decoded)
                frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            vectors.append(clip_velocities(np.stack([frames[i] for i in needed]), np.asarray(boxes), bins, estimator))
            owner.append(np.full(len(boxes), b, dtype=np.int64))
            for i in [i for i in frames if i < int(start) + clip_length]:
                del frames[i]                                                # clips do not overlap
        if on_clip is not None:
            on_clip(1)
    return {"vectors": np.concatenate(vectors) if vectors else np.zeros((0, bins), np.float32),
            "object_clip": np.concatenate(owner) if owner else np.zeros(0, np.int64),
            "clip_start": np.asarray(starts, dtype=np.int64)}


# ---------------------------------------------------------------------------------------------
# stage 1b: velocity/<split>.npz

def velocity_stage(cfg: Config, work: WorkDir, split: str, videos: list, boxes: dict[str, list[np.ndarray]],
                   starts: dict[str, np.ndarray], progress):
    """Stage 1b. velocity/<split>.npz from stage 1's boxes {video: [(K_b, 4)] * B} and the clips'
    first frames {video: (B,)}; reused when its key (keys.velocity_key) matches. Returns its path.
    progress: the pipeline's progress bar factory (pipeline.progress)."""
    name, key = f"velocity/{split}.npz", keys.velocity_key(cfg, split, videos)
    if work.ready(name, key):
        return work.path(name)
    v, t = cfg.velocity, cfg.method.clip_length
    per_video = {}
    with progress(total=sum(len(starts[x.name]) for x in videos), desc=f"velocity {split}", unit="clip") as bar:
        for video in videos:
            bar.set_postfix_str(f"video {video.name}")
            per_video[video.name] = video_velocities(video, starts[video.name], boxes[video.name], t, v.bins,
                                                     v.dis_preset, on_clip=bar.update)
    with atomic_path(work.path(name)) as tmp:
        save_velocities(tmp, per_video)
    work.commit(name, key)
    return work.path(name)


def velocity_path(cfg: Config, work: WorkDir, split: str, videos: list):
    """The finished velocity/<split>.npz made with these videos and parameters (stage 1b read back);
    a MissingArtifactError naming it otherwise."""
    return work.require(f"velocity/{split}.npz", keys.velocity_key(cfg, split, videos),
                        "stage 1b (vpc run with velocity.enabled=true)")


def save_velocities(path, per_video: dict[str, dict[str, np.ndarray]]) -> None:
    """{video: video_velocities' dict} -> one .npz (no pickles): videos (V,) str, n_objects (V,),
    n_clips (V,), and the videos' vectors (K, D_v), object_clip (K,), clip_start (B,) concatenated."""
    names = list(per_video)
    arrays = {"videos": np.array(names, dtype=str),
              "n_objects": np.array([len(per_video[n]["vectors"]) for n in names], dtype=np.int64),
              "n_clips": np.array([len(per_video[n]["clip_start"]) for n in names], dtype=np.int64)}
    for k in ("vectors", "object_clip", "clip_start"):
        arrays[k] = np.concatenate([per_video[n][k] for n in names]) if names else np.zeros(0)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_velocities(path) -> dict[str, dict[str, np.ndarray]]:
    """velocity/<split>.npz -> {video: {"vectors" (K, D_v), "object_clip" (K,), "clip_start" (B,)}}."""
    with np.load(path, allow_pickle=False) as z:
        objects, clips = np.cumsum(z["n_objects"])[:-1], np.cumsum(z["n_clips"])[:-1]
        parts = zip(np.split(z["vectors"], objects), np.split(z["object_clip"], objects), np.split(z["clip_start"], clips))
        return {str(n): {"vectors": vec, "object_clip": obj, "clip_start": cs} for n, (vec, obj, cs) in zip(z["videos"], parts)}


# ---------------------------------------------------------------------------------------------
# memory and scores

def build_velocity_memory(train: dict[str, dict[str, np.ndarray]], ratio: float, device: str = "cpu") -> Memory:
    """The velocity memory: each training video's vectors (K_v, D_v), coreset at `ratio` (1: all),
    concatenated -> Memory (N, D_v), its `video` the index of the training video in `train`'s order."""
    return build_memory([v["vectors"] for v in train.values()], ratio, device)


def velocity_object_scores(video: dict[str, np.ndarray], memory: np.ndarray, device: str = "cpu", knn: str = "exact",
                           candidates: int = 16) -> torch.Tensor:
    """Each object's velocity score (K,): the distance of its velocity vector to the nearest memory
    vector (N, D_v) (scores.object_scores with one vector per object, power 1, the exact arithmetic)."""
    vectors = torch.as_tensor(video["vectors"], device=device)[:, None, :]        # (K, 1, D_v)
    return object_scores(vectors, torch.as_tensor(memory, device=device), 1, "exact", knn, candidates)


def clip_scores(video: dict[str, np.ndarray], memory: np.ndarray, device: str = "cpu", knn: str = "exact",
                candidates: int = 16) -> np.ndarray:
    """One video's clip scores (B,): max over each clip's objects of `velocity_object_scores`; 0 for
    a clip without objects."""
    per_object = velocity_object_scores(video, memory, device, knn, candidates)
    return clip_max(per_object, torch.as_tensor(video["object_clip"], device=device),
                    len(video["clip_start"])).cpu().numpy()


def frame_scores(cfg: Config, videos: dict[str, dict[str, np.ndarray]], memory: np.ndarray, names: list[str],
                 device: str = "cpu") -> np.ndarray:
    """Per-frame velocity scores of the videos `names` in that order (the frame table's), each
    clip's score given to its T frames, concatenated: (F,)."""
    s = cfg.scoring
    return np.concatenate([clip_to_frames(clip_scores(videos[n], memory, device, s.knn, s.knn_candidates),
                                          cfg.method.clip_length) for n in names])


def leave_one_out_scores(cfg: Config, train: dict[str, dict[str, np.ndarray]], memory: Memory,
                         device: str = "cpu") -> np.ndarray | None:
    """Per-frame scores of each training video against the velocity memory of the OTHER training
    videos, concatenated (F_train,); None with fewer than two training videos (or no other vectors)."""
    rows = leave_one_out_rows(cfg, train, memory, device)
    return None if rows is None else rows[0]


def leave_one_out_rows(cfg: Config, train: dict[str, dict[str, np.ndarray]], memory: Memory,
                       device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`leave_one_out_scores` (F_train,), the object count of each of those frames' clips (F_train,)
    and each training object's own score against the same memory (K_train,)."""
    scores, counts, objects = [], [], []
    t = cfg.method.clip_length
    for v, (name, video) in enumerate(train.items()):
        others = memory.without_video(v)
        if len(train) < 2 or len(others) == 0:
            continue
        s = cfg.scoring
        per_object = velocity_object_scores(video, others, device, s.knn, s.knn_candidates)
        n_clips = len(video["clip_start"])
        clip = clip_max(per_object, torch.as_tensor(video["object_clip"], device=device), n_clips)
        scores.append(clip_to_frames(clip.cpu().numpy(), t))
        counts.append(clip_to_frames(clip_object_counts(video["object_clip"], n_clips), t))
        objects.append(per_object.cpu().numpy())
    return (np.concatenate(scores), np.concatenate(counts), np.concatenate(objects)) if scores else None


def calibration(cfg: Config, train: dict[str, dict[str, np.ndarray]], memory: Memory,
                device: str = "cpu") -> tuple[float, float] | dict | None:
    """(mean, std) of the leave-one-out training scores (fusion.calibration_stats; with
    fusion.count_bins > 0 its count-conditioned dict, with fusion.object_calibration the per-object
    fusion.object_stats), or None."""
    rows = leave_one_out_rows(cfg, train, memory, device)
    if rows is None:
        return None
    loo, counts, objects = rows
    per_object = {STREAM: objects} if cfg.fusion.object_calibration else None
    return fusion.calibration_stats({STREAM: loo}, counts, cfg.fusion.count_bins, per_object)[STREAM]


def aligned(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`scores` (F,), checked to have one value per frame of the frame table (`labels` (F,)): the
    velocity artifacts and the features must come from the same clips."""
    if len(scores) != len(labels):
        raise ValueError(f"the velocity scores cover {len(scores)} frames and the frame table {len(labels)}: "
                         f"velocity/test.npz and features/test.h5 were made from other clips")
    return scores


class VelocityStream:
    """What stages 4-6 need of the velocity memory: the training and test vectors (read_velocities)
    and the memory built from the training ones."""

    def __init__(self, cfg: Config, train_path, test_path, device: str = "cpu"):
        self.train, self.test = read_velocities(train_path), read_velocities(test_path)
        self.device = device
        self.memory = build_velocity_memory(self.train, cfg.velocity.coreset_ratio, device)

    def frame_scores(self, cfg: Config, names: list[str]) -> np.ndarray:
        """(F,) per-frame velocity scores of the test videos `names` (the frame table's order)."""
        return frame_scores(cfg, self.test, self.memory.vectors, names, self.device)

    def calibration(self, cfg: Config) -> tuple[float, float] | None:
        return calibration(cfg, self.train, self.memory, self.device)
