"""Command line: `vpc run PARAMS.yaml`, single stages, and the notebooks.

    vpc run params/synthetic.yaml [--data-root DIR] [--work-dir DIR] [--device cpu|cuda] [--overwrite]
                                  [--set KEY=VALUE ...]
    vpc objects|features|memory|metrics PARAMS.yaml ...   (one stage and what it needs)
    vpc notebooks PARAMS.yaml [--out runs/<name>] [--figures figures/<name>] [-p NAME VALUE ...]

`--set objects.weights=../shared/models/yolov5n.pt --set method.power=2` overrides any params key
(dotted, VALUE read as YAML), validated exactly like the params file; later --set wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import VPCError


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
        s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides 'device'")
        s.add_argument("--overwrite", action="store_true", help="recompute artifacts made with other parameters")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                       help="override a params key, VALUE read as YAML, e.g. --set method.power=2 or "
                            "--set objects.weights=../shared/models/yolov5n.pt (repeatable)")
        if name == "notebooks":
            s.add_argument("--out", help="folder for the executed notebooks (default runs/<dataset>)")
            s.add_argument("--figures", help="folder for the figures (default figures/<dataset>)")
            s.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                           help="a notebook parameter, VALUE read as YAML, e.g. -p ABLATION_VIDEOS 0 or "
                                "-p ABLATION_C '[54, 108]' (repeatable)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except VPCError as err:
        print(f"vpc: error: {err}", file=sys.stderr)
        return 2


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
    from . import pipeline
    from .config import load_params
    from .store import WorkDir

    sets = parse_sets(args.sets)
    cfg = load_params(args.params, sets=sets, **{"data.root": args.data_root, "device": args.device})
    work_dir = Path(args.work_dir or f"work/{cfg.data.name}")
    if args.command == "notebooks":
        from .notebooks import run_notebooks
        run_notebooks(args.params, work_dir=work_dir, data_root=args.data_root, device=args.device,
                      out_dir=args.out, figures_dir=args.figures, extra=_notebook_parameters(args.parameter),
                      sets=sets)
        return 0
    if args.command == "run":
        result = pipeline.run(cfg, work_dir, overwrite=args.overwrite)
        summary = {k: result[k] for k in ("auc_micro_oracle", "auc_micro_labelfree", "auc_macro_labelfree",
                                          "a", "b", "sigma", "auc_stream")}
        print(json.dumps(summary, indent=1))
        print(f"wrote {work_dir / 'metrics.json'} and {work_dir / 'scores.csv'}")
        return 0
    work = WorkDir(work_dir, overwrite=args.overwrite)
    for split in pipeline.SPLITS:
        if args.command == "objects":
            pipeline.detect_objects(cfg, work, split)
        elif args.command == "features":
            pipeline.extract_features(cfg, work, split)
    if args.command == "memory":
        banks = pipeline.build_memories(cfg, work)
        for name, bank in banks.items():
            print(f"{name}: {bank.vectors.shape[0]} vectors x {bank.vectors.shape[1]} dims, {bank.megabytes:.2f} MB")
    if args.command == "metrics":
        result = pipeline.evaluate(cfg, work)
        print(json.dumps({k: result[k] for k in ("auc_micro_oracle", "auc_micro_labelfree")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
