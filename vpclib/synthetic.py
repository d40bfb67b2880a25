"""The embedded default dataset: small seeded scenes of people walking on a walkway.

`make_synthetic_dataset(root)` writes, in the "ucsd" layout so that it goes through the real
loader (`load_split("ucsd", root, split)`):

    root/training/frames/NN/NNN.png   normal videos
    root/testing/frames/NN/NNN.png    each with one anomaly between normal frames
    root/synthetic.mat                gt: 1-based inclusive [start; end] ranges, like ped2.mat
    root/anomalies.json               kind and frame span (0-based, inclusive) of each anomaly
    root/manifest.json                the generation parameters and the scene geometry

A static grey camera view (like UCSD Ped2) of a horizontal walkway between grass borders.
Normal: 2-4 people walking left->right or right->left at 0.8-1.5 px/frame. Anomalies (KINDS):
a person running (4-5 px/frame), jumping, throwing a bag up and catching it, walking
vertically across the walkway (wrong_direction), and a cart driving along it
(unusual_object). A test frame is labelled 1 exactly when the anomalous actor is drawn and
behaving anomalously. Pure numpy + OpenCV drawing, deterministic for a seed.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from .errors import DatasetError

KINDS = ("running", "jumping", "throwing", "wrong_direction", "unusual_object")
FORMAT_VERSION = 1                 # bump when the drawing changes: old datasets then mismatch
NORMAL_SPEED = (0.8, 1.5)          # px/frame, horizontal only
RUNNING_SPEED = (4.0, 5.0)         # px/frame
NOISE_SIGMA = 1.5                  # sensor noise, grey levels
NOISE_MAX = 4                      # noise is clipped to +-NOISE_MAX
ANOMALY_RATIO = (0.36, 0.48)       # anomaly duration as a fraction of the video
SHIFT = 4                          # OpenCV sub-pixel drawing: coordinates carry 4 fraction bits


# -----------------------------------------------------------------------------
# Scene: the static view

@dataclass(frozen=True)
class Scene:
    """Geometry of the view; everything scales with the frame size."""
    width: int
    height: int

    @property
    def walk_top(self) -> int:            # first row of the walkway
        return round(0.36 * self.height)

    @property
    def walk_bottom(self) -> int:         # last row of the walkway
        return round(0.86 * self.height)

    @property
    def feet_range(self) -> tuple[float, float]:
        """Rows where the feet of normal walkers are (the far half of the walkway is for heads)."""
        span = self.walk_bottom - self.walk_top
        return self.walk_top + 0.3 * span, self.walk_bottom - 0.04 * self.height

    def person_height(self, feet_y: float) -> float:
        """Height in px of a person standing at row feet_y: taller nearer the camera."""
        low, high = self.feet_range
        depth = np.clip((feet_y - low) / (high - low), 0.0, 1.0)
        return float((24 + 10 * depth) * self.height / 160)

    @property
    def static_rows(self) -> int:
        """Rows [0, static_rows) that no normal walker ever covers (heads, raised arms included)."""
        low, _ = self.feet_range
        return max(int(math.floor(low - 1.15 * self.person_height(low))) - 2, 0)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return amplitude * noise / (noise.std() + 1e-8)


def make_background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 static view: grass, a paved walkway with seams and kerbs, dark bushes."""
    H, W = scene.height, scene.width
    rows = np.arange(H, dtype=np.float32)[:, None]                            # (H, 1)
    top, bottom = scene.walk_top, scene.walk_bottom
    on_walkway = 1 / (1 + np.exp(-(rows - top) / 1.2)) / (1 + np.exp(-(bottom - rows) / 1.2))

    grass = 92 + _smooth_noise(rng, (H, W), 6, 9) + _smooth_noise(rng, (H, W), 0.8, 7)
    paving = (150 + 12 * (rows - top) / (bottom - top)                       # lighter near the camera
              + _smooth_noise(rng, (H, W), 10, 4) + _smooth_noise(rng, (H, W), 0.7, 3))
    seam_every = max(W // 9, 8)
    for x in range(int(rng.integers(seam_every)), W, seam_every):            # paving seams
        paving[:, x] -= 12
    image = on_walkway * paving + (1 - on_walkway) * grass                    # (H, W)
    for kerb in (top, bottom):
        image[kerb - 1:kerb + 1] -= 25

    bushes = np.zeros((H, W), np.float32)
    for _ in range(int(rng.integers(3, 6))):
        in_top_band = rng.random() < 0.7
        y = rng.uniform(0.15, 0.7) * top if in_top_band else rng.uniform(bottom + 8, H + 6)
        axes = (int(rng.uniform(0.06, 0.12) * W), int(rng.uniform(0.05, 0.09) * H))
        cv2.ellipse(bushes, (int(rng.uniform(0, W)), int(y)), axes, 0, 0, 360, 1.0, -1)
    bushes = cv2.GaussianBlur(bushes, (0, 0), 2.5)
    image = image * (1 - 0.45 * bushes) + bushes * _smooth_noise(rng, (H, W), 1.5, 8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# -----------------------------------------------------------------------------
# Actors: people and carts, with their state in every frame

@dataclass
class Actor:
    """One moving thing; every array is (F,) or (F, 2) over the frames of the video."""
    body: str                 # "person" or "cart"
    size: float               # person height, or cart length, px
    shades: tuple[int, ...]   # person: torso, legs, head; cart: body, cabin, wheels
    x: np.ndarray             # (F,) horizontal centre
    y: np.ndarray             # (F,) ground contact row (feet, wheels)
    phase: np.ndarray         # (F,) gait phase or wheel angle, radians
    swing: np.ndarray         # (F,) leg swing as a fraction of the height (0: standing still)
    facing: int               # +1 right, -1 left, 0 towards/away from the camera
    present: np.ndarray       # (F,) bool: in the scene at all
    anomalous: np.ndarray     # (F,) bool: behaving anomalously
    lift: np.ndarray | None = None     # (F,) px above the ground (jumps)
    arm_up: np.ndarray | None = None   # (F,) bool
    bag: np.ndarray | None = None      # (F, 2) bag centre x, y; NaN rows: no bag

    def boxes(self) -> np.ndarray:
        """(F, 4) x1, y1, x2, y2 enclosing what is drawn in each frame."""
        s = self.size
        if self.body == "cart":
            return np.stack([self.x - 0.5 * s, self.y - 0.7 * s, self.x + 0.5 * s, self.y + 1], 1)
        ground = self.y - (self.lift if self.lift is not None else 0)
        boxes = np.stack([self.x - 0.3 * s, ground - 1.15 * s, self.x + 0.3 * s, ground + 0.03 * s], 1)
        if self.bag is not None:
            has_bag = ~np.isnan(self.bag[:, 0])
            bag_box = np.concatenate([self.bag - 0.1 * s, self.bag + 0.1 * s], 1)   # (F, 4)
            boxes[has_bag, :2] = np.minimum(boxes[has_bag, :2], bag_box[has_bag, :2])
            boxes[has_bag, 2:] = np.maximum(boxes[has_bag, 2:], bag_box[has_bag, 2:])
        return boxes

    def drawn(self, scene: Scene) -> np.ndarray:
        """(F,) bool: present and at least 2 px of its box inside the frame, both ways."""
        x1, y1, x2, y2 = self.boxes().T
        overlap_w = np.minimum(x2, scene.width) - np.maximum(x1, 0)
        overlap_h = np.minimum(y2, scene.height) - np.maximum(y1, 0)
        return self.present & (overlap_w >= 2) & (overlap_h >= 2)


def _gait_phase(rng, distance_per_frame: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """(F,) walking phase: one full leg cycle per stride length travelled."""
    return rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(distance_per_frame / stride)


def _person(rng, scene, x, y, speed, *, facing, swing=0.17, stride=None, height=None,
            **extra) -> Actor:
    """A person at x(t), ground row y(t) moving `speed` px/frame; `stride`: (F,) px per leg cycle.

    The height follows the median ground row unless given; extra: optional Actor fields.
    """
    F = len(x)
    y = np.broadcast_to(np.asarray(y, dtype=float), (F,)).copy()
    height = scene.person_height(float(np.median(y))) if height is None else height
    swing = np.broadcast_to(np.asarray(swing, dtype=float), (F,)).copy()
    stride = 0.9 * height * np.ones(F) if stride is None else stride
    torso = int(rng.choice([rng.integers(35, 95), rng.integers(175, 215)]))
    shades = (torso, int(rng.integers(25, 80)), int(rng.integers(100, 150)))
    extra.setdefault("present", np.ones(F, bool))
    extra.setdefault("anomalous", np.zeros(F, bool))
    return Actor("person", height, shades, np.asarray(x, float), y,
                 _gait_phase(rng, np.abs(speed), stride), swing, facing, **extra)


def _crowd(rng: np.random.Generator, scene: Scene, n_frames: int) -> list[Actor]:
    """Normal walkers: 2-4 at a time, entering at either side, crossing horizontally.

    Simulated from a warm-up before frame 0 so that the first frame already has people.
    """
    margin = 0.35 * scene.person_height(scene.feet_range[1])
    travel = scene.width + 2 * margin
    warmup = int(math.ceil(travel / NORMAL_SPEED[0])) + 1
    plans = []  # (t0, t1, direction, speed, feet_y)
    for t in range(-warmup, n_frames):
        n_present = sum(t0 <= t < t1 for t0, t1, *_ in plans)
        if n_present < 2 or (n_present < 4 and rng.random() < 0.02):
            speed = rng.uniform(*NORMAL_SPEED)
            plans.append((t, t + travel / speed, int(rng.choice([-1, 1])), speed,
                          rng.uniform(*scene.feet_range)))
    frames = np.arange(n_frames)
    walkers = []
    for t0, t1, direction, speed, feet_y in plans:
        if t1 <= 0 or t0 >= n_frames:
            continue
        start_x = -margin if direction > 0 else scene.width + margin
        x = start_x + direction * speed * (frames - t0)                     # (F,)
        walkers.append(_person(rng, scene, x, feet_y, speed * np.ones(n_frames), facing=direction,
                               present=(frames >= t0) & (frames < t1)))
    return walkers


# -----------------------------------------------------------------------------
# Anomalous actors, one builder per kind; each fits its anomaly into about `duration` frames

def _window_start(rng, n_frames: int, duration: int) -> int:
    first = int(math.ceil(0.12 * n_frames))
    return int(rng.integers(first, max(first, n_frames - duration) + 1))


def _runner(rng, scene, n_frames, duration) -> Actor:
    """Walks in normally, then runs at 4-5 px/frame with long fast strides until out of view."""
    direction = int(rng.choice([-1, 1]))
    walk_speed, run_speed = rng.uniform(0.9, 1.3), rng.uniform(*RUNNING_SPEED)
    feet_y = rng.uniform(*scene.feet_range)
    height = scene.person_height(feet_y)
    n_run = min(duration, int(0.8 * scene.width / run_speed))
    start = _window_start(rng, n_frames, n_run)
    exit_x = scene.width + 0.3 * height if direction > 0 else -0.3 * height  # box just leaves here
    run_x = exit_x - direction * run_speed * n_run                           # where running starts
    frames = np.arange(n_frames)
    running = frames >= start
    speed = np.where(running, run_speed, walk_speed)                         # (F,)
    x = run_x + direction * np.where(running, run_speed * (frames - start), walk_speed * (frames - start))
    return _person(rng, scene, x, feet_y, speed, facing=direction,
                   swing=np.where(running, 0.32, 0.17), stride=np.where(running, 1.6, 0.9) * height,
                   anomalous=running)


def _jumper(rng, scene, n_frames, duration) -> Actor:
    """Walks through the middle of the view and bounces up and down for `duration` frames."""
    direction, speed = int(rng.choice([-1, 1])), rng.uniform(0.8, 1.2)
    feet_y = rng.uniform(*scene.feet_range)
    height = scene.person_height(feet_y)
    start = _window_start(rng, n_frames, duration)
    frames = np.arange(n_frames)
    jumping = (frames >= start) & (frames < start + duration)
    x = rng.uniform(0.35, 0.65) * scene.width + direction * speed * (frames - start - duration / 2)
    period, amplitude = rng.uniform(10, 14), rng.uniform(0.45, 0.6) * height
    lift = np.where(jumping, amplitude * np.abs(np.sin(np.pi * (frames - start + 0.5) / period)), 0.0)
    return _person(rng, scene, x, feet_y, speed * np.ones(n_frames), facing=direction,
                   swing=np.where(jumping, 0.0, 0.17), lift=lift, anomalous=jumping)


def _thrower(rng, scene, n_frames, duration) -> Actor:
    """Walks in carrying a bag, stops, throws it up and catches it again and again, walks on."""
    direction, speed = int(rng.choice([-1, 1])), rng.uniform(0.8, 1.2)
    feet_y = rng.uniform(*scene.feet_range)
    height = scene.person_height(feet_y)
    start = _window_start(rng, n_frames, duration)
    frames = np.arange(n_frames)
    throwing = (frames >= start) & (frames < start + duration)
    stop_x = rng.uniform(0.3, 0.7) * scene.width
    walked = np.where(frames < start, frames - start, np.maximum(frames - start - duration + 1, 0))
    x = stop_x + direction * speed * walked                                  # (F,) still while throwing
    period = rng.uniform(12, 16)
    u = ((frames - start) % period) / period                                 # (F,) flight progress 0..1
    hand_x, hand_y = x + direction * 0.12 * height, feet_y - 1.08 * height
    flying = np.stack([hand_x + direction * 0.3 * height * np.sin(np.pi * u),
                       hand_y - 4.0 * height * u * (1 - u)], 1)              # (F, 2) parabola
    carried = np.stack([x + direction * 0.2 * height, np.full(n_frames, feet_y - 0.42 * height)], 1)
    bag = np.where(throwing[:, None], flying, carried)                       # (F, 2)
    return _person(rng, scene, x, feet_y, np.where(throwing, 0.0, speed), facing=direction,
                   swing=np.where(throwing, 0.0, 0.17), arm_up=throwing, bag=bag, anomalous=throwing)


def _crosser(rng, scene, n_frames, duration) -> Actor:
    """Walks vertically across the walkway and grass, entering at the top or the bottom edge,
    from frame n_frames - duration until the end of the video (or until out of view)."""
    speed = rng.uniform(1.2, 1.6)
    height = scene.person_height(float(np.mean(scene.feet_range)))
    start = n_frames - duration
    frames = np.arange(n_frames)
    if rng.random() < 0.5:   # downwards: the feet enter first, 2.5 px inside at `start`
        feet_y = 2.5 + speed * (frames - start)
    else:                    # upwards: the head enters first
        feet_y = scene.height + 1.15 * height - 2.5 - speed * (frames - start)
    x = rng.uniform(0.3, 0.7) * scene.width + np.zeros(n_frames)
    return _person(rng, scene, x, feet_y, speed * np.ones(n_frames), facing=0, height=height,
                   present=frames >= start, anomalous=frames >= start)


def _cart(rng, scene, n_frames, duration) -> Actor:
    """A cart with wheels driving along the walkway, entering at one edge, crossing the view."""
    direction = int(rng.choice([-1, 1]))
    low, high = scene.feet_range
    ground_y = rng.uniform((low + high) / 2, high)
    length = rng.uniform(1.4, 1.7) * scene.person_height(ground_y)
    speed = float(np.clip((scene.width + length) / duration, 2.5, 8.0))
    n_visible = int(math.ceil((scene.width + length - 4.5) / speed))
    start = _window_start(rng, n_frames, n_visible)
    frames = np.arange(n_frames)
    entry_x = -0.5 * length + 2.5 if direction > 0 else scene.width + 0.5 * length - 2.5
    x = entry_x + direction * speed * (frames - start)
    wheel_angle = direction * speed * (frames - start) / (0.12 * length)
    shades = (int(rng.integers(40, 80)), int(rng.integers(150, 200)), 25)
    return Actor("cart", length, shades, x, np.full(n_frames, ground_y), wheel_angle,
                 np.zeros(n_frames), direction, present=frames >= start, anomalous=frames >= start)


BUILDERS = {"running": _runner, "jumping": _jumper, "throwing": _thrower,
            "wrong_direction": _crosser, "unusual_object": _cart}


# -----------------------------------------------------------------------------
# Drawing

def _pt(x: float, y: float) -> tuple[int, int]:
    """Sub-pixel point for OpenCV drawing with shift=SHIFT."""
    return int(round(x * (1 << SHIFT))), int(round(y * (1 << SHIFT)))


def _line(image, p, q, shade, thickness):
    cv2.line(image, _pt(*p), _pt(*q), int(shade), max(int(round(thickness)), 1), cv2.LINE_AA, SHIFT)


def _draw_person(image: np.ndarray, a: Actor, t: int) -> None:
    h, (torso, legs, head), d = a.size, a.shades, a.facing
    x, ground = a.x[t], a.y[t] - (a.lift[t] if a.lift is not None else 0.0)
    s, phase = a.swing[t], a.phase[t]
    lean = d * 0.4 * s * h                                          # runners lean forwards
    hip = (x, ground - 0.47 * h)
    # 1. legs: side view swings them along x, front view lifts them in turn; tucked in the air
    if a.lift is not None and a.lift[t] > 0:
        feet = [(x - 0.1 * h, ground - 0.12 * h), (x + 0.1 * h, ground - 0.12 * h)]
    elif d == 0:
        feet = [(x + side * 0.07 * h, ground - 0.06 * h * max(0.0, side * math.sin(phase)))
                for side in (-1, 1)]
    else:
        feet = [(x + side * s * h * math.sin(phase), ground - 0.06 * h * max(0.0, side * math.cos(phase)))
                for side in (-1, 1)]
    for foot in feet:
        _line(image, hip, foot, legs, 0.09 * h)
    # 2. torso, then arms over it, then the head
    centre = (x + 0.5 * lean, ground - 0.66 * h)
    cv2.ellipse(image, _pt(*centre), _pt(0.12 * h, 0.21 * h), 0, 0, 360, torso, -1, cv2.LINE_AA, SHIFT)
    shoulder = (x + 0.8 * lean, ground - 0.82 * h)
    arm_shade = max(torso - 20, 0) if torso > 128 else torso + 25
    if a.arm_up is not None and a.arm_up[t]:
        hands = [(x + d * 0.12 * h, ground - 1.08 * h), (x - d * 0.15 * h, ground - 0.5 * h)]
    else:
        hands = [(x - side * 0.8 * s * h * math.sin(phase), ground - 0.48 * h) for side in (-1, 1)]
    for hand in hands:
        _line(image, shoulder, hand, arm_shade, 0.06 * h)
    cv2.circle(image, _pt(x + lean, ground - 0.93 * h), int(0.085 * h * (1 << SHIFT)), head, -1,
               cv2.LINE_AA, SHIFT)
    # 3. the bag, carried or in flight
    if a.bag is not None and not np.isnan(a.bag[t, 0]):
        bx, by = a.bag[t]
        cv2.rectangle(image, _pt(bx - 0.07 * h, by - 0.06 * h), _pt(bx + 0.07 * h, by + 0.06 * h),
                      30, -1, cv2.LINE_AA, SHIFT)


def _draw_cart(image: np.ndarray, a: Actor, t: int) -> None:
    L, (body, cabin, wheel) = a.size, a.shades
    x, y = a.x[t], a.y[t]
    cv2.rectangle(image, _pt(x - 0.5 * L, y - 0.45 * L), _pt(x + 0.5 * L, y - 0.12 * L),
                  body, -1, cv2.LINE_AA, SHIFT)
    cv2.rectangle(image, _pt(x - 0.25 * L, y - 0.68 * L), _pt(x + 0.2 * L, y - 0.45 * L),
                  cabin, -1, cv2.LINE_AA, SHIFT)
    r = 0.12 * L
    for wx in (x - 0.3 * L, x + 0.3 * L):
        cv2.circle(image, _pt(wx, y - r), int(r * (1 << SHIFT)), wheel, -1, cv2.LINE_AA, SHIFT)
        spoke = (wx + 0.8 * r * math.cos(a.phase[t]), y - r + 0.8 * r * math.sin(a.phase[t]))
        _line(image, (wx, y - r), spoke, 170, 0.06 * L)


def render_video(background: np.ndarray, actors: list[Actor], scene: Scene,
                 rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """(F, H, W) uint8 frames: the background, the drawn actors far to near, sensor noise."""
    drawn = np.stack([a.drawn(scene) for a in actors]) if actors else np.zeros((0, n_frames), bool)
    frames = np.empty((n_frames, *background.shape), np.uint8)               # (F, H, W)
    for t in range(n_frames):
        image = background.copy()
        for i in sorted(np.flatnonzero(drawn[:, t]), key=lambda i: actors[i].y[t]):
            (_draw_cart if actors[i].body == "cart" else _draw_person)(image, actors[i], t)
        noise = np.clip(np.rint(rng.normal(0, NOISE_SIGMA, image.shape)), -NOISE_MAX, NOISE_MAX)
        frames[t] = np.clip(image.astype(np.int16) + noise.astype(np.int16), 0, 255)
    return frames


# -----------------------------------------------------------------------------
# The dataset on disk

def make_synthetic_dataset(root, *, seed: int = 0, n_train: int = 4, n_test: int = 6,
                           n_frames: int = 96, width: int = 240, height: int = 160,
                           overwrite: bool = False) -> Path:
    """Write the synthetic dataset to `root` (UCSD layout) and return root.

    Idempotent: a root whose manifest.json has the same parameters is returned at once; one
    with other parameters raises DatasetError unless overwrite. Built in a temporary sibling
    folder and renamed into place, so a reader never sees half a dataset.
    """
    root = Path(root)
    parameters = {"seed": int(seed), "n_train": int(n_train), "n_test": int(n_test),
                  "n_frames": int(n_frames), "width": int(width), "height": int(height),
                  "format_version": FORMAT_VERSION}
    _check_parameters(parameters)
    existing = _manifest_parameters(root)
    if existing == parameters:
        return root
    if root.exists() and not overwrite:
        if not root.is_dir():
            raise DatasetError(f"synthetic dataset root {root} exists and is not a folder")
        if existing is not None:
            raise DatasetError(f"{root} holds a synthetic dataset made with other parameters "
                               f"({existing}, wanted {parameters}); pass overwrite=True to replace it")
        if any(root.iterdir()):
            raise DatasetError(f"synthetic dataset root {root} exists, is not empty and has no "
                               f"manifest.json; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        os.chmod(building, 0o755)
        _write_dataset(building, parameters)
        _move_into_place(building, root, parameters)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root


def _check_parameters(parameters: dict) -> None:
    minimum = {"n_train": 1, "n_test": 1, "n_frames": 24, "width": 96, "height": 64}
    for key, low in minimum.items():
        if parameters[key] < low:
            raise DatasetError(f"synthetic parameter {key}={parameters[key]} is too small "
                               f"(at least {low})")


def _manifest_parameters(root: Path) -> dict | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["parameters"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"synthetic manifest {path} is unreadable ({e}); "
                           f"pass overwrite=True to rebuild the dataset") from e


def _move_into_place(building: Path, root: Path, parameters: dict) -> None:
    """Rename the finished folder onto root; an old root is moved aside first, then deleted."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / root.name)
    try:
        os.replace(building, root)
    except OSError:
        if _manifest_parameters(root) != parameters:   # another process may have won the race
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _write_dataset(folder: Path, p: dict) -> None:
    scene = Scene(p["width"], p["height"])
    background = make_background(scene, _rng(p["seed"], 0))
    digits = max(3, len(str(p["n_frames"] - 1)))

    def write_frames(video_dir: Path, frames: np.ndarray) -> None:
        video_dir.mkdir(parents=True)
        for t, frame in enumerate(frames):
            path = video_dir / f"{t:0{digits}d}.png"
            if not cv2.imwrite(str(path), frame):
                raise DatasetError(f"cannot write synthetic frame {path}")

    # 1. normal training videos
    for v in range(p["n_train"]):
        rng = _rng(p["seed"], 1, v)
        frames = render_video(background, _crowd(rng, scene, p["n_frames"]), scene, rng, p["n_frames"])
        write_frames(folder / "training" / "frames" / f"{v + 1:02d}", frames)

    # 2. test videos: a normal crowd plus one anomalous actor
    anomalies, gt = [], np.empty((1, p["n_test"]), dtype=object)
    for v in range(p["n_test"]):
        rng = _rng(p["seed"], 2, v)
        kind = KINDS[v % len(KINDS)]
        duration = int(round(rng.uniform(*ANOMALY_RATIO) * p["n_frames"]))
        actor = BUILDERS[kind](rng, scene, p["n_frames"], duration)
        crowd = _crowd(rng, scene, p["n_frames"])
        frames = render_video(background, crowd + [actor], scene, rng, p["n_frames"])
        name = f"{v + 1:02d}"
        write_frames(folder / "testing" / "frames" / name, frames)
        labels = actor.drawn(scene) & actor.anomalous                           # (F,)
        spans = _runs(labels)
        if not spans:
            raise DatasetError(f"synthetic test video {name}: the {kind} actor is never visible; "
                               f"parameters {p} are too extreme")
        anomalies.append({"video": name, "kind": kind, "start": spans[0][0], "end": spans[-1][1],
                          "spans": spans, "n_frames": p["n_frames"], "n_anomalous": int(labels.sum())})
        gt[0, v] = np.array(spans, dtype=np.int32).T.reshape(2, -1) + 1         # (2, K) 1-based

    # 3. ground truth, the anomaly list and the manifest (written last: it marks a complete dataset)
    _save_mat(folder / "synthetic.mat", {"gt": gt})
    (folder / "anomalies.json").write_text(json.dumps(
        {"indexing": "0-based frame indices, inclusive spans", "videos": anomalies}, indent=1))
    (folder / "manifest.json").write_text(json.dumps({
        "generator": "vpclib.synthetic.make_synthetic_dataset",
        "parameters": p,
        "layout": "ucsd",
        "kinds": list(KINDS),
        "scene": {"walkway_rows": [scene.walk_top, scene.walk_bottom],
                  "static_rows": scene.static_rows,
                  "normal_speed_px_per_frame": list(NORMAL_SPEED),
                  "noise_sigma": NOISE_SIGMA, "noise_max": NOISE_MAX},
    }, indent=1))


def _save_mat(path: Path, variables: dict) -> None:
    """scipy.io.savemat with a fixed header text instead of the creation time: same bytes for
    the same seed."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    data = bytearray(buffer.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by vpclib.synthetic".ljust(116, b" ")  # header text
    path.write_bytes(bytes(data))


def _runs(mask: np.ndarray) -> list[list[int]]:
    """[[start, end], ...] 0-based inclusive runs of 1s in a (F,) bool mask."""
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [[int(s), int(e) - 1] for s, e in zip(edges[::2], edges[1::2])]
