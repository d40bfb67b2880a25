"""A fused ranking kernel for the fast kNN search (`scoring.knn: fast` on CUDA; vpclib.scores).

`tile_minima` gives, for every query and every tile of `tile` consecutive memory vectors, the
lowest ranking score |m|^2 - 2 q.m over the tile: (Q, D), (N, D) -> (Q, ceil(N / tile)). On
CUDA one Triton kernel computes each (queries x tile) block of scores from a bf16 matrix
product (float32 accumulation, tensor cores) and reduces it in registers: the (Q, N) block of
scores is never written, only its tile minima (`tile` times smaller). Elsewhere, and as the
kernel's reference, the same minima in torch (`tile_minima_torch`).

Triton is imported when the kernel is first used, so `import vpclib.scores` does not need it.
TRITON_INTERPRET=1 runs the kernel on the CPU (float32 inputs only: numpy has no bf16), which is
how the CPU tests check it.
"""

from __future__ import annotations

import functools

import torch

TILE = 64        # memory vectors per tile (the kernel's BM)
BLOCK_Q = 128    # queries per program
BLOCK_K = 32     # dims per step of the product (D is zero-padded to a multiple)


@functools.lru_cache(maxsize=1)
def _kernel():
    """The Triton kernel, compiled on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def tile_min_kernel(q_ptr, m_ptr, msq_ptr, out_ptr, n_q, n_m, n_tiles, d,
                        BQ: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        pid_m, pid_q = tl.program_id(0), tl.program_id(1)                   # tiles on axis 0: up to 2^31 - 1
        rq = pid_q * BQ + tl.arange(0, BQ)                                  # (BQ,) query rows
        rm = pid_m * BM + tl.arange(0, BM)                                  # (BM,) memory rows: one tile
        rk = tl.arange(0, BK)
        acc = tl.zeros((BQ, BM), dtype=tl.float32)
        for k0 in range(0, d, BK):                                          # q . m, float32 accumulation
            q = tl.load(q_ptr + rq[:, None] * d + (k0 + rk)[None, :], mask=rq[:, None] < n_q, other=0.0)
            m = tl.load(m_ptr + rm[:, None] * d + (k0 + rk)[None, :], mask=rm[:, None] < n_m, other=0.0)
            acc += tl.dot(q, tl.trans(m))
        msq = tl.load(msq_ptr + rm, mask=rm < n_m, other=float("inf"))      # rows past N never win
        scores = msq[None, :] - 2.0 * acc                                   # (BQ, BM) |m|^2 - 2 q.m
        tl.store(out_ptr + rq.to(tl.int64) * n_tiles + pid_m, tl.min(scores, axis=1), mask=rq < n_q)

    return triton, tile_min_kernel


def pad_dims(x: torch.Tensor, multiple: int = BLOCK_K) -> torch.Tensor:
    """(R, D) -> (R, D') contiguous, zero-padded to D' a multiple of `multiple` (distances unchanged)."""
    d = x.shape[1]
    width = -(-d // multiple) * multiple
    if width == d:
        return x.contiguous()
    out = x.new_zeros(len(x), width)
    out[:, :d] = x
    return out


def tile_minima_torch(q: torch.Tensor, memory_low: torch.Tensor, memory_sq: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """(q, D) float32, (N, D) ranking dtype, (N,) float32 -> (q, ceil(N / tile)) tile minima, in torch."""
    from .scores import low_precision_scores
    n = len(memory_low)
    n_tiles = -(-n // tile)
    scores = q.new_full((len(q), n_tiles * tile), float("inf"))
    scores[:, :n] = low_precision_scores(q, memory_low, memory_sq)
    return scores.view(len(q), n_tiles, tile).amin(2)


def tile_minima(q: torch.Tensor, memory_low: torch.Tensor, memory_sq: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """(q, D) float32, (N, D') ranking dtype with D' = pad_dims's width, (N,) float32 -> (q, n_tiles)
    tile minima, by the Triton kernel (CUDA, or the interpreter). q is cast and padded here."""
    triton, kernel = _kernel()
    n_q, (n, width) = len(q), memory_low.shape
    n_tiles = -(-n // tile)
    q_low = q.to(memory_low.dtype)
    if q_low.shape[1] != width:
        q_low = torch.nn.functional.pad(q_low, (0, width - q_low.shape[1]))
    out = torch.empty(n_q, n_tiles, dtype=torch.float32, device=q.device)
    grid = (n_tiles, triton.cdiv(n_q, BLOCK_Q))                             # axis 1 allows 65,535 at most
    kernel[grid](q_low.contiguous(), memory_low, memory_sq.contiguous(), out, n_q, n, n_tiles, width,
                 BQ=BLOCK_Q, BM=tile, BK=BLOCK_K)
    return out


def kernel_available(device) -> bool:
    """The Triton kernel runs on this device (CUDA with triton importable)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        _kernel()
        return True
    except Exception:                                                        # no triton, or it cannot build
        return False
