"""Explain: the method opened up on tensors small enough to print (the notebooks' open-the-box cells).

Each function runs the functions the pipeline itself uses (`features`, `coreset`, `scores`,
`fusion`) on one object, one clip or a hand-made tensor, and returns what they compute step by
step; the `*_table` functions write those values as markdown (3 decimals) and the `*_figure`
functions draw them. Nothing here is a second implementation of a step of the method.

    object_maps, spatial_table, temporal_table, spatial_figure   F of one object (02_memorization)
    pyramid_table                                                the high-level pyramid (02)
    coreset_steps, coreset_table, coreset_figure                 greedy k-center on 2-D points (02)
    clip_set_scores, set_score_tables                            s(Q, M) for one test clip (03_inference)
    fusion_steps, fusion_table, fusion_figure                    one clip's streams -> frame scores (03)
    oracle_stages, oracle_figure, protocol_table                 the oracle's two searches, label-free (03)
    nearest_memory, object_scores, explain_spatial               a test object's nearest memory vectors (04, vpc score)
    object_crop                                                  an object's crop, for display (02, 04)

METHOD.md §7 (scores), seen from one object: which memory vector is nearest, and how far.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from . import fusion, metrics, scores
from .coreset import greedy_coreset
from .features import PATCH_GRID, local_maps
from .memory import MEMORIES
from .objects import crop_and_resize, middle_frame_offset

# which features-file array a test clip queries each memory with (the temporal memory holds the
# MEAN-pooled differences, a test clip queries it with the MAX-pooled ones: the reference's quirk)
QUERY_ARRAY = {"spatial": "spatial", "temporal": "temporal_max", "highlevel": "highlevel"}


def number(x) -> str:
    """How the open-the-box tables write a number: 3 decimals, or 3 significant digits below 0.1
    (the scores of the power n = 4 are often tiny)."""
    x = float(x)
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.1 else f"{x:.3g}"


_f = number


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


# ---------------------------------------------------------------------------------------------
# 02 one object's F

@torch.no_grad()
def object_maps(cfg, video, feats: dict, obj: int, encoder) -> torch.Tensor:
    """F of one object: its box cut from the T frames of its clip, encoded, pooled to 28 x 28 and
    averaged in C channel groups, as `engine.clip_features` does -> (C, T, 28, 28) on the CPU.

    feats: the video's arrays from the features file (object_clip, clip_start, boxes).
    """
    from .engine import cropping_device, encode
    t, c = cfg.method.clip_length, cfg.method.channel_groups
    start = int(feats["clip_start"][int(feats["object_clip"][obj])])
    frames = torch.from_numpy(np.stack([f for _, f in video.iter_frames(range(start, start + t))]))  # (T, H, W, 3)
    frames = frames.to(cropping_device(cfg, encoder.device))
    boxes = torch.as_tensor(np.asarray(feats["boxes"][obj]), dtype=torch.long, device=frames.device)[None].expand(t, 4)
    crops = crop_and_resize(frames, torch.arange(t, device=frames.device), boxes, cfg.objects.crop_size,
                            cfg.arithmetic)                                     # (T, S, S, 3)
    maps = encode(encoder, crops, cfg.encoder.preprocessing, cfg.encoder.batch_size,
                  lambda m, d: local_maps(m, d, c))                          # (T, C, 28, 28)
    return maps.float().permute(1, 0, 2, 3).cpu()                            # (C, T, 28, 28)


def busiest_group(pooled: torch.Tensor) -> int:
    """The channel group whose 7 x 7 spatial grid varies most (largest std): (C, 7, 7) -> index."""
    return int(torch.as_tensor(pooled).flatten(1).std(1).argmax())


def spatial_table(pooled: torch.Tensor, group: int) -> str:
    """Markdown: one channel group's 7 x 7 spatial grid, pooled (C, 7, 7); rows and columns numbered.
    Patch p of the 49 spatial vectors is row p // 7, column p % 7."""
    grid = np.asarray(pooled[group], dtype=np.float64)                      # (7, 7)
    return _table(["row"] + [f"col {j}" for j in range(grid.shape[1])],
                  [[i] + [_f(v) for v in grid[i]] for i in range(grid.shape[0])])


