"""Memory: the three memories of normal training features, spatial, temporal and high-level
(METHOD.md §6); stage 3 of `pipeline.run`.

Each memory is built PER TRAINING VIDEO: that video's vectors are subsampled by greedy coreset
(l = int(r * N_video), at least one) and the per-video results are concatenated. The memory keeps
which video each vector came from, so a training video can be scored against the others
(leave-one-video-out) to calibrate the label-free fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .coreset import coreset_size, greedy_coreset, random_projection

MEMORIES = ("spatial", "temporal", "highlevel")


@dataclass
class Memory:
    """One memory: vectors (N, D); for each, the training video it came from (N,) and its row
    among that video's candidate vectors (N,) (for spatial: object = row // 49, patch = row % 49)."""
    vectors: np.ndarray
    video: np.ndarray
    row: np.ndarray

    @property
    def megabytes(self) -> float:
        return self.vectors.nbytes / 2**20

    def without_video(self, video_index: int) -> np.ndarray:
        """The memory less the vectors of one training video: (N', D)."""
        return self.vectors[self.video != video_index]


def build_memory(per_video: list[np.ndarray], ratio: float, device: str = "cpu",
               projection: bool = False, projection_eps: float | None = None) -> Memory:
    """Coreset each video's vectors (N_v, D) and concatenate -> Memory (N, D). With `projection`, each
    video's vectors are projected first (coreset.random_projection at `projection_eps`, the params'
    method.coreset_projection_eps: its one default is in config.MethodConfig)."""
    if projection and projection_eps is None:
        raise ValueError("a projected coreset needs projection_eps (method.coreset_projection_eps)")
    kept, owner, rows = [], [], []
    for v, vectors in enumerate(per_video):
        if len(vectors) == 0:
            continue
        x = torch.as_tensor(vectors, dtype=torch.float32, device=device)    # (N_v, D)
        if projection:
            x = random_projection(x, projection_eps)
        index = greedy_coreset(x, coreset_size(len(vectors), ratio)).cpu().numpy()
        kept.append(vectors[index])
        owner.append(np.full(len(index), v, dtype=np.int32))
        rows.append(index.astype(np.int64))
    if not kept:
        raise ValueError("no vectors to build a memory from")
    return Memory(np.concatenate(kept).astype(np.float32), np.concatenate(owner), np.concatenate(rows))


def merge_memories(parts: list[Memory]) -> Memory:
    """Memories built (build_memory) on disjoint sets of training videos, their video indices in
    one numbering -> the memory of all those videos, its vectors in video order as build_memory
    makes them: each video's coreset depends on that video alone, so this is exact."""
    vectors, video, row = (np.concatenate([getattr(p, k) for p in parts]) for k in ("vectors", "video", "row"))
    order = np.argsort(video, kind="stable")                                 # a video's rows keep their order
    return Memory(vectors[order], video[order], row[order])


def save_memory(path, memories: dict[str, Memory]) -> None:
    """Write the memories to an .npz file (no pickles)."""
    arrays = {}
    for name, memory in memories.items():
        arrays[f"{name}_vectors"], arrays[f"{name}_video"], arrays[f"{name}_row"] = memory.vectors, memory.video, memory.row
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_memory(path) -> dict[str, Memory]:
    with np.load(path, allow_pickle=False) as z:
        return {name: Memory(z[f"{name}_vectors"], z[f"{name}_video"], z[f"{name}_row"]) for name in MEMORIES}
