"""figures: each function on small hand-made inputs, checked against values computed here.

Ground-truth spans are patches tagged gid="gt"; the expected spans are written out by hand.
"""

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from vpclib import figures
from vpclib.objects import grow_box


def gt_patches(ax):
    return [p for p in ax.patches if p.get_gid() == "gt"]


def span_extent(patch):
    """(x0, x1) of an axvspan (a Rectangle in data x, axes y)."""
    x0 = patch.get_x()
    return x0, x0 + patch.get_width()


def test_label_spans_by_hand():
    assert figures.label_spans([0, 1, 1, 0, 1]) == [(1, 2), (4, 4)]
    assert figures.label_spans([1, 1, 1]) == [(0, 2)]
    assert figures.label_spans(np.zeros(4)) == []


def test_label_timeline_one_rectangle_per_anomalous_span():
    labels = {"01": np.array([0, 1, 1, 0, 0, 1, 1, 1, 0]), "02": np.zeros(6, np.uint8), "03": np.ones(4, np.uint8)}
    fig = figures.label_timeline(labels, {"01": "running"})
    ax = fig.axes[0]
    spans = sorted((round(p.get_x() + 0.5), round(p.get_x() + p.get_width() - 0.5), round(p.get_y() + 0.35))
                   for p in gt_patches(ax))
    # (first frame, last frame, row): video 01 has two spans, 02 none, 03 one covering everything
    assert spans == [(0, 3, 2), (1, 2, 0), (5, 7, 0)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["01 running", "02", "03"]


def test_image_grid_shows_each_image_as_rgb():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    fig = figures.image_grid(images, ["a", "b", "c"], ncols=2)
    shown = [im.get_array() for ax in fig.axes for im in ax.images]
    assert len(shown) == 3 and len(fig.axes) == 4                       # 2 x 2 grid, one empty
    for image, array in zip(images, shown):
        np.testing.assert_array_equal(np.asarray(array), image[..., ::-1])   # BGR shown as RGB
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]


def test_draw_boxes_draws_the_border_only_and_copies():
    image = np.zeros((20, 30, 3), np.uint8)
    out = figures.draw_boxes(image, [[2, 3, 12, 15]], (10, 20, 30))
    assert image.sum() == 0                                              # input untouched
    assert tuple(out[3, 5]) == (10, 20, 30) and tuple(out[14, 5]) == (10, 20, 30)   # top, bottom (y2 - 1)
    assert tuple(out[8, 2]) == (10, 20, 30) and tuple(out[8, 11]) == (10, 20, 30)   # left, right (x2 - 1)
    assert out[5:13, 4:10].sum() == 0                                    # inside stays empty
    assert out[:, 13:].sum() == 0 and out[16:].sum() == 0                # nothing outside the box


def test_draw_boxes_thickness_follows_the_frame_size():
    # 1 px per 200 px of the longer side: a 360 px Ped2 frame gets cv2 thickness 2, whose line is
    # centred on the edge (rows 19, 20, 21 for y1 = 20); a 200 px frame gets a 1 px line (row 20 only)
    big = figures.draw_boxes(np.zeros((240, 360, 3), np.uint8), [[10, 20, 100, 120]], (0, 255, 255))
    small = figures.draw_boxes(np.zeros((150, 200, 3), np.uint8), [[10, 20, 100, 120]], (0, 255, 255))
    assert list(np.flatnonzero(big[10:30, 50, 1]) + 10) == [19, 20, 21]
    assert list(np.flatnonzero(small[10:30, 50, 1]) + 10) == [20]


def test_image_grid_smooths_frames_shown_smaller_than_their_pixels():
    # nearest-neighbour downsampling drops 1 px box edges; antialiasing keeps them
    fig = figures.image_grid([np.zeros((240, 360, 3), np.uint8)], size=2.0)
    assert fig.axes[0].images[0].get_interpolation() == "antialiased"


def test_objects_per_clip_bar_heights_and_anomalous_colour():
    counts = {"01": np.array([0, 2, 3, 1]), "02": np.array([4, 0])}
    anomalous = {"01": np.array([False, True, True, False]), "02": np.array([False, True])}
    fig = figures.objects_per_clip(counts, anomalous)
    for ax, name in zip(fig.axes, counts):
        bars = ax.patches
        assert [b.get_height() for b in bars] == counts[name].tolist()
        red = [to_hex(b.get_facecolor()) == figures.GT_COLOR for b in bars]
        assert red == anomalous[name].tolist()


