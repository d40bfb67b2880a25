"""Scoring new video: a video file or frame folder the memories never saw, scored with the
memories and parameters of a finished work directory (`vpc score WORK VIDEO...`). No labels.

    run = finished_run(work_dir)                  # config.json, memory.npz, metrics.json's calibration
    result = score_video(run, open_video(path))   # per-frame spatial, temporal, high-level, final
    write_scores(out / "scores.csv", result)

The frames of a test video score exactly as in `vpc run`'s scores.csv: the same detector, features
and kNN, and the label-free final with the run's calibration statistics (in 'calibrated' mode
fusion smooths each video on its own, so one video is enough). In 'fixed' mode the run's
label-free final is z-scored over the whole test set; a single video is z-scored on its own.
A run with the velocity memory (velocity.enabled) scores the video's velocity stream against the
run's velocity/train.npz and fuses it as the run does; a count-conditioned or per-object calibration
(fusion.count_bins, fusion.object_calibration) reads the video's object counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets, engine, explain, fusion, pipeline, velocity
from .config import Config, from_dict
from .errors import ConfigError, DatasetError
from .memory import MEMORIES, Memory, load_memory
from .store import WorkDir, atomic_path, read_json


@dataclass
class FinishedRun:
    """What scoring needs from a finished work directory."""
    cfg: Config
    memories: dict[str, Memory]
    labelfree: dict                     # metrics.json's "labelfree": mode, a, b, sigma, stats
    work: WorkDir
    velocity_memory: Memory | None = None   # velocity.enabled: the run's velocity memory


def finished_run(work_dir, device: str | None = None, cfg: Config | None = None) -> FinishedRun:
    """Read config.json, memory.npz and metrics.json of a work directory made by `vpc run`.

    `cfg`: the params the artifacts were made with, where the work dir has no config.json (the
    notebooks' work dir: each notebook loads the params file itself)."""
    if not Path(work_dir).expanduser().is_dir():                                 # WorkDir would create it
        raise DatasetError(f"work directory {work_dir} does not exist: give the --work-dir of a finished `vpc run`")
    work = WorkDir(work_dir)
    needed = [work.path(n) for n in ("config.json", "memory.npz", "metrics.json")]
    missing = [str(p) for p in needed if not (p.name == "config.json" and cfg is not None)
               and (not p.is_file() or (p.name != "config.json" and not work.manifest(p).is_file()))]
    if missing:
        raise DatasetError(f"{work.root} is not a finished run: {', '.join(missing)} missing; "
                           f"run `vpc run PARAMS.yaml --work-dir {work.root}` first")
    if cfg is None:
        raw = read_json(needed[0])
        if device:
            raw["device"] = device
        try:
            cfg = from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"{needed[0]}: {err}") from None
    moving = None
    if cfg.velocity.enabled:
        train = work.path("velocity/train.npz")
        if not (train.is_file() and work.manifest(train).is_file()):
            raise DatasetError(f"{work.root} is a run with the velocity memory, but {train} is missing; "
                               f"run `vpc run PARAMS.yaml --work-dir {work.root}` first")
        moving = velocity.build_velocity_memory(velocity.read_velocities(train), cfg.velocity.coreset_ratio,
                                                pipeline.resolve_device(cfg.device))        # as `vpc run` builds it
    return FinishedRun(cfg, load_memory(needed[1]), read_json(needed[2])["labelfree"], work, moving)


def open_video(path, clip_length: int = 1) -> datasets.Video:
    """A Video from a frame folder (natural-sorted frame files) or a video file, without labels."""
    path = Path(path).expanduser()
    if path.is_dir():
        frames = datasets.list_frames(path)
        if not frames:
            raise DatasetError(f"{path} holds no frames (looked for {', '.join(datasets.FRAME_EXTENSIONS)})")
        video = datasets.Video(path.name, path, frames, len(frames))
    elif path.is_file() and path.suffix.lower() in datasets.VIDEO_EXTENSIONS:
        video = datasets.Video(path.stem, path, None, datasets.count_video_frames(path))
    elif path.is_file():
        raise DatasetError(f"{path} is not a video file ({', '.join(datasets.VIDEO_EXTENSIONS)}) or a frame folder")
    else:
        raise DatasetError(f"video {path} does not exist")
    if video.n_frames < clip_length:
        raise DatasetError(f"video {path} has {video.n_frames} frames: shorter than the clip length T={clip_length}")
    return video


