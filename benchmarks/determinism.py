"""Determinism across devices: one params file run on CPU and on CUDA, compared stage by stage.

    python benchmarks/determinism.py --data-root /work/data/ped2 --variants cpu cuda cuda-tf32

Each variant runs `vpclib.pipeline.run` with params/ped2.yaml (or --params, plus --set overrides)
in its own work directory, then every variant is compared with the CPU run (or the first):
  objects   boxes of every test and training clip (identical or not)
  features  the largest |difference| of each features-file array, relative to the array's largest |value|
  memory    the share of the first variant's coreset picks (video, row) the other variant also picked
  scores    the largest |difference| of each stream's per-frame score, in standard deviations of
            the first variant's scores; each stream's AUC and the micro AUCs in both
Variants: cpu; cuda (vpclib's default: `encoder.fp32_convolutions` sets
torch.backends.cudnn.allow_tf32 = False, fp32 convolutions in fp32); cuda-tf32 (PyTorch's default,
which vpclib had until this measurement: cuDNN may run fp32 convolutions in TF32, a 10-bit
mantissa). The table and a JSON go to stdout and --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpclib import metrics, pipeline  # noqa: E402
from vpclib.config import load_params  # noqa: E402
from vpclib import encoder  # noqa: E402

FP32_CONVOLUTIONS = encoder.fp32_convolutions      # vpclib's own: cuDNN without TF32

VARIANTS = {"cpu": ("cpu", False), "cuda": ("cuda", False), "cuda-tf32": ("cuda", True)}
STREAMS = ("spatial", "temporal", "highlevel")


def run_variant(name: str, args) -> tuple[Path, dict, float]:
    import torch
    device, tf32 = VARIANTS[name]
    torch.backends.cudnn.allow_tf32 = tf32                                     # cuda-tf32: PyTorch's default,
    encoder.fp32_convolutions = (lambda: None) if tf32 else FP32_CONVOLUTIONS  # which build_encoder keeps
    sets = dict(s.split("=", 1) for s in args.set)
    cfg = load_params(args.params, sets={**{k: _value(v) for k, v in sets.items()}, "device": device},
                      **{"data.root": args.data_root})
    work = Path(args.work_root) / name
    start = time.perf_counter()
    result = pipeline.run(cfg, work)
    return work, result, time.perf_counter() - start


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def features_difference(a: Path, b: Path) -> dict:
    """{array: largest |a - b| / largest |a|} over every video of both splits; boxes: identical or not."""
    out, boxes_equal = {}, True
    for split in ("train", "test"):
        with h5py.File(a / "features" / f"{split}.h5") as fa, h5py.File(b / "features" / f"{split}.h5") as fb:
            for video in fa:
                for key in fa[video]:
                    x, y = fa[video][key][()], fb[video][key][()]
                    if key in ("boxes", "object_clip", "clip_start", "labels"):
                        boxes_equal &= x.shape == y.shape and bool(np.array_equal(x, y))
                        continue
                    if x.shape != y.shape:
                        out[key] = float("nan")
                        continue
                    scale = float(np.abs(x).max()) if x.size else 1.0
                    d = float(np.abs(x.astype(np.float64) - y).max()) / (scale or 1.0) if x.size else 0.0
                    out[key] = max(out.get(key, 0.0), d)
    return {"objects_identical": boxes_equal, **{f"features_{k}": v for k, v in out.items()}}


def memory_overlap(a: Path, b: Path) -> dict:
    ma, mb = np.load(a / "memory.npz"), np.load(b / "memory.npz")
    out = {}
    for s in STREAMS:
        pa = set(zip(ma[f"{s}_video"].tolist(), ma[f"{s}_row"].tolist()))
        pb = set(zip(mb[f"{s}_video"].tolist(), mb[f"{s}_row"].tolist()))
        out[f"memory_{s}_same_picks"] = len(pa & pb) / max(1, len(pa))
        out[f"memory_{s}_size"] = [len(pa), len(pb)]
    return out


def scores_difference(a: Path, b: Path) -> dict:
    sa, sb = pipeline.read_scores(a / "scores.csv"), pipeline.read_scores(b / "scores.csv")
    out = {}
    for s in STREAMS:
        out[f"scores_{s}_max_diff_in_std"] = float(np.abs(sa[s] - sb[s]).max() / (sa[s].std() or 1.0))
    return out


def stream_aucs(work: Path) -> dict:
    s = pipeline.read_scores(work / "scores.csv")
    return {st: float(metrics.auc(s["label"], s[st])) for st in STREAMS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--params", default=str(ROOT / "params" / "ped2.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work-root", default="/tmp/vpc-determinism")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for name in args.variants:
        work, result, wall = run_variant(name, args)
        rows.append({"variant": name, "work": str(work), "wall_s": round(wall, 1),
                     "auc_micro_oracle": result["auc_micro_oracle"],
                     "auc_micro_labelfree": result["auc_micro_labelfree"],
                     "auc_macro_labelfree": result["auc_macro_labelfree"], "auc_stream": stream_aucs(work)})
        print(f"{name}: label-free micro {result['auc_micro_labelfree']:.4f}, oracle {result['auc_micro_oracle']:.4f}, "
              f"{wall:.0f} s", flush=True)
    base = next((r for r in rows if r["variant"] == "cpu"), rows[0])        # compared with the CPU run
    others = [r for r in rows if r is not base]
    first = Path(base["work"])
    for r in others:
        other = Path(r["work"])
        r["vs_" + base["variant"]] = {**features_difference(first, other), **memory_overlap(first, other),
                                      **scores_difference(first, other)}
    print("| variant | oracle micro | label-free micro | label-free macro | spatial | temporal | high-level | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["auc_stream"]
        print(f"| {r['variant']} | {r['auc_micro_oracle']:.4f} | {r['auc_micro_labelfree']:.4f} | "
              f"{r['auc_macro_labelfree']:.4f} | {s['spatial']:.4f} | {s['temporal']:.4f} | {s['highlevel']:.4f} | "
              f"{r['wall_s']:.0f} |")
    for r in others:
        print(f"\n{r['variant']} against {base['variant']}:")
        for k, v in r["vs_" + base["variant"]].items():
            print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
