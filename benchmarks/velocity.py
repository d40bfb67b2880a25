"""The optional velocity memory (vpclib.velocity, beyond the paper) on UCSD Ped2: one JSON line per
measured configuration, appended to benchmarks/results/velocity.jsonl.

    python benchmarks/velocity.py --data-root /work/data/ped2 --velocity-only          # objects + velocity only
    python benchmarks/velocity.py --data-root ../shared/data/ped2-mini                  # the whole run, fused

Every configuration is params/ped2.yaml with `velocity.enabled: true` and the velocity defaults
(8 bins, DIS medium, every training vector kept, fusion weight 0.5), fixed before any Ped2 number;
`--set KEY=VALUE` adds overrides (recorded in the line). Nothing is chosen on test labels.

--velocity-only: stages 0, 1 and 1b only (no encoder): the velocity stream's micro and macro AUC,
raw (as metrics.json's auc_stream) and smoothed within each video at fusion.sigma (the label-free
smoothing), with the motion detector's objects.
Whole run: pipeline.run with velocity on (metrics.json: oracle = the reference's three-stream search,
label-free = four streams), then, with --also-off, the same work directory's objects, features and
memory copied to <work>-off and scored with velocity off (the three-stream label-free number of the
same artifacts). --seed-from DIR copies objects/, features/ and memory.npz from a finished run of the
same parameters first (the cache keys still decide whether they are reused).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpclib import fusion, metrics, pipeline, velocity  # noqa: E402
from vpclib.cli import parse_sets  # noqa: E402
from vpclib.config import load_params  # noqa: E402
from vpclib.store import WorkDir  # noqa: E402


def velocity_only(cfg, work: Path) -> dict:
    """Stages 0, 1, 1b; the velocity stream's AUCs on the test videos."""
    wd = WorkDir(work)
    videos = {s: pipeline.load_videos(cfg, wd, s) for s in pipeline.SPLITS}
    boxes = pipeline.run(cfg, wd, until="objects", videos=videos)
    paths = {s: velocity.velocity_stage(cfg, wd, s, videos[s], boxes[s],
                                        {v.name: pipeline.video_clip_starts(cfg, v) for v in videos[s]},
                                        pipeline.progress) for s in pipeline.SPLITS}
    stream = velocity.VelocityStream(cfg, paths["train"], paths["test"])
    names = [v.name for v in videos["test"]]
    scores = stream.frame_scores(cfg, names)
    t = cfg.method.clip_length
    labels, vid = [], []
    for i, v in enumerate(videos["test"]):
        n = len(stream.test[v.name]["clip_start"]) * t
        labels.append(np.asarray(v.labels[:n]))
        vid.append(np.full(n, i))
    labels, vid = np.concatenate(labels), np.concatenate(vid)
    smoothed = fusion.per_video(lambda x: fusion.smooth(x, cfg.fusion.sigma), scores, vid)
    return {"auc_velocity": metrics.auc(labels, scores), "auc_velocity_macro": metrics.macro_auc(labels, scores, vid),
            "auc_velocity_smoothed": metrics.auc(labels, smoothed),
            "auc_velocity_smoothed_macro": metrics.macro_auc(labels, smoothed, vid),
            "velocity_calibration": stream.calibration(cfg), "n_test_frames": int(len(labels)),
            "memory_vectors": int(len(stream.memory.vectors))}


def whole_run(cfg, work: Path) -> dict:
    result = pipeline.run(cfg, work)
    return {k: result[k] for k in ("auc_micro_oracle", "auc_macro_oracle", "auc_micro_labelfree", "auc_macro_labelfree",
                                   "auc_stream", "n_test_frames", "a", "b", "sigma")} | \
        {"labelfree_stats": result["labelfree"]["stats"], "memory_vectors": result["memory"]["velocity"]["vectors"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--velocity-only", action="store_true")
    p.add_argument("--also-off", action="store_true", help="also score the same artifacts with velocity off")
    p.add_argument("--seed-from", help="copy objects/, features/ and memory.npz from this finished run first")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "velocity.jsonl"))
    args = p.parse_args(argv)
    sets = {"velocity.enabled": True, "device": args.device, **parse_sets(args.sets)}
    cfg = load_params(ROOT / "params" / "ped2.yaml", sets=sets, **{"data.root": args.data_root})
    work = Path(args.work_dir)
    if args.seed_from:
        for name in ("objects", "features", "memory.npz", "memory.npz.params.json"):
            src, dst = Path(args.seed_from) / name, work / name
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    start = time.perf_counter()
    row = velocity_only(cfg, work) if args.velocity_only else whole_run(cfg, work)
    row = {"mode": "velocity-only" if args.velocity_only else "whole run, velocity on", "data_root": args.data_root,
           "params": "params/ped2.yaml", "sets": sets, **row, "wall_s": round(time.perf_counter() - start, 1),
           "device_name": f"{args.device} ({platform.machine()})",
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    rows = [row]
    if args.also_off and not args.velocity_only:
        off_work = Path(str(work) + "-off")
        for name in ("objects", "features", "memory.npz", "memory.npz.params.json"):
            src, dst = work / name, off_work / name
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        off_sets = {**sets, "velocity.enabled": False}
        off_cfg = load_params(ROOT / "params" / "ped2.yaml", sets=off_sets, **{"data.root": args.data_root})
        start = time.perf_counter()
        result = pipeline.run(off_cfg, off_work)
        rows.append({"mode": "whole run, velocity off (same artifacts)", "data_root": args.data_root,
                     "params": "params/ped2.yaml", "sets": off_sets,
                     **{k: result[k] for k in ("auc_micro_oracle", "auc_macro_oracle", "auc_micro_labelfree",
                                               "auc_macro_labelfree", "auc_stream", "n_test_frames")},
                     "wall_s": round(time.perf_counter() - start, 1), "device_name": f"{args.device} ({platform.machine()})",
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")
    for r in rows:
        print(json.dumps(r, default=float, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
