"""Fusion: combining the three streams into one per-frame anomaly score (METHOD.md §8).

Two protocols, always reported side by side:

- The reference (oracle) protocol. All test videos are concatenated. Local stream
  L = a * spatial + (1 - a) * temporal. Local-only: minmax(smooth(L, sigma)). All streams:
  z-score L over the whole test set and smooth it across the concatenated sequence (the filter
  runs over video borders: a quirk), z-score and smooth the high-level score per video, and
  final = minmax(b * L + (1 - b) * H). a, b and sigma are chosen by grid search ON THE TEST
  LABELS: an upper bound, not a deployable number.
- Label-free. Weights and sigma are fixed in the params file. "calibrated": each stream is
  z-scored with the mean and std of training videos scored against memories built from the
  OTHER training videos (leave-one-video-out), so the scale comes from normal data only;
  smoothing stays inside each video. "fixed": the reference formula with the fixed a, b, sigma.

With `fusion.count_bins` > 0 (beyond the paper, off by default), "calibrated" conditions each z
on the object count of the frame's clip: a clip's score is the max over its objects, so on normal
data it grows with the count; the training frames are cut into count bins at quantiles
(`count_edges`) and each bin has its own mean and std (`count_stats`, `calibrated_z`).

With `fusion.object_calibration` (beyond the paper, off by default), the streams whose clip score
is a max over objects (spatial, temporal, velocity) are calibrated per object instead (Sidak): F,
the distribution of the training objects' leave-one-out scores (`object_stats`: an empirical CDF
with an exponential upper tail), gives a clip of K objects whose max is s the probability
u = F(s)^K that K normal objects stay below s, and z = Phi^-1(u) (`object_z`). The high-level
stream, one score per clip, keeps its (mean, std).

With the optional velocity memory (beyond the paper, `vpclib.velocity`), the label-free score
gains `weight * z(velocity)`, z calibrated the same way (`labelfree_velocity`); the oracle stays
the reference's three-stream search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import ndtri_exp

from .metrics import auc

EPS = 1e-8


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / (std + 1e-8), population std."""
    return (x - x.mean()) / (x.std() + EPS)


def minmax(x: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min + 1e-8)."""
    return (x - x.min()) / (x.max() - x.min() + EPS)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """gaussian_filter1d(x, sigma); sigma 0 means no smoothing."""
    return gaussian_filter1d(x.astype(np.float64), sigma) if sigma > 0 else x.astype(np.float64)


def per_video(fn, x: np.ndarray, video_ids: np.ndarray) -> np.ndarray:
    """Apply `fn` to each video's run of frames separately (video_ids are contiguous)."""
    out = np.empty(len(x), dtype=np.float64)
    for v in np.unique(video_ids):
        mask = video_ids == v
        out[mask] = fn(x[mask])
    return out


def local_stream(spatial: np.ndarray, temporal: np.ndarray, a: float) -> np.ndarray:
    """L = a * spatial + (1 - a) * temporal."""
    return a * spatial + (1 - a) * temporal


def reference_local_only(spatial, temporal, a: float, sigma: float) -> np.ndarray:
    """minmax(smooth(L)) over the concatenated test sequence."""
    return minmax(smooth(local_stream(spatial, temporal, a), sigma))


def reference_all_streams(spatial, temporal, highlevel, video_ids, a: float, b: float, sigma: float) -> np.ndarray:
    """minmax(b * smooth(z(L)) + (1 - b) * H), H z-scored and smoothed per video."""
    return reference_all_streams_levels(spatial, temporal, highlevel, video_ids, a, b, sigma)["final"]


def reference_all_streams_levels(spatial, temporal, highlevel, video_ids, a: float, b: float,
                                 sigma: float) -> dict[str, np.ndarray]:
    """`reference_all_streams` with every step kept, each (F,): local L = a*S + (1-a)*T, z_local
    (z-scored over all test frames), smooth_local (smoothed across the concatenation), z_high (per
    video), smooth_high (per video), fused = b*smooth_local + (1-b)*smooth_high, final = minmax(fused)."""
    local = local_stream(spatial, temporal, a)
    z_local = zscore(local)
    smooth_local = smooth(z_local, sigma)
    z_high = per_video(zscore, highlevel, video_ids)
    smooth_high = per_video(lambda h: smooth(h, sigma), z_high, video_ids)
    fused = b * smooth_local + (1 - b) * smooth_high
    return {"local": local, "z_local": z_local, "smooth_local": smooth_local, "z_high": z_high,
            "smooth_high": smooth_high, "fused": fused, "final": minmax(fused)}


