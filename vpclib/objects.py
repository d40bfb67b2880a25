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
- `BoxesFileDetector`: your own detections from a CSV file.

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

from .errors import ConfigError, WeightsUnavailableError

COCO_KEPT_CLASSES = (0, 1, 2, 3, 7)  # person, bicycle, car, motorcycle, truck
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


def select_objects(detections: np.ndarray, confidence: float, classes, growth: float,
                   max_w: int, max_h: int) -> np.ndarray:
    """Keep detections of `classes` with confidence > `confidence`, grown: (K, 6) -> (K', 4) int."""
    kept = []
    for det in np.asarray(detections, dtype=np.float64).reshape(-1, 6):
        if det[4] > confidence and int(det[5]) in classes:
            box = grow_box(det, growth, max_w, max_h)
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

    def __init__(self, weights: str, device: str = "cpu", size: int = 640):
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

    def __init__(self, model: str = "yolov5l", device: str = "cpu", hub_repo: str = "", weights: str = "",
                 size: int = 640):
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

    def __init__(self, threshold: int = 25, min_area: int = 60, n_background: int = 50):
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
    """Your own detections: a CSV with the header video,frame,x1,y1,x2,y2,confidence,class.

    `frame` is the 0-based index of the frame inside its video; coordinates are pixels. Rows for
    frames that are not a clip's middle frame are ignored, so one file can serve any T.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"objects.boxes_file not found: {self.path}")
        self.rows: dict[tuple[str, int], list] = {}
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(BOXES_FILE_COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"boxes file {self.path} lacks columns {sorted(missing)}; "
                                  f"expected header {','.join(BOXES_FILE_COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                try:
                    key = (row["video"], int(row["frame"]))
                    values = [float(row[c]) for c in BOXES_FILE_COLUMNS[2:]]
                except ValueError as err:
                    raise ConfigError(f"boxes file {self.path}, line {line}: {err}") from None
                self.rows.setdefault(key, []).append(values)
        self.video = None

    def begin_video(self, video) -> None:
        self.video = video.name

    def detect_at(self, frame_index: int) -> np.ndarray:
        return np.asarray(self.rows.get((self.video, frame_index), []), dtype=np.float64).reshape(-1, 6)


def build_detector(cfg, device: str = "cpu"):
    """The detector named by `cfg.objects.detector`."""
    o = cfg.objects
    if o.detector == "motion":
        return MotionDetector(o.motion_threshold, o.motion_min_area, o.motion_background_frames)
    if o.detector == "ultralytics":
        return UltralyticsDetector(o.weights, device, o.detector_size)
    if o.detector == "yolov5-hub":
        return YOLOv5HubDetector(o.hub_model, device, o.hub_repo, o.weights, o.detector_size)
    return BoxesFileDetector(o.boxes_file)


def detect_clip_objects(video, starts: np.ndarray, clip_length: int, detector, confidence: float,
                        classes, growth: float) -> list[np.ndarray]:
    """Objects of every clip of `video`: a list of B arrays (K_b, 4) of int boxes x1, y1, x2, y2.

    The detector sees the middle frame of each clip only; each frame is decoded once.
    """
    detector.begin_video(video)
    max_w, max_h = video.frame_size
    middles = [int(s) + middle_frame_offset(clip_length) for s in starts]
    if isinstance(detector, BoxesFileDetector):
        detections = {i: detector.detect_at(i) for i in middles}
    else:
        detections = {i: detector.detect(frame) for i, frame in video.iter_frames(middles)}
    return [select_objects(detections[i], confidence, classes, growth, max_w, max_h) for i in middles]


# ---------------------------------------------------------------------------------------------
# crops

def crop_and_resize(frames: torch.Tensor, frame_index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut boxes out of frames and resize them, all in one batched gather.

    frames (F, H, W, 3) uint8 or float; frame_index (K,) which frame each box is cut from;
    boxes (K, 4) int x1, y1, x2, y2 (the crop is frame[y1:y2, x1:x2]) -> (K, size, size, 3) float32.

    Bilinear with half-pixel centres and edge clamping inside the crop: the same arithmetic as
    `cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)`
    (OpenCV's IPP path; without IPP OpenCV rounds the sample positions to float32).
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
