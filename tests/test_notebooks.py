"""notebooks: the papermill runner (a failing cell is named), committing outputs, and the helpers."""

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from vpclib import notebooks

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
    with pytest.raises(notebooks.NotebookError) as err:
        notebooks.run_notebooks(ROOT / "params/synthetic.yaml", work_dir=tmp_path / "w", out_dir=tmp_path / "runs",
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
    notebooks.commit_outputs(tmp_path / "runs", tmp_path, names=("x",))
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
    routed = notebooks.extra_parameters({"N": [3, 4]}, ("a", "b"), source)
    assert routed == {"a": {"N": [3, 4]}, "b": {}}
    with pytest.raises(notebooks.NotebookError, match="no notebook has a parameter M; they have: N"):
        notebooks.extra_parameters({"M": 1}, ("a", "b"), source)
    with pytest.raises(notebooks.NotebookError, match="--work-dir"):
        notebooks.extra_parameters({"WORK_DIR": "x"}, ("a", "b"), source)
    # executed: the value reaches the notebook, read as YAML by the command line
    assert cli._notebook_parameters([("N", "[3, 4]"), ("K", "0"), ("S", "text")]) == {"N": [3, 4], "K": 0, "S": "text"}
    notebooks.run_notebooks(ROOT / "params/synthetic.yaml", work_dir=tmp_path / "w", out_dir=tmp_path / "runs",
                            figures_dir=tmp_path / "figs", names=("a", "b"), source_dir=source,
                            extra=cli._notebook_parameters([("N", "[3, 4]")]))
    executed = nbformat.read(str(tmp_path / "runs/a.ipynb"), as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "a [3, 4]\n"
    # an unknown name fails before any notebook runs, with the command line's error format
    assert cli.main(["notebooks", str(ROOT / "params/synthetic.yaml"), "--work-dir", str(tmp_path / "w2"),
                     "--out", str(tmp_path / "runs2"), "-p", "NOPE", "1"]) == 2
    assert "no notebook has a parameter NOPE" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()


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
    notebooks.run_notebooks(params, work_dir=work, out_dir=runs, figures_dir=figs,
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
                "01_objects_per_clip", "01_box_growth", "01_confidence_growth", "02_object_features",
                "02_memories", "02_coverage_radius", "03_stream_scores", "03_fusion_grid", "04_score_curves",
                "04_nearest_patches", "04_demo_frames", "04_ablation_memories", "04_ablation_coreset_ratio",
                "04_ablation_channel_groups", "04_ablation_clip_length"}
    assert expected <= {p.stem for p in figs.glob("*.png")}
    assert len(list(figs.glob("04_demo_*.gif"))) == 2                      # one per test video