@dataclass
class OracleResult:
    a: float
    sigma_local: float
    auc_local: float
    b: float
    sigma: float
    auc: float


def oracle_search(spatial, temporal, highlevel, labels, video_ids, a_grid, b_grid, sigma_grid) -> OracleResult:
    """The reference grid search on the test labels.

    First (a, sigma) for the local-only score, then, with that a, (b, sigma) for all streams.
    The reference's loop order decides ties: sigma outer, the weight inner from the largest
    down, and the first best setting is kept.
    """
    best_local = (-1.0, None, None)
    for sigma in sigma_grid:
        for a in sorted(a_grid, reverse=True):
            value = auc(labels, reference_local_only(spatial, temporal, a, sigma))
            if value > best_local[0]:
                best_local = (value, a, sigma)
    auc_local, a, sigma_local = best_local
    z_local = zscore(local_stream(spatial, temporal, a))
    z_high = per_video(zscore, highlevel, video_ids)
    best = (-1.0, None, None)
    for sigma in sigma_grid:
        local = smooth(z_local, sigma)
        high = per_video(lambda h: smooth(h, sigma), z_high, video_ids)
        for b in sorted(b_grid, reverse=True):
            value = auc(labels, minmax(b * local + (1 - b) * high))
            if value > best[0]:
                best = (value, b, sigma)
    return OracleResult(a=a, sigma_local=sigma_local, auc_local=auc_local, b=best[1], sigma=best[2], auc=best[0])


# ---------------------------------------------------------------------------------------------
# label-free

def calibration_stats(train_scores: dict[str, np.ndarray], counts: np.ndarray | None = None,
                      count_bins: int = 0, object_scores: dict[str, np.ndarray] | None = None) -> dict:
    """Mean and population std of each stream's leave-one-video-out training scores (F,):
    {stream: (mean, std)}; with count_bins > 0 (beyond the paper), `count_stats` of each stream
    against the object count of each frame's clip (counts (F,)): {stream: {"edges", "mean", "std"}};
    with object_scores {stream: (N,)} (the training objects' own leave-one-out scores, beyond the
    paper), those streams' `object_stats` instead, the others their (mean, std)."""
    if object_scores is not None:
        return {name: object_stats(object_scores[name]) if name in object_scores else (float(x.mean()), float(x.std()))
                for name, x in train_scores.items()}
    if count_bins > 0:
        if counts is None:
            raise ValueError("a count-conditioned calibration needs the object count of every training frame")
        return {name: count_stats(x, counts, count_bins) for name, x in train_scores.items()}
    return {name: (float(x.mean()), float(x.std())) for name, x in train_scores.items()}


def count_edges(counts: np.ndarray, count_bins: int) -> list[int]:
    """Upper edges of the object-count bins of the training frames (counts (F,), integers): bin i
    holds the counts c with edges[i-1] < c <= edges[i], the last bin every count above edges[-1].

    The edges are the counts at the 1/n, ..., (n-1)/n quantiles (numpy's "lower": a count that
    occurs), without repeats; a bin that keeps fewer than half its share of frames (F / 2n) is
    merged into the bin after it (the last into the one before): ties in a few common counts
    give fewer, larger bins."""
    counts = np.asarray(counts)
    edges = sorted(set(int(q) for q in np.quantile(counts, np.arange(1, count_bins) / count_bins, method="lower")))
    least = len(counts) / (2 * count_bins)
    while edges:
        small = np.flatnonzero(np.bincount(count_bin(counts, edges), minlength=len(edges) + 1) < least)
        if len(small) == 0:
            break
        del edges[min(small[0], len(edges) - 1)]      # bin i joins bin i + 1 (the last: bin i - 1)
    return edges


def count_bin(counts: np.ndarray, edges: list[int]) -> np.ndarray:
    """The bin of each count (F,) -> (F,) in 0..len(edges): counts below the first edge fall in
    bin 0 and above the last in the last bin (a test count never seen in training included)."""
    return np.searchsorted(np.asarray(edges), np.asarray(counts), side="left")


