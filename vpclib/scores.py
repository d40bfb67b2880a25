"""Scores: distance of a clip's vectors to a memory (METHOD.md §7).

s(Q, M) = (max over q in Q of min over m in M of ||q - m||_2) ** n.
- spatial score of a clip: max over its objects of s(49 patch vectors, spatial memory);
- temporal score: max over its objects of s(T-1 vectors, temporal memory);
- high-level score: s(T high-level vectors, high-level memory).
A clip without objects gets local scores 0; each clip score is given to all T frames of the clip.

Two arithmetics for the nearest distances (config key `arithmetic`):
- "reference": the authors' `torch.cdist(Q, M).min(1)`, one call per query set Q (an object's 49
  patches or T-1 temporal vectors, a clip's T high-level vectors), Q laid out in memory as the
  reference builds it. For these sizes cdist takes the matrix-product form |q|^2 + |m|^2 - 2q.m
  in float32, which cancels when q and m are close: up to ~2e-3 from the true distance.
- "exact": the nearest vector is found by chunked matrix products on the device, and the distance
  to it is then computed directly, ||q - m||.

Two searches for the exact arithmetic (config key `scoring.knn`):
- "exact": `nearest`, ranking in float32 (one augmented matrix product per block);
- "fast": `nearest_fast`, ranking on tensor cores (bf16 on CUDA) to a few candidates per query,
  then the candidates re-ranked by their direct float32 distances: the same exact distances
  whenever the true nearest vector is among the candidates (a near-tie within the ranking's
  rounding can only swap it for a vector as close to within that rounding).
"""

from __future__ import annotations

import numpy as np
import torch


ARITHMETIC = ("reference", "exact")
KNN = ("exact", "fast")


@torch.no_grad()
def nearest_distances(queries: torch.Tensor, memory: torch.Tensor, chunk: int = 8192,
                      memory_chunk: int = 1 << 16) -> torch.Tensor:
    """Exact L2 distance of each query to its nearest memory vector: (Q, D), (N, D) -> (Q,)."""
    return nearest(queries, memory, chunk, memory_chunk)[0]


@torch.no_grad()
def nearest(queries: torch.Tensor, memory: torch.Tensor, chunk: int = 8192,
            memory_chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest memory vector: (Q, D), (N, D) -> exact distances (Q,), indices (Q,).

    The search ranks memory vectors by |m|^2 - 2 q.m (|q|^2 is the same for every m), as ONE matrix
    product of augmented vectors [q, 1] . [-2m, |m|^2] (zero-padded to a multiple of 8 dims), in
    blocks of at most `chunk` queries x `memory_chunk` memory vectors (2**27 entries at most),
    keeping the first nearest index across blocks; the distance to it is then computed directly.
    """
    n, d = memory.shape
    width = (d + 1 + 7) // 8 * 8
    ranked = memory.new_zeros(n, width)                                        # (N, D') = [-2m, |m|^2, 0...]
    ranked[:, :d] = -2.0 * memory
    ranked[:, d] = (memory * memory).sum(1)
    out = torch.empty(len(queries), device=queries.device)
    found = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    block = min(n, memory_chunk)
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
        out[lo:lo + rows] = torch.linalg.vector_norm(q - memory[best_index], dim=1)
        found[lo:lo + rows] = best_index
    return out, found


def ranking_dtype(device: torch.device) -> torch.dtype:
    """The fast search's ranking precision: bf16 on CUDA (tensor cores), float32 elsewhere (a CPU
    has no faster matrix product; the candidate logic is the same)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def low_precision_scores(q: torch.Tensor, memory_low: torch.Tensor, memory_sq: torch.Tensor) -> torch.Tensor:
    """Ranking scores |m|^2 - 2 q.m: (q, D) float32, (n, D) low precision, (n,) float32 -> (q, n) float32.

    The product q.m runs in memory_low's dtype with a float32 result (bf16 inputs, float32
    accumulation on tensor cores); |m|^2 is added in float32, so it does not round to bf16.
    """
    if memory_low.dtype == torch.float32:
        product = q @ memory_low.T                                             # (q, n)
    elif q.device.type == "cuda":
        product = torch.mm(q.to(memory_low.dtype), memory_low.T, out_dtype=torch.float32)
    else:                                                                    # CPU: no mm with a float32 result
        product = (q.to(memory_low.dtype) @ memory_low.T).float()
    return product.mul_(-2.0).add_(memory_sq)


