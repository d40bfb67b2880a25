"""Notebooks: the helpers the five notebooks' cells call to show what a stage made (tables,
frames, crops, the demo GIFs). No stage of METHOD.md is computed here: the cells run or read
`vpclib.pipeline`'s stages, the open-the-box cells call `vpclib.explain`, and figures come from
`vpclib.figures`. The papermill runner, the refresh tool and the Colab sync are `vpclib.runner`.

`setup` (progress bars, warnings, the figure saver `show`), tables as markdown, the dataset's
layout, sample frames, crops and the demo GIFs. Nothing printed here holds a path, a time or a
memory address: nbval compares the notebooks' text outputs.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np

# tqdm.auto hints at ipywidgets inside Jupyter when they are missing (text bars are used instead);
# the hint holds a file path, which nbval would see. The notebooks import this module first.
warnings.filterwarnings("ignore", message="IProgress not found")

from . import datasets, pipeline  # noqa: E402
from .config import Config, load_params
from .objects import build_detector, crop_and_resize, middle_frame_offset
from .store import WorkDir, atomic_path

DPI = 80                                  # figures: small and byte-stable PNGs
GIF_FPS = 8


# ---------------------------------------------------------------------------------------------
# notebook setup, figures, tables

# VPC_PROGRESS=0 in the environment the kernel starts with (tests, nbval, `refresh`) turns the
# progress bars off whatever the notebook's PROGRESS says: nbval compares the outputs' text, and a
# bar appears only when a stage is not cached, so bars never go into the committed outputs.
_PROGRESS_OFF = os.environ.get("VPC_PROGRESS") == "0"


def setup(figures_dir, progress: bool = True):
    """Progress bars on or off (VPC_PROGRESS; off anyway when the kernel started with VPC_PROGRESS=0),
    short warnings (no file paths), and the figure saver.

    Returns show(fig, name): save the figure as figures_dir/name.png and display it.
    """
    os.environ["VPC_PROGRESS"] = "1" if progress and not _PROGRESS_OFF else "0"
    warnings.formatwarning = lambda message, category, *args, **kw: f"{category.__name__}: {message}\n"
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)

    def show(fig, name: str) -> None:
        from IPython.display import Image, display
        png = figure_png(fig)
        with atomic_path(figures_dir / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        display(Image(data=png))

    show.folder = figures_dir
    return show


def figure_png(fig) -> bytes:
    """PNG bytes of a figure at DPI, with no creation software or time in them (stable bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_gif(path, frames: list[np.ndarray], fps: int = GIF_FPS, noise: int = 6, colors: int = 128,
             max_width: int = 256) -> None:
    """Frames (H, W, 3) BGR -> an animated GIF that loops, small and byte-stable.

    For size only: frames wider than `max_width` are shrunk to it; a pixel that differs from the
    previous GIF frame by at most `noise` grey levels keeps the previous value (sensor noise would
    defeat GIF compression); every frame uses one palette of `colors` colours, without dithering.
    """
    import cv2
    from PIL import Image
    h, w = frames[0].shape[:2]
    if w > max_width:
        size = (max_width, round(h * max_width / w))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    kept = [np.ascontiguousarray(frames[0][..., ::-1])]                       # RGB
    for frame in frames[1:]:
        rgb = frame[..., ::-1].copy()
        same = np.abs(rgb.astype(np.int16) - kept[-1]).max(-1) <= noise      # (H, W)
        rgb[same] = kept[-1][same]
        kept.append(rgb)
    palette = Image.fromarray(np.concatenate(kept[::4])).quantize(colors, method=Image.Quantize.MEDIANCUT,
                                                                  dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in kept]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats written with 3 decimals."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def display_markdown(text: str) -> None:
    from IPython.display import Markdown, display
    display(Markdown(text))


def load_config(params, data_root: str = "", device: str = "") -> Config:
    """The notebooks' config: the params file, with DATA_ROOT and DEVICE of the parameters cell when
    they are set. A params file of a real dataset without a dataset root is an error that says how to
    point DATA_ROOT at the data (Google Drive in Colab)."""
    from .errors import ConfigError
    try:
        return load_params(params, **{"data.root": data_root or None, "device": device or None})
    except ConfigError as err:
        if "data.root" not in str(err):
            raise
        raise ConfigError(f"{err}\n{DATA_HELP}") from None


def summary(cfg: Config) -> str:
    """One line about the run (no paths)."""
    m, o, e = cfg.method, cfg.objects, cfg.encoder
    return (f"dataset {cfg.data.name} (layout {cfg.data.layout}); detector {o.detector}; encoder {e.backbone} "
            f"({e.preprocessing}); T={m.clip_length}, C={m.channel_groups}, r={m.coreset_ratio:g}, n={m.power}")


# ---------------------------------------------------------------------------------------------
# 00 data

def layout_tree(root, max_items: int = 3) -> str:
    """The dataset folder as an indented tree: folders, then files; long lists are cut to their
    first `max_items` with a count. Paths are relative to the root (shown as its name)."""
    root = Path(root)
    lines = [f"{root.name}/"]

    def walk(folder: Path, depth: int) -> None:
        entries = datasets.natural_sort([p for p in folder.iterdir() if not p.name.startswith(".")])
        dirs, files = [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]
        pad = "    " * depth
        for d in dirs[:max_items]:
            lines.append(f"{pad}{d.name}/")
            walk(d, depth + 1)
        if len(dirs) > max_items:
            lines.append(f"{pad}... {len(dirs)} folders in all ({dirs[0].name} .. {dirs[-1].name})")
        if len(files) > max_items + 1:
            lines.append(f"{pad}{files[0].name} .. {files[-1].name}  ({len(files)} files)")
        else:
            lines.extend(f"{pad}{f.name}" for f in files)

    walk(root, 1)
    return "\n".join(lines)


DATA_HELP = """How to point the notebooks at the data:
- in Colab, put the dataset on Google Drive and mount it in a cell:
      from google.colab import drive; drive.mount("/content/drive")
  then set DATA_ROOT in the parameters cell, e.g. DATA_ROOT = "/content/drive/MyDrive/datasets/ped2"
  (or copy it to the runtime's disk first: faster to read);
- locally, set DATA_ROOT, or run `vpc notebooks PARAMS --data-root DIR`;
- or set data.root in the params file. The layouts vpclib reads are in the README (Datasets)."""


def check_dataset(cfg: Config, work: WorkDir) -> str:
    """Check that the dataset of `cfg` is where and as the params file says: both splits found, every
    test video labelled, every video long enough for one clip. Returns one line about it; raises
    DatasetError with what was expected and how to point DATA_ROOT at the data."""
    from .errors import DatasetError
    layout = "ucsd" if cfg.data.layout == "synthetic" else cfg.data.layout
    expected = next((line.strip() for line in (datasets.load_split.__doc__ or "").splitlines()
                     if line.strip().startswith(layout + " ")), layout)
    if cfg.data.layout != "synthetic" and not cfg.data.root:
        raise DatasetError(f"no dataset root: DATA_ROOT and the params file's data.root are empty.\n"
                           f"Expected layout: {expected}\n{DATA_HELP}")
    try:
        found = {split: pipeline.load_videos(cfg, work, split) for split in pipeline.SPLITS}
    except DatasetError as err:
        raise DatasetError(f"{err}\nExpected layout: {expected}\n{DATA_HELP}") from None
    where = "the synthetic scenes (generated in WORK_DIR)" if cfg.data.layout == "synthetic" else "DATA_ROOT"
    return (f"layout {layout} in {where}: {len(found['train'])} training and {len(found['test'])} test videos, "
            f"every test video labelled, every video at least T={cfg.method.clip_length} frames")


def anomaly_kinds(root) -> dict[str, str]:
    """{test video: anomaly kind} of the synthetic scenes (anomalies.json); {} for other datasets."""
    import json
    path = Path(root) / "anomalies.json"
    if not path.is_file():
        return {}
    return {v["video"]: v["kind"] for v in json.loads(path.read_text())["videos"]}


def clip_labels(cfg: Config, video) -> np.ndarray:
    """(B,) bool: clip b holds at least one anomalous frame."""
    t = cfg.method.clip_length
    return np.array([bool(video.labels[s:s + t].any()) for s in pipeline.video_clip_starts(cfg, video)])


def video_table(cfg: Config, videos: dict) -> str:
    """Markdown: one row per video of both splits (frames, clips, scored and anomalous frames)."""
    rows = []
    for split, vs in videos.items():
        for v in vs:
            n_clips = len(pipeline.video_clip_starts(cfg, v))
            scored = datasets.scored_length(v.n_frames, cfg.method.clip_length, cfg.data.skip_first_frame)  # B*T
            anomalous = int(v.labels[:scored].sum()) if v.labels is not None else "-"
            rows.append([split, v.name, v.n_frames, n_clips, scored, anomalous])
    return markdown_table(["split", "video", "frames", "clips B", "scored frames", "anomalous (scored)"], rows)


def anomaly_middle(video) -> int:
    """A frame in the middle of the video's first anomalous span (the middle of the video if none)."""
    spans = np.flatnonzero(np.asarray(video.labels if video.labels is not None else []) > 0)
    if len(spans) == 0:
        return video.n_frames // 2
    end = spans[0]
    while end + 1 < video.n_frames and video.labels[end + 1]:
        end += 1
    return int((spans[0] + end) // 2)


def anomaly_clip(starts: np.ndarray, video) -> int:
    """The clip (index into starts (B,)) holding `anomaly_middle`: the clip at the heart of the anomaly."""
    return int(np.clip(np.searchsorted(starts, anomaly_middle(video), side="right") - 1, 0, len(starts) - 1))


def sample_frames(videos: dict, n_train: int = 2, n_test: int = 4, kinds: dict | None = None):
    """Frames to look at: the middle frame of the first training videos and a frame inside the
    anomaly of the first test videos. -> (images BGR, titles)."""
    images, titles = [], []
    for v in videos["train"][:n_train]:
        images.append(v.read_frame(v.n_frames // 2))
        titles.append(f"train {v.name}, frame {v.n_frames // 2}\nnormal")
    for v in videos["test"][:n_test]:
        i = anomaly_middle(v)
        images.append(v.read_frame(i))
        kind = f": {kinds[v.name]}" if kinds and v.name in kinds else ""
        titles.append(f"test {v.name}, frame {i}\nanomalous{kind}")
    return images, titles


def clip_frames(cfg: Config, video):
    """The T frames of the clip holding the middle of the video's first anomaly -> (images, titles)."""
    t = cfg.method.clip_length
    starts = pipeline.video_clip_starts(cfg, video)
    middle = anomaly_middle(video)
    start = int(starts[np.searchsorted(starts, middle, side="right") - 1]) if middle >= starts[0] else int(starts[0])
    images = [frame for _, frame in video.iter_frames(range(start, start + t))]
    titles = [f"frame {start + i}" + (" (detector)" if i == middle_frame_offset(t) else "") for i in range(t)]
    return images, titles


# ---------------------------------------------------------------------------------------------
# 01 objects

def detection_frames(cfg: Config, videos, boxes: dict, n: int = 4):
    """Middle frames (the detector's) of the clip in the middle of each test video's anomaly, boxes
    drawn. -> (images BGR, titles)."""
    from .figures import draw_boxes
    t, images, titles = cfg.method.clip_length, [], []
    for v in videos[:n]:
        starts = pipeline.video_clip_starts(cfg, v)
        b = anomaly_clip(starts, v)
        frame = int(starts[b]) + middle_frame_offset(t)
        images.append(draw_boxes(v.read_frame(frame), boxes[v.name][b], (0, 255, 255)))
        titles.append(f"test {v.name}, clip {b} (frame {frame}): {len(boxes[v.name][b])} objects")
    return images, titles


def object_crops(cfg: Config, videos, boxes: dict, n_per_video: int = 4):
    """The crops the encoder sees (the middle frame of the clip). Per test video: objects of the clip
    in the middle of its anomaly first, then one of its first normal clip that has objects (when it
    has one). A title's "anom." is the clip's label: the clip holds anomalous frames, not every
    object in it is anomalous. -> (crops (S, S, 3) BGR, titles)."""
    import torch
    t, size, crops, titles = cfg.method.clip_length, cfg.objects.crop_size, [], []
    for v in videos:
        starts = pipeline.video_clip_starts(cfg, v)
        anomalous = clip_labels(cfg, v) if v.labels is not None else np.zeros(len(starts), bool)
        middle = anomaly_clip(starts, v)
        normal = [b for b in range(len(starts)) if not anomalous[b] and len(boxes[v.name][b])][:1]
        others = normal + [b for b in range(len(starts)) if b != middle and b not in normal]
        picked = [(middle, k) for k in range(len(boxes[v.name][middle]))][:n_per_video - len(normal)]
        picked += [(b, k) for b in others for k in range(len(boxes[v.name][b]))][:n_per_video - len(picked)]
        for b, k in picked:
            frame = int(starts[b]) + middle_frame_offset(t)
            image = torch.from_numpy(v.read_frame(frame))[None]
            box = torch.as_tensor(boxes[v.name][b][k][None])
            crops.append(crop_and_resize(image, torch.zeros(1, dtype=torch.long), box, size, cfg.arithmetic)[0]
                         .float().round().byte().numpy())
            titles.append(f"{v.name} clip {b} ({'anom.' if anomalous[b] else 'normal'})")
    return crops, titles


MOTION_SWEEPS = {"motion_min_area": [10, 20, 40, 80, 160], "motion_threshold": [10, 25, 50, 75, 100]}


def detector_sweep(cfg: Config, videos, confidences=(0.0, 0.25, 0.5, 0.75, 0.95),
                   growths=(1.0, 1.1, 1.2, 1.35, 1.5)) -> dict:
    """Objects per clip against what decides them for the detector in use, and the mean box side
    against the box growth f, with ablation.detection_sweep. YOLO and boxes files: the confidence
    threshold. The motion detector gives every blob confidence 1, so the threshold changes nothing
    below 1: its blob size (motion_min_area) and grey-level threshold (motion_threshold) instead,
    each swept with the other parameters as in the params file.
    -> {"sweeps": [(parameter, values, objects per clip)], "growths", "mean_box_side"}."""
    import copy
    from . import ablation
    o = cfg.objects
    confidence = o.test_confidence
    base = ablation.detection_sweep(cfg, videos, list(confidences) if o.detector != "motion" else [confidence],
                                    list(growths))
    if o.detector != "motion":
        sweeps = [("confidence threshold", list(confidences), base["objects_per_clip"])]
    else:
        sweeps = []
        for key, values in MOTION_SWEEPS.items():
            counts = []
            for value in values:
                changed = copy.deepcopy(cfg)
                setattr(changed.objects, key, value)
                counts.append(ablation.detection_sweep(changed, videos, [confidence], [o.box_growth])["objects_per_clip"][0])
            sweeps.append((key, list(values), counts))
    return {"sweeps": sweeps, "growths": base["growths"], "mean_box_side": base["mean_box_side"],
            "marks": {"confidence threshold": confidence, "motion_min_area": o.motion_min_area,
                      "motion_threshold": o.motion_threshold}}


def detector_sweep_figure(sweep: dict):
    """One panel per swept detector parameter (objects per clip, the params file's value marked), and
    the mean box side against f."""
    from matplotlib.figure import Figure
    n = len(sweep["sweeps"]) + 1
    fig = Figure(figsize=(3.4 * n, 2.6), layout="constrained")
    axes = fig.subplots(1, n)
    for ax, (name, values, counts) in zip(axes, sweep["sweeps"]):
        ax.plot(values, counts, "o-")
        ax.axvline(sweep["marks"][name], color="0.5", ls="--", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel("objects per clip")
        ax.set_ylim(bottom=0)
    axes[-1].plot(sweep["growths"], sweep["mean_box_side"], "o-", color="#ff7f0e")
    axes[-1].set_xlabel("box growth f")
    axes[-1].set_ylabel("mean box side (px)")
    return fig


def first_detection(cfg: Config, videos):
    """A raw detection (before growth) on the detector's frame of the middle of the first test
    video's anomaly: (frame BGR, box x1, y1, x2, y2), the largest kept box. None if nothing is found."""
    detector = build_detector(cfg, "cpu" if cfg.device == "auto" else cfg.device)
    if hasattr(detector, "begin_split"):
        detector.begin_split("test", videos)
    t = cfg.method.clip_length
    for v in videos:
        detector.begin_video(v)
        starts = pipeline.video_clip_starts(cfg, v)
        b = anomaly_clip(starts, v)
        frame_index = int(starts[b]) + middle_frame_offset(t)
        frame = v.read_frame(frame_index)
        dets = detector.detect_at(frame_index) if hasattr(detector, "detect_at") else detector.detect(frame)
        dets = dets[(dets[:, 4] > cfg.objects.test_confidence) & np.isin(dets[:, 5], cfg.objects.classes)]
        if len(dets):
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            return frame, dets[int(area.argmax()), :4]
    return None


# ---------------------------------------------------------------------------------------------
# 02 features and memories

FEATURE_ARRAYS = {
    "spatial": ("(K, 49, C)", "49 patch vectors per object (7 x 7 grid)"),
    "temporal_mean": ("(K, T-1, C)", "frame differences, mean-pooled (memory)"),
    "temporal_max": ("(K, T-1, C)", "frame differences, max-pooled (test)"),
    "highlevel": ("(B, T, D)", "temporal pyramid of whole-frame descriptors"),
    "object_clip": ("(K,)", "clip of each object"),
    "boxes": ("(K, 4)", "box of each object"),
    "clip_start": ("(B,)", "first frame of each clip"),
}


def feature_table(feats_by_video: dict) -> str:
    """Markdown: each array of the features file, its shape in the legend and summed over videos."""
    first = next(iter(feats_by_video.values()))
    rows = []
    for key, (legend, meaning) in FEATURE_ARRAYS.items():
        shapes = [f[key].shape for f in feats_by_video.values()]
        total = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        rows.append([key, legend, str(tuple(first[key].shape)), str(total), meaning])
    return markdown_table(["array", "shape", "first video", "all videos", "what"], rows)


def memory_table(rows: list[dict]) -> str:
    """Markdown of ablation.memory_sizes."""
    return markdown_table(["memory", "candidates", "vectors kept", "dims", "MB"],
                          [[r["memory"], r["candidates"], r["vectors"], r["dims"], f"{r['megabytes']:.3f}"] for r in rows])


def object_crop(cfg: Config, video, feats: dict, obj: int, size: int | None = None) -> np.ndarray:
    """The crop of object `obj` of a video's features, on its clip's middle frame (BGR)."""
    from .explain import object_crop as crop
    frame = int(feats["clip_start"][feats["object_clip"][obj]]) + middle_frame_offset(cfg.method.clip_length)
    return crop(video, frame, feats["boxes"][obj], size or cfg.objects.crop_size)


# ---------------------------------------------------------------------------------------------
# 03 scores

def by_video(columns: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """scores.csv columns -> {video: {column: (F_v,)}} in file order."""
    names = list(dict.fromkeys(columns["video"].tolist()))
    return {n: {k: v[columns["video"] == n] for k, v in columns.items() if k != "video"} for n in names}


def read_frame_table(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """scores.csv columns (pipeline.read_scores) -> pipeline.frame_table's layout (video as 0-based int ids)."""
    names = list(dict.fromkeys(columns["video"].tolist()))
    ids = np.array([names.index(v) for v in columns["video"]])
    return {"video": ids, "label": columns["label"],
            **{k: columns[k] for k in ("spatial", "temporal", "highlevel", "velocity", "objects") if k in columns}}


def auc_text(auc: float, labels) -> str:
    """A video's AUC for a title; where it is undefined (one class only) says why."""
    if np.isfinite(auc):
        return f"{auc:.3f}"
    return "n/a (all frames anomalous)" if np.all(np.asarray(labels) > 0) else "n/a (no anomalous frame)"


def auc_table(result: dict) -> str:
    """Markdown: micro, macro and per-video AUC, oracle beside label-free."""
    rows = [["micro (all frames)", result["auc_micro_oracle"], result["auc_micro_labelfree"]],
            ["macro (mean of videos)", result["auc_macro_oracle"], result["auc_macro_labelfree"]]]
    rows += [[f"video {v}", a["oracle"], a["labelfree"]] for v, a in result["per_video"].items()]
    return markdown_table(["AUC", "oracle (test-label search)", f"label-free ({result['labelfree']['mode']})"], rows)


def read_metrics(cfg: Config, work: WorkDir) -> dict:
    """metrics.json of 03_inference when it was made with this config; else stages 4-6 again on the
    work directory's features and memories (pipeline.evaluate_from, which writes it and scores.csv)."""
    import json
    from .store import read_json
    path = work.path("metrics.json")
    if path.is_file() and work.path("scores.csv").is_file():
        result = read_json(path)
        if result.get("config") == json.loads(json.dumps(cfg.to_dict())):       # as JSON stores it
            return result
    return pipeline.evaluate_from(cfg, work)


# ---------------------------------------------------------------------------------------------
# 04 demos

def demo_window(video, scored: int, length: int = 40) -> tuple[int, int]:
    """First and last frame of a demo: `length` frames centred on the middle of the first anomaly."""
    first = int(np.clip(anomaly_middle(video) - length // 2, 0, max(0, scored - length)))
    return first, min(scored, first + length) - 1


def demo_frames(cfg: Config, work: WorkDir, video, result: dict, length: int = 40) -> tuple[list[np.ndarray], list[int]]:
    """Annotated frames of a test video around its anomaly (figures.annotate_frame), and their frame
    numbers: each object's box coloured by its local score a*z_S + (1-a)*z_T (z from normal training
    videos: green <= 0, red >= 3 standard deviations), a bar with the frame's label-free score
    (min-max over the test set)."""
    from .explain import object_scores
    from .figures import annotate_frame
    cols = pipeline.read_scores(work.path("scores.csv"))
    feats = pipeline.read_features(work.path("features/test.h5"))[video.name]
    memories = pipeline.read_memories(cfg, work, pipeline.load_videos(cfg, work, "train"))
    t = cfg.method.clip_length
    z = object_scores(cfg, feats, memories, result["labelfree"]["stats"])      # (K,)
    final = cols["final_labelfree"]
    lo, hi = final.min(), final.max()
    mine = cols["video"] == video.name
    frames, score, labels = cols["frame"][mine], (final[mine] - lo) / (hi - lo + 1e-8), cols["label"][mine]
    first, last = demo_window(video, len(frames), length)
    out, numbers = [], []
    for i, image in video.iter_frames(frames[first:last + 1]):
        j = int(np.searchsorted(frames, i))
        clip = j // t
        objs = np.flatnonzero(feats["object_clip"] == clip)
        out.append(annotate_frame(image, feats["boxes"][objs], np.clip(z[objs] / 3, 0, 1), float(score[j]),
                                  bool(labels[j]), text=f"{video.name} #{i}"))
        numbers.append(int(i))
    return out, numbers


if __name__ == "__main__":                          # the runner's tools, under their old name
    from .runner import main
    sys.exit(main())
