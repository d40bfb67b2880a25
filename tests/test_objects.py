"""objects: box growth, middle frames, detection filters, crops (METHOD.md §2).

Expected boxes are worked out by hand in the comments. Crops: the reference arithmetic against a
3x3 -> 5x5 resize worked by hand in OpenCV's 8-bit fixed point, and against the reference's own
expression per crop; the exact (float) arithmetic against a numpy bilinear and OpenCV's float resize.
"""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vpclib.errors import ConfigError
from vpclib.objects import (BoxesFileDetector, MotionDetector, crop_and_resize, detect_clip_objects,
                            grow_box, middle_frame_offset, select_objects)

W, H = 640, 360  # Avenue


# ---------------------------------------------------------------------------------------------
# grow_box

@pytest.mark.parametrize("box, growth, expected", [
    # tall 20 x 40, f = 1: x grows (40 - 20) / 2 = 10 each side
    ((10, 20, 30, 60), 1.0, (0, 20, 40, 60)),
    # wide 40 x 10, f = 1: y grows 15 each side
    ((100, 100, 140, 110), 1.0, (100, 85, 140, 125)),
    # already square: unchanged
    ((5, 6, 25, 26), 1.0, (5, 6, 25, 26)),
    # f = 1.2, 50 x 20: x -= 10, x += 10, y -= 4, y += 4 -> (90, 96, 160, 124), 70 x 28;
    # wide, so y grows (70 - 28) / 2 = 21 each side -> (90, 75, 160, 145)
    ((100, 100, 150, 120), 1.2, (90, 75, 160, 145)),
    # f = 1.2, tall 10 x 40: (48, -8, 62, 48), 14 x 56; x grows 21 -> (27, -8, 83, 48);
    # clipped at the top -> (27, 0, 83, 48), no longer square
    ((50, 0, 60, 40), 1.2, (27, 0, 83, 48)),
    # left border: tall 10 x 30 -> x grows 10 -> (-8, 3, 22, 33) -> clipped (0, 3, 22, 33)
    ((2, 3, 12, 33), 1.0, (0, 3, 22, 33)),
    # right border: tall 10 x 20 -> (625, 100, 645, 120) -> x2 clipped to 640
    ((630, 100, 640, 120), 1.0, (625, 100, 640, 120)),
    # bottom border: wide 40 x 10 -> (100, 335, 140, 375) -> y2 clipped to 360
    ((100, 350, 140, 360), 1.0, (100, 335, 140, 360)),
    # a box larger than the frame is clipped on all four sides
    ((-100, -50, 700, 400), 1.0, (0, 0, 640, 360)),
    # truncation: 20.2 x 10.2 -> y grows 5 -> (10.7, 15.3, 30.9, 35.5) -> int (10, 15, 30, 35)
    ((10.7, 20.3, 30.9, 30.5), 1.0, (10, 15, 30, 35)),
    # truncation of f = 1.2 growth: 10 x 10 -> x1 = 20.5 - 2 = 18.5, x2 = 30.5 + 2 = 32.5,
    # y1 = 7.9 - 2 = 5.9, y2 = 17.9 + 2 = 19.9 -> int (18, 5, 32, 19)
    ((20.5, 7.9, 30.5, 17.9), 1.2, (18, 5, 32, 19)),
])
def test_grow_box_hand_worked(box, growth, expected):
    out = grow_box(np.array(box, dtype=np.float64), growth, W, H)
    assert out == expected
    assert all(type(v) is int for v in out)


@pytest.mark.parametrize("box", [
    (700, 10, 720, 20),          # right of the frame: x1 = x2 = 640 after clipping
    (-50, -50, -10, -10),        # above-left of the frame: all zero
    (10, 400, 30, 420),          # below the frame
    (10.2, 10.2, 10.9, 10.9),    # 0.7 px wide: truncation makes x1 == x2
])
def test_grow_box_empty_after_clipping_is_none(box):
    assert grow_box(np.array(box, dtype=np.float64), 1.0, W, H) is None


def test_grow_box_accepts_detection_rows():
    # a (6,) detection row: only the first four values are the box
    assert grow_box(np.array([10, 20, 30, 60, 0.9, 0]), 1.0, W, H) == (0, 20, 40, 60)


# ---------------------------------------------------------------------------------------------
# middle frames and selection

