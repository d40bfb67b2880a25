"""Throughput of the test set at the paper's scale: the pipeline against the naive reference.

    python benchmarks/throughput.py --dataset avenue --device cuda           # the full Avenue-scale test set
    python benchmarks/throughput.py --limit-videos 2 --device cpu            # CI-sized plumbing check

Stand-in datasets have the real test video count and lengths (../shared/data/labels: Avenue
21 videos at 640x360, ShanghaiTech 107 videos at 856x480) and synthetic content: a smooth random
texture per video, sensor noise, and 3 to 8 textured moving rectangles per clip whose boxes, on
each clip's middle frame, form the boxes file (the detector stage reads cached boxes, as the
authors' test-time crop stage does). Frames are written as JPEG to --data-dir, outside the
repository, and BOTH paths read them from disk: the pipeline decodes each frame once, the naive
reference (vpclib.reference) re-reads it for every object, as the authors' code does.

The encoder is a random-init CLIP RN101 cut after layer3 (the same compute as the real weights),
fp16 on CUDA as in params/<dataset>.yaml. On CPU the defaults shrink the run to a plumbing check
(a timm resnet18, videos cut to 20 frames, 1 training video); the numbers then mean little.

Stages, each with wall time, frames/s, encoder images/s, the encoder's share of wall time (CUDA
events around every encoder call), peak RAM (RSS sampled every 10 ms) and peak GPU memory:
  memory (train)   features of --train-videos stand-in training videos + the three coresets
  test features    crop + encode + features of every test video, streamed to h5 (pipeline)
  test scoring     kNN scores of every test clip against the memory (pipeline)
  naive ...        the same two stages by vpclib.reference on the first --naive-videos videos;
                   when that is not all videos, its time is extrapolated per frame (and says so).
The last line is `speedup_vs_naive: X`: naive over pipeline, end to end, per frame.
On CUDA the memory is tiled (--memory-videos) to the size it has with the real training set, so
that the kNN costs what it costs at the paper's scale. The real labels are read from
../shared/data/labels, or from $VPC_LABELS (a copy, on a machine without ../shared).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("VPC_PROGRESS", "0")

import cv2
import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpclib import engine, pipeline, reference                              # noqa: E402
from vpclib.cli import parse_sets                                           # noqa: E402
from vpclib.config import load_params                                       # noqa: E402
from vpclib.datasets import load_interval_mat, load_npy_mask, natural_sort  # noqa: E402
from vpclib.encoder import build_encoder, resolve_device                    # noqa: E402
from vpclib.memory import MEMORIES                                           # noqa: E402
from vpclib.objects import middle_frame_offset                              # noqa: E402
from vpclib.store import WorkDir                                            # noqa: E402

LABELS = Path(os.environ.get("VPC_LABELS", ROOT.parent / "shared" / "data" / "labels"))  # the real labels
DATASETS = {
    # frame size (W, H); person box heights in px; real training set: videos, frames
    "avenue": dict(size=(640, 360), heights=(50, 170), train=(16, 15_328)),
    "shanghaitech": dict(size=(856, 480), heights=(40, 200), train=(330, 274_515)),
}
# the authors' logged test-set times on one RTX 3090 Ti (METHOD.md), seconds
AUTHORS = {"avenue": dict(crop=3 * 60 + 47, score=9), "shanghaitech": dict(crop=21 * 60, score=7 * 60 + 43)}


# ---------------------------------------------------------------------------------------------
# stand-in datasets

def test_videos(dataset: str) -> list[tuple[str, np.ndarray]]:
    """(name, per-frame labels) of every real test video, in order."""
    if dataset == "avenue":
        lengths = json.loads((LABELS / "avenue" / "test_lengths.json").read_text())
        lengths = lengths["test_video_lengths"] if isinstance(lengths, dict) else lengths
        masks = load_interval_mat(LABELS / "avenue" / "avenue.mat", lengths)
        return [(f"{i + 1:02d}", m) for i, m in enumerate(masks)]
    files = natural_sort((LABELS / "shanghaitech" / "testframemask").glob("*.npy"))
    return [(p.stem, load_npy_mask(p)) for p in files]


def render_video(folder: Path, n_frames: int, size, heights, clip_length: int, seed: int) -> list[tuple]:
    """Write n_frames JPEGs of moving rectangles on a textured background; -> boxes rows (middle frames)."""
    rng = np.random.default_rng(seed)
    width, height = size
    folder.mkdir(parents=True, exist_ok=True)
    coarse = cv2.resize(rng.integers(40, 215, (height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8), size,
                        interpolation=cv2.INTER_CUBIC).astype(np.int16)
    fine = cv2.resize(rng.normal(0, 12, (height // 3, width // 3, 3)).astype(np.float32), size).astype(np.int16)
    background = coarse + fine                                               # (H, W, 3)
    noise = [rng.normal(0, 1.5, (height, width, 3)).astype(np.int16) for _ in range(3)]
    offset = middle_frame_offset(clip_length)
    rows = []
    for lo in range(0, n_frames, clip_length):
        n = min(clip_length, n_frames - lo)
        objects = []
        for _ in range(rng.integers(3, 9) if n == clip_length else 0):
            h = rng.uniform(*heights)
            w = 0.42 * h
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            objects.append((x, y, w, h, rng.uniform(-3, 3, 2), rng.integers(0, 256, 3), rng.integers(3, 9)))
            rows.append((folder.name, lo + offset, round(x + objects[-1][4][0] * offset, 1),
                         round(y + objects[-1][4][1] * offset, 1), round(x + objects[-1][4][0] * offset + w, 1),
                         round(y + objects[-1][4][1] * offset + h, 1), 0.9, 0))
        for i in range(n):
            frame = background + noise[(lo + i) % 3]
            for x, y, w, h, velocity, colour, bands in objects:
                x0, y0 = int(x + velocity[0] * i), int(y + velocity[1] * i)
                frame[y0:y0 + int(h), x0:x0 + int(w)] = colour.astype(np.int16)
                step = max(1, int(h) // bands)
                frame[y0:y0 + int(h):step, x0:x0 + int(w)] //= 2             # stripes: some texture inside
            cv2.imwrite(str(folder / f"{lo + i:04d}.jpg"), np.clip(frame, 0, 255).astype(np.uint8))
    return rows


def make_standin(root: Path, dataset: str, clip_length: int, n_test: int | None, max_frames: int,
                 n_train: int, seed: int = 0) -> dict:
    """Write the stand-in dataset in the 'folder' layout (reused when its manifest matches)."""
    spec = DATASETS[dataset]
    videos = test_videos(dataset)[:n_test]
    train_len = spec["train"][1] // spec["train"][0]
    manifest = dict(dataset=dataset, clip_length=clip_length, n_test=len(videos), max_frames=max_frames,
                    n_train=n_train, train_len=train_len, seed=seed, version=2)
    if (root / "manifest.json").is_file() and json.loads((root / "manifest.json").read_text()) == manifest:
        return manifest
    shutil.rmtree(root, ignore_errors=True)
    jobs = [("training", f"train{i + 1:02d}", train_len, None) for i in range(n_train)]
    jobs += [("testing", name, len(labels), labels) for name, labels in videos]
    (root / "labels").mkdir(parents=True)
    rows = []

    def job(k):
        split, name, n_frames, labels = jobs[k]
        n_frames = min(n_frames, max_frames) if max_frames else n_frames
        if labels is not None:
            np.save(root / "labels" / f"{name}.npy", labels[:n_frames])
        return render_video(root / split / name, n_frames, spec["size"], spec["heights"], clip_length, seed * 1000 + k)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for r in pool.map(job, range(len(jobs))):
            rows += r
    with open(root / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([("video", "frame", "x1", "y1", "x2", "y2", "confidence", "class"), *rows])
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


# ---------------------------------------------------------------------------------------------
# measurement

class TimedEncoder(torch.nn.Module):
    """The encoder, counting images and the time spent in it (CUDA events: no host sync)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.events, self.seconds, self.images = [], 0.0, 0

    @property
    def device(self):
        return self.inner.device

    def forward(self, x):
        self.images += len(x)
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.inner(x)
            end.record()
            self.events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - t0
        return out

    def take(self) -> tuple[int, float]:
        """(images, seconds) since the last take."""
        if self.events:
            torch.cuda.synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self.events) / 1e3
        out = (self.images, self.seconds)
        self.events, self.seconds, self.images = [], 0.0, 0
        return out


