"""Notebooks: the papermill runner of the five stage notebooks, and the helpers their cells call.

    vpc notebooks params/<dataset>.yaml [--data-root DIR] [--work-dir DIR] [--device D] [--out DIR] [--figures DIR]
    python -m vpclib.notebooks refresh     # the synthetic default, its outputs copied into notebooks/
    python -m vpclib.notebooks colab       # the repository address of pyproject.toml -> setup cells, badges

`run_notebooks` executes notebooks/00_data ... 04_visualization in order with the same parameters
(PARAMS, DATA_ROOT, WORK_DIR, DEVICE, FIGURES_DIR), writes the executed copies to runs/<dataset>/
and the figures to figures/<dataset>/, and stops at the first failing cell, naming it. The
notebooks run with the notebooks/ folder as working directory (as under nbval), so their default
parameters are paths relative to it.

The helpers keep the notebooks thin: `setup` (progress bars, warnings, the figure saver `show`),
tables as markdown, the dataset's layout, sample frames, crops and the demo GIFs. Nothing printed
here holds a path, a time or a memory address: nbval compares the notebooks' text outputs.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# tqdm.auto hints at ipywidgets inside Jupyter when they are missing (text bars are used instead);
# the hint holds a file path, which nbval would see. The notebooks import this module first.
warnings.filterwarnings("ignore", message="IProgress not found")

from . import datasets, pipeline  # noqa: E402
from .config import Config, load_params
from .errors import VPCError
from .objects import build_detector, crop_and_resize, middle_frame_offset
from .store import WorkDir, atomic_path

NOTEBOOKS = ("00_data", "01_detection", "02_memorization", "03_inference", "04_visualization")
DPI = 80                                  # figures: small and byte-stable PNGs
GIF_FPS = 8


class NotebookError(VPCError, RuntimeError):
    """A notebook failed: the message names the notebook, the cell and the error."""


# ---------------------------------------------------------------------------------------------
# the runner

def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (vpclib installed from a clone, editable or not)."""
    for candidate in (Path(__file__).resolve().parents[1] / "notebooks", Path.cwd() / "notebooks"):
        if (candidate / f"{NOTEBOOKS[0]}.ipynb").is_file():
            return candidate
    raise NotebookError("cannot find the notebooks/ folder: run `vpc notebooks` from a clone of the repository")


# set by run_notebooks from its own arguments, with the option that sets each
RUN_PARAMETERS = {"PARAMS": "the params file", "DATA_ROOT": "--data-root", "WORK_DIR": "--work-dir",
                  "DEVICE": "--device", "FIGURES_DIR": "--figures"}


def extra_parameters(extra: dict, names, source: Path) -> dict[str, dict]:
    """{notebook: the entries of `extra` its parameters cell declares}, e.g. {"ABLATION_VIDEOS": 0}
    goes to 04_visualization only. A name no notebook declares, or one that run_notebooks sets from
    its own arguments, raises NotebookError naming it and the names there are."""
    import papermill
    declared = {name: set(papermill.inspect_notebook(str(source / f"{name}.ipynb"))) for name in names}
    known = set().union(*declared.values()) - set(RUN_PARAMETERS)
    for key in extra:
        if key in RUN_PARAMETERS:
            raise NotebookError(f"notebook parameter {key} is set by vpc notebooks itself: use its option "
                                f"({RUN_PARAMETERS[key]}) instead of -p")
        if key not in known:
            raise NotebookError(f"no notebook has a parameter {key}; they have: {', '.join(sorted(known))}")
    return {name: {k: v for k, v in extra.items() if k in declared[name]} for name in names}


def _absolute_paths(sets: dict) -> dict:
    """--set values that name an existing file or folder relative to the current folder, made
    absolute: the notebooks run in notebooks/, where the relative path would miss."""
    out = {}
    for key, value in sets.items():
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        out[key] = value
    return out


