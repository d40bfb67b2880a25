"""Figures: every function takes arrays and returns a matplotlib Figure; no files, no pyplot state.

Images are (H, W, 3) uint8 in OpenCV's BGR order, as everywhere in vpclib; they are shown as RGB.
In every plot over time the ground-truth anomalies are shaded in GT_COLOR, one patch per
anomalous span, each patch tagged gid="gt" (so a test can count them). Saving and display are
the notebooks' business (`vpclib.notebooks.show`).

    label_timeline      test videos as bars, anomalous spans shaded       (00_data)
    image_grid          frames, clips or crops in a grid                  (00, 01)
    draw_boxes          boxes drawn onto a frame (returns the image)      (01)
    objects_per_clip    objects kept in each clip of each video           (01)
    box_growth          one detection grown by several factors f          (01)
    detection_sweep     objects per clip vs confidence, box size vs f     (01)
    object_features     a crop, its 7 x 7 spatial patches, its temporal vectors  (02)
    memory_projection   candidates and the coreset kept, in 2-D (PCA)     (02)
    coverage_radius     coreset coverage radius as l grows                (02)
    stream_scores       spatial / temporal / high-level scores per video  (03)
    fusion_grid         oracle AUC over (b, sigma)                        (03)
    score_curves        final scores per test video with ground truth     (03, 04)
    nearest_patches     an anomalous patch beside its nearest memory patch (04)
    annotate_frame      a frame with boxes and its score (returns the image, for GIFs)  (04)
    ablation_bars       AUC per memory combination                        (04)
    ablation_curve      AUC (and memory size) against one parameter       (04)
"""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .features import PATCH_GRID
from .objects import grow_box

GT_COLOR = "#d62728"
GT_ALPHA = 0.18
STREAM_COLORS = {"spatial": "#1f77b4", "temporal": "#2ca02c", "highlevel": "#9467bd"}
STREAM_LABELS = {"spatial": "spatial (S)", "temporal": "temporal (T)", "highlevel": "high-level (H)"}
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def label_spans(labels) -> list[tuple[int, int]]:
    """0-based inclusive (start, end) runs of 1s in a (F,) 0/1 array."""
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def _shade_gt(ax, labels, x0: float = 0.0) -> None:
    """Shade each anomalous span of `labels` (frame i at x0 + i) across the axes."""
    for start, end in label_spans(labels):
        ax.axvspan(x0 + start - 0.5, x0 + end + 0.5, color=GT_COLOR, alpha=GT_ALPHA, lw=0, gid="gt")


def _rgb(image: np.ndarray) -> np.ndarray:
    """BGR (H, W, 3) -> RGB; grey (H, W) unchanged."""
    image = np.asarray(image)
    return image[..., ::-1] if image.ndim == 3 else image


def _grid(n: int, ncols: int, width: float, height: float, squeeze=False):
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes, nrows, ncols


# ---------------------------------------------------------------------------------------------
# data and objects

