"""Does a clip's score grow with the number of objects in it? A label-free diagnostic of a finished run.

    python benchmarks/countbias.py WORK_DIR [--data-root ROOT] [--object-calibration]

A clip's score in each stream is the max over its objects' scores (METHOD.md; `scores`), so on
normal data alone a clip with more objects is expected to score higher: the max of K draws grows
with K. The label-free fusion calibrates each stream with one mean and std over all training clips
(`fusion.calibration_stats`), whatever their object count. Where the count effect is large, crowded
normal clips outscore sparse anomalous ones of another video, which costs the micro AUC (scores
compared across videos) and not the macro one.

Read only from the run's training videos, scored leave-one-video-out exactly as the calibration
scores them (`pipeline.leave_one_out_scores`, `velocity.leave_one_out_scores`): per stream, the
Spearman correlation of the per-frame score with the object count of its clip, and the mean
z-score (the run's own calibration) per object-count bin. The test split is described by its object
counts only. No label of any split is read. Prints a table; --out writes it as JSON.

--object-calibration adds the same table for the per-object (Sidak) z of `fusion.object_z`
(`fusion.object_calibration`: Phi^-1(F(max)^K), F from each training object's own leave-one-out
score): if the K objects of a normal clip were independent draws from F, its mean z would be 0 in
every count bin; a z that falls with the count says the objects of a clip are not independent
(crowded clips over-corrected), one that rises, the converse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpclib import fusion, pipeline, velocity  # noqa: E402
from vpclib.config import from_dict  # noqa: E402
from vpclib.store import WorkDir, read_json  # noqa: E402

BINS = [(0, 0), (1, 2), (3, 5), (6, 9), (10, 14), (15, 10**6)]
BIN_NAMES = [f"{lo}-{hi}" if hi < 10**6 else f"{lo}+" for lo, hi in BINS]


def frame_counts(boxes: dict[str, list], names: list[str], clip_length: int) -> np.ndarray:
    """Object count of each frame's clip, the videos `names` concatenated: (F,)."""
    return np.concatenate([np.repeat([len(b) for b in boxes[n]], clip_length) for n in names])


def count_bias(scores: np.ndarray, counts: np.ndarray, mean: float, std: float) -> dict:
    """Spearman rho of scores (F,) with counts (F,), and the mean z = (score - mean) / std per count bin."""
    return z_count_bias((scores - mean) / (std + fusion.EPS), counts)


def z_count_bias(z: np.ndarray, counts: np.ndarray) -> dict:
    """Spearman rho of z-scores (F,) with counts (F,), and the mean z per count bin."""
    rho = spearmanr(z, counts).statistic if np.ptp(counts) and np.ptp(z) else float("nan")
    inside = [(counts >= lo) & (counts <= hi) for lo, hi in BINS]
    by_bin = {name: round(float(z[m].mean()), 3) if m.any() else None for name, m in zip(BIN_NAMES, inside)}
    return {"spearman": round(float(rho), 3), "mean_z_by_objects": by_bin}


def print_table(streams: dict, first: str, second: str) -> None:
    """One markdown row per stream: its Spearman rho and mean z per count bin."""
    print(f"| {first} | {second} | " + " | ".join(f"mean z, {h} objects" for h in BIN_NAMES) + " |")
    print("|" + "---|" * (2 + len(BIN_NAMES)))
    for s, r in streams.items():
        cells = [("–" if r["mean_z_by_objects"][h] is None else f"{r['mean_z_by_objects'][h]:+.2f}") for h in BIN_NAMES]
        print(f"| {s} | {r['spearman']:+.3f} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work_dir")
    p.add_argument("--data-root", help="where the run's data is now (default: config.json's data.root)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--object-calibration", action="store_true",
                   help="also the per-object (Sidak) z's count bias (fusion.object_z), whatever the run's calibration")
    args = p.parse_args(argv)
    work = WorkDir(Path(args.work_dir))
    config = read_json(work.path("config.json"))
    if args.data_root:
        config["data"]["root"] = args.data_root
    cfg = from_dict(config)
    t = cfg.method.clip_length
    videos = {s: pipeline.load_videos(cfg, work, s) for s in pipeline.SPLITS}
    test_boxes = pipeline.read_objects(cfg, work, "test", videos["test"])
    train_feats = pipeline.read_split_features(cfg, work, "train", videos["train"])
    memories = pipeline.read_memories(cfg, work, videos["train"])
    if args.object_calibration:                                                  # the per-object rows too
        cfg = dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, object_calibration=True, count_bins=0))
    loo = pipeline.leave_one_out_scores(cfg, train_feats, memories)              # {memory: (F_train,), "objects"[, per object]}
    if loo is None:
        raise SystemExit(f"{args.work_dir}: no leave-one-out scores (fewer than two training videos)")
    objects = {s: loo.pop(k) for s, k in pipeline.PER_OBJECT.items() if k in loo}   # {memory: (K_train,)}
    counts = loo.pop(pipeline.OBJECTS)
    stats = fusion.calibration_stats(loo)
    test_counts = frame_counts(test_boxes, [v.name for v in videos["test"]], t)
    result = {"work_dir": str(args.work_dir), "train_frames": int(len(counts)),
              "train_objects_per_clip": {"mean": round(float(counts.mean()), 2), "max": int(counts.max())},
              "test_objects_per_clip": {"mean": round(float(test_counts.mean()), 2), "max": int(test_counts.max())},
              "streams": {s: count_bias(loo[s], counts, *stats[s]) for s in loo}}
    sidak = {s: z_count_bias(fusion.object_z(loo[s], fusion.object_stats(x), counts), counts)
             for s, x in objects.items()} if args.object_calibration else None
    if cfg.velocity.enabled:
        vpaths = {s: velocity.velocity_path(cfg, work, s, videos[s]) for s in pipeline.SPLITS}
        stream = velocity.VelocityStream(cfg, vpaths["train"], vpaths["test"])
        rows = velocity.leave_one_out_rows(cfg, stream.train, stream.memory)   # (F_train,) scores and counts, per-object scores
        if rows is not None:
            vstats = fusion.calibration_stats({velocity.STREAM: rows[0]})[velocity.STREAM]
            result["streams"][velocity.STREAM] = count_bias(rows[0], rows[1], *vstats)
            if sidak is not None:
                sidak[velocity.STREAM] = z_count_bias(fusion.object_z(rows[0], fusion.object_stats(rows[2]), rows[1]),
                                                      rows[1])
    if sidak is not None:
        result["streams_per_object"] = sidak
    print(f"{args.work_dir}: {result['train_frames']} training frames, objects per clip: train mean "
          f"{result['train_objects_per_clip']['mean']} (max {result['train_objects_per_clip']['max']}), test mean "
          f"{result['test_objects_per_clip']['mean']} (max {result['test_objects_per_clip']['max']})")
    print_table(result["streams"], "stream (training, leave one video out)", "Spearman(score, objects in clip)")
    if "streams_per_object" in result:
        print_table(result["streams_per_object"], "stream, per-object z (Sidak)", "Spearman(z, objects in clip)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