class RamSampler(threading.Thread):
    """Samples this process's resident memory every 10 ms; `peak()` since the last `reset()`."""

    def __init__(self):
        super().__init__(daemon=True)
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.samples: list[tuple[float, int]] = []
        self.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def run(self):
        while True:
            self.samples.append((time.perf_counter(), self.rss()))
            time.sleep(0.01)

    def reset(self):
        self.samples = []

    def halves(self) -> tuple[float, float]:
        """Peak RSS (GiB) in the first and the second half of the samples since reset."""
        s = [r for _, r in self.samples] or [self.rss()]
        mid = max(1, len(s) // 2)
        return max(s[:mid]) / 2**30, max(s[mid:] or s[:mid]) / 2**30


class Stage:
    """A timed region: wall time, encoder images/time, peak RAM and peak GPU memory."""

    rows: list[dict] = []

    def __init__(self, name: str, frames: int, encoder: TimedEncoder, ram: RamSampler, note: str = ""):
        self.name, self.frames, self.encoder, self.ram, self.note = name, frames, encoder, ram, note

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.encoder.take()
        self.ram.reset()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.t0
        images, enc = self.encoder.take()
        first, second = self.ram.halves()
        self.row = dict(stage=self.name, frames=self.frames, wall_s=wall, images=images, encoder_s=enc,
                        ram_gib=max(first, second), ram_first_half_gib=first, ram_second_half_gib=second,
                        gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
                        note=self.note)
        Stage.rows.append(self.row)
        print(f"  {self.name}: {wall:.1f} s", flush=True)
        return False


def table(rows: list[dict]) -> str:
    head = ("| stage | frames | wall s | frames/s | encoder images | images/s (wall) | images/s (in encoder) "
            "| encoder share | peak RAM GiB (1st / 2nd half) | peak GPU GiB | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        wall = r["wall_s"]
        ips = r["images"] / wall if wall else 0
        busy = r["images"] / r["encoder_s"] if r["encoder_s"] else 0
        share = f"{100 * r['encoder_s'] / wall:.0f} %" if r["images"] else "-"
        lines.append(f"| {r['stage']} | {r['frames']:,} | {wall:.1f} | {r['frames'] / wall:,.0f} | {r['images']:,} "
                     f"| {ips:,.0f} | {busy:,.0f} | {share} | {r['ram_gib']:.2f} ({r['ram_first_half_gib']:.2f} / "
                     f"{r['ram_second_half_gib']:.2f}) | {r['gpu_gib']:.2f} | {r['note']} |")
    return "\n".join(lines)


class LazyFeatures:
    """features/<split>.h5 as {video: arrays}, one video read at a time (RAM flat in the video count)."""

    def __init__(self, path):
        self.path = path
        with h5py.File(path, "r") as h5:
            self.order = [str(v) for v in h5.attrs["videos"]]

    def __len__(self):
        return len(self.order)

    def values(self):
        with h5py.File(self.path, "r") as h5:
            for v in self.order:
                yield {k: h5[v][k][()] for k in h5[v]} | {"n_frames": int(h5[v].attrs["n_frames"])}


def tile_memory(vectors: np.ndarray, factor: float, seed: int = 0) -> np.ndarray:
    """(N, D) -> (round(N * factor), D): copies of the memory with a little noise (the cost of the
    kNN depends on the memory's size only)."""
    n = int(round(len(vectors) * factor))
    if n <= len(vectors):
        return vectors[:max(n, 1)]
    rng = np.random.default_rng(seed)
    out = vectors[np.arange(n) % len(vectors)]
    return (out + rng.normal(0, 1e-2, out.shape).astype(np.float32) * vectors.std(0)).astype(np.float32)


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d (in registration order) into it (eval)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                parent._modules[a], parent._modules[b] = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return module


def time_forward(fn, x, repeats: int = 10) -> float:
    """Median seconds of fn(x) on CUDA (3 warm-ups)."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x[i % len(x)])
            end.record()
            end.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def encoder_variants(cfg, device, batch: int = 256) -> list[tuple[str, float]]:
    """Images/s of layouts and of a BN-folded encoder at one batch size; and of the map reductions."""
    from vpclib.features import global_descriptors, local_maps
    xs = [torch.randn(batch, 3, 224, 224, device=device, dtype=torch.half) for _ in range(2)]
    nhwc = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    out = []
    stages = build_encoder(cfg, device).stages.half()
    out.append(("fp16, NCHW weights and input", batch / time_forward(stages, xs)))
    out.append(("fp16, NCHW weights, NHWC input", batch / time_forward(stages, nhwc)))
    stages = stages.to(memory_format=torch.channels_last)
    out.append(("fp16, NHWC weights and input (the pipeline)", batch / time_forward(stages, nhwc)))
    mid, deep = (m.float() for m in stages(nhwc[0]))
    c = cfg.method.channel_groups
    for layout, (m, d) in (("NHWC", (mid, deep)), ("NCHW", (mid.contiguous(), deep.contiguous()))):
        out.append((f"reduce: local_maps of fp32 {layout} maps", batch / time_forward(lambda _: local_maps(m, d, c), [0])))
        out.append((f"reduce: global_descriptors of fp32 {layout} maps",
                    batch / time_forward(lambda _: global_descriptors(m, d), [0])))
    folded = fold_batchnorm(build_encoder(cfg, device).stages.float()).half().to(memory_format=torch.channels_last)
    out.append(("fp16, NHWC, BatchNorm folded into the convolutions (not used)", batch / time_forward(folded, nhwc)))
    return out


def encoder_floor(stages, batch_sizes=(64, 128, 256, 512), repeats=10) -> list[dict]:
    """Images/s of a pure fp16, channels-last forward of the encoder stages on random batches."""
    from torch.utils.flop_counter import FlopCounterMode
    stages = stages.half().to(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        stages(torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.half))
    flops = counter.get_total_flops()
    out = []
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for b in batch_sizes:
            xs = [torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.half).contiguous(memory_format=torch.channels_last)
                  for _ in range(2)]
            times = []
            with torch.inference_mode():
                for i in range(repeats + 3):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    stages(xs[i % 2])
                    end.record()
                    end.synchronize()
                    if i >= 3:
                        times.append(start.elapsed_time(end) / 1e3)
            t = float(np.median(times))
            out.append(dict(batch=b, cudnn_benchmark=benchmark, images_per_s=b / t, tflops=flops * b / t / 1e12,
                            gflop_per_image=flops / 1e9))
    torch.backends.cudnn.benchmark = False
    return out


def decode_only(videos, workers: int) -> float:
    """Frames/s of reading every frame of `videos` with a pool of threads (no encoder)."""
    paths = [p for v in videos for p in v.frame_paths]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda p: cv2.imread(str(p)), paths, chunksize=16):
            pass
    return len(paths) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="avenue")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--limit-videos", type=int, default=None, help="only the first N test videos")
    ap.add_argument("--max-frames", type=int, default=None, help="cut every video to N frames (default: all; 20 on CPU)")
    ap.add_argument("--train-videos", type=int, default=None, help="stand-in training videos (default 4; 1 on CPU)")
    ap.add_argument("--naive-videos", type=int, default=None,
                    help="test videos for the naive reference (default 2 on CUDA, all on CPU); extrapolated per frame")
    ap.add_argument("--memory-videos", type=int, default=None,
                    help="tile the memory to the size it has with this many training videos (default: the real "
                         "training set's count on CUDA, 16 Avenue / 330 ShanghaiTech; no tiling on CPU)")
    ap.add_argument("--backbone", default=None, help="default clip_rn101 (timm:resnet18 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="encoder batch (default 256 on CUDA, 32 on CPU)")
    ap.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "vpc-bench"),
                    help="where the stand-in frames are written (outside the repository)")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=None,
                    help="measure the encoder's pure fp16 forward (default: on CUDA)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over the first test video, top operators")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="a params override, as `vpc run --set` (e.g. arithmetic=exact, encoder.fused=true, "
                         "scoring.knn=fast); repeatable")
    return ap.parse_args(argv)


def settings(args) -> argparse.Namespace:
    """The device and the defaults that follow from it (CPU: small, CUDA: the real sizes)."""
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    params = ROOT / "params" / f"{args.dataset}.yaml"
    return argparse.Namespace(
        device=device, cuda=cuda, params=params,
        max_frames=args.max_frames if args.max_frames is not None else (0 if cuda else 20),
        n_train=args.train_videos or (4 if cuda else 1),
        backbone=args.backbone or ("clip_rn101" if cuda else "timm:resnet18"),
        batch=args.batch_size or (256 if cuda else 32),
        t=load_params(params, **{"data.root": "-"}).method.clip_length)


def prepare(args, s):
    """The stand-in data (written or checked), its config, a fresh work directory, the timed encoder
    (warmed up outside every stage) and both splits' videos."""
    print(f"== {args.dataset}: device {s.device}"
          + (f" ({torch.cuda.get_device_name()})" if s.cuda else f" ({os.cpu_count()} cores)"), flush=True)
    tag = f"{args.dataset}-n{args.limit_videos or 'all'}-f{s.max_frames or 'all'}-tr{s.n_train}"
    data = Path(args.data_dir).expanduser() / tag
    t0 = time.perf_counter()
    make_standin(data, args.dataset, s.t, args.limit_videos, s.max_frames, s.n_train)
    print(f"stand-in data: {data} ({time.perf_counter() - t0:.0f} s to write or check)", flush=True)
    cfg = load_params(s.params, sets=parse_sets(args.sets), **{
        "data.name": f"{args.dataset}-standin", "data.layout": "folder", "data.root": str(data),
        "objects.detector": "boxes", "objects.boxes_file": str(data / "boxes.csv"),
        "encoder.backbone": s.backbone, "encoder.pretrained": "random", "encoder.batch_size": s.batch,
        "device": s.device})
    work = WorkDir(data / f"work-{os.getpid()}", overwrite=True)
    encoder = warmed_up(TimedEncoder(build_encoder(cfg, s.device)), cfg, s)
    videos = {split: pipeline.load_videos(cfg, work, split) for split in pipeline.SPLITS}
    return cfg, work, encoder, videos


def warmed_up(encoder: TimedEncoder, cfg, s) -> TimedEncoder:
    """The encoder after one small chunk (cuDNN handles, kernels, the fused encoder's one compile),
    its counters reset: warm-up happens outside every stage."""
    with torch.inference_mode():
        engine.encode(encoder, torch.zeros(2, 224, 224, 3, device=s.device), cfg.encoder.preprocessing, s.batch,
                      lambda m, d: m.mean((1, 2, 3)))
    encoder.take()
    return encoder


def measure_pipeline(args, s, cfg, work, encoder, videos, boxes, ram) -> dict:
    """The pipeline's stages, timed: the training features and memories, then the test features
    and their scores against the memory tiled to the real training set's size."""
    test, train = videos["test"], videos["train"]
    n_test_frames = sum(v.n_frames for v in test)
    n_scored = sum(len(pipeline.video_clip_starts(cfg, v)) * s.t for v in test)
    with Stage("memory (train): features + coresets", sum(v.n_frames for v in train), encoder, ram,
               f"{len(train)} stand-in training videos"):
        train_path = pipeline.extract_features(cfg, work, "train", train, boxes["train"], encoder=encoder)
        memories = pipeline.build_memories(cfg, work, train, train_path)
    memory_videos = args.memory_videos or (DATASETS[args.dataset]["train"][0] if s.cuda else s.n_train)
    memory_vectors = {m: tile_memory(b.vectors, memory_videos / s.n_train) for m, b in memories.items()}
    sizes = ", ".join(f"{m} {v.shape[0]:,} x {v.shape[1]}" for m, v in memory_vectors.items())
    print(f"memory: {sizes}" + (f" (coresets of {s.n_train} videos tiled, with jitter, to the size of "
                                f"{memory_videos} training videos)" if memory_videos != s.n_train else ""), flush=True)

    with Stage("test features: crop + encode + features", n_test_frames, encoder, ram, "pipeline, all test videos") as st_f:
        path = pipeline.extract_features(cfg, work, "test", test, boxes["test"], encoder=encoder)
    with Stage("test scoring", n_scored, encoder, ram, "pipeline, all test videos") as st_s:
        on_device = {m: torch.as_tensor(v, device=s.device) for m, v in memory_vectors.items()}  # uploaded once
        fast = pipeline.frame_table(cfg, LazyFeatures(path), on_device)
    wall = st_f.row["wall_s"] + st_s.row["wall_s"]
    Stage.rows.append(dict(st_f.row, stage="**test set end to end (pipeline)**", wall_s=wall,
                           ram_gib=max(st_f.row["ram_gib"], st_s.row["ram_gib"]),
                           gpu_gib=max(st_f.row["gpu_gib"], st_s.row["gpu_gib"]), note="features + scoring"))
    return dict(scores=fast, memory_vectors=memory_vectors, sizes=sizes, wall=wall, features_row=st_f.row,
                per_frame=st_f.row["wall_s"] / n_test_frames + st_s.row["wall_s"] / n_scored,
                n_test_frames=n_test_frames, n_scored=n_scored)


def naive_encoder(cfg, s, encoder):
    """The naive reference's encoder: the pipeline's, or with encoder.fused the same weights eager
    and unfused (the naive path as it was written: its per-clip batches would each compile a new
    shape of the fused one), warmed up outside every stage (warmed_up)."""
    if not cfg.encoder.fused:
        return encoder
    plain = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, fused=False))
    return warmed_up(TimedEncoder(build_encoder(plain, s.device)), cfg, s)


