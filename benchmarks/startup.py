"""Fixed costs: import times and encoder construction, split into its parts (issue 14, item 5).

    python benchmarks/startup.py                       # CPU, here
    python benchmarks/startup.py --device cuda --json $OUT/startup.json

Imports: each module imported alone in a fresh interpreter (`python -c "import X"`, wall time,
median of --repeats; the page cache is warm after the first), and `python -X importtime`'s
heaviest top-level imports of `vpclib.pipeline`.
Encoder: a random-init CLIP RN101 image tower written once as a checkpoint (.bin by torch.save,
.safetensors), then, in fresh interpreters: the old path (torch.load into memory, open_clip's
whole CLIP built and randomly initialised, load_state_dict, .to(device)) part by part, and the
new one (memory-mapped torch.load, the image tower built on the meta device, tensors assigned,
.to(device)), and `build_encoder` end to end on both checkpoints and on random weights.
Absolute times depend on the machine (2 shared cores here); the ratios are what carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1",
       "YOLO_OFFLINE": "1", "VPC_PROGRESS": "0"}

IMPORTS = ["torch", "vpclib", "vpclib.config", "vpclib.scores", "vpclib.encoder", "vpclib.pipeline", "vpclib.cli",
           "open_clip", "timm", "cv2", "sklearn.metrics", "h5py"]

# each snippet prints one JSON dict of {part: seconds}; {ckpt} and {device} are filled in
OLD_PATH = """
import json, time
t = time.perf_counter(); import torch, open_clip; parts = {{"import torch + open_clip": time.perf_counter() - t}}
t = time.perf_counter(); state = torch.load({ckpt!r}, map_location="cpu", weights_only=True)
parts["torch.load (into memory)"] = time.perf_counter() - t
t = time.perf_counter(); visual = open_clip.create_model("RN101", pretrained=None).visual
parts["open_clip.create_model (whole CLIP, random init)"] = time.perf_counter() - t
t = time.perf_counter(); visual.load_state_dict({{k[7:]: v for k, v in state.items()}}, strict=False)
parts["load_state_dict (copy)"] = time.perf_counter() - t
t = time.perf_counter(); visual.to({device!r}); torch.cuda.synchronize() if {device!r} != "cpu" else None
parts[".to(device)"] = time.perf_counter() - t
print(json.dumps(parts))
"""
NEW_PATH = """
import json, time
t = time.perf_counter(); import torch, open_clip; parts = {{"import torch + open_clip": time.perf_counter() - t}}
from vpclib.encoder import _torch_load, clip_rn101_visual_on_meta
t = time.perf_counter(); state = _torch_load(__import__("pathlib").Path({ckpt!r}))
parts["torch.load (mmap)"] = time.perf_counter() - t
t = time.perf_counter(); visual = clip_rn101_visual_on_meta(open_clip)
parts["image tower on the meta device"] = time.perf_counter() - t
t = time.perf_counter(); visual.load_state_dict({{k[7:]: v for k, v in state.items()}}, strict=False, assign=True)
parts["load_state_dict (assign)"] = time.perf_counter() - t
t = time.perf_counter(); visual.to({device!r}); torch.cuda.synchronize() if {device!r} != "cpu" else None
parts[".to(device)"] = time.perf_counter() - t
print(json.dumps(parts))
"""
BUILD = """
import json, time
t = time.perf_counter()
from vpclib.config import from_dict
from vpclib.encoder import build_encoder
imported = time.perf_counter() - t
t = time.perf_counter()
import open_clip
clip = time.perf_counter() - t
t = time.perf_counter()
build_encoder(from_dict({{"encoder": {{"backbone": "clip_rn101", "pretrained": {ckpt!r}}}}}), {device!r})
print(json.dumps({{"import vpclib.encoder": imported, "import open_clip": clip, "build_encoder": time.perf_counter() - t}}))
"""


def run_python(code: str, root: Path = ROOT) -> dict:
    env = {**ENV, "PYTHONPATH": f"{root}:{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=root)                                           # `-c` puts the cwd first on sys.path
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def import_times(repeats: int) -> dict[str, float]:
    code = "import time; t = time.perf_counter(); import {m}; print('{{\"s\": %f}}' % (time.perf_counter() - t))"
    return {m: median([run_python(code.format(m=m))["s"] for _ in range(repeats)]) for m in IMPORTS}


def heaviest_imports(module: str = "vpclib.pipeline", top: int = 8) -> list[tuple[str, float]]:
    """-X importtime's top-level imports (depth 1) of `module`, by cumulative seconds."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                         text=True, env=ENV, check=True).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            depth = (len(name) - len(name.lstrip(" ")) - 1) // 2             # 0: `module` itself
            if depth == 1 and cumulative.strip().isdigit():
                rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def write_checkpoints(folder: Path) -> tuple[str, str]:
    """A random RN101 image tower as open_clip saves it (keys under 'visual.'): .bin and .safetensors."""
    code = f"""
import torch, open_clip
from safetensors.torch import save_file
torch.manual_seed(0)
state = {{"visual." + k: v.contiguous() for k, v in open_clip.create_model("RN101", pretrained=None).visual.state_dict().items()}}
torch.save(state, {str(folder / 'rn101.bin')!r})
save_file(state, {str(folder / 'rn101.safetensors')!r})
print("{{}}")
"""
    run_python(code)
    return str(folder / "rn101.bin"), str(folder / "rn101.safetensors")


def table(title: str, rows: dict) -> str:
    lines = [f"| {title} | s |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in rows.items()]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only-build", action="store_true", help="only the build_encoder rows")
    p.add_argument("--before", default="", help="another checkout (e.g. main) whose build_encoder is timed too")
    p.add_argument("--json", default="")
    args = p.parse_args()
    result = {}
    if not args.only_build:
        result = {"imports": import_times(args.repeats), "pipeline_heaviest": heaviest_imports()}
        print(table("import (fresh interpreter, median)", result["imports"]) + "\n")
        print(table("import vpclib.pipeline: heaviest top-level imports (cumulative)", dict(result["pipeline_heaviest"])))
    with tempfile.TemporaryDirectory() as tmp:
        binary, safetensors = write_checkpoints(Path(tmp))
        result["checkpoint_mb"] = os.path.getsize(binary) / 1e6
        for name, code in () if args.only_build else (("old path", OLD_PATH), ("new path", NEW_PATH)):
            parts = [run_python(code.format(ckpt=binary, device=args.device)) for _ in range(args.repeats)]
            result[name] = {k: median([x[k] for x in parts]) for k in parts[0]}
            print("\n" + table(f"{name}, .bin checkpoint ({result['checkpoint_mb']:.0f} MB), {args.device}", result[name]))
        result["build_encoder"] = {}
        roots = [("this checkout", ROOT)] + ([("before: " + args.before, Path(args.before))] if args.before else [])
        for where, root in roots:
            for label, ckpt in ((".bin", binary), (".safetensors", safetensors), ("random", "random")):
                runs = [run_python(BUILD.format(ckpt=ckpt, device=args.device), root) for _ in range(args.repeats)]
                result["build_encoder"][f"{where}, {label}"] = {k: median([x[k] for x in runs]) for k in runs[0]}
        print("\n| build_encoder(clip_rn101), " + args.device + " | import vpclib.encoder s | then import open_clip s "
              "| then build_encoder s |\n|---|---|---|---|")
        for label, r in result["build_encoder"].items():
            print(f"| {label} | {r['import vpclib.encoder']:.2f} | {r['import open_clip']:.2f} | {r['build_encoder']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