def temporal_table(mean: torch.Tensor, top: torch.Tensor, groups) -> str:
    """Markdown: the temporal vectors of one object, the memory's (mean over the grid) beside the
    test's (max over the grid), for some channel groups. mean, top (T-1, C)."""
    mean, top = np.asarray(mean, dtype=np.float64), np.asarray(top, dtype=np.float64)
    header = ["t (F[t+1] - F[t])"] + [f"group {g} {kind}" for g in groups for kind in ("mean", "max")]
    rows = [[t] + [_f(x[t, g]) for g in groups for x in (mean, top)] for t in range(len(mean))]
    return _table(header, rows)


def spatial_figure(levels: dict, group: int, t_len: int) -> Figure:
    """The spatial vectors' steps for one channel group of one object: mean over T, max over T,
    their sum (28 x 28 each) and the 7 x 7 average pool. levels: features.spatial_levels of (1, C, T, 28, 28)."""
    fig = Figure(figsize=(8.4, 2.4), layout="constrained")
    panels = [("mean", f"mean over T={t_len}"), ("max", f"max over T={t_len}"), ("sum", "mean + max"),
              ("pooled", f"pooled to {PATCH_GRID} x {PATCH_GRID}")]
    lo = min(float(levels[k][0, group].min()) for k, _ in panels)
    hi = max(float(levels[k][0, group].max()) for k, _ in panels)
    for ax, (key, title) in zip(fig.subplots(1, 4), panels):
        image = levels[key][0, group].numpy()
        im = ax.imshow(image, cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(f"{title}\n({image.shape[0]} x {image.shape[1]})", fontsize=8)
        ax.set_axis_off()
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    fig.suptitle(f"channel group {group}", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# 02 the high-level pyramid

PYRAMID_FORMULAS = {
    "G": "global avg + max per frame",
    "H1": "maxpool(k=2, s=1)(G)",
    "H2": "maxpool(k=2, s=1)(H1)",
    "H2_up": "adaptive_maxpool(H2, T-1)",
    "U": "H2_up + H1",
    "U_up": "adaptive_maxpool(U, T)",
    "H": "U_up + G",
}


def pyramid_table(levels: dict, channel: int = 0) -> str:
    """Markdown: every level of features.highlevel_levels for one clip (index 0) and one channel."""
    rows = [[name, PYRAMID_FORMULAS[name], int(x.shape[-1]), "[" + ", ".join(f"{float(v):g}" for v in x[0, channel]) + "]"]
            for name, x in levels.items()]
    return _table(["level", "how", "length", "values"], rows)


# ---------------------------------------------------------------------------------------------
# 02 the greedy coreset

def coreset_steps(points, n_select: int) -> list[dict]:
    """coreset.greedy_coreset on (N, D) points, step by step: for each pick in order its index, its
    distance to the vectors picked before it (None for the first) and the coverage radius after it
    (the largest distance from any point to its nearest pick so far)."""
    x = torch.as_tensor(np.asarray(points), dtype=torch.float32)            # (N, D)
    picks = greedy_coreset(x, n_select).tolist()
    to_picks = torch.cdist(x.double(), x[picks].double())                   # (N, l)
    nearest = to_picks.cummin(1).values                                     # (N, l): to the first l picks
    steps = []
    for step, index in enumerate(picks):
        steps.append({"step": step + 1, "index": int(index), "point": x[index].tolist(),
                      "distance": None if step == 0 else float(nearest[index, step - 1]),
                      "radius": float(nearest[:, step].max())})
    return steps


def coreset_table(steps: list[dict]) -> str:
    rows = [[s["step"], s["index"], "(" + ", ".join(f"{v:g}" for v in s["point"]) + ")",
             "start (index 0)" if s["distance"] is None else _f(s["distance"]), _f(s["radius"])] for s in steps]
    return _table(["pick", "index", "point", "its distance to the picks before", "coverage radius after"], rows)


def coreset_figure(points, steps: list[dict], show_at: int = 3) -> Figure:
    """Left: the points, the picks numbered in order, the coverage discs after `show_at` picks.
    Right: the coverage radius against the number of picks."""
    x = np.asarray(points, dtype=np.float64)
    fig = Figure(figsize=(7.6, 3.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    left.scatter(x[:, 0], x[:, 1], color="0.6", s=18, zorder=2)
    show_at = min(show_at, len(steps))
    radius = steps[show_at - 1]["radius"]
    for s in steps:
        px, py = x[s["index"]]
        left.scatter([px], [py], color="#1f77b4", s=40, zorder=3)
        left.annotate(str(s["step"]), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if s["step"] <= show_at:
            left.add_patch(_disc((px, py), radius))
    left.set_aspect("equal")
    left.set_title(f"picks in order; discs: radius after {show_at} picks ({radius:.2f})", fontsize=8)
    right.plot([s["step"] for s in steps], [s["radius"] for s in steps], "o-")
    right.set_xlabel("picks l")
    right.set_ylabel("coverage radius")
    right.set_ylim(bottom=0)
    return fig


def _disc(center, radius):
    from matplotlib.patches import Circle
    return Circle(center, radius, color="#1f77b4", alpha=0.12, lw=0)


# ---------------------------------------------------------------------------------------------
# 03 s(Q, M) for one clip

def clip_set_scores(feats: dict, memories: dict, clip: int, power: int, arithmetic: str = "reference") -> dict:
    """Each stream's s(Q, M) for clip `clip` of a test video, opened: {stream: {objects (K_b,),
    distances (K_b, V) nearest memory distance of each query vector, worst (K_b,) which query is the
    farthest, d_max (K_b,), object_scores (K_b,) = d_max ** n, clip_score}}. High-level: one "object",
    the clip itself. feats: the video's features-file arrays; memories {stream: (N, D)}; the distances
    are the pipeline's own (`scores.set_distances` in the params' `arithmetic`)."""
    objects = np.flatnonzero(np.asarray(feats["object_clip"]) == clip)
    out = {}
    for stream in MEMORIES:
        if stream == "highlevel":
            queries, ids = np.asarray(feats["highlevel"])[[clip]], np.array([clip])  # (1, T, D)
        else:
            queries, ids = np.asarray(feats[QUERY_ARRAY[stream]])[objects], objects   # (K_b, V, D)
        k, v, d = queries.shape if len(queries) else (0, 1, 1)
        dist = (scores.set_distances(torch.as_tensor(queries, dtype=torch.float32),
                                     torch.as_tensor(np.asarray(memories[stream]), dtype=torch.float32), arithmetic).numpy()
                if k else np.zeros((0, v)))                                              # (K_b, V)
        per_object = scores.set_score(torch.as_tensor(dist), power).numpy() if k else np.zeros(0)  # (K_b,)
        out[stream] = {"objects": ids, "distances": dist, "worst": dist.argmax(1) if k else np.zeros(0, int),
                       "d_max": dist.max(1) if k else np.zeros(0), "object_scores": per_object,
                       "clip_score": float(per_object.max()) if k else 0.0}
    return out


def set_score_tables(opened: dict, power: int, grid_object: int | None = None) -> dict[str, str]:
    """Markdown for clip_set_scores: per stream, one row per object (its query vectors' nearest
    distances: all of them for the temporal and high-level streams, the largest and where it is for
    the 49 spatial patches), the max and its power n; and the 7 x 7 grid of the spatial distances of
    one object (the one with the clip's spatial score by default). -> {stream or 'spatial_grid': str}."""
    out = {}
    for stream, s in opened.items():
        rows = []
        for j, obj in enumerate(s["objects"]):
            d = s["distances"][j]
            if stream == "spatial":
                w = int(s["worst"][j])
                queries = f"{len(d)} patches; largest at patch {w} (row {w // PATCH_GRID}, col {w % PATCH_GRID})"
            else:
                queries = "[" + ", ".join(_f(v) for v in d) + "]"
                queries += f"; largest: {'t' if stream == 'temporal' else 'frame'} {int(s['worst'][j])}"
            rows.append([("clip " if stream == "highlevel" else "object ") + str(int(obj)), queries,
                         _f(s["d_max"][j]), _f(s["object_scores"][j])])
        rows.append(["**clip score**", "max over objects" if stream != "highlevel" else "", "",
                     f"**{_f(s['clip_score'])}**"])
        out[stream] = _table(["", "nearest memory distance of each query", "max d", f"s = (max d)^{power}"], rows)
    sp = opened["spatial"]
    if len(sp["objects"]) and sp["distances"].shape[1] == PATCH_GRID * PATCH_GRID:
        j = int(np.argmax(sp["object_scores"])) if grid_object is None else grid_object
        grid = sp["distances"][j].reshape(PATCH_GRID, PATCH_GRID)
        out["spatial_grid"] = _table(["row"] + [f"col {c}" for c in range(PATCH_GRID)],
                                     [[r] + [_f(v) for v in grid[r]] for r in range(PATCH_GRID)])
    return out


# ---------------------------------------------------------------------------------------------
# 03 fusion of one clip

def fusion_steps(table: dict, frames: np.ndarray, result: dict) -> dict:
    """Both fusions of pipeline.evaluate on the whole test set, every step kept (fusion.*_levels),
    and the rows of the selected frames. table: notebooks.read_frame_table's columns (video ids, label,
    streams); frames (F,) bool, the frames to show; result: metrics.json.
    -> {"labelfree": levels, "oracle": levels, "rows": (F_sel,) indices, "mode": ...}."""
    sp, tp, hl, vid = table["spatial"], table["temporal"], table["highlevel"], table["video"]
    free = result["labelfree"]
    stats = None
    if free["mode"] == "calibrated":
        stats = {s: v if isinstance(v, dict) else tuple(v) for s, v in free["stats"].items()}
    if "velocity_weight" in free:                   # the velocity memory's run: its stream is fused too
        labelfree = fusion.labelfree_velocity_levels(sp, tp, hl, table["velocity"], vid, stats, free["a"], free["b"],
                                                     free["sigma"], free["velocity_weight"], table.get("objects"))
    elif stats:
        labelfree = fusion.labelfree_calibrated_levels(sp, tp, hl, vid, stats, free["a"], free["b"], free["sigma"],
                                                       table.get("objects"))
    else:
        labelfree = fusion.reference_all_streams_levels(sp, tp, hl, vid, free["a"], free["b"], free["sigma"])
    oracle = fusion.reference_all_streams_levels(sp, tp, hl, vid, result["a"], result["b"], result["sigma"])
    return {"labelfree": labelfree, "oracle": oracle, "rows": np.flatnonzero(frames), "mode": free["mode"]}


def fusion_table(steps: dict, table: dict, result: dict, frame_numbers) -> str:
    """Markdown: one column per selected frame, one row per step of each protocol."""
    rows, free = steps["rows"], result["labelfree"]
    a, b, s = free["a"], free["b"], free["sigma"]
    lines = [("spatial S (clip score)", table["spatial"]), ("temporal T", table["temporal"]),
             ("high-level H", table["highlevel"])]
    lf = steps["labelfree"]
    moving = "z_velocity" in lf
    w = free.get("velocity_weight", 0.0)
    if moving:
        lines.append(("velocity V", table["velocity"]))
    if steps["mode"] == "calibrated":
        lines += [(f"label-free ({steps['mode']}): zS = (S - mean) / std, training statistics", lf["z_spatial"]),
                  ("zT", lf["z_temporal"]), ("zH", lf["z_highlevel"]), *([("zV", lf["z_velocity"])] if moving else []),
                  (f"L = {a:g} zS + {1 - a:g} zT", lf["local"]),
                  (f"{b:g} L + {1 - b:g} zH" + (f" + {w:g} zV" if moving else ""), lf["fused"]),
                  (f"smoothed in the video (sigma {s:g}): final_labelfree", lf["final"])]
    else:
        label = f"label-free ({steps['mode']})"
        ref = _reference_lines(label, lf, a, b, s, "final_labelfree")
        if moving:                                  # fused and final include + w * smooth(z(V))
            ref[-2:-2] = [(f"z(V) over all test frames, smoothed (sigma {s:g})", lf["z_velocity"])]
            ref[-2] = (f"{b:g} L + {1 - b:g} H + {w:g} z(V)", lf["fused"])
        lines += ref
    lines += _reference_lines("oracle", steps["oracle"], result["a"], result["b"], result["sigma"], "final_oracle")
    return _table(["step"] + [f"frame {int(f)}" for f in frame_numbers],
                  [[name] + [_f(x[i]) for i in rows] for name, x in lines])


def _reference_lines(label, lv, a, b, sigma, final):
    return [(f"{label}: L = {a:g} S + {1 - a:g} T", lv["local"]),
            ("z(L) over all test frames", lv["z_local"]),
            (f"smoothed (sigma {sigma:g}) across the concatenated videos", lv["smooth_local"]),
            ("z(H) within the video", lv["z_high"]),
            (f"smoothed (sigma {sigma:g}) within the video", lv["smooth_high"]),
            (f"{b:g} L + {1 - b:g} H", lv["fused"]),
            (f"min-max over all test frames: {final}", lv["final"])]


def fusion_figure(steps: dict, table: dict, frame_numbers, video: int, frames: np.ndarray, title: str = "") -> Figure:
    """One test video: its label-free score before and after smoothing (calibrated: b*L + (1-b)*zH
    and final_labelfree; fixed: z(L) and its smoothed curve), the selected frames shaded orange,
    the ground-truth anomaly red."""
    from .figures import GT_ALPHA, GT_COLOR, label_spans
    mine = np.asarray(table["video"]) == video
    lf = steps["labelfree"]
    before, after = ("fused", "final") if steps["mode"] == "calibrated" else ("z_local", "smooth_local")
    x = np.asarray(frame_numbers)[mine]
    fig = Figure(figsize=(8.6, 2.6), layout="constrained")
    ax = fig.subplots()
    for start, end in label_spans(np.asarray(table["label"])[mine]):
        ax.axvspan(x[start] - 0.5, x[end] + 0.5, color=GT_COLOR, alpha=GT_ALPHA, lw=0)
    sel = x[np.asarray(frames)[mine]]
    ax.axvspan(sel.min() - 0.5, sel.max() + 0.5, color="#ff7f0e", alpha=0.35, lw=0, label="the clip")
    ax.step(x, lf[before][mine], where="mid", color="0.45", label="before smoothing (one value per clip)")
    ax.plot(x, lf[after][mine], color="#1f77b4", label="after smoothing")
    ax.set_xlabel("frame (red: ground-truth anomaly)")
    ax.set_ylabel(f"label-free ({steps['mode']})")
    ax.set_title(title, fontsize=9)
    fig.legend(fontsize=7, loc="outside right center")
    return fig


# ---------------------------------------------------------------------------------------------
# 03 the oracle's two searches, and the label-free protocol

def oracle_stages(table: dict, fusion_cfg) -> dict:
    """The reference grid search as its two stages, every cell kept: stage 1, the local-only AUC
    minmax(smooth(a*S + (1-a)*T, sigma)) over a (rows, a_grid) and sigma (columns); stage 2, at the
    a chosen there, the all-streams AUC over b and sigma. The picks are fusion.oracle_search's.
    -> {"local": (A, S), "all": (B, S), "pick": OracleResult}."""
    f = fusion_cfg
    sp, tp, hl, vid, labels = table["spatial"], table["temporal"], table["highlevel"], table["video"], table["label"]
    pick = fusion.oracle_search(sp, tp, hl, labels, vid, f.a_grid, f.b_grid, f.sigma_grid)
    local = np.array([[metrics.auc(labels, fusion.reference_local_only(sp, tp, a, s)) for s in f.sigma_grid]
                      for a in f.a_grid])                                     # (A, S)
    both = np.array([[metrics.auc(labels, fusion.reference_all_streams(sp, tp, hl, vid, pick.a, b, s))
                      for s in f.sigma_grid] for b in f.b_grid])              # (B, S)
    return {"local": local, "all": both, "pick": pick}


def oracle_figure(stages: dict, fusion_cfg) -> Figure:
    """Two heatmaps: stage 1 (a, sigma) on the local stream, stage 2 (b, sigma) at the chosen a."""
    f, pick = fusion_cfg, stages["pick"]
    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    panels = [(stages["local"], f.a_grid, "a (spatial weight)", (pick.a, pick.sigma_local),
               f"stage 1: local stream, best a={pick.a:g}, sigma={pick.sigma_local:g}: {pick.auc_local:.3f}"),
              (stages["all"], f.b_grid, "b (local weight)", (pick.b, pick.sigma),
               f"stage 2: all streams at a={pick.a:g}, best b={pick.b:g}, sigma={pick.sigma:g}: {pick.auc:.3f}")]
    for ax, (grid, weights, ylabel, (w, s), title) in zip(fig.subplots(1, 2), panels):
        im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(f.sigma_grid))[::2], [f"{v:g}" for v in f.sigma_grid][::2], fontsize=7)
        ax.set_yticks(range(len(weights)), [f"{v:g}" for v in weights], fontsize=7)
        ax.set_xlabel("sigma (smoothing)")
        ax.set_ylabel(ylabel)
        i = int(np.argmin(np.abs(np.asarray(weights, float) - w)))
        j = int(np.argmin(np.abs(np.asarray(f.sigma_grid, float) - s)))
        ax.plot(j, i, marker="*", ms=12, mec="white", color="#ff7f0e", ls="")
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, label="micro AUC")
    return fig


def protocol_table(result: dict) -> str:
    """Markdown: the oracle's two stages beside the label-free protocol (metrics.json)."""
    free = result["labelfree"]
    rows = [["oracle, stage 1", "a, sigma on the local stream", "test labels", _w(result["a"]), "-",
             _w(result["sigma_local"]), "min-max over the test set", _f(result["auc_local_oracle"])],
            ["oracle, stage 2", "b, sigma at that a", "test labels", _w(result["a"]), _w(result["b"]),
             _w(result["sigma"]), "z-score over the test set", _f(result["auc_micro_oracle"])]]
    if free["mode"] == "calibrated" and free["stats"]:
        scale = "z-score with training statistics: " + ", ".join(stat_text(s, v) for s, v in free["stats"].items())
    else:
        scale = "z-score over the test set (the reference formula)"
    rows.append([f"label-free ({free['mode']})", "fixed in the params file", "none", _w(free["a"]), _w(free["b"]),
                 _w(free["sigma"]), scale, _f(result["auc_micro_labelfree"])])
    return _table(["protocol", "chooses", "looks at", "a", "b", "sigma", "scale of each stream", "micro AUC"], rows)


def stat_text(stream: str, stat) -> str:
    """One stream's label-free calibration in words: (mean, std), count bins, or per object."""
    if isinstance(stat, dict) and "quantiles" in stat:
        return (f"{stream} per object: Phi^-1(F(max)^K), F of {stat['objects']} training objects "
                f"(median {_f(stat['quantiles'][round(0.5 / fusion.BODY_STEP)])}, tail from {_f(stat['quantiles'][-1])})")
    if isinstance(stat, dict):
        return (f"{stream} {_f(stat['mean'][0])}..{_f(stat['mean'][-1])} ± {_f(stat['std'][0])}..{_f(stat['std'][-1])} "
                f"({len(stat['mean'])} object-count bins)")
    return f"{stream} {_f(stat[0])} ± {_f(stat[1])}"


def _w(x) -> str:
    return f"{float(x):g}"


# ---------------------------------------------------------------------------------------------
# 04 the nearest memory vector of a test object (and the object scores of the demos, vpc score)

@torch.no_grad()
def nearest_memory(queries: np.ndarray, memory: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest memory vector (`scores.nearest`): (Q, D), (N, D) -> exact distances (Q,),
    indices (Q,) into the memory."""
    distance, index = scores.nearest(torch.as_tensor(queries, dtype=torch.float32),
                                     torch.as_tensor(memory, dtype=torch.float32), chunk=chunk)
    return distance.numpy(), index.numpy()


def object_scores(cfg, feats: dict, memories: dict, stats) -> np.ndarray:
    """(K,) each object's local score a*zS + (1-a)*zT: its worst patch (spatial) and worst frame
    difference (temporal) against the memories {memory: Memory}, z from normal training videos
    (stats {memory: (mean, std)}, or count-conditioned or per-object ones, with the object's clip's count)
    when given, else the raw scores."""
    k, n, a = len(feats["spatial"]), cfg.method.power, cfg.fusion.a
    z = np.zeros(k)
    if k == 0:
        return z
    counts = scores.clip_object_counts(feats["object_clip"], int(np.max(feats["object_clip"])) + 1)[feats["object_clip"]]
    for memory, key, weight in (("spatial", "spatial", a), ("temporal", "temporal_max", 1 - a)):
        c = feats[key].shape[-1]
        d, _ = nearest_memory(feats[key].reshape(-1, c), memories[memory].vectors)
        s = d.reshape(k, -1).max(1) ** n                                      # (K,)
        z += weight * fusion.calibrated_z(s, stats[memory] if stats else (0.0, 1.0), counts)
    return z


def object_crop(video, frame: int, box, size: int) -> np.ndarray:
    """frame[y1:y2, x1:x2] of a video resized to size x size (BGR uint8), for display: the
    encoder's own crop (`objects.crop_and_resize`, OpenCV's uint8 bilinear)."""
    image = torch.from_numpy(video.read_frame(int(frame)))[None]             # (1, H, W, 3)
    box = torch.as_tensor(np.asarray(box, dtype=np.int64)[None])             # (1, 4)
    return crop_and_resize(image, torch.zeros(1, dtype=torch.long), box, size, "reference")[0].numpy()


def explain_spatial(cfg, videos: dict, memory, features: dict, n_examples: int = 4, crop_size: int = 112) -> list[dict]:
    """The most anomalous test objects by spatial score (one per video, highest first), each with
    its worst patch and the training patch nearest to that patch in the spatial memory.

    videos {split: [Video]}; memory: the spatial memory (a Memory); features {split: stage 2's
    features}. The memory remembers where each vector came from (Memory.video, Memory.row): for the
    spatial memory, object = row // 49 and patch = row % 49 among that training video's objects.
    Crops are cut from the clip's middle frame (the frame the detector saw).
    """
    test, train = features["test"], features["train"]
    worst = []                                                                # (distance, video, object, patch)
    for name, feats in test.items():
        k, n_patches, c = feats["spatial"].shape
        if k == 0:
            continue
        dist, _ = nearest_memory(feats["spatial"].reshape(-1, c), memory.vectors)
        dist = dist.reshape(k, n_patches)                                     # (K, 49)
        obj = int(dist.max(1).argmax())
        worst.append((float(dist[obj].max()), name, obj, int(dist[obj].argmax())))
    worst.sort(key=lambda w: -w[0])
    by_name = {s: {v.name: v for v in videos[s]} for s in ("train", "test")}
    train_names, offset = list(train), middle_frame_offset(cfg.method.clip_length)
    out = []
    for distance, name, obj, patch in worst[:n_examples]:
        feats = test[name]
        _, (m,) = nearest_memory(feats["spatial"][obj, patch][None], memory.vectors)
        mem_name = train_names[int(memory.video[m])]
        mem_obj, mem_patch = divmod(int(memory.row[m]), feats["spatial"].shape[1])
        mem = train[mem_name]
        frame = int(feats["clip_start"][feats["object_clip"][obj]]) + offset
        mem_frame = int(mem["clip_start"][mem["object_clip"][mem_obj]]) + offset
        out.append({
            "test_video": name, "test_frame": frame, "test_box": feats["boxes"][obj].tolist(), "test_patch": patch,
            "distance": distance, "score": distance ** cfg.method.power,
            "memory_video": mem_name, "memory_frame": mem_frame, "memory_box": mem["boxes"][mem_obj].tolist(),
            "memory_patch": mem_patch,
            "test_crop": object_crop(by_name["test"][name], frame, feats["boxes"][obj], crop_size),
            "memory_crop": object_crop(by_name["train"][mem_name], mem_frame, mem["boxes"][mem_obj], crop_size),
            "test_title": f"test {name} frame {frame}, patch {patch}\ndistance to memory {distance:.2f}",
            "memory_title": f"nearest: train {mem_name} frame {mem_frame}, patch {mem_patch}",
        })
    return out
