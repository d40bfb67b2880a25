"""Scores: distance of a clip's vectors to a memory (METHOD.md §7).

s(Q, M) = (max over q in Q of min over m in M of ||q - m||_2) ** n.
- spatial score of a clip: max over its objects of s(49 patch vectors, spatial bank);
- temporal score: max over its objects of s(T-1 vectors, temporal bank);
- high-level score: s(T high-level vectors, high-level bank).
A clip without objects gets local scores 0; each clip score is given to all T frames of the clip.

Two arithmetics for the nearest distances (config key `arithmetic`):
- "reference": the authors' `torch.cdist(Q, M).min(1)`, one call per query set Q (an object's 49
  patches or T-1 temporal vectors, a clip's T high-level vectors), Q laid out in memory as the
  reference builds it. For these sizes cdist takes the matrix-product form |q|^2 + |m|^2 - 2q.m
  in float32, which cancels when q and m are close: up to ~2e-3 from the true distance.
- "exact": the nearest vector is found by chunked matrix products on the device, and the distance
  to it is then computed directly, ||q - m||.
"""

from __future__ import annotations

import numpy as np
import torch


ARITHMETIC = ("reference", "exact")


@torch.no_grad()
def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 8192,
                      bank_chunk: int = 1 << 16) -> torch.Tensor:
    """Exact L2 distance of each query to its nearest bank vector: (Q, D), (N, D) -> (Q,)."""
    return nearest(queries, bank, chunk, bank_chunk)[0]


@torch.no_grad()
def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 8192,
            bank_chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest bank vector: (Q, D), (N, D) -> exact distances (Q,), indices (Q,).

    The search ranks bank vectors by |m|^2 - 2 q.m (|q|^2 is the same for every m), as ONE matrix
    product of augmented vectors [q, 1] . [-2m, |m|^2] (zero-padded to a multiple of 8 dims), in
    blocks of at most `chunk` queries x `bank_chunk` bank vectors (2**27 entries at most),
    keeping the first nearest index across blocks; the distance to it is then computed directly.
    """
    n, d = bank.shape
    width = (d + 1 + 7) // 8 * 8
    ranked = bank.new_zeros(n, width)                                        # (N, D') = [-2m, |m|^2, 0...]
    ranked[:, :d] = -2.0 * bank
    ranked[:, d] = (bank * bank).sum(1)
    out = torch.empty(len(queries), device=queries.device)
    found = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    block = min(n, bank_chunk)
    rows = max(1, min(chunk, (1 << 27) // max(1, block)))                   # bound the (rows, block) block
    for lo in range(0, len(queries), rows):
        q = queries[lo:lo + rows]                                            # (q, D)
        augmented = q.new_zeros(len(q), width)                               # (q, D') = [q, 1, 0...]
        augmented[:, :d], augmented[:, d] = q, 1.0
        best, best_index = None, None
        for b in range(0, n, block):
            value, index = (augmented @ ranked[b:b + block].T).min(1)       # (q,) first minimum of the block
            if best is None:
                best, best_index = value, index
            else:
                closer = value < best                                        # ties keep the earlier block
                best, best_index = torch.where(closer, value, best), torch.where(closer, index + b, best_index)
        out[lo:lo + rows] = torch.linalg.vector_norm(q - bank[best_index], dim=1)
        found[lo:lo + rows] = best_index
    return out, found


@torch.no_grad()
def reference_set_distances(query_sets: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The reference's nearest distances, set by set: (S, V, D), (N, D) -> (S, V).

    For each set: torch.cdist(Q, M).min(1), with Q (V, D) the transpose of a contiguous (D, V)
    tensor, the layout the reference's reshapes leave (its sum of squares, hence every distance,
    rounds by layout). One call per set, the whole bank at once: batching sets or splitting the
    bank lets BLAS pick other kernels, which round differently.
    """
    out = torch.empty(query_sets.shape[:2], device=query_sets.device)        # (S, V)
    for i, q in enumerate(query_sets):
        out[i] = torch.cdist(q.t().contiguous().t(), bank).amin(1)
    return out


def set_distances(query_sets: torch.Tensor, bank: torch.Tensor, arithmetic: str = "reference") -> torch.Tensor:
    """Nearest distance of every vector of every set: (S, V, D), (N, D) -> (S, V)."""
    if arithmetic == "reference":
        return reference_set_distances(query_sets, bank)
    if arithmetic == "exact":
        s, v, d = query_sets.shape
        return nearest_distances(query_sets.reshape(s * v, d), bank).view(s, v)
    raise ValueError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")


def set_score(distances: torch.Tensor, power: int) -> torch.Tensor:
    """(... , V) nearest distances of a set's V vectors -> (...) score max(d) ** n."""
    return distances.amax(-1) ** power


def local_clip_scores(vectors: torch.Tensor, object_clip: torch.Tensor, n_clips: int,
                      bank: torch.Tensor, power: int, arithmetic: str = "reference") -> torch.Tensor:
    """Clip scores of a local stream: max over each clip's objects of s(object vectors, bank).

    vectors (K, V, D) with V = 49 (spatial) or T-1 (temporal); object_clip (K,) clip of each
    object -> (B,), 0 for clips without objects.
    """
    scores = torch.zeros(n_clips, device=bank.device)
    if len(vectors) == 0:
        return scores
    per_object = set_score(set_distances(vectors, bank, arithmetic), power)  # (K,)
    return scores.scatter_reduce(0, object_clip.long(), per_object, reduce="amax", include_self=True)


def highlevel_clip_scores(vectors: torch.Tensor, bank: torch.Tensor, power: int,
                          arithmetic: str = "reference") -> torch.Tensor:
    """(B, T, D) high-level vectors -> (B,) s(T vectors of the clip, high-level bank)."""
    return set_score(set_distances(vectors, bank, arithmetic), power)


def clip_to_frames(clip_scores: np.ndarray, clip_length: int) -> np.ndarray:
    """Give each clip's score to its T frames: (B,) -> (B*T,)."""
    return np.repeat(np.asarray(clip_scores), clip_length)