@torch.no_grad()
def nearest_fast(queries: torch.Tensor, memory: torch.Tensor, candidates: int = 16, chunk: int = 8192,
                 memory_chunk: int = 1 << 18, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest memory vector, ranked in low precision, re-ranked exactly:
    (Q, D), (N, D) float32 -> distances (Q,) float32, indices (Q,).

    1. rank: scores |m|^2 - 2 q.m from a bf16 matrix product (float32 on CPU, `ranking_dtype`), in
       blocks of at most `chunk` queries x `memory_chunk` memory vectors, keeping each query's
       `candidates` lowest scores across blocks (topk of each block, merged); `dtype` overrides
       the ranking precision (tests rank in bf16 on CPU);
    2. re-rank: the candidates' direct float32 distances sum((q - m)^2), the smallest wins (the
       first candidate index among exact ties), sqrt.
    The distance returned is exact (as `nearest`'s) whenever the true nearest vector is among the
    candidates, which holds unless more than `candidates` memory vectors lie within the ranking's
    rounding (about 2^-8 |q| |m| in bf16) of the nearest.
    """
    n, d = memory.shape
    k = min(candidates, n)
    low = memory.to(dtype or ranking_dtype(memory.device))                       # (N, D)
    memory_sq = (memory * memory).sum(1)                                           # (N,) float32
    out = torch.empty(len(queries), device=queries.device)
    found = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    block = min(n, memory_chunk)
    rows = max(1, min(chunk, (1 << 28) // max(1, block), (1 << 26) // (k * d)))  # bound (rows, block), (rows, k, D)
    for lo in range(0, len(queries), rows):
        q = queries[lo:lo + rows]                                            # (q, D)
        best, best_index = None, None                                        # (q, k) lowest scores so far
        for b in range(0, n, block):
            scores = low_precision_scores(q, low[b:b + block], memory_sq[b:b + block])  # (q, block)
            value, index = scores.topk(min(k, scores.shape[1]), dim=1, largest=False)
            index += b
            if best is not None:
                value, merged = torch.cat([best, value], 1).topk(k, dim=1, largest=False)
                index = torch.cat([best_index, index], 1).gather(1, merged)
            best, best_index = value, index
        best_index, _ = best_index.sort(1)                                   # ties: the first memory index
        squared = ((q.unsqueeze(1) - memory[best_index]) ** 2).sum(2)          # (q, k) exact, float32
        winner = squared.argmin(1, keepdim=True)                             # first minimum
        out[lo:lo + rows] = squared.gather(1, winner).squeeze(1).sqrt()
        found[lo:lo + rows] = best_index.gather(1, winner).squeeze(1)
    return out, found


@torch.no_grad()
def nearest_tiles(queries: torch.Tensor, memory: torch.Tensor, candidates: int = 16, chunk: int = 16384,
                  dtype: torch.dtype | None = None, kernel: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast search with the fused ranking kernel: (Q, D), (N, D) float32 -> distances (Q,), indices (Q,).

    1. rank: each query's lowest ranking score in every tile of 64 memory vectors
       (`knn_kernel.tile_minima`: bf16 products reduced in registers, the (Q, N) block of scores
       never written; `kernel=False`, or no CUDA / Triton: the same minima in torch);
    2. keep the `candidates` tiles with the lowest minima;
    3. re-rank their 64 * candidates vectors by direct float32 distance, first index among ties.
    The true nearest vector is missed only if `candidates` other tiles each hold a vector that
    ranks below it: at least as safe as `nearest_fast` with as many candidates.
    """
    from . import knn_kernel
    n, d = memory.shape
    tile = knn_kernel.TILE
    use_kernel = knn_kernel.kernel_available(memory.device) if kernel is None else kernel
    low = memory.to(dtype or ranking_dtype(memory.device))                       # (N, D)
    if use_kernel:
        low = knn_kernel.pad_dims(low)                                       # (N, D') for the kernel
    memory_sq = (memory * memory).sum(1)                                           # (N,) float32
    n_tiles = -(-n // tile)
    c = min(candidates, n_tiles)
    out = torch.empty(len(queries), device=queries.device)
    found = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    rows = max(1, min(chunk, (1 << 28) // n_tiles))                          # bound the (rows, n_tiles) minima
    within = torch.arange(tile, device=memory.device)
    for lo in range(0, len(queries), rows):
        q = queries[lo:lo + rows]                                            # (q, D)
        minima = (knn_kernel.tile_minima if use_kernel else knn_kernel.tile_minima_torch)(q, low, memory_sq, tile)
        best_tiles = minima.topk(c, dim=1, largest=False).indices.sort(1).values   # (q, c) ascending
        step = max(1, (1 << 27) // (c * tile * d))                           # bound the (step, c*tile, D) gather
        for a in range(0, len(q), step):
            index = (best_tiles[a:a + step, :, None] * tile + within).flatten(1)   # (s, c*tile) ascending
            valid = index < n
            index = index.clamp_max(n - 1)
            squared = ((q[a:a + step, None, :] - memory[index]) ** 2).sum(2)  # (s, c*tile) exact, float32
            squared = squared.masked_fill(~valid, float("inf"))
            winner = squared.argmin(1, keepdim=True)                         # first minimum
            out[lo + a:lo + a + len(index)] = squared.gather(1, winner).squeeze(1).sqrt()
            found[lo + a:lo + a + len(index)] = index.gather(1, winner).squeeze(1)
    return out, found


def fast_search(device):
    """`scoring.knn: fast` on `device`: the fused tile kernel on CUDA (when Triton builds there),
    the top-k search elsewhere; both re-rank exactly (benchmarks/knn.py times them)."""
    from .knn_kernel import kernel_available
    return nearest_tiles if kernel_available(device) else nearest_fast


@torch.no_grad()
def reference_set_distances(query_sets: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The reference's nearest distances, set by set: (S, V, D), (N, D) -> (S, V).

    For each set: torch.cdist(Q, M).min(1), with Q (V, D) the transpose of a contiguous (D, V)
    tensor, the layout the reference's reshapes leave (its sum of squares, hence every distance,
    rounds by layout). One call per set, the whole memory at once: batching sets or splitting the
    memory lets BLAS pick other kernels, which round differently.
    """
    out = torch.empty(query_sets.shape[:2], device=query_sets.device)        # (S, V)
    for i, q in enumerate(query_sets):
        out[i] = torch.cdist(q.t().contiguous().t(), memory).amin(1)
    return out


def set_distances(query_sets: torch.Tensor, memory: torch.Tensor, arithmetic: str = "reference",
                  knn: str = "exact", candidates: int = 16) -> torch.Tensor:
    """Nearest distance of every vector of every set: (S, V, D), (N, D) -> (S, V).

    knn (the exact arithmetic's search, `scoring.knn`): "exact" ranks in float32 (`nearest`),
    "fast" on tensor cores with `candidates` re-ranked exactly (`nearest_fast`)."""
    if arithmetic == "reference":
        return reference_set_distances(query_sets, memory)
    if arithmetic == "exact":
        s, v, d = query_sets.shape
        flat = query_sets.reshape(s * v, d)
        if knn == "exact":
            return nearest_distances(flat, memory).view(s, v)
        if knn == "fast":
            return fast_search(memory.device)(flat, memory, candidates)[0].view(s, v)
        raise ValueError(f"knn must be one of {KNN}, got {knn!r}")
    raise ValueError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")


def set_score(distances: torch.Tensor, power: int) -> torch.Tensor:
    """(... , V) nearest distances of a set's V vectors -> (...) score max(d) ** n."""
    return distances.amax(-1) ** power


def object_scores(vectors: torch.Tensor, memory: torch.Tensor, power: int, arithmetic: str = "reference",
                  knn: str = "exact", candidates: int = 16) -> torch.Tensor:
    """Each object's own score s(object vectors, memory): vectors (K, V, D), V = 49 (spatial) or
    T-1 (temporal) -> (K,)."""
    if len(vectors) == 0:
        return torch.zeros(0, device=memory.device)
    return set_score(set_distances(vectors, memory, arithmetic, knn, candidates), power)


def clip_max(per_object: torch.Tensor, object_clip: torch.Tensor, n_clips: int) -> torch.Tensor:
    """(K,) object scores, object_clip (K,) the clip of each -> (B,) max over each clip's objects,
    0 for clips without objects."""
    scores = torch.zeros(n_clips, device=per_object.device, dtype=per_object.dtype)
    if len(per_object) == 0:
        return scores
    return scores.scatter_reduce(0, object_clip.long(), per_object, reduce="amax", include_self=True)


def local_clip_scores(vectors: torch.Tensor, object_clip: torch.Tensor, n_clips: int,
                      memory: torch.Tensor, power: int, arithmetic: str = "reference", knn: str = "exact",
                      candidates: int = 16) -> torch.Tensor:
    """Clip scores of a local stream: max over each clip's objects of s(object vectors, memory).

    vectors (K, V, D) with V = 49 (spatial) or T-1 (temporal); object_clip (K,) clip of each
    object -> (B,), 0 for clips without objects.
    """
    if len(vectors) == 0:
        return torch.zeros(n_clips, device=memory.device)
    return clip_max(object_scores(vectors, memory, power, arithmetic, knn, candidates), object_clip, n_clips)


def highlevel_clip_scores(vectors: torch.Tensor, memory: torch.Tensor, power: int,
                          arithmetic: str = "reference", knn: str = "exact", candidates: int = 16) -> torch.Tensor:
    """(B, T, D) high-level vectors -> (B,) s(T vectors of the clip, high-level memory)."""
    return set_score(set_distances(vectors, memory, arithmetic, knn, candidates), power)


def clip_to_frames(clip_scores: np.ndarray, clip_length: int) -> np.ndarray:
    """Give each clip's score to its T frames: (B,) -> (B*T,)."""
    return np.repeat(np.asarray(clip_scores), clip_length)


def clip_object_counts(object_clip: np.ndarray, n_clips: int) -> np.ndarray:
    """The number of objects in each clip, the count a clip's max runs over: object_clip (K,) -> (B,)."""
    return np.bincount(np.asarray(object_clip, dtype=np.int64), minlength=n_clips)[:n_clips]
