"""Features: spatial, temporal and high-level vectors from the encoder's two maps (METHOD.md §4-§5).

Local stream (per object): both maps are smoothed (AvgPool 3x3, stride 1), pooled to 28 x 28 and
concatenated (D = C2 + C3 = 1536 for RN101), then the channels are averaged in C contiguous
groups: F has shape (K, C, T, 28, 28).
- spatial vectors: mean over T + max over T, pooled to 7 x 7 -> 49 patch vectors per object;
- temporal vectors: frame differences, pooled over the grid (mean for memory, max at test).
Global stream (per clip): each whole frame gives 1536 x 14 x 14 maps, reduced to global average +
global max: G (B, D, T); a temporal pyramid of max pools gives T high-level vectors per clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

LOCAL_GRID = 28
GLOBAL_GRID = 14
PATCH_GRID = 7


def pooled_maps(mid: torch.Tensor, deep: torch.Tensor, size: int) -> torch.Tensor:
    """AvgPool2d(3, stride 1) then AdaptiveAvgPool2d(size) on each map, concatenated.

    mid (B, C2, h2, w2), deep (B, C3, h3, w3) -> (B, C2 + C3, size, size).
    """
    maps = [F.adaptive_avg_pool2d(F.avg_pool2d(m, 3, stride=1), size) for m in (mid, deep)]
    return torch.cat(maps, 1)


def channel_pool(maps: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Average C contiguous groups of channels: (B, D, H, W) -> (B, C, H, W)."""
    b, d, h, w = maps.shape
    if d % n_groups:
        raise ConfigError(f"method.channel_groups={n_groups} must divide the encoder's {d} channels")
    return maps.view(b, n_groups, d // n_groups, h, w).mean(2)              # (B, C, H, W)


def local_maps(mid: torch.Tensor, deep: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Encoder maps of object crops -> channel-pooled local maps (B, C, 28, 28)."""
    return channel_pool(pooled_maps(mid, deep, LOCAL_GRID), n_groups)


def global_descriptors(mid: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
    """Encoder maps of whole frames -> global average + global max over 14 x 14: (B, D)."""
    maps = pooled_maps(mid, deep, GLOBAL_GRID)                               # (B, D, 14, 14)
    return maps.mean((2, 3)) + maps.amax((2, 3))                             # (B, D)


def spatial_levels(local: torch.Tensor) -> dict[str, torch.Tensor]:
    """The steps of the spatial vectors, each kept: (K, C, T, 28, 28) ->
    mean (mean over T), max (max over T), sum (mean + max), each (K, C, 28, 28); pooled (K, C, 7, 7)."""
    mean, top = local.mean(2), local.amax(2)                                 # (K, C, 28, 28) each
    s = mean + top                                                           # (K, C, 28, 28)
    return {"mean": mean, "max": top, "sum": s, "pooled": F.adaptive_avg_pool2d(s, PATCH_GRID)}  # (K, C, 7, 7)


def spatial_vectors(local: torch.Tensor) -> torch.Tensor:
    """S = mean_T F + max_T F, pooled to 7 x 7: (K, C, T, 28, 28) -> (K, 49, C)."""
    s = spatial_levels(local)["pooled"]                                      # (K, C, 7, 7)
    return s.flatten(2).transpose(1, 2)                                      # (K, 49, C)


def temporal_vectors(local: torch.Tensor, reduce: str) -> torch.Tensor:
    """D_t = F[t+1] - F[t], pooled over the grid by `reduce` ('mean' for memory, 'max' at test).

    (K, C, T, 28, 28) -> (K, T-1, C).
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"temporal_vectors: reduce must be 'mean' (memory) or 'max' (test), got {reduce!r}")
    diff = local[:, :, 1:] - local[:, :, :-1]                                # (K, C, T-1, 28, 28)
    pooled = diff.mean((3, 4)) if reduce == "mean" else diff.amax((3, 4))    # (K, C, T-1)
    return pooled.transpose(1, 2)                                            # (K, T-1, C)


def highlevel_levels(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every level of the temporal pyramid over G (B, D, T), each (B, D, length):

    G (T); H1 = maxpool(2, 1)(G) (T-1); H2 = maxpool(2, 1)(H1) (T-2); H2_up = adaptive_maxpool(H2, T-1);
    U = H2_up + H1 (T-1); U_up = adaptive_maxpool(U, T); H = U_up + G (T).
    """
    t = g.shape[-1]
    h1 = F.max_pool1d(g, 2, stride=1)                                        # (B, D, T-1)
    h2 = F.max_pool1d(h1, 2, stride=1)                                       # (B, D, T-2)
    h2_up = F.adaptive_max_pool1d(h2, t - 1)                                 # (B, D, T-1)
    u = h2_up + h1                                                           # (B, D, T-1)
    u_up = F.adaptive_max_pool1d(u, t)                                       # (B, D, T)
    return {"G": g, "H1": h1, "H2": h2, "H2_up": h2_up, "U": u, "U_up": u_up, "H": u_up + g}


def highlevel_vectors(g: torch.Tensor) -> torch.Tensor:
    """Temporal pyramid over G along T: (B, D, T) -> (B, T, D).

    H1 = maxpool(2, 1)(G); H2 = maxpool(2, 1)(H1); U = adaptive_maxpool(H2, T-1) + H1;
    H = adaptive_maxpool(U, T) + G.
    """
    return highlevel_levels(g)["H"].transpose(1, 2)                          # (B, T, D)
