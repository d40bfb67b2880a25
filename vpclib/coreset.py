"""Coreset: greedy k-center subsampling of a memory (METHOD.md §6), as in PatchCore.

Start from index 0; keep, for every vector, its L2 distance to the nearest selected vector;
repeatedly select the vector with the largest such distance (ties: the lowest index). The
distance update is one chunked pass over the vectors per selection, on whatever device they are.
"""

from __future__ import annotations

import numpy as np
import torch

GRAPH_STEPS = 32   # greedy selections per CUDA graph replay


def coreset_size(n_vectors: int, ratio: float) -> int:
    """l = int(r * N), and never fewer than one."""
    return max(1, int(ratio * n_vectors))


def random_projection(vectors: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """Sparse random projection to the Johnson-Lindenstrauss dimension for `eps` (PatchCore's option).

    (N, D) -> (N, D') with D' <= D; returns the vectors unchanged when D' would not be smaller.
    The matrix is sklearn's `SparseRandomProjection(eps, random_state=seed)` for N samples (the
    same entries; only its shape depends on N), applied as one dense product on the vectors' device.
    """
    from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim
    n, d = vectors.shape
    n_components = int(johnson_lindenstrauss_min_dim(n, eps=eps))
    if n_components >= d:
        return vectors
    projection = SparseRandomProjection(n_components, random_state=seed).fit(np.zeros((1, d), np.float32))
    matrix = torch.as_tensor(projection.components_.toarray(), dtype=vectors.dtype, device=vectors.device)
    return vectors @ matrix.T                                                # (N, D')


@torch.no_grad()
def greedy_coreset(vectors: torch.Tensor, n_select: int, chunk: int = 1 << 20) -> torch.Tensor:
    """Indices of `n_select` vectors chosen greedily (k-center) from (N, D): -> (n_select,) long.

    On CUDA, runs of GRAPH_STEPS selections are captured once in a CUDA graph and replayed: the
    same kernels on the same data (the same indices), without a launch per operation per step.
    """
    n = vectors.shape[0]
    n_select = min(n_select, n)
    if vectors.is_cuda and n_select > 2 * GRAPH_STEPS:
        return _greedy_coreset_graphed(vectors, n_select, chunk)
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


def _greedy_coreset_graphed(vectors: torch.Tensor, n_select: int, chunk: int) -> torch.Tensor:
    """`greedy_coreset` on CUDA: the selection loop in replays of a graph of GRAPH_STEPS steps.

    The state lives in device tensors that the graph updates in place: the distances to the
    coreset (N,), the selected indices, the next index and the step counter. Up to GRAPH_STEPS - 1
    surplus steps run past n_select; their selections are dropped.
    """
    n = vectors.shape[0]
    n_run = -(-n_select // GRAPH_STEPS) * GRAPH_STEPS
    device = vectors.device
    nearest = torch.full((n,), float("inf"), device=device)                  # (N,) distance to the coreset
    selected = torch.zeros(n_run, dtype=torch.long, device=device)
    index = torch.zeros(1, dtype=torch.long, device=device)
    step = torch.zeros(1, dtype=torch.long, device=device)

    def steps():
        for _ in range(GRAPH_STEPS):
            selected.index_copy_(0, step, index)
            center = vectors.index_select(0, index)[0]                       # (D,)
            for lo in range(0, n, chunk):
                d = torch.linalg.vector_norm(vectors[lo:lo + chunk] - center, dim=1)
                torch.minimum(nearest[lo:lo + chunk], d, out=nearest[lo:lo + chunk])
            index.copy_(torch.argmax(nearest).view(1))
            step.add_(1)

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        steps()                                                              # the first steps, eagerly (warm-up)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        steps()
    for _ in range(n_run // GRAPH_STEPS - 1):
        graph.replay()
    return selected[:n_select].clone()
