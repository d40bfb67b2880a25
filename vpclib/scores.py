"""Scores: distance of a clip's vectors to a memory (METHOD.md §7).

s(Q, M) = (max over q in Q of min over m in M of ||q - m||_2) ** n.
- spatial score of a clip: max over its objects of s(49 patch vectors, spatial bank);
- temporal score: max over its objects of s(T-1 vectors, temporal bank);
- high-level score: s(T high-level vectors, high-level bank).
A clip without objects gets local scores 0; each clip score is given to all T frames of the clip.
The nearest-neighbour search runs chunked as matrix products on the device; the distance to the
neighbour found is then recomputed directly, so values do not suffer from the |q|^2 + |m|^2 - 2qm
cancellation.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 8192,
                      bank_chunk: int = 1 << 16) -> torch.Tensor:
    """L2 distance of each query to its nearest bank vector: (Q, D), (N, D) -> (Q,).

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
    block = min(n, bank_chunk)
    rows = max(1, min(chunk, (1 << 27) // max(1, block)))                   # bound the (rows, block) block
    for lo in range(0, len(queries), rows):
        q = queries[lo:lo + rows]                                            # (q, D)
        augmented = q.new_zeros(len(q), width)                               # (q, D') = [q, 1, 0...]
        augmented[:, :d], augmented[:, d] = q, 1.0
        best, nearest = None, None
        for b in range(0, n, block):
            value, index = (augmented @ ranked[b:b + block].T).min(1)       # (q,) first minimum of the block
            if best is None:
                best, nearest = value, index
            else:
                closer = value < best                                        # ties keep the earlier block
                best, nearest = torch.where(closer, value, best), torch.where(closer, index + b, nearest)
        out[lo:lo + rows] = torch.linalg.vector_norm(q - bank[nearest], dim=1)
    return out


def set_score(distances: torch.Tensor, power: int) -> torch.Tensor:
    """(... , V) nearest distances of a set's V vectors -> (...) score max(d) ** n."""
    return distances.amax(-1) ** power


def local_clip_scores(vectors: torch.Tensor, object_clip: torch.Tensor, n_clips: int,
                      bank: torch.Tensor, power: int) -> torch.Tensor:
    """Clip scores of a local stream: max over each clip's objects of s(object vectors, bank).

    vectors (K, V, D) with V = 49 (spatial) or T-1 (temporal); object_clip (K,) clip of each
    object -> (B,), 0 for clips without objects.
    """
    scores = torch.zeros(n_clips, device=bank.device)
    if len(vectors) == 0:
        return scores
    k, v, d = vectors.shape
    dist = nearest_distances(vectors.reshape(k * v, d), bank).view(k, v)     # (K, V)
    per_object = set_score(dist, power)                                      # (K,)
    return scores.scatter_reduce(0, object_clip.long(), per_object, reduce="amax", include_self=True)


def highlevel_clip_scores(vectors: torch.Tensor, bank: torch.Tensor, power: int) -> torch.Tensor:
    """(B, T, D) high-level vectors -> (B,) s(T vectors of the clip, high-level bank)."""
    b, t, d = vectors.shape
    return set_score(nearest_distances(vectors.reshape(b * t, d), bank).view(b, t), power)


def clip_to_frames(clip_scores: np.ndarray, clip_length: int) -> np.ndarray:
    """Give each clip's score to its T frames: (B,) -> (B*T,)."""
    return np.repeat(np.asarray(clip_scores), clip_length)