@pytest.mark.parametrize("clip_length, offset", [(10, 5), (4, 2), (3, 2), (2, 1), (5, 2), (16, 8)])
def test_middle_frame_offset(clip_length, offset):
    assert middle_frame_offset(clip_length) == offset


def test_select_objects_filters_class_and_strict_confidence():
    detections = np.array([
        [10, 20, 30, 60, 0.70, 0],      # confidence == threshold: dropped (strict >)
        [10, 20, 30, 60, 0.95, 5],      # bus: not a kept class
        [100, 100, 140, 110, 0.71, 7],  # truck, kept -> (100, 85, 140, 125)
        [700, 10, 720, 20, 0.99, 2],    # car, but empty after clipping
        [2, 3, 12, 33, 0.9, 0],         # person, kept -> (0, 3, 22, 33)
        [5, 6, 25, 26, 0.8, 16],        # dog: dropped
    ])
    out = select_objects(detections, 0.7, (0, 1, 2, 3, 7), 1.0, W, H)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[100, 85, 140, 125], [0, 3, 22, 33]])


def test_select_objects_growth_and_empty():
    det = np.array([[100, 100, 150, 120, 0.9, 0]])
    np.testing.assert_array_equal(select_objects(det, 0.6, [0], 1.2, W, H), [[90, 75, 160, 145]])
    assert select_objects(np.zeros((0, 6)), 0.6, [0], 1.0, W, H).shape == (0, 4)
    assert select_objects(det, 0.95, [0], 1.0, W, H).shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# crops against OpenCV

def _random_boxes(rng, n, width, height, lo, hi, touch_borders=True):
    """n boxes with extents in [lo, hi]; a share of them touch the frame's borders."""
    boxes = []
    for i in range(n):
        w = int(rng.integers(lo, min(hi, width) + 1))
        h = int(rng.integers(lo, min(hi, height) + 1))
        x1 = int(rng.integers(0, width - w + 1))
        y1 = int(rng.integers(0, height - h + 1))
        if touch_borders:
            if i % 5 == 1:
                x1 = 0
            elif i % 5 == 2:
                x1 = width - w
            elif i % 5 == 3:
                y1 = 0
            elif i % 5 == 4:
                y1 = height - h
        boxes.append((x1, y1, x1 + w, y1 + h))
    return np.array(boxes)


# OpenCV's default (IPP) path computes sample positions exactly; without IPP it rounds them to
# float32, which moves values on sharp random-noise edges by up to ~0.005 grey levels
CV2_ATOL = 1e-3 if cv2.ipp.useIPP() else 1e-2


def _numpy_crops(frames, frame_index, boxes, size):
    """Plain float64 bilinear resize with half-pixel centres and edge clamping."""
    def positions(extent):
        p = np.clip((np.arange(size) + 0.5) * extent / size - 0.5, 0, extent - 1)
        i0 = np.floor(p).astype(int)
        return i0, np.minimum(i0 + 1, extent - 1), p - i0

    out = np.empty((len(boxes), size, size, 3))
    for k, (f, (x1, y1, x2, y2)) in enumerate(zip(frame_index, boxes)):
        crop = frames[f, y1:y2, x1:x2].astype(np.float64)
        ya, yb, fy = positions(y2 - y1)
        xa, xb, fx = positions(x2 - x1)
        for i in range(size):
            row = crop[ya[i]] * (1 - fy[i]) + crop[yb[i]] * fy[i]           # (w, 3)
            out[k, i] = row[xa] * (1 - fx)[:, None] + row[xb] * fx[:, None]
    return out


def _cv2_crops(frames, frame_index, boxes, size):
    out = []
    for f, (x1, y1, x2, y2) in zip(frame_index, boxes):
        crop = frames[f, y1:y2, x1:x2].astype(np.float32)
        out.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR))
    return np.stack(out)


@pytest.mark.parametrize("size, frame_hw, extent", [
    (64, (50, 70), (1, 40)),        # upsampling small boxes, including 1-pixel-wide ones
    (64, (300, 400), (65, 300)),    # downsampling
    (224, (300, 400), (225, 300)),  # downsampling to 224
    (64, (300, 400), (20, 300)),    # a mix of both, non-square boxes
])
def test_exact_crops_match_float_bilinear(rng, size, frame_hw, extent):
    n_frames = 3
    frames = rng.integers(0, 256, (n_frames, *frame_hw, 3), dtype=np.uint8)
    boxes = _random_boxes(rng, 40, frame_hw[1], frame_hw[0], *extent)
    frame_index = rng.integers(0, n_frames, len(boxes))
    ours = crop_and_resize(torch.from_numpy(frames), torch.from_numpy(frame_index), torch.from_numpy(boxes), size,
                           "exact")
    assert ours.dtype == torch.float32 and ours.shape == (len(boxes), size, size, 3)
    np.testing.assert_allclose(ours.numpy(), _numpy_crops(frames, frame_index, boxes, size), rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.numpy(), _cv2_crops(frames, frame_index, boxes, size), rtol=0, atol=CV2_ATOL)


