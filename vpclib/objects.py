"""Objects: detection on the middle frame of each clip, box growth, and batched crops (METHOD.md §2).

The local stream looks at objects. One frame per clip (the middle one) goes through a detector;
each kept box is grown, squared and clipped, and the same box is cut from all T frames of the
clip. Detectors share one interface, `detect(frame) -> (K, 6)` rows of x1, y1, x2, y2,
confidence, COCO class:

- `YOLOv5HubDetector`: the paper's YOLOv5 through torch.hub: downloaded (`ultralytics/yolov5`,
  `yolov5l`, as the paper, e.g. in Colab), or offline from a local yolov5 source folder and a local
  .pt file (`torch.hub.load(repo, "custom", path=weights, source="local")`).
- `UltralyticsDetector`: any ultralytics weight file or export folder (e.g. an OpenVINO export).
- `MotionDetector`: offline OpenCV background subtraction for static cameras.
- `BoxesFileDetector`: your own detections from a CSV file (grown like a detector's, or final).

YOLO .pt files are pickles: they can run code when read. vpclib never unpickles them itself; only
their own loaders (yolov5's hubconf, ultralytics) read them, so use weight files you trust (the
official releases). OpenVINO exports (.xml/.bin) are not pickles.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .config import ObjectsConfig
from .datasets import decoder_check
from .errors import ConfigError, WeightsUnavailableError

_DEFAULTS = ObjectsConfig()               # the detectors' defaults are the params' (one declaration)
BOXES_FILE_COLUMNS = ("video", "frame", "x1", "y1", "x2", "y2", "confidence", "class")


def middle_frame_offset(clip_length: int) -> int:
    """Index inside a clip of the frame the detector sees: T//2 when T >= 4, else the last."""
    return clip_length // 2 if clip_length >= 4 else clip_length - 1


