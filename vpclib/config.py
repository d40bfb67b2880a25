"""Configuration: one dataclass tree holds every default; a params YAML per dataset overrides it.

Unknown keys and wrong types raise `ConfigError` naming the key. The resolved config is saved
beside every result (`Config.to_dict`), and each stage's cache key is a hash of the part of the
config that stage depends on (`stage_params`), with a fingerprint of the files it read
(`vpclib.keys`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

DISK_LAYOUTS = ("avenue", "shanghaitech", "iitb", "ucsd", "folder", "video")   # datasets.load_split reads these
LAYOUTS = ("synthetic", *DISK_LAYOUTS)   # synthetic: generated, then read in the ucsd layout
DETECTORS = ("motion", "ultralytics", "yolov5-hub", "boxes")
PREPROCESSING = ("faithful", "clip", "imagenet", "inception")
LABELFREE = ("calibrated", "fixed")
ARITHMETIC = ("reference", "exact")
KNN = ("exact", "fast")
DIS_PRESETS = ("ultrafast", "fast", "medium")   # cv2.DISOPTICAL_FLOW_PRESET_*: velocity.dis_preset
PRETRAINED_KEYWORDS = ("openai", "timm", "random", "efficientnet-lite0-pypi", "efficientnet-lite1-pypi",
                       "efficientnet-lite2-pypi", "efficientnet-lite0-pypi-timm-legacy")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
COCO_KEPT_CLASSES = (0, 1, 2, 3, 7)   # person, bicycle, car, motorcycle, truck: objects.classes' default


@dataclass
class SyntheticConfig:
    """Parameters of the embedded synthetic scenes (`vpclib.synthetic`)."""
    seed: int = 0
    n_train: int = 4
    n_test: int = 6
    n_frames: int = 96
    width: int = 240
    height: int = 160


@dataclass
class DataConfig:
    """Where the videos are and how they are laid out (METHOD.md §1, §9, §10)."""
    name: str = "synthetic"
    layout: str = "synthetic"            # one of LAYOUTS
    root: str = ""                       # dataset root; the CLI's --data-root overrides it
    label_file: str = ""                 # optional override of the ground-truth file
    skip_first_frame: bool = False       # IITB: clip k starts at 1 + k*T
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ObjectsConfig:
    """Object detection on the middle frame of each clip, then box growth (METHOD.md §2)."""
    detector: str = "motion"             # one of DETECTORS
    weights: str = "yolov8l.pt"          # ultralytics: weight file or export folder (name or local path);
                                         # yolov5-hub with hub_repo: the local YOLOv5 .pt file
    hub_model: str = "yolov5l"           # yolov5-hub without hub_repo: model downloaded from ultralytics/yolov5
    hub_repo: str = ""                   # yolov5-hub: a local ultralytics/yolov5 source folder (offline)
    detector_size: int = 640             # YOLO inference size in pixels (both YOLO detectors' default)
    boxes_file: str = ""                 # detector "boxes": a CSV of your own detections
    boxes_final: bool = False            # the CSV's boxes are final (already grown, squared, clipped)
    boxes_drop_invalid: bool = False     # leave invalid CSV rows out (counted) instead of failing
    classes: list[int] = field(default_factory=lambda: list(COCO_KEPT_CLASSES))
    train_confidence: float = 0.7
    test_confidence: float = 0.6
    box_growth: float = 1.0              # factor f of METHOD.md §2
    crop_size: int = 64                  # crops are resized to crop_size x crop_size
    # motion detector (OpenCV background subtraction against a per-video median background)
    motion_threshold: int = 25           # grey-level difference that counts as foreground
    motion_min_area: int = 60            # smallest blob kept, in pixels
    motion_background_frames: int = 50   # frames sampled for the median background


@dataclass
class EncoderConfig:
    """The frozen image encoder and its two mid-level maps (METHOD.md §3)."""
    backbone: str = "clip_rn101"         # "clip_rn101" or "timm:<model name>"
    pretrained: str = "openai"           # "openai" / "timm" (hub), a local checkpoint path, or "random"
    timm_stages: list[int] = field(default_factory=lambda: [2, 3])  # timm feature stages (stride 8, 16)
    preprocessing: str = "faithful"      # one of PREPROCESSING
    fp16: bool = False                   # half precision on CUDA (the reference runs fp16)
    batch_size: int = 64
    seed: int = 0                        # seed of a random-init encoder
    fused: bool = False                  # BatchNorm folded into the convolutions + torch.compile (eager
                                         # fallback); needs arithmetic: exact (vpclib.encoder.FusedStages)


@dataclass
class MethodConfig:
    """Clips, features, memories and scores (METHOD.md §1, §4-§7)."""
    clip_length: int = 10                # T
    channel_groups: int = 32             # C
    coreset_ratio: float = 0.01          # r
    power: int = 4                       # n
    coreset_projection: bool = False     # sparse random projection before the coreset (off in the paper)
    coreset_projection_eps: float = 0.9


@dataclass
class ScoringConfig:
    """The nearest-neighbour search of the exact arithmetic (METHOD.md §7; vpclib.scores)."""
    knn: str = "exact"                   # one of KNN: "exact" ranks in float32; "fast" ranks in bf16 on
                                         # tensor cores and re-ranks `knn_candidates` per query in float32
    knn_candidates: int = 16


@dataclass
class FusionConfig:
    """The reference's oracle grid search and our label-free fusion (METHOD.md §8)."""
    a_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    b_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    sigma_grid: list[int] = field(default_factory=lambda: list(range(20)))
    labelfree: str = "calibrated"        # one of LABELFREE
    a: float = 0.5                       # label-free weights and smoothing, fixed in advance
    b: float = 0.5
    sigma: float = 8.0
    count_bins: int = 0                  # > 0: z per object-count bin (beyond the paper, fusion.count_stats); 0: off
    object_calibration: bool = False     # per-object (Sidak) z of the clip max (beyond the paper, fusion.object_z)