def run_notebooks(params_path, work_dir=None, data_root=None, device=None, out_dir=None, figures_dir=None,
                  names=NOTEBOOKS, source_dir=None, extra: dict | None = None,
                  sets: dict | None = None) -> dict[str, float]:
    """Execute the notebooks with papermill; returns {notebook: seconds}. `extra`: more notebook
    parameters, e.g. {"ABLATION_VIDEOS": 0}, each given to the notebooks that declare it. `sets`:
    params overrides (--set), e.g. {"objects.weights": "/m/yolov5n.pt"}; they are written with the
    params file into <out>/params.yaml, which every notebook then reads as its PARAMS. Raises
    NotebookError naming the notebook and cell at the first failure (the executed copy, with the
    traceback, is kept)."""
    import papermill
    import yaml
    from papermill.exceptions import PapermillExecutionError

    from .config import read_params

    sets = _absolute_paths(sets or {})
    cfg = load_params(params_path, sets=sets, **{"data.root": data_root, "device": device})  # fail early
    source = Path(source_dir) if source_dir else notebooks_dir()
    per_notebook = extra_parameters(extra or {}, names, source)              # fail early on unknown names
    out = Path(out_dir or f"runs/{cfg.data.name}").resolve()
    figures = Path(figures_dir or f"figures/{cfg.data.name}").resolve()
    params_file = Path(params_path).resolve()
    if sets:                                                                 # the file with the overrides in
        out.mkdir(parents=True, exist_ok=True)
        params_file = out / "params.yaml"
        merged = read_params(params_path, sets)
        with atomic_path(params_file) as tmp:
            Path(tmp).write_text(f"# {Path(params_path).resolve()} with --set {', '.join(sets)}\n"
                                 + yaml.safe_dump(merged, sort_keys=False))
    parameters = {
        "PARAMS": str(params_file),
        "DATA_ROOT": str(Path(data_root).expanduser().resolve()) if data_root else "",
        "WORK_DIR": str(Path(work_dir or f"work/{cfg.data.name}").resolve()),
        "DEVICE": device or "",
        "FIGURES_DIR": str(figures),
    }
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    seconds = {}
    total = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        executed = out / f"{name}.ipynb"
        try:
            papermill.execute_notebook(str(source / f"{name}.ipynb"), str(executed),
                                       parameters={**parameters, **per_notebook[name]},
                                       cwd=str(source), progress_bar=_progress_on(), log_output=False,
                                       extra_arguments=["--log-level=ERROR"])   # the kernel's own log: errors only
        except PapermillExecutionError as err:
            first_line = next((line for line in err.source.splitlines() if line.strip()), "")
            raise NotebookError(
                f"notebook {name}.ipynb failed in cell {err.cell_index} (In [{err.exec_count}], starting "
                f"'{first_line[:80]}'): {err.ename}: {err.evalue}\nThe executed copy with the traceback is "
                f"{executed}") from None
        seconds[name] = time.perf_counter() - start
        print(f"{name:<18} {seconds[name]:6.1f} s   {executed}", flush=True)
    print(f"{'all notebooks':<18} {time.perf_counter() - total:6.1f} s   figures in {figures}", flush=True)
    return seconds


def commit_outputs(executed_dir, source_dir=None, names=NOTEBOOKS) -> None:
    """Copy executed notebooks over the committed ones: the injected-parameters cell and papermill's
    timing metadata removed, execution counts renumbered, so that the committed notebooks keep their
    default parameters and carry the outputs (which nbval then compares)."""
    import nbformat
    source = Path(source_dir) if source_dir else notebooks_dir()
    for name in names:
        nb = nbformat.read(Path(executed_dir) / f"{name}.ipynb", as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nb.metadata.pop("papermill", None)
        count = 0
        for cell in nb.cells:
            for key in ("papermill", "execution"):
                cell.metadata.pop(key, None)
            if cell.cell_type == "code":
                count += 1
                cell.execution_count = count
                for output in cell.outputs:
                    if "execution_count" in output:
                        output["execution_count"] = count
        with atomic_path(source / f"{name}.ipynb") as tmp:
            nbformat.write(nb, str(tmp))


# ---------------------------------------------------------------------------------------------
# the repository's address: Colab setup cell and badges

PLACEHOLDER_URL = "https://github.com/ORG/vpc"
SETUP_SCRIPT = "colab_setup.py"                  # in notebooks/: the source of every notebook's first cell


def repository_url(root=None) -> str:
    """The repository's public address: pyproject.toml [project.urls] Repository of the clone (or,
    installed from a wheel, the same field of the installed metadata)."""
    pyproject = Path(root or Path(__file__).resolve().parents[1]) / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
            return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]
        except ModuleNotFoundError:                                         # Python 3.10
            import re
            return re.search(r'^Repository\s*=\s*"([^"]*)"', pyproject.read_text(), re.M).group(1)
    from importlib.metadata import metadata
    urls = dict(u.split(", ", 1) for u in metadata("vpclib").get_all("Project-URL") or [])
    return urls["Repository"]


