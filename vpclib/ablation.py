"""Ablations and sweeps: what each memory adds, and how the coreset ratio r, the channel groups C and
the clip length T change the AUC and the memory size; also the detector's confidence and box growth,
the coreset's coverage radius and the oracle's fusion grid (the notebooks' figures).

Every AUC here is computed like `pipeline.evaluate`: the reference (oracle) protocol, its weights and
sigma searched on the test labels, beside the label-free one, its weights and sigma fixed in the
params file.

- Memories (S, T, H, S+T, all) and the coreset ratio reuse the main work directory's features.
- C and T change the features: each setting is extracted into its own sub work directory,
  WORK/ablation/C<c>-T<t>[-v<n>], cached like any run. `n_videos` keeps only the first n training
  and n test videos there, so that the sweeps stay cheap on a real dataset (UCSD Ped2). The C sweep
  runs the encoder once: its maps do not depend on C (`CachedEncoder`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib

import numpy as np
import torch

from . import fusion, metrics, pipeline
from .config import Config
from .coreset import coreset_size
from .encoder import build_encoder, resolve_device
from .memory import MEMORIES, build_memory
from .objects import BoxesFileDetector, build_detector, detect_middle_frames, select_objects
from .store import WorkDir

# memory combination -> which weights it fixes: (a, b) for label-free, (a_grid, b_grid) for the oracle;
# None means the params file's value (label-free) or the full grid (oracle)
COMBINATIONS = {
    "S": (1.0, 1.0),           # spatial only: a = 1, b = 1
    "T": (0.0, 1.0),           # temporal only: a = 0, b = 1
    "H": (None, 0.0),          # high-level only: b = 0
    "S+T": (None, 1.0),        # the local stream: b = 1
    "S+T+H": (None, None),     # all three memories (the method)
}


# ---------------------------------------------------------------------------------------------
# objects: confidence and box growth

def detection_sweep(cfg: Config, videos, confidences, growths, split: str = "test") -> dict:
    """Objects per clip against the confidence threshold (at the params file's growth f), and the
    mean box side in px against f (at the split's confidence), over `videos`.

    The detector runs once per clip (its middle frame); the thresholds and growths are applied after.
    """
    detector = build_detector(cfg, resolve_device(cfg.device))
    if isinstance(detector, BoxesFileDetector):
        detector.begin_split(split, videos)
    t, classes = cfg.method.clip_length, set(cfg.objects.classes)
    raw = []                                                   # (detections (K, 6), width, height) per clip
    for video in videos:
        width, height = video.frame_size
        raw += [(d, width, height) for d in detect_middle_frames(video, pipeline.video_clip_starts(cfg, video), t, detector)]
    confidence = cfg.objects.train_confidence if split == "train" else cfg.objects.test_confidence

    def kept(conf, growth):
        return [select_objects(d, conf, classes, growth, w, h) for d, w, h in raw]

    objects = [float(np.mean([len(b) for b in kept(c, cfg.objects.box_growth)])) for c in confidences]
    sides = []
    for f in growths:
        boxes = np.concatenate([b for b in kept(confidence, f)] + [np.zeros((0, 4), np.int64)])
        sides.append(float(np.mean(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))) if len(boxes) else 0.0)
    return {"confidences": list(confidences), "objects_per_clip": objects, "growths": list(growths),
            "mean_box_side": sides, "n_clips": len(raw)}


# ---------------------------------------------------------------------------------------------
# coreset

@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block. The greedy coreset is thousands of tiny steps;
    with several threads each step pays a thread synchronisation, which costs milliseconds a step
    on a busy machine. Results are the same (each vector's norm is reduced by one thread anyway)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def coverage_radius(vectors: np.ndarray, n_select: int) -> np.ndarray:
    """Greedy k-center coverage radius after l = 1 .. n_select selections: (N, D) -> (n_select,).

    radius[l-1] = max over the N vectors of the distance to the nearest of the first l selected
    (the same selections as `coreset.greedy_coreset`: start at index 0, then the farthest vector).
    """
    x = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)             # (N, D)
    n_select = min(int(n_select), len(x))
    nearest = torch.full((len(x),), float("inf"))
    radius = np.empty(n_select)
    index = 0
    with one_thread():
        for step in range(n_select):
            nearest = torch.minimum(nearest, torch.linalg.vector_norm(x - x[index], dim=1))
            index = int(torch.argmax(nearest))
            radius[step] = float(nearest[index])
    return radius


def memory_sizes(memories: dict, train_feats: dict, ratio: float) -> list[dict]:
    """One row per memory: candidates, vectors kept, dims, MB (float32)."""
    candidates = {s: [len(pipeline.memory_vectors(f)[s]) for f in train_feats.values()] for s in MEMORIES}
    rows = []
    for s, memory in memories.items():
        rows.append({"memory": s, "candidates": int(sum(candidates[s])),
                     "expected": int(sum(coreset_size(n, ratio) for n in candidates[s] if n)),
                     "vectors": int(memory.vectors.shape[0]), "dims": int(memory.vectors.shape[1]),
                     "megabytes": float(memory.megabytes)})
    return rows


# ---------------------------------------------------------------------------------------------
# scoring a set of memories

def score_test(cfg: Config, memories: dict, train_feats: dict, test_feats: dict) -> tuple[dict, dict | None]:
    """Per-frame scores of the test set (pipeline.frame_table, stage 4) and the label-free calibration
    statistics (pipeline.calibrate: leave-one-video-out on the training videos; None in 'fixed' mode
    or with one video)."""
    table = pipeline.frame_table(cfg, test_feats, {s: b.vectors for s, b in memories.items()})
    return table, pipeline.calibrate(cfg, train_feats, memories)


def labelfree_scores(table: dict, stats, a: float, b: float, sigma: float) -> np.ndarray:
    """The label-free final score of `pipeline.evaluate` for given weights (calibrated, or fixed)."""
    return fusion.labelfree(table["spatial"], table["temporal"], table["highlevel"], table["video"], stats, a, b, sigma,
                            table.get("objects"))


def combination_aucs(cfg: Config, table: dict, stats) -> list[dict]:
    """Micro AUC, oracle and label-free, of each memory combination of COMBINATIONS."""
    f = cfg.fusion
    sp, tp, hl, labels, vid = table["spatial"], table["temporal"], table["highlevel"], table["label"], table["video"]
    rows = []
    for name, (a, b) in COMBINATIONS.items():
        a_grid = f.a_grid if a is None else [a]
        b_grid = f.b_grid if b is None else [b]
        oracle = fusion.oracle_search(sp, tp, hl, labels, vid, a_grid, b_grid, f.sigma_grid)
        free = labelfree_scores(table, stats, f.a if a is None else a, f.b if b is None else b, f.sigma)
        rows.append({"memories": name, "oracle": oracle.auc, "labelfree": metrics.auc(labels, free)})
    return rows


def fusion_grid(cfg: Config, table: dict, a: float) -> np.ndarray:
    """All-streams micro AUC over b (rows, cfg.fusion.b_grid) and sigma (columns, sigma_grid) at local
    weight a: the second stage of the oracle search, every cell kept. -> (len(b_grid), len(sigma_grid))."""
    f = cfg.fusion
    out = np.empty((len(f.b_grid), len(f.sigma_grid)))
    for j, sigma in enumerate(f.sigma_grid):
        for i, b in enumerate(f.b_grid):
            final = fusion.reference_all_streams(table["spatial"], table["temporal"], table["highlevel"],
                                                 table["video"], a, b, sigma)
            out[i, j] = metrics.auc(table["label"], final)
    return out


def coreset_ratio_sweep(cfg: Config, train_feats: dict, test_feats: dict, ratios) -> list[dict]:
    """AUC (all memories) and memory size for each coreset ratio r, on the same features."""
    device = resolve_device(cfg.device)
    per_stream = {s: [pipeline.memory_vectors(f)[s] for f in train_feats.values()] for s in MEMORIES}
    m = cfg.method
    rows = []
    f = cfg.fusion
    for ratio in ratios:
        with one_thread() if device == "cpu" else contextlib.nullcontext():
            memories = {s: build_memory(per_stream[s], ratio, device, m.coreset_projection, m.coreset_projection_eps)
                     for s in MEMORIES}
        table, stats = score_test(cfg, memories, train_feats, test_feats)
        oracle = fusion.oracle_search(table["spatial"], table["temporal"], table["highlevel"], table["label"],
                                      table["video"], f.a_grid, f.b_grid, f.sigma_grid)
        free = labelfree_scores(table, stats, f.a, f.b, f.sigma)
        rows.append({"ratio": float(ratio), "oracle": oracle.auc, "labelfree": metrics.auc(table["label"], free),
                     "vectors": int(sum(len(b.vectors) for b in memories.values())),
                     "megabytes": float(sum(b.megabytes for b in memories.values()))})
    return rows


# ---------------------------------------------------------------------------------------------
# C and T: features extracted again

class CachedEncoder:
    """An encoder that remembers its outputs by input: an identical batch is encoded once.

    The channel-group sweep feeds the same crops in the same batches for every C (only the
    channel pooling after the encoder changes), so every C after the first costs no encoder time.
    Outputs are kept on the CPU in float32: the same values as without the cache.
    """

    def __init__(self, encoder):
        self.encoder = encoder
        self.cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def __getattr__(self, name):                                          # channels, fp16, ...
        return getattr(self.encoder, name)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.detach().float().cpu().contiguous()
        key = hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() + bytes(str(tuple(x.shape)), "ascii")
        if key in self.cache:
            self.hits += 1
            mid, deep = self.cache[key]
            return mid.to(images.device), deep.to(images.device)
        mid, deep = self.encoder(images)
        self.cache[key] = (mid.cpu(), deep.cpu())
        return mid, deep


def with_method(cfg: Config, **changes) -> Config:
    """A copy of cfg with method fields changed, e.g. with_method(cfg, clip_length=6)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        if not hasattr(out.method, key):
            raise KeyError(f"no method.{key}")
        setattr(out.method, key, value)
    return out


def setting_dir(work: WorkDir, cfg: Config, n_videos: int | None) -> WorkDir:
    """The sub work directory of one (C, T) setting: WORK/ablation/C<c>-T<t>[-v<n>]."""
    m = cfg.method
    name = f"C{m.channel_groups}-T{m.clip_length}" + (f"-v{n_videos}" if n_videos else "")
    return WorkDir(work.path(f"ablation/{name}"), overwrite=True)       # a derived cache: remade when params change


def evaluate_setting(cfg: Config, work: WorkDir, main_cfg: Config, n_videos: int | None = None, encoder=None) -> dict:
    """Metrics of one setting: the main work directory when the setting is the main run on every
    video, else its own sub work directory (first n_videos of each split)."""
    if not n_videos and cfg.to_dict() == main_cfg.to_dict():
        return pipeline.evaluate_from(cfg, work)
    sub = setting_dir(work, cfg, n_videos)
    videos = {}
    for split in pipeline.SPLITS:
        videos[split] = pipeline.load_videos(cfg, work, split)           # the data root of the main run
        videos[split] = videos[split][:n_videos] if n_videos else videos[split]
    return pipeline.run(cfg, sub, videos=videos, encoder=encoder)


def feature_sweep(cfg: Config, work: WorkDir, key: str, values, n_videos: int | None = None, encoder=None) -> list[dict]:
    """Micro AUC (oracle, label-free) and memory size for each value of method.<key> (channel_groups
    or clip_length), everything else as in cfg."""
    rows = []
    for value in values:
        result = evaluate_setting(with_method(cfg, **{key: value}), work, cfg, n_videos, encoder)
        rows.append({key: value, "oracle": result["auc_micro_oracle"], "labelfree": result["auc_micro_labelfree"],
                     "megabytes": float(sum(m["megabytes"] for m in result["memory"].values())),
                     "n_test_frames": result["n_test_frames"]})
    return rows


def default_grids(cfg: Config, channel_groups=None, clip_lengths=None, n_videos=None) -> dict:
    """Sweep values: the ones given, else around the params file's C ([C/2, C, 2C]; C/2 only when C is
    even) and T ([T-1, T, T+2], at least 3); n_videos None -> the first 3 training and test videos of
    the synthetic scenes, 2 of a real dataset (the C and T sweeps extract features again: this keeps
    them to minutes on 2 CPU cores); 0 -> all videos."""
    c, t = cfg.method.channel_groups, cfg.method.clip_length
    if channel_groups is None:
        channel_groups = ([c // 2] if c % 2 == 0 else []) + [c, 2 * c]
    if clip_lengths is None:
        clip_lengths = sorted({max(3, t - 1), t, t + 2})
    if n_videos is None:
        n_videos = 3 if cfg.data.layout == "synthetic" else 2
    return {"channel_groups": list(channel_groups), "clip_length": list(clip_lengths), "n_videos": int(n_videos)}


def run_ablations(cfg: Config, work: WorkDir, ratios, channel_groups, clip_lengths, n_videos: int | None = None) -> dict:
    """Every ablation of the notebooks: memories, coreset ratio, C and T. Returns {name: rows}."""
    videos = {s: pipeline.load_videos(cfg, work, s) for s in pipeline.SPLITS}
    memories = pipeline.read_memories(cfg, work, videos["train"])             # the main run's stages 2 and 3
    train, test = (pipeline.read_split_features(cfg, work, s, videos[s]) for s in pipeline.SPLITS)
    table, stats = score_test(cfg, memories, train, test)
    out = {"memories": combination_aucs(cfg, table, stats),
           "coreset_ratio": coreset_ratio_sweep(cfg, train, test, ratios)}
    encoder = build_encoder(cfg, resolve_device(cfg.device))
    out["channel_groups"] = feature_sweep(cfg, work, "channel_groups", channel_groups, n_videos, CachedEncoder(encoder))
    out["clip_length"] = feature_sweep(cfg, work, "clip_length", clip_lengths, n_videos, encoder)
    out["n_videos"] = n_videos
    return out


def ablation_markdown(results: dict, cfg: Config, title: str = "") -> str:
    """The ablation tables as markdown (AUCs to 3 decimals, sizes to 2)."""
    m = cfg.method
    subset = (f"the first {results['n_videos']} training and test videos"
              if results.get("n_videos") else "all videos")
    lines = [f"# Ablations{': ' + title if title else ''}", "",
             f"Micro frame AUC; oracle = the reference protocol (weights and sigma searched on the test labels), "
             f"label-free = weights and sigma fixed in the params file (a={cfg.fusion.a:g}, b={cfg.fusion.b:g}, "
             f"sigma={cfg.fusion.sigma:g}). Defaults: T={m.clip_length}, C={m.channel_groups}, "
             f"r={m.coreset_ratio:g}, n={m.power}.", "",
             "## Memories (all test videos)", "", "| memories | oracle | label-free |", "|---|---|---|"]
    lines += [f"| {r['memories']} | {r['oracle']:.3f} | {r['labelfree']:.3f} |" for r in results["memories"]]
    lines += ["", "## Coreset ratio r (all test videos)", "",
              "| r | vectors | MB | oracle | label-free |", "|---|---|---|---|---|"]
    lines += [f"| {r['ratio']:g} | {r['vectors']} | {r['megabytes']:.2f} | {r['oracle']:.3f} | {r['labelfree']:.3f} |"
              for r in results["coreset_ratio"]]
    for key, label, symbol in (("channel_groups", "Channel groups C", "C"), ("clip_length", "Clip length T", "T")):
        lines += ["", f"## {label} ({subset})", "", f"| {symbol} | MB | oracle | label-free |", "|---|---|---|---|"]
        lines += [f"| {r[key]} | {r['megabytes']:.2f} | {r['oracle']:.3f} | {r['labelfree']:.3f} |" for r in results[key]]
    return "\n".join(lines) + "\n"
