"""Command line: `vpc run PARAMS.yaml`, single stages, the notebooks, and scoring new video.

    vpc run params/synthetic.yaml [--data-root DIR] [--work-dir DIR] [--device auto|cpu|cuda[:N]] [--overwrite]
    torchrun --nproc-per-node N -m vpclib.cli run PARAMS ...   (stages 2-6 sharded over N GPUs)
    vpc objects|features|memory|metrics PARAMS.yaml ...   (the stages up to that one: pipeline.run(until=...))
    vpc notebooks PARAMS.yaml [--out runs/<name>] [--figures figures/<name>] [-p NAME VALUE ...]
    vpc score WORK VIDEO... [--out DIR] [--clip gif|mp4] [--device D]
    (run, the stages and notebooks also take --set KEY=VALUE, repeatable)

Every error on bad input is one line naming the file or parameter, exit code 2; Ctrl-C exits
with 130 after one line saying what the work directory keeps (a rerun resumes). The params file
is read and checked before torch is imported.

`--set objects.weights=../shared/models/yolov5n.pt --set method.power=2` overrides any params key
(dotted, VALUE read as YAML), validated exactly like the params file; later --set wins.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import VPCError


def _device(text: str) -> str:
    from .config import DEVICE_PATTERN
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (e.g. cuda:1), got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpc", description="VideoPatchCore: training-free video anomaly detection")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in [("run", "every stage, then metrics.json and scores.csv"),
                       ("objects", "detect objects of both splits"),
                       ("features", "extract features of both splits"),
                       ("memory", "build the three memories"),
                       ("metrics", "score the test set and write the metrics"),
                       ("notebooks", "execute the five notebooks with papermill")]:
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("params", help="a params YAML file, e.g. params/synthetic.yaml")
        s.add_argument("--data-root", help="dataset root (overrides data.root)")
        s.add_argument("--work-dir", help="where artifacts go (default: work/<dataset name>)")
        s.add_argument("--device", type=_device, metavar="auto|cpu|cuda|cuda:N", help="overrides 'device'")
        s.add_argument("--overwrite", action="store_true",
                       help="recompute artifacts made from other inputs or parameters"
                            + (" (the whole pipeline runs first, then the notebooks)" if name == "notebooks" else ""))
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                       help="override a params key, VALUE read as YAML, e.g. --set method.power=2 or "
                            "--set objects.weights=../shared/models/yolov5n.pt (repeatable)")
        if name == "notebooks":
            s.add_argument("--out", help="folder for the executed notebooks (default runs/<dataset>)")
            s.add_argument("--figures", help="folder for the figures (default figures/<dataset>)")
            s.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                           help="a notebook parameter, VALUE read as YAML, e.g. -p ABLATION_VIDEOS 0 or "
                                "-p ABLATION_C '[54, 108]' (repeatable)")
    s = sub.add_parser("score", help="score new video with the memories of a finished work directory",
                       description="score videos or frame folders the memories never saw (no labels needed) "
                                   "with the memories and params of a finished `vpc run`")
    s.add_argument("work", help="a finished work directory (config.json, memory.npz, metrics.json)")
    s.add_argument("videos", nargs="+", metavar="VIDEO", help="a video file or a folder of frames")
    s.add_argument("--out", help="output folder (default WORK/scored)")
    s.add_argument("--clip", choices=["gif", "mp4", "none"], default="none",
                   help="also write an annotated clip: boxes coloured by their score, a score bar")
    s.add_argument("--no-plot", action="store_true", help="no score-curve PNG")
    s.add_argument("--device", type=_device, metavar="auto|cpu|cuda|cuda:N", help="overrides the run's device")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.work_dir_used = None
    try:
        return _dispatch(args)
    except VPCError as err:
        print(f"vpc: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:                                                    # reading or writing a file
        from .store import write_error
        where = err.filename or "a file"
        print(f"vpc: error: {write_error(where, err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vpc: interrupted. {_kept(args.work_dir_used)}", file=sys.stderr)
        return 130


def _kept(work_dir) -> str:
    """What an interrupted run leaves: finished artifacts, resumable .partial ones."""
    if work_dir is None or not Path(work_dir).is_dir():
        return "Nothing was written."
    from .store import finished_artifacts
    items = finished_artifacts(work_dir)
    if not items:
        return f"Nothing finished in {work_dir}; rerun the same command to start again."
    return (f"{work_dir} keeps {', '.join(items)} (finished; .partial: resumable); "
            f"rerun the same command to resume")


def _notebook_parameters(pairs) -> dict:
    """[(NAME, VALUE)] from -p -> {NAME: value}, each VALUE read as YAML (0 -> int, [3, 4] -> list)."""
    import yaml
    out = {}
    for name, text in pairs:
        try:
            out[name] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise VPCError(f"-p {name}: cannot read {text!r} as a YAML value ({err})") from None
    return out


def parse_sets(items) -> dict:
    """["objects.weights=PATH", "method.power=2"] from --set -> {"objects.weights": "PATH",
    "method.power": 2}: each VALUE read as YAML (2 -> int, 0.5 -> float, [0, 1] -> list, true ->
    bool); an empty VALUE is the empty string. Later items win."""
    import yaml
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VPCError(f"--set {item!r}: expected KEY=VALUE, e.g. --set method.power=2")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise VPCError(f"--set {key}: cannot read {text!r} as a YAML value ({err})") from None
        out.pop(key, None)                      # keep the order of the last occurrence
        out[key] = value
    return out


def _dispatch(args) -> int:
    from .config import load_params

    if args.command == "score":
        return _score(args)
    sets = parse_sets(args.sets)
    cfg = load_params(args.params, sets=sets, **{"data.root": args.data_root, "device": args.device})  # before torch
    work_dir = Path(args.work_dir or f"work/{cfg.data.name}")
    args.work_dir_used = work_dir
    from . import pipeline

    if args.command == "notebooks":
        from .runner import run_notebooks
        extra = _notebook_parameters(args.parameter)
        if args.overwrite:                     # the notebooks reuse the work directory's artifacts
            pipeline.run(cfg, work_dir, overwrite=True)
        run_notebooks(args.params, work_dir=work_dir, data_root=args.data_root, device=args.device,
                      out_dir=args.out, figures_dir=args.figures, extra=extra, sets=sets)
        return 0
    if args.command == "run":
        result = pipeline.run(cfg, work_dir, overwrite=args.overwrite)
        if os.environ.get("RANK", "0") != "0":                              # torchrun: rank 0 reports
            return 0
        summary = {k: result[k] for k in ("auc_micro_oracle", "auc_micro_labelfree", "auc_macro_labelfree",
                                          "a", "b", "sigma", "auc_stream")}
        print(json.dumps(summary, indent=1))
        print(f"wrote {work_dir / 'metrics.json'} and {work_dir / 'scores.csv'}")
        return 0
    output = pipeline.run(cfg, work_dir, overwrite=args.overwrite, until=args.command)   # the stages up to it
    if args.command == "memory":
        for name, memory in output.items():
            print(f"{name}: {memory.vectors.shape[0]} vectors x {memory.vectors.shape[1]} dims, {memory.megabytes:.2f} MB")
    elif args.command == "metrics":
        print(json.dumps({k: output[k] for k in ("auc_micro_oracle", "auc_micro_labelfree")}, indent=1))
    return 0


def _score(args) -> int:
    """vpc score WORK VIDEO...: one CSV (and PNG, and clip) per video in --out."""
    from . import score_video
    args.work_dir_used = None
    run = score_video.finished_run(args.work, device=args.device)
    videos = [score_video.open_video(v, run.cfg.method.clip_length) for v in args.videos]  # all checked first
    out_dir = Path(args.out or Path(args.work) / "scored")
    from .objects import build_detector
    from . import pipeline
    detector = build_detector(run.cfg, pipeline.resolve_device(run.cfg.device))
    encoder = pipeline.load_encoder(run.cfg)
    for video in videos:
        result = score_video.score_to_folder(run, video.source, out_dir, args.clip, not args.no_plot, detector, encoder)
        written = [str(result[k]) for k in ("csv", "png", "clip") if k in result]
        print(f"{video.name}: {len(result['frame'])} frames scored, label-free final max "
              f"{result['final_labelfree'].max():.3f}; wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