def grow_box(box, growth: float, max_w: int, max_h: int):
    """Grow, square and clip one box; returns int (x1, y1, x2, y2) or None if it is empty.

    With w, h the box size: x1 -= (f-1)w, x2 += (f-1)w, y1 -= (f-1)h, y2 += (f-1)h; then the
    shorter side grows symmetrically to make a square; then the box is clipped to
    [0, max_w] x [0, max_h] (which can make it non-square again); coordinates are truncated
    to int. A box of zero width or height after clipping is no object (the reference crashes).
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    x1, x2 = x1 - (growth - 1) * w, x2 + (growth - 1) * w
    y1, y2 = y1 - (growth - 1) * h, y2 + (growth - 1) * h
    w, h = x2 - x1, y2 - y1
    if w < h:
        x1, x2 = x1 - (h - w) / 2, x2 + (h - w) / 2
    else:
        y1, y2 = y1 - (w - h) / 2, y2 + (w - h) / 2
    x1, x2 = min(max(x1, 0.0), max_w), min(max(x2, 0.0), max_w)
    y1, y2 = min(max(y1, 0.0), max_h), min(max(y2, 0.0), max_h)
    x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def final_box(box, max_w: int, max_h: int):
    """A box taken as final (already grown, squared and clipped, as the reference's box files are):
    clipped to the frame and truncated to int; None if it is empty."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    x1, x2 = int(min(max(x1, 0.0), max_w)), int(min(max(x2, 0.0), max_w))
    y1, y2 = int(min(max(y1, 0.0), max_h)), int(min(max(y2, 0.0), max_h))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def select_objects(detections: np.ndarray, confidence: float, classes, growth: float,
                   max_w: int, max_h: int, final: bool = False) -> np.ndarray:
    """Keep detections of `classes` with confidence > `confidence`, grown (or, `final`, as they
    are): (K, 6) -> (K', 4) int."""
    kept = []
    for det in np.asarray(detections, dtype=np.float64).reshape(-1, 6):
        if det[4] > confidence and int(det[5]) in classes:
            box = final_box(det, max_w, max_h) if final else grow_box(det, growth, max_w, max_h)
            if box is not None:
                kept.append(box)
    return np.asarray(kept, dtype=np.int64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# detectors

def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("YOLO_OFFLINE", "HF_HUB_OFFLINE"))


def yolo_device(device: str) -> str:
    """vpclib's device name -> the one yolov5's and ultralytics' select_device want: "cpu" stays,
    "cuda" -> "0", "cuda:N" -> "N"."""
    device = str(device)
    if device == "cuda":
        return "0"
    return device.removeprefix("cuda:")


class UltralyticsDetector:
    """Any ultralytics YOLO model: a .pt weight file (`yolov5lu.pt` is the closest to the paper's)
    or an export folder such as `yolo11n_int8_openvino_model/` (needs the `openvino` package).

    `size` is the inference size (ultralytics' imgsz). A .pt file is a pickle read by ultralytics'
    own loader: use files you trust.
    """

    def __init__(self, weights: str, device: str = "cpu", size: int = _DEFAULTS.detector_size):
        path = Path(weights).expanduser()
        if not path.exists() and (_offline() or os.sep in weights):
            raise WeightsUnavailableError(
                f"ultralytics weights '{weights}' are not a local file and downloads are off "
                f"(YOLO_OFFLINE/HF_HUB_OFFLINE, or no network). Download the .pt once and set "
                f"objects.weights: /path/to/{path.name} in the params file (or --set objects.weights=PATH).")
        if path.is_dir() and path.name.endswith("_openvino_model"):
            try:
                import openvino  # noqa: F401  (else ultralytics would try to pip-install it)
            except ImportError as err:
                raise WeightsUnavailableError(f"objects.weights {path} is an OpenVINO export: "
                                              f"`pip install openvino` (vpclib[openvino])") from err
        try:
            from ultralytics import YOLO
        except ImportError as err:
            raise WeightsUnavailableError("objects.detector 'ultralytics' needs `pip install ultralytics`") from err
        try:
            self.model = YOLO(str(path) if path.exists() else weights, task="detect")
        except Exception as err:  # ultralytics raises many kinds when a download fails
            raise WeightsUnavailableError(
                f"could not load ultralytics weights '{weights}': {err}. Give a local file with "
                f"objects.weights: /path/to/weights.pt") from err
        self.device, self.size = yolo_device(device), size

    def begin_video(self, video) -> None:
        pass

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """frame (H, W, 3) uint8 BGR -> (K, 6) x1, y1, x2, y2, confidence, class."""
        result = self.model.predict(frame, verbose=False, device=self.device, conf=0.01, imgsz=self.size)[0]
        boxes = result.boxes
        return torch.cat([boxes.xyxy, boxes.conf[:, None], boxes.cls[:, None]], 1).cpu().numpy()


class YOLOv5HubDetector:
    """The paper's detector: YOLOv5 (COCO) through torch.hub, with its AutoShape pre-processing
    (letterbox to `size`) and NMS.

    - `hub_repo` "" (the paper, needs network): `torch.hub.load("ultralytics/yolov5", model)`, i.e.
      YOLOv5-L with its release weights downloaded.
    - `hub_repo` a local ultralytics/yolov5 source folder (offline):
      `torch.hub.load(hub_repo, "custom", path=weights, source="local")`, e.g. hub_repo
      ../shared/models/yolov5-src and weights ../shared/models/yolov5n.pt. The source needs the
      `ultralytics` package (and pandas, seaborn) importable.

    YOLOv5 .pt files are pickles read by yolov5's own loader: use files you trust.
    """

    def __init__(self, model: str = _DEFAULTS.hub_model, device: str = "cpu", hub_repo: str = "", weights: str = "",
                 size: int = _DEFAULTS.detector_size):
        self.size = size
        if hub_repo:
            repo, path = Path(hub_repo).expanduser(), Path(weights).expanduser()
            if not (repo / "hubconf.py").is_file():
                raise WeightsUnavailableError(f"objects.hub_repo {repo} is not a yolov5 source folder "
                                              f"(no hubconf.py there)")
            if not path.is_file():
                raise WeightsUnavailableError(f"objects.weights {path}: no such file; with objects.hub_repo "
                                              f"set it must be a local YOLOv5 .pt file (e.g. yolov5n.pt)")
            try:
                self.model = torch.hub.load(str(repo), "custom", path=str(path), source="local",
                                            device=yolo_device(device), _verbose=False)
            except Exception as err:
                raise WeightsUnavailableError(
                    f"torch.hub could not load objects.weights {path} from objects.hub_repo {repo} "
                    f"({type(err).__name__}: {err})") from err
        else:
            if _offline():
                raise WeightsUnavailableError(
                    "objects.detector 'yolov5-hub' without objects.hub_repo downloads ultralytics/yolov5 "
                    "through torch.hub, and downloads are off (YOLO_OFFLINE/HF_HUB_OFFLINE). Offline, set "
                    "objects.hub_repo: /path/to/yolov5 (its source) and objects.weights: /path/to/yolov5l.pt "
                    "(or --set objects.hub_repo=... --set objects.weights=...), or use detector 'motion'.")
            try:
                self.model = torch.hub.load("ultralytics/yolov5", model, pretrained=True, device=yolo_device(device))
            except Exception as err:
                raise WeightsUnavailableError(
                    f"torch.hub could not load ultralytics/yolov5 '{model}' ({err}). Offline, set "
                    f"objects.hub_repo: /path/to/yolov5 and objects.weights: /path/to/{model}.pt") from err
        self.model.conf = 0.01

    def begin_video(self, video) -> None:
        pass

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """frame (H, W, 3) uint8 BGR -> (K, 6) x1, y1, x2, y2, confidence, class (original pixels)."""
        return self.model(frame[..., ::-1].copy(), size=self.size).xyxy[0].cpu().numpy()


class MotionDetector:
    """Offline objects for static cameras: OpenCV background subtraction.

    The background of a video is the per-pixel median of `n_background` evenly spaced frames;
    a pixel is foreground when its grey level differs by more than `threshold`; foreground is
    cleaned (morphological open, then a 3x3 dilation) and every connected blob of at least `min_area`
    pixels is one object, of class 0 (person) and confidence 1.
    """

    def __init__(self, threshold: int = _DEFAULTS.motion_threshold, min_area: int = _DEFAULTS.motion_min_area,
                 n_background: int = _DEFAULTS.motion_background_frames):
        self.threshold, self.min_area, self.n_background = threshold, min_area, n_background
        self.background = None

    def begin_video(self, video) -> None:
        indices = np.unique(np.linspace(0, video.n_frames - 1, min(self.n_background, video.n_frames)).astype(int))
        greys = [cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) for _, frame in video.iter_frames(indices)]
        self.background = np.median(np.stack(greys), axis=0).astype(np.uint8)  # (H, W)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        mask = (cv2.absdiff(grey, self.background) > self.threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=1)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        rows = [(x, y, x + w, y + h, 1.0, 0) for x, y, w, h, area in stats[1:] if area >= self.min_area]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