def label_timeline(labels: dict[str, np.ndarray], notes: dict[str, str] | None = None) -> Figure:
    """One bar per test video, its length the video's frames, anomalous spans shaded.

    labels {video: (F,) 0/1}; notes {video: text shown after the name} (e.g. the anomaly kind).
    """
    names = list(labels)
    fig = Figure(figsize=(7.0, 0.8 + 0.32 * len(names)), layout="constrained")
    ax = fig.subplots()
    for row, name in enumerate(names):
        n = len(labels[name])
        ax.add_patch(Rectangle((-0.5, row - 0.35), n, 0.7, color="#dddddd", lw=0))
        for start, end in label_spans(labels[name]):
            ax.add_patch(Rectangle((start - 0.5, row - 0.35), end - start + 1, 0.7, color=GT_COLOR, lw=0, gid="gt"))
    ax.set_yticks(range(len(names)), [f"{n} {notes[n]}" if notes and n in notes else n for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(-0.5, max(len(v) for v in labels.values()) - 0.5)
    ax.set_xlabel("frame")
    ax.set_title("ground truth per test video (red: anomalous frames)")
    return fig


def image_grid(images: list[np.ndarray], titles: list[str] | None = None, ncols: int = 4,
               size: float = 2.0, suptitle: str | None = None) -> Figure:
    """Images (H, W, 3) BGR or (H, W) grey in a grid, one title each."""
    h, w = np.asarray(images[0]).shape[:2]
    fig, axes, nrows, ncols = _grid(len(images), ncols, size, size * h / w + 0.3)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images):
            img = _rgb(images[i])
            # antialiased: a frame shown smaller than its pixels keeps its 1-2 px box edges visible
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="antialiased")
            if titles:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def draw_boxes(image: np.ndarray, boxes, colors=None, thickness: int | None = None, texts=None) -> np.ndarray:
    """A copy of a BGR frame with boxes (K, 4) x1, y1, x2, y2 drawn; colors: one BGR tuple or one per box.
    thickness None: 1 px per 200 px of the frame's longer side (at least 1), so that boxes stay visible
    when the frame is shown smaller than its pixels."""
    out = np.ascontiguousarray(image).copy()
    if thickness is None:
        thickness = max(1, round(max(out.shape[:2]) / 200))
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        color = colors[k] if isinstance(colors, list) else (colors or (0, 255, 255))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), tuple(int(c) for c in color), thickness)
        if texts is not None:
            cv2.putText(out, str(texts[k]), (int(x1), max(int(y1) - 2, 8)), cv2.FONT_HERSHEY_PLAIN, 0.7,
                        tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return out


def objects_per_clip(counts: dict[str, np.ndarray], anomalous: dict[str, np.ndarray] | None = None) -> Figure:
    """Objects kept in each clip, one row of bars per video; clips holding an anomalous frame in red.

    counts {video: (B,) int}; anomalous {video: (B,) bool}.
    """
    names = list(counts)
    fig = Figure(figsize=(7.0, 0.5 + 0.7 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    top = max(1, max(int(np.max(c)) if len(c) else 0 for c in counts.values()))
    for ax, name in zip(axes, names):
        c = np.asarray(counts[name])
        bad = np.asarray(anomalous[name], bool) if anomalous and name in anomalous else np.zeros(len(c), bool)
        ax.bar(np.arange(len(c)), c, width=0.8, color=np.where(bad, GT_COLOR, "#7f7f7f"))
        ax.set_ylim(0, top + 0.5)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("clip")
    axes[0].set_title("objects per clip (red: clip holds anomalous frames)", fontsize=9)
    return fig


def box_growth(image: np.ndarray, box, growths: list[float]) -> Figure:
    """One detection grown, squared and clipped with each factor f (objects.grow_box), over the frame."""
    h, w = image.shape[:2]
    fig = Figure(figsize=(5.0, 5.0 * h / w + 0.4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(_rgb(image), interpolation="nearest")
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", ls=":", lw=1.2, gid="detection"))
    for i, f in enumerate(growths):
        grown = grow_box(box, f, w, h)
        if grown is None:
            continue
        gx1, gy1, gx2, gy2 = grown
        ax.add_patch(Rectangle((gx1, gy1), gx2 - gx1, gy2 - gy1, fill=False, lw=1.5,
                               ec=SERIES_COLORS[i % len(SERIES_COLORS)], label=f"f = {f:g}", gid="box"))
    ax.legend(fontsize=7, loc="lower right")
    ax.set_axis_off()
    ax.set_title("box growth: grow by (f-1)w, (f-1)h, square, clip (dotted: detector box)", fontsize=8)
    return fig


def detection_sweep(confidences, objects_by_confidence, growths, side_by_growth) -> Figure:
    """Left: objects per clip against the confidence threshold. Right: mean box side (px) against f."""
    fig = Figure(figsize=(7.0, 2.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(confidences, objects_by_confidence, "o-")
    left.set_xlabel("confidence threshold")
    left.set_ylabel("objects per clip")
    left.set_ylim(bottom=0)
    right.plot(growths, side_by_growth, "o-", color=SERIES_COLORS[1])
    right.set_xlabel("box growth f")
    right.set_ylabel("mean box side (px)")
    return fig


# ---------------------------------------------------------------------------------------------
# features and memories

def object_features(crop: np.ndarray, spatial: np.ndarray, temporal: np.ndarray) -> Figure:
    """An object crop, the norm of its 49 spatial vectors on the 7 x 7 grid, its (T-1, C) temporal vectors.

    crop (S, S, 3) BGR; spatial (49, C); temporal (T-1, C).
    """
    fig = Figure(figsize=(8.0, 2.6), layout="constrained")
    a, b, c = fig.subplots(1, 3, width_ratios=[1, 1, 1.6])
    a.imshow(_rgb(crop))
    a.set_title("object crop", fontsize=9)
    a.set_axis_off()
    norms = np.linalg.norm(spatial, axis=1).reshape(PATCH_GRID, PATCH_GRID)          # (7, 7)
    im = b.imshow(norms, cmap="viridis")
    b.set_title(f"spatial: |S| of {len(spatial)} patches\n({spatial.shape[1]} dims each)", fontsize=8)
    b.set_axis_off()
    fig.colorbar(im, ax=b, shrink=0.8)
    im = c.imshow(temporal, cmap="coolwarm", aspect="auto", vmin=-np.abs(temporal).max(), vmax=np.abs(temporal).max())
    c.set_title(f"temporal: {temporal.shape[0]} vectors x {temporal.shape[1]} dims", fontsize=8)
    c.set_xlabel("channel group")
    c.set_ylabel("t (difference of frames t+1, t)")
    c.set_yticks(range(len(temporal)))
    fig.colorbar(im, ax=c, shrink=0.8)
    return fig


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) projection on the two main principal axes (sign fixed: largest |entry| > 0)."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    axes = vt[:2]                                                                      # (2, D)
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    proj = centered @ (axes * signs[:, None]).T
    return proj if proj.shape[1] == 2 else np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def memory_projection(candidates: dict[str, np.ndarray], selected: dict[str, np.ndarray]) -> Figure:
    """Each stream's memory candidates (grey) and the coreset kept (colour), projected to 2-D by PCA.

    candidates {stream: (N, D)}; selected {stream: (l,) indices into candidates}.
    """
    fig = Figure(figsize=(3.0 * len(candidates), 3.0), layout="constrained")
    axes = fig.subplots(1, len(candidates), squeeze=False)[0]
    for ax, (stream, x) in zip(axes, candidates.items()):
        p = pca_2d(x)
        idx = np.asarray(selected[stream])
        ax.scatter(p[:, 0], p[:, 1], s=3, color="#bbbbbb", label=f"candidates ({len(x)})", gid="candidates")
        ax.scatter(p[idx, 0], p[idx, 1], s=8, color=STREAM_COLORS.get(stream, "C0"),
                   label=f"coreset ({len(idx)})", gid="coreset")
        ax.set_title(STREAM_LABELS.get(stream, stream), fontsize=9)
        ax.legend(fontsize=7, markerscale=2)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def coverage_radius(radius: dict[str, np.ndarray], chosen: dict[str, int] | None = None) -> Figure:
    """Coverage radius after l selections, l = 1, 2, ...: max over candidates of the distance to the
    nearest selected vector. radius {stream: (L,)}; chosen {stream: l of the params file} marked."""
    fig = Figure(figsize=(3.0 * len(radius), 2.8), layout="constrained")
    axes = fig.subplots(1, len(radius), squeeze=False)[0]
    for ax, (stream, r) in zip(axes, radius.items()):
        l = np.arange(1, len(r) + 1)
        ax.plot(l, r, color=STREAM_COLORS.get(stream, "C0"))
        if chosen and stream in chosen:
            ax.axvline(chosen[stream], color="k", ls="--", lw=1, label=f"l = {chosen[stream]}", gid="chosen")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("l (vectors kept)")
        ax.set_title(STREAM_LABELS.get(stream, stream), fontsize=9)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("coverage radius")
    return fig


# ---------------------------------------------------------------------------------------------
# scores and fusion

def stream_scores(scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray],
                  frames: dict[str, np.ndarray] | None = None,
                  label_frames: dict[str, np.ndarray] | None = None) -> Figure:
    """A grid: one row per video, one column per stream, each the clip scores given to the frames.

    scores {video: {stream: (F,)}}; labels {video: (F,)}; frames {video: (F,) frame numbers of the
    scores}; label_frames {video: (F,) frame numbers of the labels} (scores.csv's label_frame;
    default: the same frames).
    """
    names = list(scores)
    streams = list(next(iter(scores.values())))
    fig = Figure(figsize=(2.6 * len(streams), 0.6 + 1.0 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(streams), sharex="row", squeeze=False)
    for i, name in enumerate(names):
        x = frames[name] if frames else np.arange(len(labels[name]))
        x_labels = label_frames[name] if label_frames else x
        for j, stream in enumerate(streams):
            ax = axes[i, j]
            _shade_gt(ax, labels[name], x0=float(x_labels[0]))
            ax.plot(x, scores[name][stream], color=STREAM_COLORS.get(stream, "C0"), lw=1)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(STREAM_LABELS.get(stream, stream), fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("frame", fontsize=8)
    return fig


def fusion_grid(aucs: np.ndarray, b_grid, sigma_grid, marks: dict[str, tuple[float, float]] | None = None) -> Figure:
    """Heatmap of the all-streams AUC over b (rows) and sigma (columns); marks {label: (b, sigma)}."""
    aucs = np.asarray(aucs)
    fig = Figure(figsize=(6.5, 3.0), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(aucs, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(sigma_grid)), [f"{s:g}" for s in sigma_grid], fontsize=7)
    ax.set_yticks(range(len(b_grid)), [f"{b:g}" for b in b_grid], fontsize=7)
    ax.set_xlabel("sigma (smoothing)")
    ax.set_ylabel("b (local weight)")
    for k, (label, (b, s)) in enumerate((marks or {}).items()):
        i = int(np.argmin(np.abs(np.asarray(b_grid, float) - b)))
        j = int(np.argmin(np.abs(np.asarray(sigma_grid, float) - s)))
        ax.plot(j, i, marker="*o^s"[k % 4], ms=11, mec="white", color=SERIES_COLORS[k + 1], ls="", label=label)
    if marks:
        ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=ax, label="micro AUC")
    return fig


def score_curves(scores: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray],
                 frames: dict[str, np.ndarray] | None = None, titles: dict[str, str] | None = None,
                 ncols: int = 2, ylabel: str = "score", normalize: bool = False,
                 label_frames: dict[str, np.ndarray] | None = None) -> Figure:
    """One panel per video: each named score curve over the frames, ground-truth spans shaded.

    scores {video: {name: (F,)}}; labels {video: (F,)}; frames {video: (F,) frame numbers of the
    scores}; label_frames {video: (F,) frame numbers of the labels} (default: the same frames);
    normalize: min-max each curve to [0, 1] (for display: curves of different scales side by side).
    """
    names = list(scores)
    fig, axes, nrows, ncols = _grid(len(names), ncols, 3.6, 1.6)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names):
        x = frames[name] if frames else np.arange(len(labels[name]))
        x_labels = label_frames[name] if label_frames else x
        _shade_gt(ax, labels[name], x0=float(x_labels[0]))
        for k, (label, y) in enumerate(scores[name].items()):
            y = np.asarray(y, dtype=np.float64)
            if normalize:
                y = (y - y.min()) / (y.max() - y.min() + 1e-12)
            ax.plot(x, y, lw=1.2, color=SERIES_COLORS[k % len(SERIES_COLORS)], label=label)
        ax.set_title(titles[name] if titles and name in titles else name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlim(x[0], x[-1])
    axes.flat[0].legend(fontsize=7, loc="upper left")
    axes.flat[0].set_ylabel(ylabel + (" (min-max per video)" if normalize else ""), fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# explanations and demos

def patch_cell(patch: int, size_w: float, size_h: float) -> tuple[float, float, float, float]:
    """(x, y, w, h) of patch `patch` of the 7 x 7 grid laid over a crop of size_w x size_h."""
    row, col = divmod(int(patch), PATCH_GRID)
    cw, ch = size_w / PATCH_GRID, size_h / PATCH_GRID
    return col * cw, row * ch, cw, ch


def nearest_patches(examples: list[dict]) -> Figure:
    """One row per example: the test object's crop with its worst patch outlined, beside the crop of
    the training object whose patch is that patch's nearest memory vector.

    Each example: test_crop, memory_crop ((S, S, 3) BGR), test_patch, memory_patch (0..48),
    test_title, memory_title.
    """
    fig = Figure(figsize=(4.4, 2.2 * len(examples)), layout="constrained")
    axes = fig.subplots(len(examples), 2, squeeze=False)
    for row, ex in zip(axes, examples):
        for ax, key, color in ((row[0], "test", GT_COLOR), (row[1], "memory", "#2ca02c")):
            crop = ex[f"{key}_crop"]
            ax.imshow(_rgb(crop), interpolation="nearest")
            x, y, w, h = patch_cell(ex[f"{key}_patch"], crop.shape[1], crop.shape[0])
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec=color, lw=2, gid="patch"))
            ax.set_title(ex[f"{key}_title"], fontsize=7)
            ax.set_axis_off()
    return fig


def score_color(value: float) -> tuple[int, int, int]:
    """BGR from green (0) through yellow to red (1); value clipped to [0, 1]."""
    v = float(np.clip(value, 0.0, 1.0))
    return 0, int(round(255 * min(1.0, 2 * (1 - v)))), int(round(255 * min(1.0, 2 * v)))


def annotate_frame(image: np.ndarray, boxes, box_scores, score: float, anomalous: bool, text: str = "",
                   strip_height: int = 26) -> np.ndarray:
    """A demo frame: boxes coloured by their object's score in [0, 1] (green to red), and under the
    frame a strip with `text`, the score, and a bar whose length is the score in [0, 1]. A red
    border when the ground truth says anomalous.

    image (H, W, 3) BGR -> (H + strip_height, W, 3) BGR.
    """
    h, w = image.shape[:2]
    out = draw_boxes(image, boxes, [score_color(s) for s in np.asarray(box_scores, float).ravel()], thickness=2)
    if anomalous:
        cv2.rectangle(out, (0, 0), (w - 1, h - 1), (40, 40, 214), 2)
    strip = np.full((strip_height, w, 3), 24, np.uint8)
    label = f"{text}  score {score:.2f}" + ("  GT: anomaly" if anomalous else "")
    cv2.putText(strip, label, (3, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    filled = int(round(np.clip(score, 0, 1) * (w - 6)))
    strip[16:strip_height - 3, 3:3 + filled] = score_color(score)
    return np.concatenate([out, strip])


# ---------------------------------------------------------------------------------------------
# ablations

def ablation_bars(names: list[str], series: dict[str, list[float]], ylabel: str = "micro AUC") -> Figure:
    """Grouped bars: one group per name (e.g. memory combination), one bar per series (oracle, label-free)."""
    fig = Figure(figsize=(6.0, 2.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        x = np.arange(len(names)) + (k - (len(series) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=label, color=SERIES_COLORS[k % len(SERIES_COLORS)])
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks(range(len(names)), names)
    low = min(min(v) for v in series.values())
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def ablation_curve(x, series: dict[str, list[float]], xlabel: str, secondary: tuple[str, list[float]] | None = None,
                   logx: bool = False, mark: float | None = None, title: str | None = None) -> Figure:
    """AUC curves against one parameter; optionally a second y axis (e.g. memory MB) in grey; the
    params file's value marked by a dotted line; title e.g. the videos the sweep used."""
    fig = Figure(figsize=(4.2, 2.8), layout="constrained")
    ax = fig.subplots()
    if title:
        ax.set_title(title, fontsize=8)
    for k, (label, y) in enumerate(series.items()):
        ax.plot(x, y, "o-", label=label, color=SERIES_COLORS[k % len(SERIES_COLORS)])
    if mark is not None:
        ax.axvline(mark, color="k", ls=":", lw=1, gid="default")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("micro AUC")
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(list(x), [f"{v:g}" for v in x], fontsize=7)
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="lower right")
    if secondary is not None:
        label, y = secondary
        ax2 = ax.twinx()
        ax2.plot(x, y, "s--", color="#7f7f7f", label=label)
        ax2.set_ylabel(label, color="#7f7f7f")
    return fig
