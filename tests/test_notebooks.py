"""notebooks: the papermill runner (a failing cell is named), committing outputs, and the helpers."""

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from vpclib import notebooks, runner

ROOT = Path(__file__).resolve().parents[1]


def _notebook(*sources, parameters="PARAMS = ''\nWORK_DIR = ''"):
    params = new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def test_runner_stops_at_the_failing_cell_and_names_it(tmp_path, capsys):
    source = tmp_path / "nbs"
    source.mkdir()
    nbformat.write(_notebook("x = 1", "print('ok', x)"), str(source / "good.ipynb"))
    nbformat.write(_notebook("y = 2", "1 / 0", "print('never')"), str(source / "bad.ipynb"))
    nbformat.write(_notebook("print('after')"), str(source / "later.ipynb"))
    with pytest.raises(runner.NotebookError) as err:
        runner.run_notebooks(ROOT / "params/synthetic.yaml", work_dir=tmp_path / "w", out_dir=tmp_path / "runs",
                                figures_dir=tmp_path / "figs", names=("good", "bad", "later"), source_dir=source)
    message = str(err.value)
    # cell 3: the parameters cell, papermill's injected parameters, then "y = 2", then "1 / 0"
    assert "bad.ipynb" in message and "cell 3" in message and "'1 / 0'" in message and "ZeroDivisionError" in message
    assert (tmp_path / "runs/good.ipynb").is_file() and (tmp_path / "runs/bad.ipynb").is_file()
    assert not (tmp_path / "runs/later.ipynb").exists()                 # stopped at the first failure
    printed = capsys.readouterr().out
    assert printed.startswith("good ") and " s " in printed.splitlines()[0]
    executed = nbformat.read(str(tmp_path / "runs/good.ipynb"), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert str((tmp_path / "w").resolve()) in injected[0].source        # absolute work dir passed


def test_commit_outputs_drops_injected_parameters_and_keeps_outputs(tmp_path):
    nb = _notebook("print(1)")
    injected = new_code_cell("PARAMS = '/abs/params.yaml'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    nb.cells[2].outputs = [new_output("stream", name="stdout", text="1\n")]
    nb.cells[2].execution_count = 3
    nb.cells[2].metadata["papermill"] = {"duration": 1.5}
    nb.metadata["papermill"] = {"start_time": "now"}
    (tmp_path / "runs").mkdir()
    nbformat.write(nb, str(tmp_path / "runs/x.ipynb"))
    runner.commit_outputs(tmp_path / "runs", tmp_path, names=("x",))
    out = nbformat.read(str(tmp_path / "x.ipynb"), as_version=4)
    assert [c.source for c in out.cells] == ["PARAMS = ''\nWORK_DIR = ''", "print(1)"]
    assert out.cells[1].outputs[0]["text"] == "1\n" and out.cells[1].execution_count == 2
    assert "papermill" not in out.metadata and "papermill" not in out.cells[1].metadata


def test_markdown_table():
    text = notebooks.markdown_table(["a", "b"], [["x", 0.12345], [3, "y"]])
    assert text == "| a | b |\n|---|---|\n| x | 0.123 |\n| 3 | y |"


def test_layout_tree_cuts_long_lists(tmp_path):
    root = tmp_path / "data"
    for v in ("01", "02", "10", "03", "04"):
        (root / "training" / v).mkdir(parents=True)
        for i in range(6):
            (root / "training" / v / f"{i}.png").touch()
    (root / "gt.mat").touch()
    tree = notebooks.layout_tree(root, max_items=2).splitlines()
    assert tree[0] == "data/" and tree[1] == "    training/"
    assert tree[2:4] == ["        01/", "            0.png .. 5.png  (6 files)"]
    assert "... 5 folders in all (01 .. 10)" in tree[-2]                 # natural order: 10 is last
    assert tree[-1] == "    gt.mat" and str(tmp_path) not in "\n".join(tree)


def test_save_gif_frames_and_stable_bytes(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(100, 110, (20, 30, 3), dtype=np.uint8)
    frames = [base.copy() for _ in range(5)]
    for i, f in enumerate(frames):
        f[5:10, 2 + 4 * i:6 + 4 * i] = (0, 0, 255)                       # a red square moving right
    notebooks.save_gif(tmp_path / "a.gif", frames)
    notebooks.save_gif(tmp_path / "b.gif", frames)
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()
    import imageio.v3 as iio
    back = iio.imread(tmp_path / "a.gif", index=None)                   # (F, H, W, C) RGB(A)
    assert back.shape[:3] == (5, 20, 30)
    assert tuple(back[4, 7, 19, :3]) == (255, 0, 0)                     # the square of the last frame, in RGB


def test_auc_text_says_why_a_video_has_no_auc():
    assert notebooks.auc_text(0.8766, [0, 1]) == "0.877"
    assert notebooks.auc_text(float("nan"), [1, 1, 1]) == "n/a (all frames anomalous)"
    assert notebooks.auc_text(float("nan"), [0, 0]) == "n/a (no anomalous frame)"


class _ConstantVideo:
    """Frame i is a flat grey image of value i, so a crop's value tells which frame it was cut from."""

    def __init__(self, name, labels):
        self.name, self.labels, self.n_frames = name, np.asarray(labels), len(labels)

    def read_frame(self, i):
        return np.full((48, 64, 3), i, np.uint8)


def test_object_crops_middle_of_the_anomaly_then_a_normal_clip():
    from vpclib.config import load_params
    cfg = load_params(ROOT / "params/synthetic.yaml")            # T = 4, no skipped frame, 64 px crops
    # 6 clips (frames 0-23); anomalous frames 9-17 -> clips 2, 3, 4 anomalous; the anomaly's middle
    # frame is 13, in clip 3; clip 0 is normal but empty, clip 1 is the first normal clip with objects
    labels = np.zeros(24, int)
    labels[9:18] = 1
    box = np.array([[4, 4, 20, 20]])
    boxes = {"v": [box[:0], box, box, np.repeat(box, 3, 0), box, box]}
    crops, titles = notebooks.object_crops(cfg, [_ConstantVideo("v", labels)], boxes, n_per_video=3)
    # two objects of clip 3 (detector frame 3*4 + 2 = 14), then clip 1 (frame 6)
    assert titles == ["v clip 3 (anom.)", "v clip 3 (anom.)", "v clip 1 (normal)"]
    assert [int(c[0, 0, 0]) for c in crops] == [14, 14, 6]
    assert all(c.shape == (64, 64, 3) for c in crops)
    # anomalous throughout: the middle frame 11 is in clip 2 (one object); the rest from later clips
    crops, titles = notebooks.object_crops(cfg, [_ConstantVideo("w", np.ones(24, int))], {"w": boxes["v"]},
                                           n_per_video=3)
    assert titles == ["w clip 2 (anom.)", "w clip 1 (anom.)", "w clip 3 (anom.)"]
    assert [int(c[0, 0, 0]) for c in crops] == [10, 6, 14]


def test_extra_parameters_go_to_the_notebooks_that_declare_them(tmp_path, capsys):
    from vpclib import cli
    source = tmp_path / "nbs"
    source.mkdir()
    nbformat.write(_notebook("print('a', N)", parameters="PARAMS = ''\nN = 1"), str(source / "a.ipynb"))
    nbformat.write(_notebook("print('b')"), str(source / "b.ipynb"))
    routed = runner.extra_parameters({"N": [3, 4]}, ("a", "b"), source)
    assert routed == {"a": {"N": [3, 4]}, "b": {}}
    with pytest.raises(runner.NotebookError, match="no notebook has a parameter M; they have: N"):
        runner.extra_parameters({"M": 1}, ("a", "b"), source)
    with pytest.raises(runner.NotebookError, match="--work-dir"):
        runner.extra_parameters({"WORK_DIR": "x"}, ("a", "b"), source)
    # executed: the value reaches the notebook, read as YAML by the command line
    assert cli._notebook_parameters([("N", "[3, 4]"), ("K", "0"), ("S", "text")]) == {"N": [3, 4], "K": 0, "S": "text"}
    runner.run_notebooks(ROOT / "params/synthetic.yaml", work_dir=tmp_path / "w", out_dir=tmp_path / "runs",
                            figures_dir=tmp_path / "figs", names=("a", "b"), source_dir=source,
                            extra=cli._notebook_parameters([("N", "[3, 4]")]))
    executed = nbformat.read(str(tmp_path / "runs/a.ipynb"), as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "a [3, 4]\n"
    # an unknown name fails before any notebook runs, with the command line's error format
    assert cli.main(["notebooks", str(ROOT / "params/synthetic.yaml"), "--work-dir", str(tmp_path / "w2"),
                     "--out", str(tmp_path / "runs2"), "-p", "NOPE", "1"]) == 2
    assert "no notebook has a parameter NOPE" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()


def test_auc_table_header_names_the_label_free_mode_in_use():
    result = {"auc_micro_oracle": 0.9, "auc_micro_labelfree": 0.8, "auc_macro_oracle": 0.95, "auc_macro_labelfree": 0.85,
              "per_video": {"01": {"oracle": 1.0, "labelfree": 0.9}}}
    for mode in ("calibrated", "fixed"):
        header = notebooks.auc_table({**result, "labelfree": {"mode": mode}}).splitlines()[0]
        assert header == f"| AUC | oracle (test-label search) | label-free ({mode}) |"


def test_read_metrics_reads_back_metrics_json_of_the_same_config(tmp_path, monkeypatch):
    import json
    from vpclib.config import load_params
    from vpclib.store import WorkDir, write_json
    cfg = load_params(ROOT / "params/synthetic.yaml")
    work = WorkDir(tmp_path)
    evaluated = []
    monkeypatch.setattr(notebooks.pipeline, "evaluate_from", lambda c, w: evaluated.append(1) or {"from": "evaluate"})
    assert notebooks.read_metrics(cfg, work) == {"from": "evaluate"}          # nothing written yet
    write_json(work.path("metrics.json"), {"auc_micro_oracle": 0.5, "config": cfg.to_dict()})
    work.path("scores.csv").write_text("video,frame\n")
    assert notebooks.read_metrics(cfg, work)["auc_micro_oracle"] == 0.5 and len(evaluated) == 1
    other = load_params(ROOT / "params/synthetic.yaml", **{"device": "cpu"})
    if json.loads(json.dumps(other.to_dict())) != json.loads(json.dumps(cfg.to_dict())):
        assert notebooks.read_metrics(other, work) == {"from": "evaluate"}    # made with other params: again


def test_check_dataset_and_load_config_say_how_to_point_at_the_data(tmp_path):
    from vpclib.config import load_params
    from vpclib.errors import ConfigError, DatasetError
    from vpclib.store import WorkDir
    with pytest.raises(ConfigError, match="data.root") as err:
        notebooks.load_config(ROOT / "params/ped2.yaml")
    assert 'drive.mount("/content/drive")' in str(err.value) and "DATA_ROOT" in str(err.value)
    (tmp_path / "ped2" / "training").mkdir(parents=True)                      # no testing/, no labels
    cfg = notebooks.load_config(ROOT / "params/ped2.yaml", str(tmp_path / "ped2"))
    with pytest.raises(DatasetError) as err:
        notebooks.check_dataset(cfg, WorkDir(tmp_path / "work"))
    text = str(err.value)
    assert "Expected layout: ucsd" in text and "root/S/frames/NN/*" in text and "drive.mount" in text
    synthetic = load_params(ROOT / "params/synthetic.yaml", **{"data.root": str(tmp_path / "scenes")})
    synthetic.data.synthetic.n_train, synthetic.data.synthetic.n_test, synthetic.data.synthetic.n_frames = 1, 1, 24
    assert notebooks.check_dataset(synthetic, WorkDir(tmp_path / "w2")) == (
        "layout ucsd in the synthetic scenes (generated in WORK_DIR): 1 training and 1 test videos, every test "
        "video labelled, every video at least T=4 frames")


def test_detector_sweep_of_the_motion_detector_by_hand(fake_video_cls):
    """Two squares appear on the middle frame of every clip (T = 4: frames 2, 6, 10, 14), nowhere else,
    so the median background is the empty floor (grey 100). Square A: 5 x 5 px, 30 grey levels
    brighter; square B: 12 x 12 px, 90 brighter. The detector's 3 x 3 opening keeps both, its 3 x 3
    dilation makes them 7 x 7 = 49 px and 14 x 14 = 196 px. So objects per clip: min_area 10, 20, 40
    -> 2; 80, 160 -> 1 (B only); threshold 10, 25 -> 2; 50, 75 -> 1 (A's 30 is not above); 100 -> 0."""
    from vpclib.config import load_params
    cfg = load_params(ROOT / "params/synthetic.yaml")                       # T = 4, min_area 40, threshold 25
    frames = np.full((16, 60, 80, 3), 100, np.uint8)
    for i in (2, 6, 10, 14):
        frames[i, 10:15, 10:15] = 130
        frames[i, 30:42, 50:62] = 190
    sweep = notebooks.detector_sweep(cfg, [fake_video_cls(frames)])
    assert sweep["sweeps"] == [("motion_min_area", [10, 20, 40, 80, 160], [2.0, 2.0, 2.0, 1.0, 1.0]),
                               ("motion_threshold", [10, 25, 50, 75, 100], [2.0, 2.0, 1.0, 1.0, 0.0])]
    assert sweep["marks"]["motion_min_area"] == 40 and sweep["marks"]["motion_threshold"] == 25
    assert sweep["growths"] == [1.0, 1.1, 1.2, 1.35, 1.5] and sweep["mean_box_side"][0] < sweep["mean_box_side"][-1]


def _outputs(nb, starts: str) -> list[str]:
    """The stdout and markdown outputs of the one code cell of `nb` whose source starts with `starts`
    (warnings on stderr and figures left out)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    assert len(cells) == 1, starts
    texts = [o.get("text") if o.get("output_type") == "stream" and o.get("name") == "stdout"
             else o.get("data", {}).get("text/markdown") for o in cells[0].outputs]
    return [t for t in texts if t]


def test_the_committed_hand_made_examples_print_the_hand_worked_values():
    """02_memorization's pyramid on G = [4, 1, 0, 6] and greedy coreset on eight points, as committed
    (nbval checks that a new run prints the same), against the values worked out in test_explain."""
    from conftest import markdown_rows
    from test_explain import CORESET_BY_HAND, NOTEBOOK_POINTS, PYRAMID_BY_HAND
    nb = nbformat.read(str(ROOT / "notebooks/02_memorization.ipynb"), as_version=4)
    table, line = _outputs(nb, "G = torch.tensor([[[4.0, 1.0, 0.0, 6.0]]])")
    assert {r[0]: r[3] for r in markdown_rows(table)} == {k: "[" + ", ".join(map(str, v)) + "]"
                                                          for k, v in PYRAMID_BY_HAND.items()}
    assert line == "high-level vectors: [12.0, 9.0, 12.0, 18.0] (T vectors of D = 1 dim)\n"
    import ast
    source = [c.source for c in nb.cells if c.source.startswith("points = torch.tensor(")][0]
    assert ast.literal_eval(source.split("torch.tensor(", 1)[1].split(")", 1)[0]) == NOTEBOOK_POINTS
    table = _outputs(nb, "points = torch.tensor(")[0]
    rows = markdown_rows(table)
    assert [int(r[1]) for r in rows] == [i for i, _, _ in CORESET_BY_HAND]
    assert [float(r[4]) for r in rows] == [round(radius, 3) for _, _, radius in CORESET_BY_HAND]
    assert [r[3] for r in rows[1:]] == [f"{d:.3f}" for _, d, _ in CORESET_BY_HAND[1:]]


PAPER_ENCODER_PARAMS = """
# the paper's encoder (CLIP RN101 through open_clip, layer2 + layer3, the reference's pixel scaling)
# with random weights, on tiny synthetic scenes; the rest as the Avenue settings where they fit
data:
  name: tiny-clip
  layout: synthetic
  synthetic: {seed: 1, n_train: 2, n_test: 2, n_frames: 24, width: 240, height: 160}
objects:
  detector: motion
  box_growth: 1.0
  crop_size: 64
  motion_min_area: 40
encoder:
  backbone: clip_rn101
  pretrained: random
  preprocessing: faithful
  fp16: false
  batch_size: 32
method:
  clip_length: 4
  channel_groups: 32
  coreset_ratio: 0.1
  power: 4
fusion: {labelfree: calibrated, a: 0.5, b: 0.5, sigma: 2}
"""


@pytest.mark.slow
def test_the_five_notebooks_run_unchanged_with_the_papers_encoder(tmp_path):
    """Nothing in the notebooks is tied to the offline backbone: with CLIP RN101 (D = 1536 channels
    in C = 32 groups) they all run, and what they print agrees with the artifacts they wrote."""
    import csv
    import json
    from sklearn.metrics import roc_auc_score
    params = tmp_path / "tiny-clip.yaml"
    params.write_text(PAPER_ENCODER_PARAMS)
    work, runs, figs = tmp_path / "work", tmp_path / "runs", tmp_path / "figs"
    runner.run_notebooks(params, work_dir=work, out_dir=runs, figures_dir=figs,
                            extra={"ABLATION_RATIOS": [0.1, 0.5], "ABLATION_C": [32], "ABLATION_T": [4],
                                   "ABLATION_VIDEOS": 1})
    manifest = json.loads((work / "features/train.h5.params.json").read_text())["key"]
    assert manifest["encoder.backbone"] == "clip_rn101"                   # the features came from CLIP

    def printed(name):
        nb = nbformat.read(str(runs / f"{name}.ipynb"), as_version=4)
        return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    # 02: the spatial memory's vectors have C = 32 dims (1536 channels averaged in groups of 48)
    with np.load(work / "memory.npz") as memory:
        n_vectors, dims = memory["spatial_vectors"].shape
    assert dims == 32
    assert f"spatial memory: {n_vectors} vectors x 32 dims" in printed("02_memorization")
    # 03: the printed micro AUCs are those of scores.csv, recomputed here with scikit-learn
    with open(work / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    label = [int(r["label"]) for r in rows]
    for name, column in (("oracle", "final_oracle"), ("label-free", "final_labelfree")):
        auc = roc_auc_score(label, [float(r[column]) for r in rows])
        assert f"{name} {auc:.3f}" in printed("03_inference").split("micro AUC:")[1].splitlines()[0]
    # every figure of the five notebooks was written
    expected = {"00_label_timeline", "00_sample_frames", "00_clip", "01_detections", "01_crops",
                "01_objects_per_clip", "01_box_growth", "01_detector_sweep", "02_object_features",
                "02_memories", "02_coverage_radius", "02_spatial_steps", "02_coreset_steps", "03_stream_scores",
                "03_fusion_one_clip", "03_oracle_search", "04_score_curves",
                "04_nearest_patches", "04_demo_frames", "04_ablation_memories", "04_ablation_coreset_ratio",
                "04_ablation_channel_groups", "04_ablation_clip_length"}
    assert expected <= {p.stem for p in figs.glob("*.png")}
    assert len(list(figs.glob("04_demo_*.gif"))) == 2                      # one per test video
    _check_open_the_box_cells(runs, work)


def _check_open_the_box_cells(runs, work):
    """Every number the open-the-box cells of 02 and 03 printed, against the run's artifacts, computed
    here with numpy, scipy-free smoothing loops and scikit-learn."""
    import json
    import re
    import h5py
    from conftest import markdown_rows, reflect_smooth
    from sklearn.metrics import roc_auc_score

    def h5(split):
        with h5py.File(work / f"features/{split}.h5", "r") as f:
            return {v: {k: f[v][k][()] for k in f[v]} for v in f}

    def grid(text):
        return np.array([[float(x) for x in r[1:]] for r in markdown_rows(text)])

    def nearest(queries, bank):                                            # (Q, D), (N, D) -> (Q,)
        q, m = np.asarray(queries, np.float64), np.asarray(bank, np.float64)
        return np.sqrt(((q[:, None] - m[None]) ** 2).sum(-1)).min(1)

    # 02: one object's spatial grid and temporal vectors are the features file's
    nb = nbformat.read(str(runs / "02_memorization.ipynb"), as_version=4)
    line = _outputs(nb, "encoder = build_encoder")[0]
    obj, video, group = re.search(r"F of object (\d+) of training video (\S+): \(\d+, 4, 28, 28\) = \(C, T, 28, 28\); "
                                  r"channel group (\d+) shown", line).groups()
    obj, group = int(obj), int(group)
    train = h5("train")[video]
    assert obj == int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in train["boxes"]]))   # the largest object
    table, line = _outputs(nb, "spatial = features.spatial_vectors")
    def close(printed, expected, atol=1e-12):                             # 3 decimals, or 3 digits below 0.1
        np.testing.assert_allclose(printed, expected, rtol=6e-3, atol=atol)

    close(grid(table), train["spatial"][obj][:, group].reshape(7, 7), atol=1e-5)   # F made again: batch noise
    assert line.endswith("recomputed: True\n")
    table, line = _outputs(nb, "memory_side = ")
    for t, row in enumerate(grid(table)):
        expected = [train[k][obj][t, g] for g in range(4) for k in ("temporal_mean", "temporal_max")]
        close(row, expected, atol=1e-5)
    assert line == "the features file's, recomputed: True True\n"

    # 03: s(Q, M) of the clip, brute force on the memory and the test features
    nb = nbformat.read(str(runs / "03_inference.ipynb"), as_version=4)
    line, spatial_table = _outputs(nb, "test = pipeline.read_features")
    video, clip, first, n_objects, power = re.search(
        r"test video (\S+), clip (\d+) \(frames (\d+)-\d+\): (\d+) objects; power n = (\d+)", line).groups()
    clip, first, power = int(clip), int(first), int(power)
    test = h5("test")[video]
    memory = np.load(work / "memory.npz")
    objects = np.flatnonzero(test["object_clip"] == clip)
    assert int(n_objects) == len(objects) and test["clip_start"][clip] == first
    clip_scores = {}
    for stream, key in (("spatial", "spatial"), ("temporal", "temporal_max")):
        per_object = [nearest(test[key][o], memory[f"{stream}_vectors"]).max() ** power for o in objects]
        clip_scores[stream] = max(per_object) if per_object else 0.0
    clip_scores["highlevel"] = nearest(test["highlevel"][clip], memory["highlevel_vectors"]).max() ** power
    temporal_table, highlevel_table, scores_line = _outputs(nb, "notebooks.display_markdown(\"**temporal**")
    for stream, text in (("spatial", spatial_table), ("temporal", temporal_table), ("highlevel", highlevel_table)):
        close(float(markdown_rows(text)[-1][-1].strip("*")), clip_scores[stream])
    with open(work / "scores.csv") as f:
        header, *rows = [line.strip().split(",") for line in f]
    columns = {name: np.array([r[j] for r in rows]) for j, name in enumerate(header)}
    here = (columns["video"] == video) & (columns["frame"].astype(int) >= first) & (columns["frame"].astype(int) < first + 4)
    for stream in ("spatial", "temporal", "highlevel"):
        np.testing.assert_allclose(columns[stream][here].astype(float), clip_scores[stream], rtol=1e-4)
        assert scores_line.startswith("scores.csv, the clip's frames: ")
        listed = dict(part.split(" ", 1) for part in scores_line.split(": ", 1)[1].strip().split("; "))
        close([float(x) for x in listed[stream].split(", ")], [clip_scores[stream]] * 4)
    # 03: the fusion steps of those frames, written out from scores.csv and metrics.json
    result = json.loads((work / "metrics.json").read_text())
    table = _outputs(nb, "table = notebooks.read_frame_table(scores_csv)")[0]
    printed = {r[0]: np.array([float(x) for x in r[1:]]) for r in markdown_rows(table)}
    s, t, h = (columns[k].astype(float) for k in ("spatial", "temporal", "highlevel"))
    vid = columns["video"]
    free = result["labelfree"]
    assert free["mode"] == "calibrated"
    z = {k: (x - free["stats"][k][0]) / (free["stats"][k][1] + 1e-8) for k, x in (("spatial", s), ("temporal", t), ("highlevel", h))}
    fused = free["b"] * (free["a"] * z["spatial"] + (1 - free["a"]) * z["temporal"]) + (1 - free["b"]) * z["highlevel"]
    final_free = np.concatenate([reflect_smooth(fused[vid == v], free["sigma"]) for v in dict.fromkeys(vid)])
    close(printed["zT"], z["temporal"][here])
    close(printed[f"smoothed in the video (sigma {free['sigma']:g}): final_labelfree"], final_free[here])
    np.testing.assert_allclose(final_free[here], columns["final_labelfree"][here].astype(float), atol=1e-5)
    zs = lambda x: (x - x.mean()) / (x.std() + 1e-8)
    a, b, sigma = result["a"], result["b"], result["sigma"]
    local = reflect_smooth(zs(a * s + (1 - a) * t), sigma)
    high = np.concatenate([reflect_smooth(zs(h[vid == v]), sigma) for v in dict.fromkeys(vid)])
    mixed = b * local + (1 - b) * high
    final_oracle = (mixed - mixed.min()) / (mixed.max() - mixed.min() + 1e-8)
    close(printed["min-max over all test frames: final_oracle"], final_oracle[here])
    np.testing.assert_allclose(final_oracle[here], columns["final_oracle"][here].astype(float), atol=1e-5)
    # 03: the protocols' AUCs, from scores.csv with scikit-learn
    labels = columns["label"].astype(int)
    rows = markdown_rows(_outputs(nb, "stages = explain.oracle_stages")[0])
    local_only = reflect_smooth(a * s + (1 - a) * t, result["sigma_local"])
    local_only = (local_only - local_only.min()) / (local_only.max() - local_only.min() + 1e-8)
    for row, final in zip(rows, (local_only, final_oracle, final_free)):
        assert float(row[-1]) == pytest.approx(roc_auc_score(labels, final), abs=1e-3), row[0]


def test_refresh_and_nbval_run_with_the_same_pinned_kernels(monkeypatch):
    """The committed outputs (`dev.py refresh`) and their check (`dev.py test`) run in one pinned
    environment: each of torch's, oneDNN's and MKL's CPU kernels held at AVX2, whatever the caller's
    environment says; `dev.py main` (a user's run) leaves the processor's choice alone."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    pinned = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "VPC_PROGRESS": "0"}
    for command in ("test", "refresh"):
        env = dev.environment(command)
        assert {k: env.get(k) for k in pinned} == pinned, command
        assert env["HF_HUB_OFFLINE"] == env["YOLO_OFFLINE"] == "1"
    assert dev.environment("main")["ATEN_CPU_CAPABILITY"] == "avx512"