def test_exact_crops_special_extents(rng):
    """Whole frame, exact factors 2 (OpenCV takes its INTER_AREA path there) and 1, float frames."""
    frames = rng.integers(0, 256, (2, 128, 256, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 256, 128], [0, 0, 128, 128], [128, 0, 256, 128], [10, 20, 74, 84],
                      [255, 127, 256, 128], [0, 0, 1, 128], [0, 0, 256, 1]])
    frame_index = np.array([0, 1, 0, 1, 0, 1, 0])
    expected = _cv2_crops(frames, frame_index, boxes, 64)
    for as_float in (False, True):
        x = torch.from_numpy(frames).float() if as_float else torch.from_numpy(frames)
        ours = crop_and_resize(x, torch.from_numpy(frame_index), torch.from_numpy(boxes), 64, "exact")
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=CV2_ATOL)
    # the 64 x 64 box at factor 1 is a plain copy
    np.testing.assert_array_equal(ours[3].numpy(), frames[1, 20:84, 10:74].astype(np.float32))


# The reference resizes the uint8 crop: cv2.resize(crop, (S, S)), OpenCV's 8-bit bilinear. Worked by
# hand for a 3 x 3 -> 5 x 5 resize. Source position of output x: (x + 0.5) * 3/5 - 0.5 =
# -0.2, 0.4, 1.0, 1.6, 2.2, clamped at the borders; weights in 11-bit fixed point (2048 = 1):
#   x = 0: 2048 * p0    x = 1: 1229 * p0 + 819 * p1    x = 2: 2048 * p1
#   x = 3: 819 * p1 + 1229 * p2    x = 4: 2048 * p2
# The horizontal pass keeps these integer sums h; the vertical pass combines two rows h0, h1 with the
# same weights b0, b1 as out = (((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16) + 2) >> 2.
# E.g. out[1, 1]: h0 = 0*1229 + 100*819 = 81900, h1 = 10*1229 + 20*819 = 28670;
# (81900 >> 4) * 1229 >> 16 = 5118 * 1229 >> 16 = 95, (28670 >> 4) * 819 >> 16 = 1791 * 819 >> 16 = 22;
# (95 + 22 + 2) >> 2 = 29. (Float bilinear gives 0.6 * 40 + 0.4 * 14 = 29.6, which rounds to 30.)
HAND_3X3 = np.array([[0, 100, 255], [10, 20, 30], [200, 50, 7]], np.uint8)
HAND_5X5 = np.array([[0, 40, 100, 193, 255],
                     [4, 29, 68, 126, 165],       # 4 = ((0 >> 4)*1229 >> 16) + ((20480 >> 4)*819 >> 16) = 0 + 15 -> (15 + 2) >> 2
                     [10, 14, 20, 26, 30],
                     [124, 90, 38, 25, 16],
                     [200, 140, 50, 24, 7]], np.uint8)


