"""Metrics: frame-level ROC AUC, micro (all frames of all videos) and macro (mean over videos)."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of per-frame scores; NaN when the labels hold one class only."""
    from sklearn.metrics import roc_auc_score                               # 1 s to import: only when scoring
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def per_video_auc(labels: np.ndarray, scores: np.ndarray, video_ids: np.ndarray) -> dict[int, float]:
    """AUC of each video on its own (NaN for a video whose frames are all normal or all anomalous)."""
    return {int(v): auc(labels[video_ids == v], scores[video_ids == v]) for v in np.unique(video_ids)}


def macro_auc(labels: np.ndarray, scores: np.ndarray, video_ids: np.ndarray) -> float:
    """Mean of the per-video AUCs over the videos holding both classes."""
    values = [a for a in per_video_auc(labels, scores, video_ids).values() if not np.isnan(a)]
    return float(np.mean(values)) if values else float("nan")