def colab_url(name: str, repo: str | None = None, branch: str = "main") -> str:
    """Colab's address of notebooks/<name>.ipynb in the GitHub repository `repo` (default: ours)."""
    repo = (repo or repository_url()).removesuffix(".git").rstrip("/")
    path = repo.split("github.com/", 1)[-1]
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{name}.ipynb"


def setup_cell_source(source_dir=None, repo: str | None = None) -> str:
    """notebooks/colab_setup.py with REPO set to `repo` (default: as it is in the file)."""
    import re
    text = (Path(source_dir) if source_dir else notebooks_dir()).joinpath(SETUP_SCRIPT).read_text().rstrip("\n")
    if repo is not None:
        text = re.sub(r'^REPO = "[^"]*"', f'REPO = "{repo}"', text, count=1, flags=re.M)
    return text


def sync_colab(root=None) -> list[str]:
    """Write the address of pyproject.toml into its consumers: REPO in notebooks/colab_setup.py, the
    first cell of every notebook (the setup script itself, outputs cleared) and the README's Colab
    badges. Returns the files changed."""
    import re
    import nbformat
    root = Path(root or Path(__file__).resolve().parents[1])
    repo = repository_url(root)
    changed = []
    script = root / "notebooks" / SETUP_SCRIPT
    text = setup_cell_source(root / "notebooks", repo)
    if script.read_text().rstrip("\n") != text:
        save_text(script, text + "\n")
        changed.append(str(script.relative_to(root)))
    for name in NOTEBOOKS:
        path = root / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        first = nb.cells[0]
        if first.cell_type != "code" or first.source != text or first.outputs:
            first.cell_type, first.source, first.outputs = "code", text, []
            with atomic_path(path) as tmp:
                nbformat.write(nb, str(tmp))
            changed.append(str(path.relative_to(root)))
    readme = root / "README.md"
    old = readme.read_text()
    new = re.sub(r"https://colab\.research\.google\.com/github/[^)\s]*?/notebooks/(\w+)\.ipynb",
                 lambda m: colab_url(m.group(1), repo), old)
    if new != old:
        save_text(readme, new)
        changed.append("README.md")
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vpclib.notebooks", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["refresh", "colab"], help="refresh: run the synthetic default and copy "
                   "its outputs into notebooks/ (what the committed notebooks carry); colab: write the "
                   "repository address of pyproject.toml into the notebooks' setup cell and the README's badges")
    p.add_argument("--params", default="params/synthetic.yaml")
    p.add_argument("--work-dir", default=None)
    args = p.parse_args(argv)
    if args.command == "colab":
        changed = sync_colab()
        print(f"repository address {repository_url()}: " + (", ".join(changed) + " updated" if changed else "all up to date"))
        if repository_url() == PLACEHOLDER_URL:
            print("note: it is still the placeholder; set [project.urls] Repository in pyproject.toml")
        return 0
    cfg = load_params(args.params)
    out = Path(f"runs/{cfg.data.name}")
    os.environ["VPC_PROGRESS"] = "0"                   # the kernels inherit it: no bars in the committed outputs
    global _PROGRESS_OFF
    _PROGRESS_OFF = True
    try:
        run_notebooks(args.params, work_dir=args.work_dir, out_dir=out)
    except VPCError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    commit_outputs(out)
    print(f"copied the executed notebooks into {notebooks_dir()}")
    return 0


# ---------------------------------------------------------------------------------------------
# notebook setup, figures, tables

# VPC_PROGRESS=0 in the environment the kernel starts with (tests, nbval, `refresh`) turns the
# progress bars off whatever the notebook's PROGRESS says: nbval compares the outputs' text, and a
# bar appears only when a stage is not cached, so bars never go into the committed outputs.
_PROGRESS_OFF = os.environ.get("VPC_PROGRESS") == "0"


def _progress_on() -> bool:
    return not _PROGRESS_OFF