def test_reference_crop_uint8_rounding_by_hand():
    frame = np.repeat(HAND_3X3[:, :, None], 3, axis=2)[None]                 # (1, 3, 3, 3), grey
    ours = crop_and_resize(torch.from_numpy(frame), torch.zeros(1, dtype=torch.long),
                           torch.tensor([[0, 0, 3, 3]]), 5, "reference")
    assert ours.dtype == torch.uint8 and ours.shape == (1, 5, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(ours[0, :, :, c].numpy(), HAND_5X5)


def test_reference_crops_are_the_references_expression(rng):
    """Batched crops equal the reference's `cv2.resize(frame[y1:y2, x1:x2], (S, S))`, crop by crop,
    and differ from the float resize (rounding), by at most half a grey level plus OpenCV's error."""
    frames = rng.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    frames = np.stack([cv2.GaussianBlur(f, (5, 5), 2) for f in frames])       # smooth: fractional values
    boxes = _random_boxes(rng, 30, 160, 120, 1, 120)
    frame_index = rng.integers(0, 3, len(boxes))
    ours = crop_and_resize(torch.from_numpy(frames), torch.from_numpy(frame_index), torch.from_numpy(boxes), 64,
                           "reference").numpy()
    for k, (f, (x1, y1, x2, y2)) in enumerate(zip(frame_index, boxes)):
        np.testing.assert_array_equal(ours[k], cv2.resize(frames[f, y1:y2, x1:x2], (64, 64)))
    exact = crop_and_resize(torch.from_numpy(frames), torch.from_numpy(frame_index), torch.from_numpy(boxes), 64,
                            "exact").numpy()
    difference = np.abs(ours.astype(np.float32) - exact)
    assert 0 < difference.max() <= 1.0 and (difference > 0).mean() > 0.5


def test_reference_crops_need_host_uint8_frames():
    with pytest.raises(ValueError, match="uint8 frames on the CPU"):
        crop_and_resize(torch.zeros(1, 4, 4, 3), torch.zeros(1, dtype=torch.long), torch.tensor([[0, 0, 4, 4]]), 2)


# ---------------------------------------------------------------------------------------------
# detectors

def test_motion_detector_finds_one_bright_rectangle(fake_video_cls):
    frames = np.full((20, 60, 80, 3), 100, np.uint8)
    frames[7, 20:30, 30:45] = 250                        # rows 20..29, columns 30..44
    video = fake_video_cls(frames)
    detector = MotionDetector(threshold=25, min_area=60, n_background=50)
    detector.begin_video(video)
    np.testing.assert_array_equal(detector.background, np.full((60, 80), 100))
    # open(3x3) keeps the solid rectangle; one 3x3 dilation grows it by 1 px on every side:
    # x 29..45, y 19..30 -> x, y, x + w, y + h = 29, 19, 46, 31
    np.testing.assert_array_equal(detector.detect(frames[7]), [[29, 19, 46, 31, 1.0, 0]])
    assert detector.detect(frames[3]).shape == (0, 6)


def test_motion_detector_min_area(fake_video_cls):
    frames = np.full((10, 60, 80, 3), 100, np.uint8)
    frames[4, 10:13, 10:13] = 255                        # 3 x 3 -> 5 x 5 = 25 px after dilation
    detector = MotionDetector(threshold=25, min_area=26)
    detector.begin_video(fake_video_cls(frames))
    assert detector.detect(frames[4]).shape == (0, 6)
    detector.min_area = 25
    np.testing.assert_array_equal(detector.detect(frames[4]), [[9, 9, 14, 14, 1.0, 0]])


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_boxes_file_detector(tmp_path):
    path = tmp_path / "boxes.csv"
    _write_csv(path, ["video", "frame", "x1", "y1", "x2", "y2", "confidence", "class"], [
        ("01", 2, 10, 20, 30, 60, 0.9, 0),
        ("01", 2, 100, 100, 140, 110, 0.8, 7),
        ("01", 3, 1, 2, 3, 4, 0.99, 0),
        ("02", 2, 5, 6, 25, 26, 0.7, 2),
    ])
    detector = BoxesFileDetector(path)

    class V:
        name = "01"

    detector.begin_video(V())
    np.testing.assert_array_equal(detector.detect_at(2), [[10, 20, 30, 60, 0.9, 0], [100, 100, 140, 110, 0.8, 7]])
    np.testing.assert_array_equal(detector.detect_at(3), [[1, 2, 3, 4, 0.99, 0]])
    assert detector.detect_at(4).shape == (0, 6)
    V.name = "02"
    detector.begin_video(V())
    np.testing.assert_array_equal(detector.detect_at(2), [[5, 6, 25, 26, 0.7, 2]])


def test_boxes_file_detector_errors(tmp_path):
    path = tmp_path / "no_class.csv"
    _write_csv(path, ["video", "frame", "x1", "y1", "x2", "y2", "confidence"], [("01", 2, 10, 20, 30, 60, 0.9)])
    with pytest.raises(ConfigError, match="class") as info:
        BoxesFileDetector(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError) as info:
        BoxesFileDetector(tmp_path / "missing.csv")
    assert "missing.csv" in str(info.value)
    bad = tmp_path / "bad.csv"
    _write_csv(bad, ["video", "frame", "x1", "y1", "x2", "y2", "confidence", "class"], [("01", "two", 1, 2, 3, 4, 0.9, 0)])
    with pytest.raises(ConfigError, match="line 2") as info:
        BoxesFileDetector(bad)
    assert str(bad) in str(info.value)


class RecordingDetector:
    """Returns one box per frame, placed according to the frame's fill value (= its index)."""

    def __init__(self):
        self.seen, self.videos = [], []

    def begin_video(self, video):
        self.videos.append(video.name)

    def detect(self, frame):
        i = int(frame[0, 0, 0])
        self.seen.append(i)
        return np.array([[i, 10, i + 20, 50, 0.9, 0],     # 20 x 40 -> (i - 10, 10, i + 30, 50)
                         [i, 10, i + 20, 50, 0.5, 0]])    # below the confidence threshold


def test_detect_clip_objects_sees_middle_frames(fake_video_cls):
    n_frames, clip_length = 35, 10
    frames = np.arange(n_frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 60, 80, 3), np.uint8)
    video = fake_video_cls(frames, name="vid")
    detector = RecordingDetector()
    starts = np.array([0, 10, 20])                       # 35 frames: three clips, 5 frames left over
    out = detect_clip_objects(video, starts, clip_length, detector, 0.6, (0,), 1.0)
    assert detector.videos == ["vid"]
    assert detector.seen == [5, 15, 25]                  # T // 2 inside each clip
    assert video.requests == [[5, 15, 25]]               # each middle frame decoded once, nothing else
    assert len(out) == 3
    for i, boxes in zip((5, 15, 25), out):
        # x1 = i - 10 is clipped at 0 for i = 5; the frame is 80 wide
        np.testing.assert_array_equal(boxes, [[max(i - 10, 0), 10, min(i + 30, 80), 50]])


