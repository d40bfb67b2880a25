# @title Setup: installs vpclib on a fresh Colab runtime; where vpclib is importable it does nothing { display-mode: "form" }
# (Its source is notebooks/colab_setup.py; a test keeps every notebook's first cell equal to it.)
REPO = "https://github.com/ORG/vpc"  # PLACEHOLDER: the public address, as in pyproject.toml [project.urls]
EXTRAS = "clip,yolo"                 # CLIP RN101 (encoder.pretrained: openai) and the YOLO detectors


def vpc_setup(repo=REPO, extras=EXTRAS):
    """Install vpclib and its extras into this kernel's Python, from (in this order) the clone the
    notebook runs in, a clone at VPC_HOME (default /content/vpc), an uploaded wheel (vpclib-*.whl in
    the working folder or /content), or a `git clone` of `repo` into VPC_HOME. Then work from the
    clone's notebooks/ folder, so that the parameters cell's ../params/ paths hold. Stops with what
    to do (SystemExit) when none of these is possible."""
    import importlib
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    def stop(message):
        raise SystemExit("vpclib setup: " + message)

    if importlib.util.find_spec("vpclib") is not None:
        return
    here = Path.cwd()
    is_clone = lambda p: (p / "pyproject.toml").is_file() and (p / "vpclib" / "__init__.py").is_file()
    clone = next((p for p in (here, here.parent) if is_clone(p)), None)
    if "google.colab" not in sys.modules and "COLAB_RELEASE_TAG" not in os.environ:
        how = f"pip install -e '{clone}[notebooks]'" if clone else "pip install -e '<your clone>[notebooks]'"
        stop(f"vpclib is not installed for this kernel's Python ({sys.executable}). Install it ({how}, "
             f"or `python3 dev.py setup` and the .venv kernel), then restart the kernel.")
    home = Path(os.environ.get("VPC_HOME", "/content/vpc"))
    clone = clone or (home if is_clone(home) else None)
    wheels = sorted({*here.glob("vpclib-*.whl"), *Path("/content").glob("vpclib-*.whl")})
    placeholder = not repo or "/ORG/" in repo
    if clone is None and not wheels:
        if placeholder:
            stop("the repository's address is not set (REPO in this cell is a placeholder). Either set REPO "
                 "to the repository's public git URL, or build a wheel in a clone (`pip wheel --no-deps . -w dist`), "
                 "upload dist/vpclib-*.whl to /content (Files panel), and run this cell again.")
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            reach = subprocess.run(["git", "ls-remote", "--exit-code", repo, "HEAD"], env=env,
                                   capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            reach = subprocess.CompletedProcess([], 1, "", str(err))
        if reach.returncode != 0:
            stop(f"cannot reach the repository {repo} ({(reach.stderr or '').strip()[-300:] or 'no answer'}). "
                 f"Check REPO in this cell (and the runtime's network), or upload a wheel (vpclib-*.whl, "
                 f"from `pip wheel --no-deps . -w dist` in a clone) to /content and run this cell again.")
        print(f"vpclib setup: cloning {repo} into {home}", flush=True)
        done = subprocess.run(["git", "clone", "--quiet", "--depth", "1", repo, str(home)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            stop(f"git clone {repo} failed: {done.stderr.strip()[-500:]}")
        clone = home
    source = str(clone) if clone else str(wheels[-1])
    print(f"vpclib setup: installing {source} [{extras}] (a minute or two)", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"{source}[{extras}]"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        stop(f"pip install {source} failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    importlib.invalidate_caches()
    if importlib.util.find_spec("vpclib") is None:
        stop(f"pip installed vpclib, but this kernel's Python ({sys.executable}) cannot import it: "
             f"restart the runtime (Runtime > Restart session) and run this cell again.")
    if clone is None:                                  # a wheel: its params files are installed beside it
        from importlib.metadata import distribution
        dist = distribution("vpclib")
        for f in dist.files or []:
            if f.parent.name == "params" and f.suffix == ".yaml":
                (home / "params").mkdir(parents=True, exist_ok=True)
                shutil.copy(dist.locate_file(f), home / "params" / f.name)
        (home / "notebooks").mkdir(parents=True, exist_ok=True)
        clone = home
    if Path.cwd().resolve() != (clone / "notebooks").resolve():
        os.chdir(clone / "notebooks")                  # the parameters cells' paths are relative to it
        print("vpclib setup: working in the repository's notebooks/ folder", flush=True)
    print("vpclib setup: done", flush=True)


vpc_setup()