def count_stats(scores: np.ndarray, counts: np.ndarray, count_bins: int) -> dict:
    """One stream's count-conditioned calibration: the bins' edges (`count_edges`) and the mean and
    population std of the training scores (F,) in each bin -> {"edges", "mean", "std"} (lists)."""
    edges = count_edges(counts, count_bins)
    which = count_bin(counts, edges)
    parts = [scores[which == i] for i in range(len(edges) + 1)]
    return {"edges": edges, "mean": [float(x.mean()) for x in parts], "std": [float(x.std()) for x in parts]}


# per-object (Sidak) calibration of the clip max, beyond the paper

TAIL = 0.1           # the training objects above the 0.9 quantile: an exponential tail (peaks over threshold)
BODY_STEP = 0.005    # below it the empirical CDF, linear between the quantiles at 0, 0.005, ..., 0.9


def body_probabilities() -> np.ndarray:
    """The probabilities of `object_stats`' quantiles: 0, 0.005, ..., 0.9 (181,)."""
    return np.linspace(0.0, 1.0 - TAIL, round((1.0 - TAIL) / BODY_STEP) + 1)


def object_stats(object_scores: np.ndarray) -> dict:
    """The distribution F of one stream's per-object training scores (N,) (each training object
    scored against the memory less its own video): {"quantiles": the scores at `body_probabilities`
    (numpy's linear quantiles), "tail_scale": beta, the mean excess of the scores above the last
    quantile u (the maximum-likelihood scale of an exponential tail), "objects": N}."""
    x = np.asarray(object_scores, dtype=np.float64)
    q = np.quantile(x, body_probabilities())
    excess = x[x > q[-1]] - q[-1]
    return {"quantiles": q.tolist(), "tail_scale": float(excess.mean()) if len(excess) else 0.0, "objects": int(len(x))}


def object_log_cdf(x: np.ndarray, stat: dict) -> np.ndarray:
    """log F(x) (F,): below u = the 0.9 quantile F is linear between the quantiles (0 below the
    smallest: log -inf; at a value several quantiles share, many equal training scores, the last
    of them: right-continuous, as an empirical CDF); above u, F(x) = 1 - 0.1 * exp(-(x - u) / beta)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(stat["quantiles"])
    out = np.empty_like(x)
    tail = x > q[-1]
    with np.errstate(divide="ignore"):
        out[~tail] = np.log(np.interp(x[~tail], q, body_probabilities()))
    out[tail] = np.log1p(-TAIL * np.exp(-(x[tail] - q[-1]) / (stat["tail_scale"] + EPS)))
    return out


def object_z(x: np.ndarray, stat: dict, counts: np.ndarray) -> np.ndarray:
    """Phi^-1(F(x)^K): the clip max x (F,) of K = counts (F,) objects as a standard-normal z (Sidak:
    F(x)^K is the probability that K independent normal objects all score below x). A clip without
    objects counts as one (its score is 0: the floor). u = F(x)^K is kept in [1/(2N), 1) (N training
    objects; 1 - u at least the smallest float): z is finite at both ends."""
    k = np.maximum(np.asarray(counts), 1)
    log_u = np.clip(k * object_log_cdf(x, stat), np.log(0.5 / stat["objects"]), -np.finfo(np.float64).tiny)
    return ndtri_exp(log_u)


def calibrated_z(x: np.ndarray, stat, counts: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / (std + 1e-8) with one stream's training statistics: (mean, std), or a
    `count_stats` dict, whose mean and std are those of the bin of each frame's object count; an
    `object_stats` dict gives `object_z` with each frame's object count."""
    if isinstance(stat, dict):
        if counts is None:
            raise ValueError("count-conditioned and per-object calibration statistics need the object count of every frame")
        if "quantiles" in stat:
            return object_z(x, stat, counts)
        which = count_bin(counts, stat["edges"])
        mean, std = np.asarray(stat["mean"])[which], np.asarray(stat["std"])[which]
    else:
        mean, std = stat
    return (x - mean) / (std + EPS)


def labelfree_calibrated(spatial, temporal, highlevel, video_ids, stats, a: float, b: float, sigma: float,
                         counts=None) -> np.ndarray:
    """b * (a * zS + (1 - a) * zT) + (1 - b) * zH, each z from training statistics, smoothed per video."""
    return labelfree_calibrated_levels(spatial, temporal, highlevel, video_ids, stats, a, b, sigma, counts)["final"]