def test_detect_clip_objects_short_clips_and_boxes_file(tmp_path, fake_video_cls):
    # T = 3: the last frame of each clip (offset 2); IITB-like starts 1 + k*T
    frames = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 60, 80, 3), np.uint8)
    detector = RecordingDetector()
    detect_clip_objects(fake_video_cls(frames), np.array([1, 4, 7]), 3, detector, 0.6, (0,), 1.0)
    assert detector.seen == [3, 6, 9]

    path = tmp_path / "boxes.csv"
    _write_csv(path, ["video", "frame", "x1", "y1", "x2", "y2", "confidence", "class"], [
        ("v0", 2, 10, 20, 30, 60, 0.9, 0),      # middle of clip 0 (T = 4: offset 2)
        ("v0", 3, 10, 20, 30, 60, 0.9, 0),      # not a middle frame: ignored
        ("v0", 10, 30, 10, 40, 20, 0.65, 2),    # middle of clip 2: a 10 x 10 square, kept as is
        ("v0", 10, 30, 10, 40, 20, 0.5, 2),     # below the threshold
        ("v1", 6, 30, 10, 40, 20, 0.9, 2),      # another video
    ])
    video = fake_video_cls(frames, name="v0")
    out = detect_clip_objects(video, np.array([0, 4, 8]), 4, BoxesFileDetector(path), 0.6, (0, 2), 1.0)
    assert video.requests == []                          # a boxes file needs no frame
    np.testing.assert_array_equal(out[0], [[0, 20, 40, 60]])
    assert out[1].shape == (0, 4)
    np.testing.assert_array_equal(out[2], [[30, 10, 40, 20]])


# ---------------------------------------------------------------------------------------------
# the YOLO detectors: the real COCO models of ../shared/models on a real Ped2 frame, the CLI path,
# and the offline errors (no download is ever attempted in tests)

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
PED2_MINI = SHARED / "data" / "ped2-mini"
FRAME_090 = PED2_MINI / "testing" / "frames" / "01" / "090.jpg"
YOLOV5_REPO, YOLOV5N = MODELS / "yolov5-src", MODELS / "yolov5n.pt"
YOLO11N_OPENVINO = MODELS / "yolo11n_int8_openvino_model"

