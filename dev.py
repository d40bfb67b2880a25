#!/usr/bin/env python3
"""One entry point for a fresh machine with only python3.

    python3 dev.py main    # set up, then run the whole notebook pipeline on the synthetic scenes
    python3 dev.py test    # set up, then run the tests (unit, end to end, nbval on the notebooks)
    python3 dev.py setup   # only set up

Setup creates `.venv` in the project root (unless a virtual environment is already active) and
installs vpclib with every extra into it; it is skipped when pyproject.toml has not changed since.
Everything runs offline: model hubs are switched off (HF_HUB_OFFLINE=1, YOLO_OFFLINE=1).
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}


def python() -> str:
    """The interpreter to use: the active virtual environment's, or .venv's (created if needed)."""
    if os.environ.get("VIRTUAL_ENV") or sys.prefix != sys.base_prefix:
        return sys.executable
    env = ROOT / ".venv"
    if not (env / "bin" / "python").exists():
        print(f"creating {env}", flush=True)
        venv.create(env, with_pip=True)
    return str(env / "bin" / "python")


def setup(py: str) -> None:
    """pip install -e .[all], skipped when nothing changed since the last install."""
    stamp = Path(subprocess.check_output([py, "-c", "import sys; print(sys.prefix)"], text=True).strip()) / ".vpc-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    print("installing vpclib and its dependencies (a few minutes the first time)", flush=True)
    subprocess.check_call([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    subprocess.check_call([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[all]"])
    subprocess.check_call([py, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                          stdout=subprocess.DEVNULL)
    stamp.write_text(want)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "main"
    if command not in ("main", "test", "setup"):
        print(__doc__)
        return 2
    py = python()
    setup(py)
    env = {**os.environ, **OFFLINE}
    bin_dir = str(Path(py).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    if command == "main":
        return subprocess.call([py, "-m", "vpclib.cli", "notebooks", "params/synthetic.yaml"], cwd=ROOT, env=env)
    if command == "test":
        env["VPC_PROGRESS"] = "0"          # nbval compares the notebooks' text outputs: no progress bars
        return subprocess.call([py, "-m", "pytest", "tests", "notebooks", "--nbval", "--nbval-sanitize-with",
                                "notebooks/sanitize.cfg", "-p", "no:cacheprovider", *sys.argv[2:]], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