class BoxesFileDetector:
    """Your own detections: a CSV with the header video,frame,x1,y1,x2,y2,confidence,class and an
    optional split column (train / test: needed when a training and a test video share a name, as
    Ped2's 01 ... do).

    `frame` is the 0-based index of the frame inside its video; coordinates are pixels. Rows for
    frames that are not a clip's middle frame are ignored, so one file can serve any T. Every row
    is checked: finite numbers, x2 > x1, y2 > y1, a known video of the split, a frame inside it. An
    invalid row is a ConfigError naming the file and line; with `drop_invalid` such rows are left
    out and counted in a warning instead.
    """

    SPLITS = ("train", "test")

    def __init__(self, path, drop_invalid: bool = False):
        self.path, self.drop_invalid = Path(path), drop_invalid
        if not self.path.is_file():
            raise ConfigError(f"objects.boxes_file not found: {self.path}")
        self.rows: list[tuple[int, str, str, int, list[float]]] = []        # line, split, video, frame, values
        problems = []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = set(BOXES_FILE_COLUMNS) - set(header)
            if missing:
                raise ConfigError(f"boxes file {self.path} lacks columns {sorted(missing)}; "
                                  f"expected header {','.join(BOXES_FILE_COLUMNS)}[,split]")
            self.has_split = "split" in header
            for line, row in enumerate(reader, start=2):
                problem = self._check_row(row)
                if problem:
                    problems.append((line, problem))
                    continue
                frame, values = int(float(row["frame"])), [float(row[c]) for c in BOXES_FILE_COLUMNS[2:]]
                split = (row.get("split") or "").strip()
                self.rows.append((line, split, row["video"], frame, values))
        self._report(problems)
        self.split, self.by_key, self.video = None, None, None

    @classmethod
    def _check_row(cls, row) -> str | None:
        """What is wrong with one CSV row, or None."""
        try:
            values = [float(row[c]) for c in BOXES_FILE_COLUMNS[1:]]
        except (TypeError, ValueError):
            return "frame, x1, y1, x2, y2, confidence and class must be numbers, got " + \
                ", ".join(f"{c}={row.get(c)!r}" for c in BOXES_FILE_COLUMNS[1:])
        frame, x1, y1, x2, y2 = values[:5]
        if not all(np.isfinite(values)):
            return "a value is NaN or infinite: " + ", ".join(f"{c}={row[c]}" for c in BOXES_FILE_COLUMNS[1:])
        if frame < 0 or frame != int(frame):
            return f"frame must be a 0-based whole number, got {row['frame']}"
        if not (x2 > x1 and y2 > y1):
            return f"the box must have x2 > x1 and y2 > y1, got x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}"
        split = (row.get("split") or "").strip()
        if split and split not in cls.SPLITS:
            return f"split must be one of {cls.SPLITS} (or empty), got {split!r}"
        return None

    def _report(self, problems: list[tuple[int, str]]) -> None:
        if not problems:
            return
        if not self.drop_invalid:
            line, problem = problems[0]
            more = f" ({len(problems) - 1} more invalid rows)" if len(problems) > 1 else ""
            raise ConfigError(f"boxes file {self.path}, line {line}: {problem}{more}. Fix the file, or set "
                              f"objects.boxes_drop_invalid: true to leave invalid rows out")
        import warnings
        warnings.warn(f"boxes file {self.path}: left out {len(problems)} invalid rows (first: line "
                      f"{problems[0][0]}: {problems[0][1]})")

    def begin_split(self, split: str, videos, other_videos=None) -> None:
        """Take the rows of one split for `videos` (all or some videos of that split). With
        `other_videos`, every video of the other split, the whole dataset is known: a row whose video
        is in neither split is then an error, and so is a row without split whose video name is in both."""
        frames = {v.name: v.n_frames for v in videos}
        others = None if other_videos is None else {v.name for v in other_videos}
        uses_one_based = not any(frame == 0 for *_, frame, _ in self.rows)
        self.split, self.by_key, problems = split, {}, []
        for line, row_split, video, frame, values in self.rows:
            if row_split and row_split != split:
                continue
            if not row_split and others is not None and video in frames and video in others:
                problems.append((line, f"video '{video}' is both a training and a test video: add a split "
                                       f"column (train / test) to say which one this row is of"))
                continue
            if video not in frames:
                if others is not None and (row_split or video not in others):
                    where = f"the {split} split" if row_split else "the dataset"
                    problems.append((line, f"video '{video}' is not a video of {where}"))
                continue
            if frame >= frames[video]:
                hint = " (frame numbers are 0-based; this file has no frame 0 and looks 1-based)" if uses_one_based else ""
                problems.append((line, f"frame {frame} is past the end of video '{video}', which has frames "
                                       f"0..{frames[video] - 1}{hint}"))
                continue
            self.by_key.setdefault((video, frame), []).append(values)
        self._report(problems)

    def begin_video(self, video) -> None:
        if self.by_key is None and len({s for _, s, v, *_ in self.rows if v == video.name and s}) > 1:
            raise ConfigError(f"boxes file {self.path}: video '{video.name}' has rows of both splits; "
                              f"say which split is meant (BoxesFileDetector.begin_split)")
        self.video = video.name

    def detect_at(self, frame_index: int) -> np.ndarray:
        if self.by_key is None:
            rows = [values for _, _, v, f, values in self.rows if v == self.video and f == frame_index]
        else:
            rows = self.by_key.get((self.video, frame_index), [])
        return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def build_detector(cfg, device: str = "cpu"):
    """The detector named by `cfg.objects.detector`."""
    o = cfg.objects
    if o.detector == "motion":
        return MotionDetector(o.motion_threshold, o.motion_min_area, o.motion_background_frames)
    if o.detector == "ultralytics":
        return UltralyticsDetector(o.weights, device, o.detector_size)
    if o.detector == "yolov5-hub":
        return YOLOv5HubDetector(o.hub_model, device, o.hub_repo, o.weights, o.detector_size)
    return BoxesFileDetector(o.boxes_file, drop_invalid=o.boxes_drop_invalid)


