"""Checks run before a long stage or a model load, so that a bad parameter fails in seconds with
a message naming it: the timm stages and channel groups against the encoder's architecture, a
detector's weights by one tiny prediction, and error texts shortened to what helps the user.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ConfigError, WeightsUnavailableError


def short_error(err: BaseException) -> str:
    """'<Type>: <first line>' of an exception from a library, without advice we must never give
    (PyTorch suggests `weights_only=False`, i.e. unpickling an untrusted file)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    text = text.splitlines()[0] if text else ""
    text = re.split(r"(?i)\s*(this file can still be loaded|in pytorch 2\.6|weights_only|please file an issue|"
                    r"we recommend|recommended fixes)", text)[0]
    text = text.split("(1) ")[0].rstrip(" .:;,(")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def timm_stage_info(name: str) -> list[dict]:
    """[{'num_chs', 'reduction', 'module'}] of every feature stage of timm model `name` (random init)."""
    import timm
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as err:
        raise ConfigError(f"params key 'encoder.backbone': timm has no model '{name}' ({short_error(err)})") from None
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(f"params key 'encoder.backbone': timm model '{name}' lists no feature stages")
    return [dict(i) for i in info]


def check_encoder_params(cfg) -> None:
    """ConfigError naming encoder.timm_stages when a stage is out of the model's range."""
    e = cfg.encoder
    if not e.backbone.startswith("timm:"):
        return
    stages = timm_stage_info(e.backbone.removeprefix("timm:"))
    bad = [s for s in e.timm_stages if not 0 <= s < len(stages)]
    if bad:
        listing = ", ".join(f"{i} (stride {s['reduction']}, {s['num_chs']} channels)" for i, s in enumerate(stages))
        raise ConfigError(f"params key 'encoder.timm_stages' is {e.timm_stages}: {e.backbone} has feature "
                          f"stages 0..{len(stages) - 1}: {listing}")


def check_channel_groups(cfg, channels) -> None:
    """ConfigError naming method.channel_groups unless it divides the encoder's mid + deep channels D."""
    d, c = int(sum(channels)), cfg.method.channel_groups
    if d % c:
        divisors = [k for k in range(1, d + 1) if d % k == 0]
        near = sorted(divisors, key=lambda k: abs(k - c))[:4]
        raise ConfigError(f"params key 'method.channel_groups' is {c}, which does not divide the D = "
                          f"{' + '.join(str(int(x)) for x in channels)} = {d} channels of {cfg.encoder.backbone}; "
                          f"choose a divisor, e.g. {', '.join(map(str, sorted(near)))}")


def warm_up_detector(detector, cfg) -> None:
    """One prediction on a small black frame: ultralytics reads some weight formats only then,
    and a corrupt or unsupported file must fail here, naming objects.weights, not mid-run."""
    if not hasattr(detector, "detect") or cfg.objects.detector not in ("ultralytics", "yolov5-hub"):
        return
    try:
        detector.detect(np.zeros((64, 64, 3), np.uint8))
    except Exception as err:
        key = "objects.weights" if cfg.objects.detector == "ultralytics" else "objects.hub_model"
        value = cfg.objects.weights if cfg.objects.detector == "ultralytics" else cfg.objects.hub_model
        raise WeightsUnavailableError(
            f"params key '{key}': {value} cannot be run by {cfg.objects.detector} ({short_error(err)}). "
            f"Use a weight file from ultralytics (e.g. yolov5lu.pt) or one exported by it") from None