@dataclass
class VelocityConfig:
    """The optional velocity memory, beyond the paper (after AI-VAD; vpclib.velocity). Off by
    default: the faithful method, its cache keys and its outputs are untouched while it is off."""
    enabled: bool = False
    bins: int = 8                        # orientation bins of the flow histogram (AI-VAD: 8; 1 on Ped2: speed only)
    dis_preset: str = "medium"           # one of DIS_PRESETS: OpenCV DIS optical flow preset
    coreset_ratio: float = 1.0           # per-video coreset of the velocity memory; 1: keep every vector
    weight: float = 0.5                  # label-free fusion: + weight * z(velocity); 0.5 = b, the local stream's


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)
    device: str = "auto"                 # "auto", "cpu", "cuda" or "cuda:N"
    # one of ARITHMETIC. "reference": the authors' arithmetic, for their numbers to the last digit:
    # crops and frames resized as uint8 by OpenCV (8-bit bilinear, rounded), a contiguous NCHW
    # encoder input, torch.cdist(Q, M) distances (the |q|^2 + |m|^2 - 2qm form) per query set.
    # "exact": float resizing without rounding, channels-last on CUDA, exact nearest distances.
    arithmetic: str = "reference"

    def to_dict(self) -> dict:
        """Every value, as saved beside a result. The velocity section is left out while it holds
        its defaults (off), so config.json and metrics.json of the faithful method stay as they were."""
        out = dataclasses.asdict(self)
        if self.velocity == VelocityConfig():
            del out["velocity"]
        if not self.fusion.count_bins:                  # off (the default): config.json as it was
            del out["fusion"]["count_bins"]
        if not self.fusion.object_calibration:          # off (the default): config.json as it was
            del out["fusion"]["object_calibration"]
        return out


# ---------------------------------------------------------------------------------------------
# loading and validation

def _check_type(value, annotation, key: str):
    """Return `value` converted to `annotation`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"params key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"params key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"params key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {key}")  # a bug in this file


def _merge(obj, overrides: dict, prefix: str):
    """Apply a dict of overrides to a dataclass instance, recursively, validating each key."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"params section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {overrides!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown params key '{full}'; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _check_type(value, hints[key], full))
    return obj


