"""Coreset: greedy k-center subsampling of a memory (METHOD.md §6), as in PatchCore.

Start from index 0; keep, for every vector, its L2 distance to the nearest selected vector;
repeatedly select the vector with the largest such distance (ties: the lowest index). The
distance update is one chunked pass over the vectors per selection, on whatever device they are.
"""

from __future__ import annotations

import numpy as np
import torch


def coreset_size(n_vectors: int, ratio: float) -> int:
    """l = int(r * N), and never fewer than one."""
    return max(1, int(ratio * n_vectors))


def random_projection(vectors: torch.Tensor, eps: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Sparse random projection to the Johnson-Lindenstrauss dimension for `eps` (PatchCore's option).

    (N, D) -> (N, D') with D' <= D; returns the vectors unchanged when D' would not be smaller.
    """
    from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim
    n, d = vectors.shape
    if johnson_lindenstrauss_min_dim(n, eps=eps) >= d:
        return vectors
    projection = SparseRandomProjection(eps=eps, random_state=seed).fit(np.zeros((n, d), np.float32))
    matrix = torch.as_tensor(projection.components_.toarray(), dtype=vectors.dtype, device=vectors.device)
    return vectors @ matrix.T                                                # (N, D')


@torch.no_grad()
def greedy_coreset(vectors: torch.Tensor, n_select: int, chunk: int = 1 << 20) -> torch.Tensor:
    """Indices of `n_select` vectors chosen greedily (k-center) from (N, D): -> (n_select,) long."""
    n = vectors.shape[0]
    n_select = min(n_select, n)
    nearest = torch.full((n,), float("inf"), device=vectors.device)          # (N,) distance to the coreset
    selected = torch.zeros(n_select, dtype=torch.long, device=vectors.device)
    index = torch.zeros((), dtype=torch.long, device=vectors.device)    # a tensor: no GPU sync per step
    for step in range(n_select):
        selected[step] = index
        center = vectors[index]                                              # (D,)
        for lo in range(0, n, chunk):
            d = torch.linalg.vector_norm(vectors[lo:lo + chunk] - center, dim=1)
            nearest[lo:lo + chunk] = torch.minimum(nearest[lo:lo + chunk], d)
        index = torch.argmax(nearest)
    return selected