def labelfree_calibrated_levels(spatial, temporal, highlevel, video_ids, stats, a: float, b: float,
                                sigma: float, counts=None) -> dict[str, np.ndarray]:
    """`labelfree_calibrated` with every step kept, each (F,): z_spatial, z_temporal, z_highlevel
    (`calibrated_z` with the training statistics; count-conditioned and per-object ones read the frames' object
    counts (F,)), local = a*zS + (1-a)*zT, fused = b*local + (1-b)*zH, final = fused smoothed
    within each video."""
    def z(x, name):
        return calibrated_z(x, stats[name], counts)

    zs, zt, zh = z(spatial, "spatial"), z(temporal, "temporal"), z(highlevel, "highlevel")
    local = local_stream(zs, zt, a)
    fused = b * local + (1 - b) * zh
    return {"z_spatial": zs, "z_temporal": zt, "z_highlevel": zh, "local": local, "fused": fused,
            "final": per_video(lambda x: smooth(x, sigma), fused, video_ids)}


def labelfree(spatial, temporal, highlevel, video_ids, stats, a: float, b: float, sigma: float,
              counts=None) -> np.ndarray:
    """The label-free final score: calibrated by the training statistics `stats` (from
    `calibration_stats`; count-conditioned and per-object ones with the frames' object counts (F,)), or, with
    stats None ('fixed' mode, or a single training video), the reference formula with the fixed
    a, b and sigma."""
    if stats:
        return labelfree_calibrated(spatial, temporal, highlevel, video_ids, stats, a, b, sigma, counts)
    return reference_all_streams(spatial, temporal, highlevel, video_ids, a, b, sigma)


def labelfree_velocity(spatial, temporal, highlevel, velocity, video_ids, stats, a: float, b: float, sigma: float,
                       weight: float, counts=None) -> np.ndarray:
    """The label-free final score with the velocity stream (F,) added (beyond the paper):

    calibrated (stats with a "velocity" entry): smooth_per_video(b*(a*zS + (1-a)*zT) + (1-b)*zH + weight*zV),
    every z from the training videos' leave-one-out statistics;
    fixed (stats None): minmax(b*smooth(z(L)) + (1-b)*H + weight*smooth(z(V))), the reference formula's
    fused score with V z-scored and smoothed over the concatenated test sequence like L.
    """
    return labelfree_velocity_levels(spatial, temporal, highlevel, velocity, video_ids, stats, a, b, sigma,
                                     weight, counts)["final"]


def labelfree_velocity_levels(spatial, temporal, highlevel, velocity, video_ids, stats, a: float, b: float,
                              sigma: float, weight: float, counts=None) -> dict[str, np.ndarray]:
    """`labelfree_velocity` with every step kept, each (F,): the three-stream levels
    (`labelfree_calibrated_levels`, or `reference_all_streams_levels` with stats None), with
    z_velocity (calibrated: from the training statistics; fixed: z over the test sequence,
    smoothed), fused = the three-stream fused score + weight * z_velocity, and final."""
    if stats:
        levels = labelfree_calibrated_levels(spatial, temporal, highlevel, video_ids, stats, a, b, sigma, counts)
        zv = calibrated_z(velocity, stats["velocity"], counts)
        fused = levels["fused"] + weight * zv
        return {**levels, "z_velocity": zv, "fused": fused, "final": per_video(lambda x: smooth(x, sigma), fused, video_ids)}
    levels = reference_all_streams_levels(spatial, temporal, highlevel, video_ids, a, b, sigma)
    zv = smooth(zscore(velocity), sigma)
    fused = levels["fused"] + weight * zv
    return {**levels, "z_velocity": zv, "fused": fused, "final": minmax(fused)}


def labelfree_streams(streams: dict[str, np.ndarray], video_ids, stats, a: float, b: float, sigma: float,
                      velocity_weight: float | None = None) -> np.ndarray:
    """The label-free final score (F,) of a table of per-frame streams {"spatial", "temporal",
    "highlevel"[, "velocity"]: (F,)}: `labelfree`, or with a velocity weight `labelfree_velocity`;
    the table's "objects" column (each frame's clip's object count) feeds a count-conditioned
    calibration."""
    sp, tp, hl, counts = streams["spatial"], streams["temporal"], streams["highlevel"], streams.get("objects")
    if velocity_weight is None:
        return labelfree(sp, tp, hl, video_ids, stats, a, b, sigma, counts)
    return labelfree_velocity(sp, tp, hl, streams["velocity"], video_ids, stats, a, b, sigma, velocity_weight, counts)
