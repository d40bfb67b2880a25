"""Choosing UCSD Ped2's settings without its test labels: candidates compared on pseudo-anomaly
folds of the training split (issue 10, item 6).

    python benchmarks/selection.py folds  --data-root /work/data/ped2 --device cuda [--folds 0 1 2 3]
    python benchmarks/selection.py choose --work-root /tmp/vpc-selection
    python benchmarks/selection.py test   --data-root /work/data/ped2 --device cuda [--all]
    python benchmarks/selection.py segments | transfer --work-root /tmp/vpc-selection

folds   The 16 training videos are cut into FOLDS held-out sets (vpclib.pseudo.held_out_folds:
        01-04, 05-08, 09-12, 13-16). Each becomes a validation split (vpclib.pseudo.validation_split,
        seed = the fold's number: a 3x-speed and a pasted-patch segment in every held-out video,
        the other 12 videos as its training split). On each fold every pipeline candidate runs
        (vpclib.pipeline.run): detector x encoder x velocity off / on, the detectors and encoders of
        benchmarks/realvideo.py. The objects of a detector are shared by its encoders, the features
        and memories of velocity off by velocity on (hard links with their manifests: the cache
        keys still apply). One JSON line per run in <work-root>/fold<k>/runs.jsonl.
choose  Every pipeline candidate x every fusion setting of FUSION_GRID (a, b, sigma and the
        velocity weight), re-fused from each fold's scores.csv and label-free calibration
        (vpclib.pseudo.labelfree_aucs), ranked by the mean label-free micro AUC over the folds;
        ties go to the earlier candidate in the order below (simpler first). The first is the
        choice: <work-root>/choice.json, --set overrides of params/ped2.yaml. Every setting tried
        is written to <work-root>/ranking.json, and the table is printed.
test    The choice, run once on the Ped2 test split (its metrics: oracle beside label-free), and
        with --all every pipeline candidate with params/ped2.yaml's fusion (the table of every
        configuration tried). Rows appended to benchmarks/results/selection.jsonl.
segments  Each pseudo-anomaly kind alone (normal frames against the fast segments, then against the
        pasted ones) per candidate and stream: why a candidate wins on the folds. No test label.
transfer  After `test --all`: every setting of the ranking on the test split too (re-fused from the
        test runs) and the rank correlation of pseudo and test AUCs: does the criterion transfer?

Nothing here reads a test label before `test`, and neither `test` nor `transfer` changes what was
chosen. Measured on full Ped2 (README, "Choosing settings without test labels"): it does not transfer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from realvideo import ENCODERS, detectors, device_name  # noqa: E402

from vpclib import pipeline, pseudo  # noqa: E402
from vpclib.config import load_params  # noqa: E402
from vpclib.datasets import load_split  # noqa: E402
from vpclib.encoder import resolve_device  # noqa: E402
from vpclib.store import read_json  # noqa: E402

PARAMS = ROOT / "params" / "ped2.yaml"
FOLDS = 4
SEED = 0                                          # fold k's pseudo-anomalies: seed SEED + k
DETECTORS = ("motion", "yolov5n")                 # yolo11n-ov needs openvino (180 MB): not on the GPU machine
CANDIDATE_ENCODERS = ("lite0", "lite1", "lite2")
FUSION_GRID = {                                   # params/ped2.yaml's values first (ties keep them)
    "fusion.a": (0.5, 0.25, 0.75),
    "fusion.b": (0.5, 0.25, 0.75),
    "fusion.sigma": (8, 4, 16),
    "velocity.weight": (0.5, 0.25, 1.0),          # only with velocity on
}


def candidates(dets=DETECTORS, encs=CANDIDATE_ENCODERS) -> list[tuple[str, str, bool]]:
    """(detector, encoder, velocity) in the order ties are broken: simpler first."""
    return [(d, e, v) for d in dets for e in encs for v in (False, True)]


def candidate_order(cand: tuple[str, str, bool]) -> tuple[int, int, bool]:
    """Sort key of a (detector, encoder, velocity): realvideo.py's order of detectors and encoders,
    velocity off first (simpler first, the order ties are broken in)."""
    return list(detectors(Path("."))).index(cand[0]), list(ENCODERS).index(cand[1]), cand[2]


def candidate_of(config: dict) -> tuple[str, str, bool]:
    """The (detector, encoder, velocity) a finished run's config (metrics.json "config") was made
    with: the candidate whose --set values it holds."""
    def holds(sets: dict) -> bool:
        return all(config[k.split(".")[0]].get(k.split(".")[1]) == v for k, v in sets.items()
                   if k.split(".")[1] in ("detector", "backbone", "pretrained"))
    det = next(d for d, sets in detectors(Path(".")).items() if holds(sets or {"objects.detector": "motion"}))
    enc = next(e for e, sets in ENCODERS.items() if holds(sets))
    return det, enc, config.get("velocity", {}).get("enabled", False)


def candidate_name(det: str, enc: str, vel: bool) -> str:
    return f"{det}-{enc}" + ("-velocity" if vel else "")


def candidate_sets(det: str, enc: str, vel: bool, models: Path, device: str) -> dict:
    """The --set overrides of params/ped2.yaml that make a pipeline candidate."""
    return {**detectors(models)[det], **ENCODERS[enc], "velocity.enabled": vel, "device": device}


def fusion_settings(vel: bool) -> list[dict]:
    """Every fusion setting of FUSION_GRID, params/ped2.yaml's first; the velocity weight only with velocity."""
    keys = [k for k in FUSION_GRID if vel or not k.startswith("velocity.")]
    return [dict(zip(keys, values)) for values in itertools.product(*(FUSION_GRID[k] for k in keys))]


