"""Pseudo-anomalies in training videos: a validation dataset made from the training split alone,
so that settings (detector, encoder, velocity, C, T, ...) can be compared without any test label
(issue 10; beyond the paper).

    validation_split(layout, root, out, held_out, seed)   -> out/{training,testing,labels}/ (layout "folder")

The held-out training videos become test videos: each gets two labelled segments, chosen a priori
(the same for every dataset, nothing tuned on a test set):
  fast      a stretch played at FAST_SPEED x its speed (frame s + k*speed at position s + k): people
            move 3x faster on an unchanged background, the kind of anomaly (cyclists, skaters,
            carts) that most UCSD / Avenue / ShanghaiTech test anomalies are;
  pasted    a foreign moving object: a patch of another training video's frame, mirrored, swept
            across the frame at PASTE_STEP pixels per frame (an appearance and motion anomaly).
Every frame of a held-out video, normal ones included, is decoded and written again as JPEG
(quality JPEG_QUALITY), so that re-compression marks no frame as different. The other training
videos are linked (or copied where links fail) as the validation set's training split.

Use: `python -m vpclib.pseudo PARAMS.yaml --data-root ROOT --out VAL --held-out 13 14 15 16`, then
`vpc run PARAMS.yaml --data-root VAL --set data.layout=folder [--set ...]` for each candidate, and
compare the label-free AUCs (metrics.json) across candidates. Folds over different held-out sets
make the comparison less noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from .datasets import load_split, natural_sort, read_image
from .errors import DatasetError

FAST_SPEED = 3              # the fast segment's speed-up
SEGMENT = 0.25              # each segment's share of the video's frames
PASTE_SIZE = 0.15           # the pasted patch's side, as a share of the frame's height
PASTE_STEP = 6              # pixels per frame the pasted patch moves
JPEG_QUALITY = 95


def segments(n_frames: int, rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """{"fast": (s, e), "pasted": (s, e)}: two disjoint half-open frame ranges of SEGMENT * n
    frames each, the fast one in the first half (room for s + FAST_SPEED * (e - s) frames), the
    pasted one in the second."""
    length = max(1, int(round(SEGMENT * n_frames)))
    half = n_frames // 2
    fast_room = min(half, n_frames - FAST_SPEED * length)              # s + speed*length <= n
    if fast_room < 1 or n_frames - half - length < 1:
        raise DatasetError(f"a video of {n_frames} frames is too short for pseudo-anomalies "
                           f"(two segments of {length} frames, the first at {FAST_SPEED}x)")
    s_fast = int(rng.integers(0, fast_room))
    s_paste = int(rng.integers(half, n_frames - length + 1))
    return {"fast": (s_fast, s_fast + length), "pasted": (s_paste, s_paste + length)}


def fast_source(i: int, start: int, speed: int = FAST_SPEED) -> int:
    """The source frame shown at position i of a fast segment starting at `start`."""
    return start + speed * (i - start)


def paste_patch(frame: np.ndarray, patch: np.ndarray, k: int, row: int) -> np.ndarray:
    """frame (H, W, 3) with `patch` (h, w, 3) at row `row`, column k * PASTE_STEP (wrapping at the
    right edge): step k of the pasted segment."""
    out = frame.copy()
    h, w = patch.shape[:2]
    col = (k * PASTE_STEP) % max(1, out.shape[1] - w)
    out[row:row + h, col:col + w] = patch
    return out


def foreign_patch(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mirrored square patch of PASTE_SIZE x the frame's height, cut at a random place."""
    side = max(4, int(round(PASTE_SIZE * frame.shape[0])))
    r = int(rng.integers(0, frame.shape[0] - side + 1))
    c = int(rng.integers(0, frame.shape[1] - side + 1))
    return frame[r:r + side, c:c + side][:, ::-1].copy()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def validation_split(layout: str, root, out, held_out: list[str], seed: int = 0) -> dict[str, dict]:
    """Write the validation dataset to `out` (layout "folder"): training/<video>/ the kept training
    videos, testing/<video>/ the held-out ones with their two segments, labels/<video>.npy their
    (n_frames,) uint8 masks. Returns {video: {"fast": (s, e), "pasted": (s, e), "patch_from": name}}.
    Refuses an existing non-empty `out` (nothing is overwritten); written into `out`.partial and
    renamed when complete, so an interrupted run leaves no half dataset under `out`."""
    root, out = Path(root), Path(out)
    videos = {v.name: v for v in load_split(layout, root, "train")}
    missing = [n for n in held_out if n not in videos]
    if missing or not held_out or len(held_out) >= len(videos):
        raise DatasetError(f"--held-out {held_out}: must name some, not all, of the training videos "
                           f"{sorted(videos)}" + (f" (unknown: {missing})" if missing else ""))
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty: choose a new folder")
    building = out.with_name(out.name + ".partial")                          # renamed to `out` when complete
    shutil.rmtree(building, ignore_errors=True)
    kept = [n for n in videos if n not in held_out]
    rng = np.random.default_rng(seed)
    for name in kept:
        (building / "training" / name).mkdir(parents=True)
        for p in videos[name].frame_paths:
            _link_or_copy(Path(p), building / "training" / name / Path(p).name)
    (building / "labels").mkdir(parents=True)
    plan = {}
    for name in held_out:
        video = videos[name]
        seg = segments(video.n_frames, rng)
        (fs, fe), (ps, pe) = seg["fast"], seg["pasted"]
        donor = videos[kept[int(rng.integers(0, len(kept)))]]
        patch = foreign_patch(read_image(Path(donor.frame_paths[int(rng.integers(0, donor.n_frames))])), rng)
        first = read_image(Path(video.frame_paths[0]))
        row = int(rng.integers(0, first.shape[0] - patch.shape[0] + 1))
        folder = building / "testing" / name
        folder.mkdir(parents=True)
        labels = np.zeros(video.n_frames, np.uint8)
        labels[fs:fe] = labels[ps:pe] = 1
        for i, p in enumerate(video.frame_paths):
            frame = read_image(Path(video.frame_paths[fast_source(i, fs) if fs <= i < fe else i]))
            if ps <= i < pe:
                frame = paste_patch(frame, patch, i - ps, row)
            if not cv2.imwrite(str(folder / f"{Path(p).stem}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise DatasetError(f"could not write {folder / Path(p).stem}.jpg")
        np.save(building / "labels" / f"{name}.npy", labels)
        plan[name] = {**seg, "patch_from": donor.name}
    if out.exists():
        out.rmdir()                                                          # empty (checked above)
    building.rename(out)
    return plan


# ---------------------------------------------------------------------------------------------
# comparing settings on validation splits

def held_out_folds(names: list[str], k: int) -> list[list[str]]:
    """`k` held-out sets of the training videos `names`: consecutive runs of the natural-sorted
    names, as equal as possible (16 videos, k = 4: 01-04, 05-08, 09-12, 13-16). Fixed a priori: no
    fold is chosen by its result."""
    if not 2 <= k <= len(names) // 2:
        raise DatasetError(f"{k} folds of {len(names)} training videos: need 2 <= folds <= {len(names) // 2} "
                           f"(every fold keeps at least half of the videos for its memories)")
    ordered = natural_sort(names)
    bounds = np.linspace(0, len(ordered), k + 1).round().astype(int)
    return [ordered[bounds[i]:bounds[i + 1]] for i in range(k)]


def labelfree_aucs(scores: dict[str, np.ndarray], stats: dict | None, a: float, b: float, sigma: float,
                   velocity_weight: float | None = None) -> tuple[float, float]:
    """(micro, macro) AUC of the label-free fusion of a finished run's per-frame scores
    (`pipeline.read_scores` of its scores.csv) with other fusion weights: `stats` is its
    metrics.json's labelfree.stats (the training videos' leave-one-out calibration, which does not
    depend on a, b, sigma or the velocity weight), velocity_weight None: the three-stream fusion."""
    from . import fusion, metrics
    _, video = np.unique(scores["video"], return_inverse=True)
    final = fusion.labelfree_streams(scores, video, stats, a, b, sigma, velocity_weight)
    return metrics.auc(scores["label"], final), metrics.macro_auc(scores["label"], final, video)


def main(argv=None) -> int:
    from .config import load_params
    ap = argparse.ArgumentParser(prog="python -m vpclib.pseudo", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", help="the params file whose data.layout reads ROOT")
    ap.add_argument("--data-root", required=True, help="the dataset (only its training split is read)")
    ap.add_argument("--out", required=True, help="a new folder for the validation dataset")
    ap.add_argument("--held-out", nargs="+", required=True, metavar="VIDEO", help="training videos to validate on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = load_params(args.params, **{"data.root": args.data_root})
    plan = validation_split(cfg.data.layout, args.data_root, args.out, args.held_out, args.seed)
    for name, p in plan.items():
        print(f"{name}: fast {p['fast']}, pasted {p['pasted']} (patch from {p['patch_from']})")
    print(f"wrote {args.out}: vpc run {args.params} --data-root {args.out} --set data.layout=folder")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