def score_video(run: FinishedRun, video, detector=None, encoder=None) -> dict:
    """Per-frame scores of one video: {"video", "frame" (F,), "spatial", "temporal", "highlevel",
    ["velocity" (velocity.enabled),] "objects" (each frame's clip's object count), "final_labelfree" (F,),
    "boxes" [(K_b, 4)] * B, "object_score" (K,), "object_clip" (K,)}.

    F = B*T scored frames (trailing frames that fill no clip get no score, as in `vpc run`).
    """
    from .objects import build_detector, detect_clip_objects
    cfg = run.cfg
    t, o = cfg.method.clip_length, cfg.objects
    device = pipeline.resolve_device(cfg.device)
    starts = pipeline.video_clip_starts(cfg, video)                           # (B,)
    if len(starts) == 0:
        raise DatasetError(f"video {video.source} has {video.n_frames} frames: no clip of T={t} frames")
    detector = detector or build_detector(cfg, device)
    boxes = detect_clip_objects(video, starts, t, detector, o.test_confidence, set(o.classes), o.box_growth)
    encoder = encoder or pipeline.load_encoder(cfg)
    feats = engine.video_features(video, starts, boxes, encoder, cfg)
    feats["clip_start"] = starts
    with pipeline.progress(total=1, desc=f"scores {video.name}", unit="video") as bar:
        clip = pipeline.video_clip_scores(feats, {s: b.vectors for s, b in run.memories.items()}, cfg.method.power, device,
                                          cfg.arithmetic, cfg.scoring.knn, cfg.scoring.knn_candidates)
        bar.update(1)
    out = {"video": video.name, "frame": starts[0] + np.arange(len(starts) * t)}
    for s in MEMORIES:
        out[s] = pipeline.clip_to_frames(clip[s], t)                          # (F,)
    lf, vid = run.labelfree, np.zeros(len(out["frame"]), dtype=np.int64)
    stats = lf.get("stats") if lf["mode"] == "calibrated" else None
    out["objects"] = pipeline.frame_object_counts(feats, t)                  # (F,): a count-conditioned calibration's input
    weight = None
    if run.velocity_memory is not None:                                       # stage 1b and its stream, as `vpc run`
        v = cfg.velocity
        moving = velocity.video_velocities(video, starts, boxes, t, v.bins, v.dis_preset)
        out["velocity"] = velocity.frame_scores(cfg, {video.name: moving}, run.velocity_memory.vectors, [video.name], device)
        weight = lf.get("velocity_weight", v.weight)
    out["final_labelfree"] = fusion.labelfree_streams(out, vid, stats, lf["a"], lf["b"], lf["sigma"], weight)
    out["boxes"], out["object_clip"] = boxes, feats["object_clip"]
    out["object_score"] = explain.object_scores(cfg, feats, run.memories, stats)
    return out


def write_scores(path, result: dict) -> None:
    """CSV: video, frame, spatial, temporal, highlevel, [velocity,] final_labelfree (scores.csv's
    columns, no label; velocity with the velocity memory)."""
    columns = ("spatial", "temporal", "highlevel", *(("velocity",) if "velocity" in result else ()), "final_labelfree")
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        out.write("video,frame," + ",".join(columns) + "\n")
        for i, frame in enumerate(result["frame"]):
            out.write(f"{result['video']},{frame}," + ",".join(f"{result[k][i]:.8g}" for k in columns) + "\n")


def score_curve(result: dict):
    """Figure: the three streams and the label-free final over the frames (each min-max scaled)."""
    from .figures import score_curves
    name = result["video"]
    curves = {s: result[s] for s in (*MEMORIES, "final_labelfree")}
    return score_curves({name: curves}, {name: np.zeros(len(result["frame"]), np.uint8)},
                        {name: result["frame"]}, ncols=1, normalize=True)


def bar_value(result: dict, mode: str) -> np.ndarray:
    """(F,) the frame's score in [0, 1] for the annotated clip: a calibrated final is in standard
    deviations of normal video (0 -> 0, 3 or more -> 1); a fixed one is already in [0, 1]."""
    final = np.asarray(result["final_labelfree"], dtype=np.float64)
    return np.clip(final / 3.0, 0, 1) if mode == "calibrated" else np.clip(final, 0, 1)


def annotated_frames(run: FinishedRun, video, result: dict, first: int = 0, n_frames: int | None = None) -> list[np.ndarray]:
    """The scored frames [first, first + n_frames) with figures.annotate_frame: each object's box
    coloured by its local score (green at 0, red at 3 standard deviations above normal), and a bar
    with the frame's label-free score."""
    from .figures import annotate_frame
    t = run.cfg.method.clip_length
    frames = result["frame"]
    last = len(frames) if n_frames is None else min(len(frames), first + n_frames)
    bar, colour = bar_value(result, run.labelfree["mode"]), np.clip(result["object_score"] / 3.0, 0, 1)
    all_boxes = np.concatenate([b.reshape(-1, 4) for b in result["boxes"]] or [np.zeros((0, 4))])  # (K, 4)
    out = []
    for i, image in video.iter_frames(frames[first:last]):
        j = int(np.searchsorted(frames, i))
        objs = np.flatnonzero(result["object_clip"] == j // t)
        out.append(annotate_frame(image, all_boxes[objs], colour[objs], float(bar[j]), False,
                                  text=f"{result['video']} #{i}"))
    return out


def save_clip(path, frames: list[np.ndarray], fps: int = 8) -> None:
    """Annotated frames to an animated GIF (notebooks.save_gif) or an MP4 (by the suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from .notebooks import save_gif
        save_gif(path, frames, fps=fps)
        return
    import cv2
    h, w = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        target = tmp.with_suffix(".mp4")
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        for frame in frames:
            writer.write(frame)
        writer.release()
        target.replace(tmp)


def score_to_folder(run: FinishedRun, source, out_dir, clip: str = "none", plot: bool = True,
                    detector=None, encoder=None) -> dict:
    """Score one video and write out_dir/<video>.csv, <video>.png (score curve) and, with clip
    'gif' or 'mp4', <video>.gif / .mp4 (annotated). Returns score_video's result with the paths."""
    video = open_video(source, run.cfg.method.clip_length)
    result = score_video(run, video, detector, encoder)
    out_dir = Path(out_dir)
    result["csv"] = out_dir / f"{video.name}.csv"
    write_scores(result["csv"], result)
    if plot:
        from .notebooks import figure_png
        result["png"] = out_dir / f"{video.name}.png"
        with atomic_path(result["png"]) as tmp:
            tmp.write_bytes(figure_png(score_curve(result)))
    if clip != "none":
        result["clip"] = out_dir / f"{video.name}.{clip}"
        save_clip(result["clip"], annotated_frames(run, video, result))
    return result