# Hand-read from testing/frames/01/090.jpg (360 x 240), zoomed 8x on a 5-pixel grid in an image
# viewer; x1, y1, x2, y2 in pixels, each edge read to about +-1 px:
# - the bicycle (left of centre, ridden to the right): rear wheel's left edge at x 58, front
#   wheel's right edge at x 86; handlebar top at y 118, wheels' bottom at y 136
# - a walker carrying a white bag (centre-left, lower): head top y 144, feet y 173, back x 130,
#   the bag's front end x 146
# - the walker at the right (x 320-360 band): head top y 124, feet y 169, x 332 to 349
BICYCLE_BY_HAND = (58, 118, 86, 136)
PERSONS_BY_HAND = [(130, 144, 146, 173), (332, 124, 349, 169)]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_finds_the_hand_boxes(detections, min_confidence=0.25, min_persons=12):
    """Each hand box is matched by a detection of its class: IoU >= 0.6 and its centre inside."""
    assert detections.ndim == 2 and detections.shape[1] == 6
    kept = detections[detections[:, 4] > min_confidence]
    for box, cls in [(BICYCLE_BY_HAND, 1)] + [(b, 0) for b in PERSONS_BY_HAND]:
        same_class = kept[kept[:, 5] == cls]
        assert len(same_class), f"no class {cls} detection above {min_confidence}"
        best = max(same_class, key=lambda d: _iou(d, box))
        assert _iou(best, box) >= 0.6, (box, best)
        cx, cy = (best[0] + best[2]) / 2, (best[1] + best[3]) / 2
        assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3], (box, best)
    # a crowded frame: about 20 people (counted by eye), 15-40 px tall; one bicycle
    assert (kept[:, 5] == 0).sum() >= min_persons
    assert (kept[:, 5] == 1).sum() == 1
    # boxes are in the frame's own pixels (not the 640 letterbox)
    assert kept[:, [0, 1]].min() >= -1 and kept[:, 2].max() <= 361 and kept[:, 3].max() <= 241


needs_yolov5 = pytest.mark.skipif(not (YOLOV5_REPO.is_dir() and YOLOV5N.is_file() and FRAME_090.is_file()),
                                  reason="../shared/models/yolov5-src, yolov5n.pt or ped2-mini is absent")


@needs_yolov5
def test_yolov5_hub_local_repo_finds_people_and_the_bicycle():
    pytest.importorskip("ultralytics")                                      # the yolov5 source imports it
    from vpclib.config import from_dict
    from vpclib.objects import YOLOv5HubDetector, build_detector
    cfg = from_dict({"objects": {"detector": "yolov5-hub", "hub_repo": str(YOLOV5_REPO),
                                 "weights": str(YOLOV5N)}})
    assert cfg.objects.detector_size == 640                                 # the hub's default size
    detector = build_detector(cfg, "cpu")
    assert isinstance(detector, YOLOv5HubDetector) and detector.size == 640
    _assert_finds_the_hand_boxes(detector.detect(cv2.imread(str(FRAME_090))))


def test_yolo_device_names():
    from vpclib.objects import yolo_device
    assert [yolo_device(d) for d in ("cpu", "cuda", "cuda:0", "cuda:1")] == ["cpu", "0", "0", "1"]


def _tiny_ped2(root: Path) -> Path:
    """A few frames of each ped2-mini video: training 01 and 08 frames 000-007; testing 01 frames
    088-095 (all anomalous) and 02 frames 091-098 (anomalous from 094 on). With T = 4 the middle
    frame of test video 01's first clip is its third, the original 090.jpg."""
    import scipy.io
    for split, video, first in [("training", "01", 0), ("training", "08", 0), ("testing", "01", 88),
                                ("testing", "02", 91)]:
        (root / split / "frames" / video).mkdir(parents=True)
        for i in range(8):
            shutil.copy(PED2_MINI / split / "frames" / video / f"{first + i:03d}.jpg",
                        root / split / "frames" / video / f"{i:03d}.jpg")
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0] = np.array([1, 8], np.int32)        # 1-based inclusive: 088-095 are all anomalous
    gt[0, 1] = np.array([4, 8], np.int32)        # ped2 02 is anomalous from frame 95 (1-based) = 094
    scipy.io.savemat(str(root / "ped2.mat"), {"gt": gt})
    return root