def detect_middle_frames(video, starts: np.ndarray, clip_length: int, detector) -> list[np.ndarray]:
    """The detector's raw detections on the middle frame of every clip of `video`: B arrays (K_b, 6)
    of x1, y1, x2, y2, confidence, class (before any threshold or growth). Each frame is decoded once."""
    middles = [int(s) + middle_frame_offset(clip_length) for s in starts]
    with decoder_check(video):                                  # damaged frames: an error naming the file
        detector.begin_video(video)
        if isinstance(detector, BoxesFileDetector):
            detections = {i: detector.detect_at(i) for i in middles}
        else:
            detections = {i: detector.detect(frame) for i, frame in video.iter_frames(middles)}
    return [detections[i] for i in middles]


def detect_clip_objects(video, starts: np.ndarray, clip_length: int, detector, confidence: float,
                        classes, growth: float, final: bool = False) -> list[np.ndarray]:
    """Objects of every clip of `video`: a list of B arrays (K_b, 4) of int boxes x1, y1, x2, y2.

    The detector sees the middle frame of each clip only (detect_middle_frames); `final`: the
    boxes are used as they are (no growth, no squaring).
    """
    max_w, max_h = video.frame_size
    return [select_objects(d, confidence, classes, growth, max_w, max_h, final)
            for d in detect_middle_frames(video, starts, clip_length, detector)]