def setup(figures_dir, progress: bool = True):
    """Progress bars on or off (VPC_PROGRESS; off anyway when the kernel started with VPC_PROGRESS=0),
    short warnings (no file paths), and the figure saver.

    Returns show(fig, name): save the figure as figures_dir/name.png and display it.
    """
    os.environ["VPC_PROGRESS"] = "1" if progress and not _PROGRESS_OFF else "0"
    warnings.formatwarning = lambda message, category, *args, **kw: f"{category.__name__}: {message}\n"
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)

    def show(fig, name: str) -> None:
        from IPython.display import Image, display
        png = figure_png(fig)
        with atomic_path(figures_dir / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        display(Image(data=png))

    show.folder = figures_dir
    return show


def figure_png(fig) -> bytes:
    """PNG bytes of a figure at DPI, with no creation software or time in them (stable bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_gif(path, frames: list[np.ndarray], fps: int = GIF_FPS, noise: int = 6, colors: int = 128,
             max_width: int = 256) -> None:
    """Frames (H, W, 3) BGR -> an animated GIF that loops, small and byte-stable.

    For size only: frames wider than `max_width` are shrunk to it; a pixel that differs from the
    previous GIF frame by at most `noise` grey levels keeps the previous value (sensor noise would
    defeat GIF compression); every frame uses one palette of `colors` colours, without dithering.
    """
    import cv2
    from PIL import Image
    h, w = frames[0].shape[:2]
    if w > max_width:
        size = (max_width, round(h * max_width / w))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    kept = [np.ascontiguousarray(frames[0][..., ::-1])]                       # RGB
    for frame in frames[1:]:
        rgb = frame[..., ::-1].copy()
        same = np.abs(rgb.astype(np.int16) - kept[-1]).max(-1) <= noise      # (H, W)
        rgb[same] = kept[-1][same]
        kept.append(rgb)
    palette = Image.fromarray(np.concatenate(kept[::4])).quantize(colors, method=Image.Quantize.MEDIANCUT,
                                                                  dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in kept]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; floats written with 3 decimals."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def display_markdown(text: str) -> None:
    from IPython.display import Markdown, display
    display(Markdown(text))


def load_config(params, data_root: str = "", device: str = "") -> Config:
    """The notebooks' config: the params file, with DATA_ROOT and DEVICE of the parameters cell when
    they are set. A params file of a real dataset without a dataset root is an error that says how to
    point DATA_ROOT at the data (Google Drive in Colab)."""
    from .errors import ConfigError
    try:
        return load_params(params, **{"data.root": data_root or None, "device": device or None})
    except ConfigError as err:
        if "data.root" not in str(err):
            raise
        raise ConfigError(f"{err}\n{DATA_HELP}") from None


def summary(cfg: Config) -> str:
    """One line about the run (no paths)."""
    m, o, e = cfg.method, cfg.objects, cfg.encoder
    return (f"dataset {cfg.data.name} (layout {cfg.data.layout}); detector {o.detector}; encoder {e.backbone} "
            f"({e.preprocessing}); T={m.clip_length}, C={m.channel_groups}, r={m.coreset_ratio:g}, n={m.power}")


# ---------------------------------------------------------------------------------------------
# 00 data

def layout_tree(root, max_items: int = 3) -> str:
    """The dataset folder as an indented tree: folders, then files; long lists are cut to their
    first `max_items` with a count. Paths are relative to the root (shown as its name)."""
    root = Path(root)
    lines = [f"{root.name}/"]

    def walk(folder: Path, depth: int) -> None:
        entries = datasets.natural_sort([p for p in folder.iterdir() if not p.name.startswith(".")])
        dirs, files = [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]
        pad = "    " * depth
        for d in dirs[:max_items]:
            lines.append(f"{pad}{d.name}/")
            walk(d, depth + 1)
        if len(dirs) > max_items:
            lines.append(f"{pad}... {len(dirs)} folders in all ({dirs[0].name} .. {dirs[-1].name})")
        if len(files) > max_items + 1:
            lines.append(f"{pad}{files[0].name} .. {files[-1].name}  ({len(files)} files)")
        else:
            lines.extend(f"{pad}{f.name}" for f in files)

    walk(root, 1)
    return "\n".join(lines)


DATA_HELP = """How to point the notebooks at the data:
- in Colab, put the dataset on Google Drive and mount it in a cell:
      from google.colab import drive; drive.mount("/content/drive")
  then set DATA_ROOT in the parameters cell, e.g. DATA_ROOT = "/content/drive/MyDrive/datasets/ped2"
  (or copy it to the runtime's disk first: faster to read);
- locally, set DATA_ROOT, or run `vpc notebooks PARAMS --data-root DIR`;
- or set data.root in the params file. The layouts vpclib reads are in the README (Datasets)."""


def check_dataset(cfg: Config, work: WorkDir) -> str:
    """Check that the dataset of `cfg` is where and as the params file says: both splits found, every
    test video labelled, every video long enough for one clip. Returns one line about it; raises
    DatasetError with what was expected and how to point DATA_ROOT at the data."""
    from .errors import DatasetError
    layout = "ucsd" if cfg.data.layout == "synthetic" else cfg.data.layout
    expected = next((line.strip() for line in (datasets.load_split.__doc__ or "").splitlines()
                     if line.strip().startswith(layout + " ")), layout)
    if cfg.data.layout != "synthetic" and not cfg.data.root:
        raise DatasetError(f"no dataset root: DATA_ROOT and the params file's data.root are empty.\n"
                           f"Expected layout: {expected}\n{DATA_HELP}")
    try:
        found = {split: pipeline.load_videos(cfg, work, split) for split in pipeline.SPLITS}
    except DatasetError as err:
        raise DatasetError(f"{err}\nExpected layout: {expected}\n{DATA_HELP}") from None
    where = "the synthetic scenes (generated in WORK_DIR)" if cfg.data.layout == "synthetic" else "DATA_ROOT"
    return (f"layout {layout} in {where}: {len(found['train'])} training and {len(found['test'])} test videos, "
            f"every test video labelled, every video at least T={cfg.method.clip_length} frames")


def anomaly_kinds(root) -> dict[str, str]:
    """{test video: anomaly kind} of the synthetic scenes (anomalies.json); {} for other datasets."""
    import json
    path = Path(root) / "anomalies.json"
    if not path.is_file():
        return {}
    return {v["video"]: v["kind"] for v in json.loads(path.read_text())["videos"]}


def clip_labels(cfg: Config, video) -> np.ndarray:
    """(B,) bool: clip b holds at least one anomalous frame."""
    t = cfg.method.clip_length
    return np.array([bool(video.labels[s:s + t].any()) for s in pipeline.video_clip_starts(cfg, video)])


def video_table(cfg: Config, videos: dict) -> str:
    """Markdown: one row per video of both splits (frames, clips, scored and anomalous frames)."""
    rows = []
    for split, vs in videos.items():
        for v in vs:
            n_clips = len(pipeline.video_clip_starts(cfg, v))
            scored = n_clips * cfg.method.clip_length
            anomalous = int(v.labels[:scored].sum()) if v.labels is not None else "-"
            rows.append([split, v.name, v.n_frames, n_clips, scored, anomalous])
    return markdown_table(["split", "video", "frames", "clips B", "scored frames", "anomalous (scored)"], rows)


def anomaly_middle(video) -> int:
    """A frame in the middle of the video's first anomalous span (the middle of the video if none)."""
    spans = np.flatnonzero(np.asarray(video.labels if video.labels is not None else []) > 0)
    if len(spans) == 0:
        return video.n_frames // 2
    end = spans[0]
    while end + 1 < video.n_frames and video.labels[end + 1]:
        end += 1
    return int((spans[0] + end) // 2)


def anomaly_clip(starts: np.ndarray, video) -> int:
    """The clip (index into starts (B,)) holding `anomaly_middle`: the clip at the heart of the anomaly."""
    return int(np.clip(np.searchsorted(starts, anomaly_middle(video), side="right") - 1, 0, len(starts) - 1))


def sample_frames(videos: dict, n_train: int = 2, n_test: int = 4, kinds: dict | None = None):
    """Frames to look at: the middle frame of the first training videos and a frame inside the
    anomaly of the first test videos. -> (images BGR, titles)."""
    images, titles = [], []
    for v in videos["train"][:n_train]:
        images.append(v.read_frame(v.n_frames // 2))
        titles.append(f"train {v.name}, frame {v.n_frames // 2}\nnormal")
    for v in videos["test"][:n_test]:
        i = anomaly_middle(v)
        images.append(v.read_frame(i))
        kind = f": {kinds[v.name]}" if kinds and v.name in kinds else ""
        titles.append(f"test {v.name}, frame {i}\nanomalous{kind}")
    return images, titles


def clip_frames(cfg: Config, video):
    """The T frames of the clip holding the middle of the video's first anomaly -> (images, titles)."""
    t = cfg.method.clip_length
    starts = pipeline.video_clip_starts(cfg, video)
    middle = anomaly_middle(video)
    start = int(starts[np.searchsorted(starts, middle, side="right") - 1]) if middle >= starts[0] else int(starts[0])
    images = [frame for _, frame in video.iter_frames(range(start, start + t))]
    titles = [f"frame {start + i}" + (" (detector)" if i == middle_frame_offset(t) else "") for i in range(t)]
    return images, titles


# ---------------------------------------------------------------------------------------------
# 01 objects

def detection_frames(cfg: Config, videos, boxes: dict, n: int = 4):
    """Middle frames (the detector's) of the clip in the middle of each test video's anomaly, boxes
    drawn. -> (images BGR, titles)."""
    from .figures import draw_boxes
    t, images, titles = cfg.method.clip_length, [], []
    for v in videos[:n]:
        starts = pipeline.video_clip_starts(cfg, v)
        b = anomaly_clip(starts, v)
        frame = int(starts[b]) + middle_frame_offset(t)
        images.append(draw_boxes(v.read_frame(frame), boxes[v.name][b], (0, 255, 255)))
        titles.append(f"test {v.name}, clip {b} (frame {frame}): {len(boxes[v.name][b])} objects")
    return images, titles


def object_crops(cfg: Config, videos, boxes: dict, n_per_video: int = 4):
    """The crops the encoder sees (the middle frame of the clip). Per test video: objects of the clip
    in the middle of its anomaly first, then one of its first normal clip that has objects (when it
    has one). A title's "anom." is the clip's label: the clip holds anomalous frames, not every
    object in it is anomalous. -> (crops (S, S, 3) BGR, titles)."""
    import torch
    t, size, crops, titles = cfg.method.clip_length, cfg.objects.crop_size, [], []
    for v in videos:
        starts = pipeline.video_clip_starts(cfg, v)
        anomalous = clip_labels(cfg, v) if v.labels is not None else np.zeros(len(starts), bool)
        middle = anomaly_clip(starts, v)
        normal = [b for b in range(len(starts)) if not anomalous[b] and len(boxes[v.name][b])][:1]
        others = normal + [b for b in range(len(starts)) if b != middle and b not in normal]
        picked = [(middle, k) for k in range(len(boxes[v.name][middle]))][:n_per_video - len(normal)]
        picked += [(b, k) for b in others for k in range(len(boxes[v.name][b]))][:n_per_video - len(picked)]
        for b, k in picked:
            frame = int(starts[b]) + middle_frame_offset(t)
            image = torch.from_numpy(v.read_frame(frame))[None]
            box = torch.as_tensor(boxes[v.name][b][k][None])
            crops.append(crop_and_resize(image, torch.zeros(1, dtype=torch.long), box, size, cfg.arithmetic)[0]
                         .float().round().byte().numpy())
            titles.append(f"{v.name} clip {b} ({'anom.' if anomalous[b] else 'normal'})")
    return crops, titles


MOTION_SWEEPS = {"motion_min_area": [10, 20, 40, 80, 160], "motion_threshold": [10, 25, 50, 75, 100]}


def detector_sweep(cfg: Config, videos, confidences=(0.0, 0.25, 0.5, 0.75, 0.95),
                   growths=(1.0, 1.1, 1.2, 1.35, 1.5)) -> dict:
    """Objects per clip against what decides them for the detector in use, and the mean box side
    against the box growth f, with ablation.detection_sweep. YOLO and boxes files: the confidence
    threshold. The motion detector gives every blob confidence 1, so the threshold changes nothing
    below 1: its blob size (motion_min_area) and grey-level threshold (motion_threshold) instead,
    each swept with the other parameters as in the params file.
    -> {"sweeps": [(parameter, values, objects per clip)], "growths", "mean_box_side"}."""
    import copy
    from . import ablation
    o = cfg.objects
    confidence = o.test_confidence
    base = ablation.detection_sweep(cfg, videos, list(confidences) if o.detector != "motion" else [confidence],
                                    list(growths))
    if o.detector != "motion":
        sweeps = [("confidence threshold", list(confidences), base["objects_per_clip"])]
    else:
        sweeps = []
        for key, values in MOTION_SWEEPS.items():
            counts = []
            for value in values:
                changed = copy.deepcopy(cfg)
                setattr(changed.objects, key, value)
                counts.append(ablation.detection_sweep(changed, videos, [confidence], [o.box_growth])["objects_per_clip"][0])
            sweeps.append((key, list(values), counts))
    return {"sweeps": sweeps, "growths": base["growths"], "mean_box_side": base["mean_box_side"],
            "marks": {"confidence threshold": confidence, "motion_min_area": o.motion_min_area,
                      "motion_threshold": o.motion_threshold}}


def detector_sweep_figure(sweep: dict):
    """One panel per swept detector parameter (objects per clip, the params file's value marked), and
    the mean box side against f."""
    from matplotlib.figure import Figure
    n = len(sweep["sweeps"]) + 1
    fig = Figure(figsize=(3.4 * n, 2.6), layout="constrained")
    axes = fig.subplots(1, n)
    for ax, (name, values, counts) in zip(axes, sweep["sweeps"]):
        ax.plot(values, counts, "o-")
        ax.axvline(sweep["marks"][name], color="0.5", ls="--", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel("objects per clip")
        ax.set_ylim(bottom=0)
    axes[-1].plot(sweep["growths"], sweep["mean_box_side"], "o-", color="#ff7f0e")
    axes[-1].set_xlabel("box growth f")
    axes[-1].set_ylabel("mean box side (px)")
    return fig


def first_detection(cfg: Config, videos):
    """A raw detection (before growth) on the detector's frame of the middle of the first test
    video's anomaly: (frame BGR, box x1, y1, x2, y2), the largest kept box. None if nothing is found."""
    detector = build_detector(cfg, "cpu" if cfg.device == "auto" else cfg.device)
    if hasattr(detector, "begin_split"):
        detector.begin_split("test", videos)
    t = cfg.method.clip_length
    for v in videos:
        detector.begin_video(v)
        starts = pipeline.video_clip_starts(cfg, v)
        b = anomaly_clip(starts, v)
        frame_index = int(starts[b]) + middle_frame_offset(t)
        frame = v.read_frame(frame_index)
        dets = detector.detect_at(frame_index) if hasattr(detector, "detect_at") else detector.detect(frame)
        dets = dets[(dets[:, 4] > cfg.objects.test_confidence) & np.isin(dets[:, 5], cfg.objects.classes)]
        if len(dets):
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            return frame, dets[int(area.argmax()), :4]
    return None


# ---------------------------------------------------------------------------------------------
# 02 features and memories

FEATURE_ARRAYS = {
    "spatial": ("(K, 49, C)", "49 patch vectors per object (7 x 7 grid)"),
    "temporal_mean": ("(K, T-1, C)", "frame differences, mean-pooled (memory)"),
    "temporal_max": ("(K, T-1, C)", "frame differences, max-pooled (test)"),
    "highlevel": ("(B, T, D)", "temporal pyramid of whole-frame descriptors"),
    "object_clip": ("(K,)", "clip of each object"),
    "boxes": ("(K, 4)", "box of each object"),
    "clip_start": ("(B,)", "first frame of each clip"),
}


def feature_table(feats_by_video: dict) -> str:
    """Markdown: each array of the features file, its shape in the legend and summed over videos."""
    first = next(iter(feats_by_video.values()))
    rows = []
    for key, (legend, meaning) in FEATURE_ARRAYS.items():
        shapes = [f[key].shape for f in feats_by_video.values()]
        total = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        rows.append([key, legend, str(tuple(first[key].shape)), str(total), meaning])
    return markdown_table(["array", "shape", "first video", "all videos", "what"], rows)


def memory_table(rows: list[dict]) -> str:
    """Markdown of ablation.memory_sizes."""
    return markdown_table(["memory", "candidates", "vectors kept", "dims", "MB"],
                          [[r["memory"], r["candidates"], r["vectors"], r["dims"], f"{r['megabytes']:.3f}"] for r in rows])


def object_crop(cfg: Config, video, feats: dict, obj: int, size: int | None = None) -> np.ndarray:
    """The crop of object `obj` of a video's features, on its clip's middle frame (BGR)."""
    frame = int(feats["clip_start"][feats["object_clip"][obj]]) + middle_frame_offset(cfg.method.clip_length)
    return pipeline.crop_object(video, frame, feats["boxes"][obj], size or cfg.objects.crop_size)


# ---------------------------------------------------------------------------------------------
# 03 scores

def by_video(columns: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """scores.csv columns -> {video: {column: (F_v,)}} in file order."""
    names = list(dict.fromkeys(columns["video"].tolist()))
    return {n: {k: v[columns["video"] == n] for k, v in columns.items() if k != "video"} for n in names}


def frame_table(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """scores.csv columns -> pipeline.frame_table's layout (video as 0-based int ids)."""
    names = list(dict.fromkeys(columns["video"].tolist()))
    ids = np.array([names.index(v) for v in columns["video"]])
    return {"video": ids, "label": columns["label"], **{k: columns[k] for k in ("spatial", "temporal", "highlevel")}}


def auc_text(auc: float, labels) -> str:
    """A video's AUC for a title; where it is undefined (one class only) says why."""
    if np.isfinite(auc):
        return f"{auc:.3f}"
    return "n/a (all frames anomalous)" if np.all(np.asarray(labels) > 0) else "n/a (no anomalous frame)"


def auc_table(result: dict) -> str:
    """Markdown: micro, macro and per-video AUC, oracle beside label-free."""
    rows = [["micro (all frames)", result["auc_micro_oracle"], result["auc_micro_labelfree"]],
            ["macro (mean of videos)", result["auc_macro_oracle"], result["auc_macro_labelfree"]]]
    rows += [[f"video {v}", a["oracle"], a["labelfree"]] for v, a in result["per_video"].items()]
    return markdown_table(["AUC", "oracle (test-label search)", f"label-free ({result['labelfree']['mode']})"], rows)


def read_metrics(cfg: Config, work: WorkDir) -> dict:
    """metrics.json of 03_inference when it was made with this config; else pipeline.evaluate (which
    writes it, and scores.csv, again)."""
    import json
    from .store import read_json
    path = work.path("metrics.json")
    if path.is_file() and work.path("scores.csv").is_file():
        result = read_json(path)
        if result.get("config") == json.loads(json.dumps(cfg.to_dict())):       # as JSON stores it
            return result
    return pipeline.evaluate(cfg, work)


# ---------------------------------------------------------------------------------------------
# 04 demos

def demo_window(video, scored: int, length: int = 40) -> tuple[int, int]:
    """First and last frame of a demo: `length` frames centred on the middle of the first anomaly."""
    first = int(np.clip(anomaly_middle(video) - length // 2, 0, max(0, scored - length)))
    return first, min(scored, first + length) - 1


def demo_frames(cfg: Config, work: WorkDir, video, result: dict, length: int = 40) -> tuple[list[np.ndarray], list[int]]:
    """Annotated frames of a test video around its anomaly (figures.annotate_frame), and their frame
    numbers: each object's box coloured by its local score a*z_S + (1-a)*z_T (z from normal training
    videos: green <= 0, red >= 3 standard deviations), a bar with the frame's label-free score
    (min-max over the test set)."""
    from .figures import annotate_frame
    cols = pipeline.read_scores(work.path("scores.csv"))
    feats = pipeline.read_features(work.path("features/test.h5"))[video.name]
    banks = pipeline.build_memories(cfg, work)
    t, n, a = cfg.method.clip_length, cfg.method.power, cfg.fusion.a
    stats = result["labelfree"]["stats"] or {s: (0.0, 1.0) for s in ("spatial", "temporal")}
    k, c = len(feats["spatial"]), feats["spatial"].shape[-1]
    z = np.zeros(k)
    if k:
        for stream, key, a_s in (("spatial", "spatial", a), ("temporal", "temporal_max", 1 - a)):
            d, _ = pipeline.nearest_memory(feats[key].reshape(-1, c), banks[stream].vectors)
            s = d.reshape(k, -1).max(1) ** n                                   # (K,) object score
            z += a_s * (s - stats[stream][0]) / (stats[stream][1] + 1e-8)
    final = cols["final_labelfree"]
    lo, hi = final.min(), final.max()
    mine = cols["video"] == video.name
    frames, score, labels = cols["frame"][mine], (final[mine] - lo) / (hi - lo + 1e-8), cols["label"][mine]
    first, last = demo_window(video, len(frames), length)
    out, numbers = [], []
    for i, image in video.iter_frames(frames[first:last + 1]):
        j = int(np.searchsorted(frames, i))
        clip = j // t
        objs = np.flatnonzero(feats["object_clip"] == clip)
        out.append(annotate_frame(image, feats["boxes"][objs], np.clip(z[objs] / 3, 0, 1), float(score[j]),
                                  bool(labels[j]), text=f"{video.name} #{i}"))
        numbers.append(int(i))
    return out, numbers


if __name__ == "__main__":
    sys.exit(main())