def measure_naive(args, s, cfg, work, encoder, videos, boxes, ram, fast: dict) -> dict:
    """The naive reference on the first test videos, timed: the same boxes and memory, the same
    encoder weights (eager: naive_encoder); extrapolated per frame to the whole test set."""
    test = videos["test"]
    encoder = naive_encoder(cfg, s, encoder)
    n_naive = min(args.naive_videos or (2 if s.cuda else len(test)), len(test))
    naive_videos = test[:n_naive]
    naive_scored = sum(len(pipeline.video_clip_starts(cfg, v)) * s.t for v in naive_videos)
    naive_frames = sum(v.n_frames for v in naive_videos)
    note = f"naive, {n_naive} of {len(test)} videos"
    with Stage("naive features: per-object reads + per-clip encoder", naive_frames, encoder, ram, note) as nv_f:
        ref_path = reference.extract_features(naive_videos, boxes["test"], encoder, cfg, work.path("naive-test.h5"))
    with Stage("naive scoring: loop kNN", naive_scored, encoder, ram, note) as nv_s:
        slow = reference.frame_scores(ref_path, fast["memory_vectors"], cfg, s.device)
    Stage.rows.append(dict(nv_f.row, stage="**naive end to end**", wall_s=nv_f.row["wall_s"] + nv_s.row["wall_s"],
                           ram_gib=max(nv_f.row["ram_gib"], nv_s.row["ram_gib"]),
                           gpu_gib=max(nv_f.row["gpu_gib"], nv_s.row["gpu_gib"]), note=note + ", measured"))
    if n_naive < len(test):
        est = (nv_f.row["wall_s"] / naive_frames * fast["n_test_frames"]
               + nv_s.row["wall_s"] / naive_scored * fast["n_scored"])
        Stage.rows.append(dict(frames=fast["n_test_frames"], wall_s=est, images=0, encoder_s=0, ram_gib=float("nan"),
                               ram_first_half_gib=float("nan"), ram_second_half_gib=float("nan"), gpu_gib=float("nan"),
                               stage="naive end to end, all videos (EXTRAPOLATED)",
                               note=f"per-frame times of the {n_naive} measured videos x all frames"))
    return dict(scores=slow, n_scored=naive_scored,
                per_frame=nv_f.row["wall_s"] / naive_frames + nv_s.row["wall_s"] / naive_scored)


