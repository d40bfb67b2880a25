"""The two arithmetics side by side: how far `arithmetic: exact` moves the reference's scores.

    python benchmarks/arithmetic.py params/ped2.yaml --data-root ../shared/data/ped2-mini
    python benchmarks/arithmetic.py params/ped2.yaml --data-root ~/data/ped2 --device cuda

Runs the same params twice, `arithmetic: reference` (the authors' uint8 resize, NCHW input,
torch.cdist distances) and `arithmetic: exact` (float resize, exact distances), each in its own
work dir under --work-dir (reused when present), and prints, per stream, the relative difference
of the per-frame scores (max |exact - reference| / max |reference| over the test frames, and the
median of the per-frame relative difference), then the AUCs of both runs. Appends one JSON line per
run to --results (default benchmarks/results/arithmetic.jsonl) with the config and the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vpclib import pipeline
from vpclib.config import load_params
from vpclib.memory import MEMORIES

ARITHMETICS = ("reference", "exact")


def relative_difference(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |other - ref| / max |ref|, median over frames of |other - ref| / |ref|) for frames with ref != 0."""
    scale = float(np.abs(reference).max()) or 1.0
    nonzero = reference != 0
    per_frame = np.abs(other[nonzero] - reference[nonzero]) / np.abs(reference[nonzero])
    return float(np.abs(other - reference).max()) / scale, float(np.median(per_frame)) if per_frame.size else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("params")
    p.add_argument("--data-root")
    p.add_argument("--device", default=None)
    p.add_argument("--work-dir", default="work/arithmetic")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "arithmetic.jsonl"))
    args = p.parse_args(argv)

    runs = {}
    for arithmetic in ARITHMETICS:
        cfg = load_params(args.params, **{"data.root": args.data_root, "device": args.device, "arithmetic": arithmetic})
        work = Path(args.work_dir) / f"{cfg.data.name}-{arithmetic}"
        start = time.perf_counter()
        metrics = pipeline.run(cfg, work)
        seconds = time.perf_counter() - start
        runs[arithmetic] = {"metrics": metrics, "scores": pipeline.read_scores(work / "scores.csv"), "seconds": seconds}

    ref, exact = runs["reference"]["scores"], runs["exact"]["scores"]
    rows = []
    print(f"\n{args.params} on {args.data_root or 'its data.root'}: exact against reference, per test frame")
    print("| stream | max diff / max | median relative diff | AUC reference | AUC exact |")
    print("|---|---|---|---|---|")
    for stream in (*MEMORIES, "final_oracle", "final_labelfree"):
        worst, median = relative_difference(ref[stream], exact[stream])
        key = {"final_oracle": "auc_micro_oracle", "final_labelfree": "auc_micro_labelfree"}.get(stream)
        aucs = [runs[a]["metrics"]["auc_stream"][stream] if key is None else runs[a]["metrics"][key] for a in ARITHMETICS]
        rows.append({"stream": stream, "max_rel": worst, "median_rel": median, "auc": dict(zip(ARITHMETICS, aucs))})
        print(f"| {stream} | {worst:.2e} | {median:.2e} | {aucs[0]:.4f} | {aucs[1]:.4f} |")
    for a in ARITHMETICS:
        m = runs[a]["metrics"]
        print(f"{a}: oracle {m['auc_micro_oracle']:.4f} (a={m['a']}, b={m['b']}, sigma={m['sigma']}), "
              f"label-free {m['auc_micro_labelfree']:.4f}, {runs[a]['seconds']:.0f} s")
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps({"params": args.params, "data_root": args.data_root, "rows": rows,
                            "config": runs["reference"]["metrics"]["config"],
                            "seconds": {a: runs[a]["seconds"] for a in ARITHMETICS}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