def link_artifacts(src: Path, dst: Path, names: list[str]) -> None:
    """Hard-link finished artifacts (with their .params.json manifests) of one work directory into
    another: the new run reuses them only where its cache keys match."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for path in (src / name, src / f"{name}.params.json"):
            target = dst / path.name
            if target.exists() or not path.exists():
                continue
            if path.is_dir():
                shutil.copytree(path, target, copy_function=os.link)
            else:
                os.link(path, target)


# ---------------------------------------------------------------------------------------------
# folds

def run_folds(args) -> None:
    names = [v.name for v in load_split("ucsd", Path(args.data_root), "train")]
    held = pseudo.held_out_folds(names, args.n_folds)
    for k in args.folds:
        fold = Path(args.work_root) / f"fold{k}"
        data = fold / "data"
        if not data.is_dir():
            plan = pseudo.validation_split("ucsd", args.data_root, data, held[k], seed=SEED + k)
            (fold / "plan.json").write_text(json.dumps(plan, indent=1))
        for det, enc, vel in candidates(args.detectors, args.encoders):
            work = fold / candidate_name(det, enc, vel)
            if vel:
                link_artifacts(fold / candidate_name(det, enc, False), work, ["objects", "features", "memory.npz"])
                link_artifacts(fold / f"velocity-{det}", work, ["velocity"])      # flow: the detector's boxes only
            else:
                link_artifacts(fold / f"objects-{det}", work, ["objects"])
            cfg = load_params(PARAMS, sets={**candidate_sets(det, enc, vel, Path(args.models), args.device),
                                            "data.layout": "folder"}, **{"data.root": str(data)})
            start = time.perf_counter()
            result = pipeline.run(cfg, work)
            wall = time.perf_counter() - start
            shared = "velocity" if vel else "objects"                           # for the next encoder
            link_artifacts(work, fold / f"{shared}-{det}", [shared])
            row = {"fold": k, "held_out": held[k], "detector": det, "encoder": enc, "velocity": vel,
                   "auc_micro_labelfree": result["auc_micro_labelfree"], "auc_macro_labelfree": result["auc_macro_labelfree"],
                   "auc_micro_oracle": result["auc_micro_oracle"], "auc_stream": result["auc_stream"],
                   "labelfree_mode": result["labelfree"]["mode"], "wall_s": round(wall, 1),
                   "device_name": device_name(args.device), "work": work.name}
            with open(fold / "runs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"fold {k} {work.name}: pseudo label-free micro {row['auc_micro_labelfree']:.3f}, "
                  f"macro {row['auc_macro_labelfree']:.3f}, {wall:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# choose

def fold_runs(work_root: Path) -> dict[tuple, list[Path]]:
    """{(detector, encoder, velocity): [work directory of each fold]} for candidates finished on every fold."""
    found: dict[tuple, dict[int, Path]] = {}
    folds = sorted(work_root.glob("fold*/runs.jsonl"))
    for path in folds:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            found.setdefault((r["detector"], r["encoder"], r["velocity"]), {})[r["fold"]] = path.parent / r["work"]
    n = len(folds)
    return {c: [w[k] for k in sorted(w)] for c, w in found.items() if len(w) == n}


def rank(runs: dict[tuple, list[Path]]) -> list[dict]:
    """Every candidate x fusion setting with its per-fold label-free micro / macro AUCs and their
    means, best mean micro first (a stable sort: ties keep candidate order, then FUSION_GRID order)."""
    rows = []
    for cand in sorted(runs, key=candidate_order):
        folds = [(pipeline.read_scores(w / "scores.csv"), read_json(w / "metrics.json")["labelfree"]["stats"])
                 for w in runs[cand]]
        for setting in fusion_settings(cand[2]):
            aucs = [pseudo.labelfree_aucs(scores, stats, setting["fusion.a"], setting["fusion.b"], setting["fusion.sigma"],
                                          setting.get("velocity.weight")) for scores, stats in folds]
            micro = [m for m, _ in aucs]
            macro = [m for _, m in aucs]
            rows.append({"detector": cand[0], "encoder": cand[1], "velocity": cand[2], "fusion": setting,
                         "micro": micro, "macro": macro,
                         "mean_micro": sum(micro) / len(micro), "mean_macro": sum(macro) / len(macro)})
    return sorted(rows, key=lambda r: -r["mean_micro"])


def ranking_table(rows: list[dict], top: int) -> str:
    lines = ["| rank | detector | encoder | velocity | a | b | sigma | velocity weight | mean pseudo micro | "
             "per fold micro | mean pseudo macro |", "|" + "---|" * 11]
    for i, r in enumerate(rows[:top]):
        f = r["fusion"]
        lines.append(f"| {i + 1} | {r['detector']} | {r['encoder']} | {'on' if r['velocity'] else 'off'} | "
                     f"{f['fusion.a']} | {f['fusion.b']} | {f['fusion.sigma']} | {f.get('velocity.weight', '-')} | "
                     f"{r['mean_micro']:.3f} | {' / '.join(f'{m:.3f}' for m in r['micro'])} | {r['mean_macro']:.3f} |")
    return "\n".join(lines)


def choose(args) -> dict:
    work_root = Path(args.work_root)
    runs = fold_runs(work_root)
    if not runs:
        raise SystemExit(f"no candidate finished on every fold under {work_root} (run `folds` first)")
    rows = rank(runs)
    best = rows[0]
    choice = {"detector": best["detector"], "encoder": best["encoder"], "velocity": best["velocity"],
              "fusion": best["fusion"], "mean_pseudo_micro": best["mean_micro"], "mean_pseudo_macro": best["mean_macro"],
              "folds": len(best["micro"]), "settings_compared": len(rows)}
    (work_root / "ranking.json").write_text(json.dumps(rows, indent=1))
    (work_root / "choice.json").write_text(json.dumps(choice, indent=1))
    defaults = [r for r in rows if r["fusion"] == fusion_settings(r["velocity"])[0]]
    print(f"{len(rows)} settings compared on {choice['folds']} folds; best {args.top}:")
    print(ranking_table(rows, args.top))
    print("\nEvery pipeline candidate with params/ped2.yaml's fusion (a = b = 0.5, sigma 8, velocity weight 0.5):")
    print(ranking_table(defaults, len(defaults)))
    print(f"\nchoice: {json.dumps(choice)}")
    return choice


# ---------------------------------------------------------------------------------------------
# test

def test_run(args, det: str, enc: str, vel: bool, fusion: dict, chosen: bool) -> dict:
    sets = {**candidate_sets(det, enc, vel, Path(args.models), args.device), **fusion}
    cfg = load_params(PARAMS, sets=sets, **{"data.root": args.data_root})
    tag = "-".join(f"{v}" for v in fusion.values())
    work = Path(args.work_root) / "test" / f"{candidate_name(det, enc, vel)}-{tag}"
    shared = [(Path(args.work_root) / "test" / f"{name}-{det}", name) for name in ("objects", "velocity")]
    for folder, name in shared:
        link_artifacts(folder, work, [name])                 # used only where the cache keys match
    start = time.perf_counter()
    result = pipeline.run(cfg, work)
    wall = time.perf_counter() - start
    for folder, name in shared:
        link_artifacts(work, folder, [name])
    row = {"chosen": chosen, "detector": det, "encoder": enc, "velocity": vel, "fusion": fusion,
           "auc_micro_oracle": result["auc_micro_oracle"], "auc_micro_labelfree": result["auc_micro_labelfree"],
           "auc_macro_labelfree": result["auc_macro_labelfree"], "auc_stream": result["auc_stream"],
           "n_test_frames": result["n_test_frames"], "wall_s": round(wall, 1), "device_name": device_name(args.device),
           "sets": sets, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{'CHOSEN ' if chosen else ''}{work.name}: label-free micro {row['auc_micro_labelfree']:.3f}, "
          f"macro {row['auc_macro_labelfree']:.3f}, oracle {row['auc_micro_oracle']:.3f}, {wall:.0f} s", flush=True)
    return row


def run_test(args) -> None:
    if not args.no_choice:
        choice = json.loads(Path(args.choice or Path(args.work_root) / "choice.json").read_text())
        test_run(args, choice["detector"], choice["encoder"], choice["velocity"], choice["fusion"], chosen=True)
    if args.all:
        for det, enc, vel in candidates(args.detectors, args.encoders):
            test_run(args, det, enc, vel, fusion_settings(vel)[0], chosen=False)


def segment_aucs(args) -> None:
    """Each pseudo-anomaly kind on its own (no test label read): per candidate, with
    params/ped2.yaml's fusion, the label-free and per-stream AUCs of the normal frames against the
    fast segments only, then against the pasted ones only, pooled over the folds."""
    from vpclib import metrics
    runs = fold_runs(Path(args.work_root))
    print("| detector | encoder | velocity | segment | label-free | spatial | temporal | high-level | velocity alone |")
    print("|" + "---|" * 9)
    for cand in sorted(runs, key=candidate_order):
        for kind in ("fast", "pasted"):
            labels, cols = [], {}
            for w in runs[cand]:
                table = pipeline.read_scores(w / "scores.csv")
                plan = json.loads((w.parent / "plan.json").read_text())
                keep = table["label"] == 0
                for video, seg in plan.items():
                    keep |= (table["video"] == video) & (table["frame"] >= seg[kind][0]) & (table["frame"] < seg[kind][1])
                labels.append(table["label"][keep])
                for c in ("final_labelfree", "spatial", "temporal", "highlevel", "velocity"):
                    if c in table:
                        cols.setdefault(c, []).append(table[c][keep])
            y = np.concatenate(labels)
            a = {c: f"{metrics.auc(y, np.concatenate(v)):.3f}" for c, v in cols.items()}
            print(f"| {cand[0]} | {cand[1]} | {'on' if cand[2] else 'off'} | {kind} | {a['final_labelfree']} | "
                  f"{a['spatial']} | {a['temporal']} | {a['highlevel']} | {a.get('velocity', '-')} |")


def transfer(args) -> None:
    """After `test --all`: every setting of the ranking scored on the test split too, from the test
    runs of its pipeline candidate (scores.csv and calibration; the fusion does not change them),
    and the rank correlation of pseudo and test AUCs. It reads test labels after the choice was
    fixed and changes nothing: it measures how far the pseudo-anomalies predict real ones."""
    from scipy.stats import spearmanr
    work_root = Path(args.work_root)
    rows = json.loads((work_root / "ranking.json").read_text())
    test_dirs = {}
    for w in sorted((work_root / "test").glob("*/metrics.json")):
        test_dirs.setdefault(candidate_of(read_json(w)["config"]), w.parent)     # its fusion is re-done below
    scored = []
    for r in rows:
        w = test_dirs.get((r["detector"], r["encoder"], r["velocity"]))
        if w is None:
            continue
        f = r["fusion"]
        micro, macro = pseudo.labelfree_aucs(pipeline.read_scores(w / "scores.csv"), read_json(w / "metrics.json")["labelfree"]["stats"],
                                             f["fusion.a"], f["fusion.b"], f["fusion.sigma"], f.get("velocity.weight"))
        scored.append({**r, "test_micro": micro, "test_macro": macro})
    (work_root / "transfer.json").write_text(json.dumps(scored, indent=1))
    defaults = [r for r in scored if r["fusion"] == fusion_settings(r["velocity"])[0]]
    for name, group in (("every setting", scored), ("params/ped2.yaml's fusion", defaults)):
        rho = spearmanr([r["mean_micro"] for r in group], [r["test_micro"] for r in group]).statistic
        print(f"{name}: {len(group)} settings, Spearman(pseudo micro, test micro) = {rho:.3f}")
    print("\n| pseudo rank | detector | encoder | velocity | a | b | sigma | velocity weight | mean pseudo micro | test label-free micro | test macro |")
    print("|" + "---|" * 11)
    for i, r in enumerate(scored):
        if i < args.top or r in defaults:
            f = r["fusion"]
            print(f"| {i + 1} | {r['detector']} | {r['encoder']} | {'on' if r['velocity'] else 'off'} | {f['fusion.a']} | "
                  f"{f['fusion.b']} | {f['fusion.sigma']} | {f.get('velocity.weight', '-')} | {r['mean_micro']:.3f} | "
                  f"{r['test_micro']:.3f} | {r['test_macro']:.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("folds", "choose", "segments", "test", "transfer"))
    p.add_argument("--data-root", help="the full UCSD Ped2 (ped2/{training,testing}/frames, ped2.mat)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=str(ROOT.parent / "shared" / "models"))
    p.add_argument("--work-root", default="/tmp/vpc-selection")
    p.add_argument("--n-folds", type=int, default=FOLDS, help="folds: held-out sets the training videos are cut into")
    p.add_argument("--folds", nargs="+", type=int, help="folds: which of them to run here (default: all)")
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    p.add_argument("--encoders", nargs="+", default=list(CANDIDATE_ENCODERS))
    p.add_argument("--top", type=int, default=20, help="choose: rows of the ranking printed")
    p.add_argument("--choice", help="test: a choice.json (default <work-root>/choice.json)")
    p.add_argument("--all", action="store_true", help="test: also every pipeline candidate with params/ped2.yaml's fusion")
    p.add_argument("--no-choice", action="store_true", help="test: only the candidates of --all (e.g. one process per detector)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "selection.jsonl"))
    args = p.parse_args(argv)
    args.folds = list(range(args.n_folds)) if args.folds is None else args.folds
    os.environ.setdefault("VPC_PROGRESS", "0")
    if args.stage in ("folds", "test"):
        if not args.data_root:
            p.error(f"{args.stage} needs --data-root")
        args.device = resolve_device(args.device)
    {"folds": run_folds, "choose": choose, "segments": segment_aucs, "test": run_test, "transfer": transfer}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