@needs_yolov5
def test_vpc_run_with_the_yolov5_hub_detector(tmp_path, capsys):
    """The whole CLI path: params/ped2.yaml with the detector chosen by --set, objects from the
    work dir's JSON. The stored boxes are grown (f = 1) and squared, so the hand boxes are too."""
    pytest.importorskip("ultralytics")
    import json
    from vpclib.cli import main as vpc
    root, work = _tiny_ped2(tmp_path / "ped2"), tmp_path / "work"
    params = Path(__file__).resolve().parents[1] / "params" / "ped2.yaml"
    assert vpc(["run", str(params), "--data-root", str(root), "--work-dir", str(work), "--device", "cpu",
                "--set", "objects.detector=yolov5-hub", "--set", f"objects.hub_repo={YOLOV5_REPO}",
                "--set", f"objects.weights={YOLOV5N}", "--set", "objects.train_confidence=0.3",
                "--set", "objects.test_confidence=0.3"]) == 0
    assert "auc_micro_labelfree" in capsys.readouterr().out
    clips = json.loads((work / "objects" / "test.json").read_text())["videos"]["01"]
    assert len(clips) == 2                                                  # 8 frames, T = 4
    boxes = clips[0]                                                        # middle frame: 090.jpg
    # by hand: bicycle 28 x 18 -> y grows 5 each side; walkers 16 x 29 -> x grows 6.5 each side,
    # 17 x 45 -> x grows 14; then int truncation
    squared = [(58, 113, 86, 141), (123, 144, 152, 173), (318, 124, 363, 169)]
    for box in squared:
        box = (box[0], box[1], min(box[2], 360), box[3])                    # clipped at the frame's edge
        assert max(_iou(b, box) for b in boxes) >= 0.6, box
    assert len(boxes) >= 12                                                 # the crowd, at confidence > 0.3
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 360 and b[3] <= 240 for b in boxes)
    # the resolved config kept beside the results records the --set values
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["n_test_frames"] == 16


def test_yolov5_hub_offline_without_a_local_repo_is_an_immediate_clear_error(monkeypatch):
    import time
    from vpclib.errors import WeightsUnavailableError
    from vpclib.objects import YOLOv5HubDetector
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="ultralytics/yolov5 through torch.hub") as info:
        YOLOv5HubDetector("yolov5l")
    assert time.monotonic() - start < 1
    assert "objects.hub_repo" in str(info.value) and "objects.weights" in str(info.value)


def test_yolov5_hub_local_files_missing_name_the_keys(tmp_path):
    from vpclib.errors import WeightsUnavailableError
    from vpclib.objects import YOLOv5HubDetector
    with pytest.raises(WeightsUnavailableError, match="objects.hub_repo") as info:
        YOLOv5HubDetector(hub_repo=str(tmp_path), weights=str(YOLOV5N))     # a folder without hubconf.py
    assert str(tmp_path) in str(info.value)
    (tmp_path / "hubconf.py").write_text("")
    with pytest.raises(WeightsUnavailableError, match="objects.weights") as info:
        YOLOv5HubDetector(hub_repo=str(tmp_path), weights=str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(info.value)


@pytest.mark.skipif(not (YOLO11N_OPENVINO.is_dir() and FRAME_090.is_file()),
                    reason="../shared/models/yolo11n_int8_openvino_model or ped2-mini is absent")
def test_ultralytics_detector_yolo11n_openvino_finds_people_and_the_bicycle():
    ultralytics = pytest.importorskip("ultralytics")
    pytest.importorskip("openvino")
    from vpclib.config import from_dict
    from vpclib.objects import UltralyticsDetector, build_detector
    cfg = from_dict({"objects": {"detector": "ultralytics", "weights": str(YOLO11N_OPENVINO)}})
    detector = build_detector(cfg, "cpu")
    assert isinstance(detector, UltralyticsDetector)
    frame = cv2.imread(str(FRAME_090))
    detections = detector.detect(frame)                                     # (K, 6)
    _assert_finds_the_hand_boxes(detections)
    # the same frame through ultralytics directly: our wrapper changes nothing in between
    direct = ultralytics.YOLO(str(YOLO11N_OPENVINO), task="detect").predict(frame, verbose=False, conf=0.01)[0].boxes
    assert detections.shape == (len(direct), 6)
    np.testing.assert_allclose(detections[:, :4], direct.xyxy.numpy(), atol=1e-3)
    np.testing.assert_allclose(detections[:, 4], direct.conf.numpy(), atol=1e-5)
    np.testing.assert_array_equal(detections[:, 5], direct.cls.numpy())


def test_ultralytics_weights_unavailable_offline_say_how_to_fix(monkeypatch):
    from vpclib.errors import WeightsUnavailableError
    from vpclib.objects import UltralyticsDetector
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"objects.weights: /path/to/yolov5lu.pt"):
        UltralyticsDetector("yolov5lu.pt")