def test_box_growth_rectangles_match_grow_box_and_a_hand_value():
    image = np.zeros((100, 100, 3), np.uint8)
    box = np.array([10.0, 10.0, 20.0, 30.0])
    fig = figures.box_growth(image, box, [1.0, 1.2])
    rects = [(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height())
             for p in fig.axes[0].patches if p.get_gid() == "box"]
    # f = 1.2 by hand: w 10, h 20 -> x 8..22, y 6..34 (14 x 28) -> square: x 1..29
    assert rects[1] == (1, 6, 29, 34)
    assert rects == [tuple(grow_box(box, f, 100, 100)) for f in (1.0, 1.2)]


def test_detection_sweep_plots_the_values():
    fig = figures.detection_sweep([0.1, 0.5], [3.0, 1.5], [1.0, 1.2, 1.5], [20.0, 24.0, 30.0])
    left, right = fig.axes
    np.testing.assert_array_equal(left.lines[0].get_ydata(), [3.0, 1.5])
    np.testing.assert_array_equal(right.lines[0].get_xdata(), [1.0, 1.2, 1.5])
    np.testing.assert_array_equal(right.lines[0].get_ydata(), [20.0, 24.0, 30.0])


def test_object_features_norm_map_and_temporal_image():
    rng = np.random.default_rng(1)
    spatial, temporal = rng.normal(size=(49, 5)), rng.normal(size=(3, 5))
    fig = figures.object_features(np.zeros((8, 8, 3), np.uint8), spatial, temporal)
    norms = np.sqrt((spatial ** 2).sum(1)).reshape(7, 7)                # row-major 7 x 7 grid
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), norms)
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), temporal)


def test_pca_2d_of_points_on_a_line():
    t = np.linspace(-1, 1, 11)
    x = np.stack([t, 2 * t, -t], 1) + 5.0                               # a line in 3-D
    p = figures.pca_2d(x)
    np.testing.assert_allclose(np.abs(p[:, 0]), np.abs(t) * np.sqrt(6), atol=1e-12)
    np.testing.assert_allclose(p[:, 1], 0, atol=1e-12)


def test_memory_projection_marks_the_selected_points():
    rng = np.random.default_rng(2)
    candidates = {"spatial": rng.normal(size=(30, 4)), "temporal": rng.normal(size=(12, 4))}
    selected = {"spatial": np.array([0, 7, 9]), "temporal": np.array([3])}
    fig = figures.memory_projection(candidates, selected)
    for ax, stream in zip(fig.axes, candidates):
        everything, kept = ax.collections
        assert everything.get_offsets().shape == (len(candidates[stream]), 2)
        np.testing.assert_allclose(kept.get_offsets(), everything.get_offsets()[selected[stream]])


def test_coverage_radius_curve_and_chosen_l():
    radius = {"spatial": np.array([5.0, 3.0, 2.0, 0.0]), "temporal": np.array([1.0, 0.5])}
    fig = figures.coverage_radius(radius, {"spatial": 2, "temporal": 1})
    for ax, (stream, r) in zip(fig.axes, radius.items()):
        line = ax.lines[0]
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(r) + 1))
        np.testing.assert_array_equal(line.get_ydata(), r)
    assert [l.get_xdata()[0] for l in fig.axes[0].lines if l.get_gid() == "chosen"] == [2]


def test_stream_scores_curves_and_gt_spans():
    labels = {"a": np.array([0, 1, 1, 0]), "b": np.array([1, 0, 0, 1])}
    scores = {v: {"spatial": np.arange(4.0) + i, "temporal": -np.arange(4.0)} for i, v in enumerate(labels)}
    fig = figures.stream_scores(scores, labels, {"a": np.arange(4), "b": np.arange(10, 14)})
    axes = np.array(fig.axes).reshape(2, 2)
    for i, v in enumerate(labels):
        for j, s in enumerate(("spatial", "temporal")):
            np.testing.assert_array_equal(axes[i, j].lines[0].get_ydata(), scores[v][s])
            assert len(gt_patches(axes[i, j])) == len(figures.label_spans(labels[v]))
    # video b starts at frame 10: its spans cover frames 10 and 13
    assert sorted(span_extent(p) for p in gt_patches(axes[1, 0])) == [(9.5, 10.5), (12.5, 13.5)]
    assert [ax.get_xlabel() for ax in axes.flat] == ["", "", "frame", "frame"]     # bottom row only


def test_fusion_grid_image_and_mark():
    aucs = np.arange(6.0).reshape(2, 3) / 10
    fig = figures.fusion_grid(aucs, [0.0, 1.0], [0, 2, 4], {"oracle": (1.0, 2)})
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), aucs)
    mark = [l for l in ax.lines if l.get_label() == "oracle"][0]
    assert (mark.get_xdata()[0], mark.get_ydata()[0]) == (1, 1)         # column sigma = 2, row b = 1.0