# ---------------------------------------------------------------------------------------------
# crops

def crop_and_resize(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int,
                    arithmetic: str = "reference") -> torch.Tensor:
    """Cut boxes out of frames and resize each crop to size x size (METHOD.md §2).

    frames (F, H, W, 3) uint8; frame_index (K,) which frame each box is cut from; boxes (K, 4) int
    x1, y1, x2, y2 (the crop is frame[y1:y2, x1:x2]) -> (K, size, size, 3).

    - "reference": the reference's `cv2.resize(frame[y1:y2, x1:x2], (S, S))` of the uint8 crop,
      OpenCV's 8-bit bilinear, which rounds to uint8: returns uint8, cast to float only later.
      OpenCV runs on the host, so `frames` must be on the CPU.
    - "exact": bilinear in float without rounding, batched on the frames' device: returns float32.
    """
    if arithmetic == "reference":
        return opencv_crops(frames, frame_index, boxes, size)
    if arithmetic == "exact":
        return float_crops(frames, frame_index, boxes, size)
    raise ValueError(f"arithmetic must be 'reference' or 'exact', got {arithmetic!r}")


def opencv_crops(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 CPU frames -> (K, size, size, 3) uint8: one cv2.resize (INTER_LINEAR) per crop."""
    if frames.device.type != "cpu" or frames.dtype != torch.uint8:
        raise ValueError(f"OpenCV crops need uint8 frames on the CPU, got {frames.dtype} on {frames.device}")
    pixels = frames.numpy()
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (f, (x1, y1, x2, y2)) in enumerate(zip(frame_index.tolist(), boxes.tolist())):
        out[k] = cv2.resize(pixels[f, y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out)


def float_crops(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(F, H, W, 3) frames -> (K, size, size, 3) float32, all crops in one batched gather.

    Bilinear with half-pixel centres and edge clamping inside the crop: the arithmetic of
    `cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)`, with no
    rounding to uint8.
    """
    # sample positions in float64: in float32 they are off by up to 3e-5 px on large boxes
    # (~0.005 grey levels on sharp edges), where OpenCV (IPP) is exact
    boxes = boxes.to(frames.device, torch.float64)
    x1, y1, x2, y2 = boxes.unbind(1)                                        # (K,) each
    t = torch.arange(size, device=frames.device, dtype=torch.float64) + 0.5  # (S,)

    def sample_positions(lo, hi):
        extent = hi - lo                                                    # (K,)
        pos = t[None] * (extent / size)[:, None] - 0.5                      # (K, S) inside the crop
        pos = torch.minimum(pos.clamp(min=0), (extent - 1)[:, None])
        i0 = pos.floor()
        frac = (pos - i0).float()                                           # (K, S)
        i1 = torch.minimum(i0 + 1, (extent - 1)[:, None])
        return (i0 + lo[:, None]).long(), (i1 + lo[:, None]).long(), frac

    xa, xb, fx = sample_positions(x1, x2)                                   # (K, S)
    ya, yb, fy = sample_positions(y1, y2)
    f = frame_index.to(frames.device).long()[:, None, None]                 # (K, 1, 1)

    def at(ys, xs):
        return frames[f, ys[:, :, None], xs[:, None, :]].float()            # (K, S, S, 3)

    fx, fy = fx[:, None, :, None], fy[:, :, None, None]                     # (K, 1, S, 1), (K, S, 1, 1)
    top = at(ya, xa) * (1 - fx) + at(ya, xb) * fx
    bottom = at(yb, xa) * (1 - fx) + at(yb, xb) * fx
    return top * (1 - fy) + bottom * fy                                     # (K, S, S, 3)
