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