def _validate(cfg: Config) -> Config:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"params key '{key}' {msg}")

    need(cfg.data.layout in LAYOUTS, "data.layout", f"must be one of {LAYOUTS}, got {cfg.data.layout!r}")
    need(cfg.objects.detector in DETECTORS, "objects.detector", f"must be one of {DETECTORS}, got {cfg.objects.detector!r}")
    need(cfg.encoder.preprocessing in PREPROCESSING, "encoder.preprocessing", f"must be one of {PREPROCESSING}")
    need(cfg.fusion.labelfree in LABELFREE, "fusion.labelfree", f"must be one of {LABELFREE}")
    need(cfg.arithmetic in ARITHMETIC, "arithmetic", f"must be one of {ARITHMETIC}, got {cfg.arithmetic!r}")
    need(cfg.scoring.knn in KNN, "scoring.knn", f"must be one of {KNN}, got {cfg.scoring.knn!r}")
    need(cfg.scoring.knn == "exact" or cfg.arithmetic == "exact", "scoring.knn",
         f"'{cfg.scoring.knn}' needs arithmetic: exact (the reference arithmetic is torch.cdist's, set by set)")
    need(cfg.scoring.knn_candidates >= 1, "scoring.knn_candidates", "must be >= 1")
    need(not cfg.encoder.fused or cfg.arithmetic == "exact", "encoder.fused",
         "needs arithmetic: exact (folded BatchNorm and compiled kernels round differently from the reference)")
    need(DEVICE_PATTERN.fullmatch(cfg.device) is not None, "device",
         f"must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_pretrained(cfg.encoder.pretrained)
    need(cfg.encoder.backbone == "clip_rn101" or cfg.encoder.backbone.startswith("timm:"),
         "encoder.backbone", f"must be 'clip_rn101' or 'timm:<model>', got {cfg.encoder.backbone!r}")
    need(len(cfg.encoder.timm_stages) == 2 and all(i >= 0 for i in cfg.encoder.timm_stages), "encoder.timm_stages",
         f"must name two stages (stride 8 and 16), each >= 0, got {cfg.encoder.timm_stages}")
    need(cfg.encoder.batch_size >= 1, "encoder.batch_size", "must be >= 1")
    need(cfg.method.clip_length >= 3, "method.clip_length", "must be >= 3 (the high-level pyramid needs T-2 >= 1)")
    need(cfg.method.channel_groups >= 1, "method.channel_groups", "must be >= 1")
    need(0.0 < cfg.method.coreset_ratio <= 1.0, "method.coreset_ratio", "must be in (0, 1]")
    need(cfg.method.power >= 1, "method.power", "must be >= 1")
    need(cfg.objects.box_growth >= 1.0, "objects.box_growth", "must be >= 1.0")
    need(cfg.objects.crop_size >= 8, "objects.crop_size", "must be >= 8")
    need(cfg.objects.detector_size >= 32, "objects.detector_size", "must be >= 32")
    for key in ("train_confidence", "test_confidence"):
        need(0.0 <= getattr(cfg.objects, key) < 1.0, f"objects.{key}", "must be in [0, 1)")
    need(0.0 <= cfg.fusion.a <= 1.0, "fusion.a", "must be in [0, 1]")
    need(0.0 <= cfg.fusion.b <= 1.0, "fusion.b", "must be in [0, 1]")
    need(cfg.fusion.sigma >= 0.0, "fusion.sigma", "must be >= 0")
    need(cfg.fusion.count_bins >= 0, "fusion.count_bins", "must be >= 0 (0: one calibration for every object count)")
    need(cfg.fusion.count_bins == 0 or cfg.fusion.labelfree == "calibrated", "fusion.count_bins",
         "conditions the 'calibrated' label-free fusion; with fusion.labelfree 'fixed' it must be 0")
    need(not cfg.fusion.object_calibration or cfg.fusion.labelfree == "calibrated", "fusion.object_calibration",
         "calibrates the 'calibrated' label-free fusion; with fusion.labelfree 'fixed' it must be false")
    need(not (cfg.fusion.object_calibration and cfg.fusion.count_bins), "fusion.object_calibration",
         "and fusion.count_bins are two calibrations of the clip max: set one of them (count_bins 0)")
    need(len(cfg.fusion.a_grid) > 0 and len(cfg.fusion.b_grid) > 0 and len(cfg.fusion.sigma_grid) > 0,
         "fusion.*_grid", "must not be empty")
    need(cfg.velocity.bins >= 1, "velocity.bins", "must be >= 1 (1: the mean speed in the box, no direction)")
    need(cfg.velocity.dis_preset in DIS_PRESETS, "velocity.dis_preset",
         f"must be one of {DIS_PRESETS}, got {cfg.velocity.dis_preset!r}")
    need(0.0 < cfg.velocity.coreset_ratio <= 1.0, "velocity.coreset_ratio", "must be in (0, 1]")
    need(cfg.velocity.weight >= 0.0, "velocity.weight", "must be >= 0")
    need(cfg.objects.detector != "boxes" or cfg.objects.boxes_file, "objects.boxes_file",
         "must be set when objects.detector is 'boxes'")
    need(cfg.data.layout == "synthetic" or cfg.data.root, "data.root",
         "must be set (in the params file or with --data-root) for a real dataset")
    return cfg


def is_checkpoint_path(pretrained: str) -> bool:
    """encoder.pretrained names a file (not one of PRETRAINED_KEYWORDS)."""
    return pretrained not in PRETRAINED_KEYWORDS


def _check_pretrained(value: str) -> None:
    """A keyword, or something that is plainly a path: a separator, a checkpoint suffix, or an
    existing file. Anything else is a typo of a keyword, reported with the keywords."""
    if value in PRETRAINED_KEYWORDS:
        return
    looks_like_path = ("/" in value or os.sep in value or value.startswith("~")
                       or value.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.isfile(value))
    if not looks_like_path:
        close = difflib.get_close_matches(value, PRETRAINED_KEYWORDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"params key 'encoder.pretrained' is {value!r}: neither a keyword "
                          f"({', '.join(PRETRAINED_KEYWORDS)}) nor a checkpoint file (a path, or a name ending "
                          f"in {', '.join(CHECKPOINT_SUFFIXES)}).{hint}")


def from_dict(overrides: dict | None = None) -> Config:
    """Defaults overridden by `overrides` (nested dict), validated."""
    return _validate(_merge(Config(), overrides or {}, ""))


def _set_dotted(raw: dict, dotted: str, value, where: str) -> None:
    """raw["a"]["b"] = value for dotted "a.b"; a mapping value is merged into a mapping already there."""
    node = raw
    *parents, last = dotted.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: params section '{'.'.join(parents[:i + 1])}' must be a mapping "
                              f"to take the override '{dotted}', got {node!r}")
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for key, item in value.items():
            _set_dotted(node[last], key, item, where)
    else:
        node[last] = value