def test_score_curves_data_spans_and_normalisation():
    labels = {"01": np.array([0, 0, 1, 1, 0, 1]), "02": np.array([0, 0, 0])}
    scores = {"01": {"label-free": np.array([1.0, 2, 5, 6, 2, 4]), "oracle": np.linspace(0, 1, 6)},
              "02": {"label-free": np.array([3.0, 1, 2]), "oracle": np.zeros(3)}}
    fig = figures.score_curves(scores, labels)
    for ax, v in zip(fig.axes, labels):
        for line, y in zip(ax.lines, scores[v].values()):
            np.testing.assert_array_equal(line.get_ydata(), y)
        assert len(gt_patches(ax)) == len(figures.label_spans(labels[v]))
    assert sorted(span_extent(p) for p in gt_patches(fig.axes[0])) == [(1.5, 3.5), (4.5, 5.5)]
    normalised = figures.score_curves(scores, labels, normalize=True)
    np.testing.assert_allclose(normalised.axes[0].lines[0].get_ydata(), [0, 0.2, 0.8, 1, 0.2, 0.6])


def test_nearest_patches_outlines_the_patch_cells():
    crop = np.zeros((70, 70, 3), np.uint8)
    examples = [{"test_crop": crop, "memory_crop": crop, "test_patch": 10, "memory_patch": 48,
                 "test_title": "t", "memory_title": "m"}]
    fig = figures.nearest_patches(examples)
    test_ax, memory_ax = fig.axes
    (cell,) = [p for p in test_ax.patches if p.get_gid() == "patch"]
    # patch 10 of the 7 x 7 grid: row 1, column 3; cells of 10 px (pixel centres at integers)
    assert (cell.get_x(), cell.get_y(), cell.get_width(), cell.get_height()) == (29.5, 9.5, 10, 10)
    (cell,) = [p for p in memory_ax.patches if p.get_gid() == "patch"]
    assert (cell.get_x(), cell.get_y()) == (59.5, 59.5)                 # patch 48: the last cell


def test_score_color_ends():
    assert figures.score_color(0.0) == (0, 255, 0)                      # green (BGR)
    assert figures.score_color(1.0) == (0, 0, 255)                      # red
    assert figures.score_color(0.5) == (0, 255, 255)                    # yellow
    assert figures.score_color(7.0) == (0, 0, 255)                      # clipped


def test_annotate_frame_boxes_strip_and_border():
    image = np.full((40, 60, 3), 128, np.uint8)
    out = figures.annotate_frame(image, [[10, 10, 30, 30]], [0.0], score=0.5, anomalous=False, strip_height=26)
    assert out.shape == (66, 60, 3)
    np.testing.assert_array_equal(out[10, 15], (0, 255, 0))             # top edge of the box: score 0 -> green
    np.testing.assert_array_equal(out[20:22, 35:50], image[20:22, 35:50])   # frame elsewhere untouched
    bar = out[40 + 16:40 + 23]                                          # the bar rows of the strip
    filled = (bar == np.array(figures.score_color(0.5), np.uint8)).all(-1).any(0)
    assert filled.sum() == round(0.5 * (60 - 6))                        # bar length = score
    red = figures.annotate_frame(image, [], [], score=1.0, anomalous=True)
    np.testing.assert_array_equal(red[0, 30], (40, 40, 214))            # ground-truth border


def test_ablation_bars_heights():
    fig = figures.ablation_bars(["S", "T", "all"], {"oracle": [0.7, 0.8, 0.9], "label-free": [0.6, 0.75, 0.85]})
    heights = [round(b.get_height(), 6) for b in fig.axes[0].patches]
    assert heights == [0.7, 0.8, 0.9, 0.6, 0.75, 0.85]


def test_ablation_curve_series_and_secondary_axis():
    fig = figures.ablation_curve([0.01, 0.1, 0.5], {"oracle": [0.8, 0.9, 0.92], "label-free": [0.7, 0.85, 0.86]},
                                 "r", secondary=("MB", [0.1, 1.0, 5.0]), logx=True, mark=0.1)
    ax, twin = fig.axes
    assert [list(l.get_ydata()) for l in ax.lines if l.get_gid() != "default"] == [[0.8, 0.9, 0.92], [0.7, 0.85, 0.86]]
    assert list(twin.lines[0].get_ydata()) == [0.1, 1.0, 5.0]
    assert ax.get_xscale() == "log"
    assert ax.get_title() == ""
    titled = figures.ablation_curve([3, 4], {"oracle": [0.8, 0.9]}, "T", title="first 2 videos")
    assert titled.axes[0].get_title() == "first 2 videos"


@pytest.mark.parametrize("make", [
    lambda: figures.label_timeline({"a": np.array([0, 1])}),
    lambda: figures.ablation_bars(["S"], {"oracle": [0.5]}),
])
def test_figures_render_to_the_same_png_bytes(make):
    from vpclib.notebooks import figure_png
    assert figure_png(make()) == figure_png(make())
