"""Shared fixtures. Downloads are switched off before anything imports huggingface_hub or ultralytics."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"

import numpy as np
import pytest
import torch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


class FakeVideo:
    """The part of `vpclib.datasets.Video` the object stage uses, from in-memory frames.

    Records every index list passed to `iter_frames`.
    """

    def __init__(self, frames: np.ndarray, name: str = "v0"):
        self.frames = frames                                   # (F, H, W, 3) uint8
        self.name = name
        self.n_frames = len(frames)
        self.frame_size = (frames.shape[2], frames.shape[1])   # (width, height)
        self.requests: list[list[int]] = []

    def iter_frames(self, indices=None):
        wanted = list(range(self.n_frames)) if indices is None else sorted({int(i) for i in indices})
        self.requests.append(wanted)
        return ((i, self.frames[i]) for i in wanted)


@pytest.fixture
def fake_video_cls():
    return FakeVideo


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in `text`, each a list of stripped cells
    (header and separator dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def reflect_smooth(x, sigma: float):
    """Gaussian smoothing written out: weights exp(-k^2 / 2 sigma^2) for |k| <= int(4 sigma + 0.5),
    normalised, the signal mirrored at its ends (d c b a | a b c d | d c b a); sigma 0: unchanged."""
    import math
    x = [float(v) for v in x]
    if sigma <= 0:
        return np.array(x)
    radius = int(4 * sigma + 0.5)
    weights = [math.exp(-0.5 * k * k / (sigma * sigma)) for k in range(-radius, radius + 1)]
    total = sum(weights)
    n, out = len(x), []
    for i in range(n):
        acc = 0.0
        for w, k in zip(weights, range(-radius, radius + 1)):
            j = i + k
            while j < 0 or j >= n:
                j = -j - 1 if j < 0 else 2 * n - j - 1
            acc += w * x[j]
        out.append(acc / total)
    return np.array(out)