def read_params(path, sets: dict | None = None, **overrides) -> dict:
    """The params YAML at `path` as a nested dict, with dotted-key `overrides` (None values are
    skipped: an option not given) and then `sets` (the CLI's --set KEY=VALUE, applied in order,
    None included) written in. Not validated: `load_params` does that."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}                 # an empty file: every default
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {path} must hold a mapping at the top level")
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(raw, dotted, value, str(path))
    for dotted, value in (sets or {}).items():
        _set_dotted(raw, dotted, value, f"{path} with --set {dotted}")
    return raw


def load_params(path, sets: dict | None = None, **overrides) -> Config:
    """Read a params YAML, apply dotted-key `overrides` (e.g. {"data.root": "/x"}; None: not
    given) and `sets` (e.g. {"method.power": 2}, from --set), validate: every override is checked
    exactly like a key of the file."""
    raw = read_params(path, sets, **overrides)
    try:
        return from_dict(raw)
    except ConfigError as err:
        given = f" with --set {', '.join(sets)}" if sets else ""
        raise ConfigError(f"{path}{given}: {err}") from None


# ---------------------------------------------------------------------------------------------
# cache keys: which part of the config each stage depends on

STAGES = ("objects", "features", "memory", "metrics")


def stage_params(cfg: Config, stage: str, split: str | None = None) -> dict:
    """The resolved parameters that change `stage`'s result: {dotted key: value}.

    stage: objects, features (each of one split: 'train' or 'test'; None: both splits' values),
    memory (training features + coreset) or metrics (memory, test features, scores and fusion).
    Each stage holds the keys of the stages it reads. Only values that change the result: the
    other detector's settings, performance settings (batch size, device), names and paths are
    left out; files named by a parameter (weights, boxes, checkpoints, labels, frames) enter the
    cache key as a fingerprint of their content (vpclib.keys), not here.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    d, o, e, m = cfg.data, cfg.objects, cfg.encoder, cfg.method
    if stage == "memory":
        out = stage_params(cfg, "features", "train")
        out.update({"method.coreset_ratio": m.coreset_ratio, "method.coreset_projection": m.coreset_projection})
        if m.coreset_projection:
            out["method.coreset_projection_eps"] = m.coreset_projection_eps
        return out
    if stage == "metrics":
        out = {**stage_params(cfg, "memory"), **stage_params(cfg, "features", "test"), "method.power": m.power}
        if cfg.scoring.knn != "exact":                       # the default leaves earlier keys as they were
            out.update({"scoring.knn": cfg.scoring.knn, "scoring.knn_candidates": cfg.scoring.knn_candidates})
        out.update({f"fusion.{k}": v for k, v in dataclasses.asdict(cfg.fusion).items()
                    if k not in ("count_bins", "object_calibration") or v})   # off (the default): the key as it was
        if cfg.velocity.enabled:                             # off (the default) leaves the key as it was
            out.update({**velocity_params(cfg), "velocity.coreset_ratio": cfg.velocity.coreset_ratio,
                        "velocity.weight": cfg.velocity.weight})
        return out
    out = {"data.layout": d.layout, "data.skip_first_frame": d.skip_first_frame, "method.clip_length": m.clip_length,
           "objects.detector": o.detector, "objects.classes": list(o.classes), "objects.box_growth": o.box_growth}
    if d.layout == "synthetic":
        out["data.synthetic"] = dataclasses.asdict(d.synthetic)
    for s in ("train", "test"):
        if split in (None, s):
            out[f"objects.{s}_confidence"] = getattr(o, f"{s}_confidence")
    if o.detector == "motion":
        out.update({f"objects.{k}": getattr(o, k) for k in ("motion_threshold", "motion_min_area",
                                                             "motion_background_frames")})
    elif o.detector == "yolov5-hub":
        out["objects.detector_size"] = o.detector_size
        if not o.hub_repo:                                   # a local weights file enters as its content hash
            out["objects.hub_model"] = o.hub_model
    elif o.detector == "ultralytics":
        out["objects.detector_size"] = o.detector_size
    elif o.detector == "boxes":
        out.update({"objects.boxes_final": o.boxes_final, "objects.boxes_drop_invalid": o.boxes_drop_invalid})
    if stage == "objects":
        return out
    out.update({"objects.crop_size": o.crop_size, "encoder.backbone": e.backbone,
                "encoder.preprocessing": e.preprocessing, "encoder.fp16": e.fp16,
                "method.channel_groups": m.channel_groups, "arithmetic": cfg.arithmetic})
    if e.backbone.startswith("timm:"):
        out["encoder.timm_stages"] = list(e.timm_stages)
    if not is_checkpoint_path(e.pretrained):
        out["encoder.pretrained"] = e.pretrained             # a file enters the key as its content hash
    if e.pretrained == "random":
        out["encoder.seed"] = e.seed
    if e.fused:                                              # the default leaves earlier keys as they were
        out["encoder.fused"] = True
    return out


def velocity_params(cfg: Config) -> dict:
    """The parameters that change velocity/<split>.npz (vpclib.velocity) beyond its objects: the
    flow and the histogram. The memory's coreset ratio and the fusion weight enter the metrics' key."""
    return {"velocity.bins": cfg.velocity.bins, "velocity.dis_preset": cfg.velocity.dis_preset}


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