def agreement(fast: dict, naive: dict) -> dict[str, float]:
    """max |pipeline - naive| / max |naive| per memory on the naive videos (fp16 on CUDA: up to fp16
    rounding; fp32: ~1e-6)."""
    agree = {}
    for m in MEMORIES:
        a, b = fast["scores"][m][:naive["n_scored"]], naive["scores"][m]
        agree[m] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
    return agree


def measure_cuda_extras(args, s, cfg, videos, features_row: dict) -> dict:
    """CUDA only: decoding alone, the encoder's floor (pure fp16 forward) and its variants."""
    out = {}
    test = videos["test"]
    if s.cuda:
        n_decode = decode_only(test[: max(1, len(test) // 4)], min(16, os.cpu_count() or 1))
        print(f"decode only (cv2.imread, {min(16, os.cpu_count() or 1)} threads): {n_decode:,.0f} frames/s")
        out["decode_frames_per_s"] = n_decode
    if args.floor if args.floor is not None else s.cuda:
        floor = encoder_floor(build_encoder(cfg, s.device).stages)
        best = max(floor, key=lambda r: r["images_per_s"])
        print("encoder floor (pure fp16 channels-last forward, random input): "
              + ", ".join(f"b{r['batch']}{'+cudnn.benchmark' if r['cudnn_benchmark'] else ''} "
                          f"{r['images_per_s']:,.0f}/s" for r in floor))
        print(f"  {best['gflop_per_image']:.2f} GFLOP per image; best {best['images_per_s']:,.0f} images/s = "
              f"{best['tflops']:.0f} TFLOP/s; the test-features stage ran the encoder at "
              f"{features_row['images'] / features_row['encoder_s']:,.0f} images/s in-encoder and "
              f"{features_row['images'] / features_row['wall_s']:,.0f} images/s of wall time "
              f"({100 * features_row['images'] / features_row['wall_s'] / best['images_per_s']:.0f} % of the floor)")
        out["floor"] = floor
        variants = encoder_variants(cfg, s.device)
        print(f"encoder variants at batch 256 (images/s): " + "; ".join(f"{k} {v:,.0f}" for k, v in variants))
        out["variants"] = variants
    return out


def main(argv=None):
    # 1. settings and the stand-in data
    args = parse_args(argv)
    s = settings(args)
    cfg, work, encoder, videos = prepare(args, s)
    test, train = videos["test"], videos["train"]
    n_scored = sum(len(pipeline.video_clip_starts(cfg, v)) * s.t for v in test)
    print(f"{len(test)} test videos, {sum(v.n_frames for v in test):,} frames ({n_scored:,} in clips); {len(train)} "
          f"training videos, {sum(v.n_frames for v in train):,} frames; encoder {s.backbone} "
          f"({'fp16' if encoder.inner.fp16 else 'fp32'}), batch {s.batch}, T={s.t}, "
          f"crops {cfg.objects.crop_size}" + (f"; --set {' '.join(args.sets)}" if args.sets else ""), flush=True)

    # 2. objects: the boxes CSV (cached, not timed)
    boxes = {split: pipeline.detect_objects(cfg, work, split, videos[split]) for split in pipeline.SPLITS}
    n_objects = sum(len(b) for clips in boxes["test"].values() for b in clips)
    print(f"objects on the test set: {n_objects:,} ({n_objects / max(1, n_scored // s.t):.1f} per clip)", flush=True)

    # 3. the pipeline, then 4. the naive reference, timed; 5. do they agree
    ram = RamSampler()
    fast = measure_pipeline(args, s, cfg, work, encoder, videos, boxes, ram)
    naive = measure_naive(args, s, cfg, work, encoder, videos, boxes, ram, fast)
    agree = agreement(fast, naive)
    print("\n" + table(Stage.rows))
    print(f"\nmax |pipeline - naive| / max |naive| per stream on the naive videos: "
          + ", ".join(f"{m} {v:.1e}" for m, v in agree.items()))

    # 6. CUDA extras, the report
    result = dict(dataset=args.dataset, device=s.device, sets=args.sets, gpu=torch.cuda.get_device_name() if s.cuda else None,
                  backbone=s.backbone, batch=s.batch, n_test_videos=len(test), n_test_frames=fast["n_test_frames"],
                  n_objects=n_objects, memory=fast["sizes"], stages=Stage.rows, agreement=agree)
    result |= measure_cuda_extras(args, s, cfg, videos, fast["features_row"])
    if args.profile and s.cuda:
        profile_video(cfg, test[0], boxes["test"][test[0].name], encoder.inner)
    authors = AUTHORS[args.dataset]
    if args.limit_videos is None and not s.max_frames:
        print(f"authors (RTX 3090 Ti, real data): crop {authors['crop']} s + scoring {authors['score']} s; "
              f"here end to end {fast['wall']:.1f} s (crop + encode + features + scoring)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    shutil.rmtree(work.root, ignore_errors=True)
    print(f"speedup_vs_naive: {naive['per_frame'] / fast['per_frame']:.1f}")


def profile_video(cfg, video, boxes, encoder):
    """The top operators of one test video's features (CUDA time)."""
    from torch.profiler import ProfilerActivity, profile
    starts = pipeline.video_clip_starts(cfg, video)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.video_features(video, starts, boxes, encoder, cfg)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=80))


if __name__ == "__main__":
    main()
