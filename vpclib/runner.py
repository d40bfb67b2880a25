"""Runner: the papermill runner of the five stage notebooks, the refresh tool and the Colab sync.

    vpc notebooks params/<dataset>.yaml [--data-root DIR] [--work-dir DIR] [--device D] [--out DIR] [--figures DIR]
    python -m vpclib.runner refresh     # the synthetic default, its outputs copied into notebooks/
    python -m vpclib.runner colab       # the repository address of pyproject.toml -> setup cells, badges
    (`python -m vpclib.notebooks refresh|colab` still works: the same main)

`run_notebooks` executes notebooks/00_data ... 04_visualization in order with the same parameters
(PARAMS, DATA_ROOT, WORK_DIR, DEVICE, FIGURES_DIR), writes the executed copies to runs/<dataset>/
and the figures to figures/<dataset>/, and stops at the first failing cell, naming it. The
notebooks run with the notebooks/ folder as working directory (as under nbval), so their default
parameters are paths relative to it. No stage of METHOD.md is here: the notebooks call
`vpclib.pipeline`'s stages, and the helpers of `vpclib.notebooks` show what they made.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import load_params
from .errors import VPCError
from .store import atomic_path

NOTEBOOKS = ("00_data", "01_detection", "02_memorization", "03_inference", "04_visualization")

# VPC_PROGRESS=0 in the environment the kernel starts with (tests, nbval, `refresh`) turns the
# runner's progress bar off (and `notebooks.setup` turns the kernel's off): nbval compares the outputs' text, and a
# bar appears only when a stage is not cached, so bars never go into the committed outputs.
_PROGRESS_OFF = os.environ.get("VPC_PROGRESS") == "0"


def _progress_on() -> bool:
    return not _PROGRESS_OFF


class NotebookError(VPCError, RuntimeError):
    """A notebook failed: the message names the notebook, the cell and the error."""


# ---------------------------------------------------------------------------------------------
# the runner

def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (vpclib installed from a clone, editable or not)."""
    for candidate in (Path(__file__).resolve().parents[1] / "notebooks", Path.cwd() / "notebooks"):
        if (candidate / f"{NOTEBOOKS[0]}.ipynb").is_file():
            return candidate
    raise NotebookError("cannot find the notebooks/ folder: run `vpc notebooks` from a clone of the repository")


# set by run_notebooks from its own arguments, with the option that sets each
RUN_PARAMETERS = {"PARAMS": "the params file", "DATA_ROOT": "--data-root", "WORK_DIR": "--work-dir",
                  "DEVICE": "--device", "FIGURES_DIR": "--figures"}


def extra_parameters(extra: dict, names, source: Path) -> dict[str, dict]:
    """{notebook: the entries of `extra` its parameters cell declares}, e.g. {"ABLATION_VIDEOS": 0}
    goes to 04_visualization only. A name no notebook declares, or one that run_notebooks sets from
    its own arguments, raises NotebookError naming it and the names there are."""
    import papermill
    declared = {name: set(papermill.inspect_notebook(str(source / f"{name}.ipynb"))) for name in names}
    known = set().union(*declared.values()) - set(RUN_PARAMETERS)
    for key in extra:
        if key in RUN_PARAMETERS:
            raise NotebookError(f"notebook parameter {key} is set by vpc notebooks itself: use its option "
                                f"({RUN_PARAMETERS[key]}) instead of -p")
        if key not in known:
            raise NotebookError(f"no notebook has a parameter {key}; they have: {', '.join(sorted(known))}")
    return {name: {k: v for k, v in extra.items() if k in declared[name]} for name in names}


def _absolute_paths(sets: dict) -> dict:
    """--set values that name an existing file or folder relative to the current folder, made
    absolute: the notebooks run in notebooks/, where the relative path would miss."""
    out = {}
    for key, value in sets.items():
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        out[key] = value
    return out


def run_notebooks(params_path, work_dir=None, data_root=None, device=None, out_dir=None, figures_dir=None,
                  names=NOTEBOOKS, source_dir=None, extra: dict | None = None,
                  sets: dict | None = None) -> dict[str, float]:
    """Execute the notebooks with papermill; returns {notebook: seconds}. `extra`: more notebook
    parameters, e.g. {"ABLATION_VIDEOS": 0}, each given to the notebooks that declare it. `sets`:
    params overrides (--set), e.g. {"objects.weights": "/m/yolov5n.pt"}; they are written with the
    params file into <out>/params.yaml, which every notebook then reads as its PARAMS. Raises
    NotebookError naming the notebook and cell at the first failure (the executed copy, with the
    traceback, is kept)."""
    import papermill
    import yaml
    from papermill.exceptions import PapermillExecutionError

    from .config import read_params

    sets = _absolute_paths(sets or {})
    cfg = load_params(params_path, sets=sets, **{"data.root": data_root, "device": device})  # fail early
    source = Path(source_dir) if source_dir else notebooks_dir()
    per_notebook = extra_parameters(extra or {}, names, source)              # fail early on unknown names
    out = Path(out_dir or f"runs/{cfg.data.name}").resolve()
    figures = Path(figures_dir or f"figures/{cfg.data.name}").resolve()
    params_file = Path(params_path).resolve()
    if sets:                                                                 # the file with the overrides in
        out.mkdir(parents=True, exist_ok=True)
        params_file = out / "params.yaml"
        merged = read_params(params_path, sets)
        with atomic_path(params_file) as tmp:
            Path(tmp).write_text(f"# {Path(params_path).resolve()} with --set {', '.join(sets)}\n"
                                 + yaml.safe_dump(merged, sort_keys=False))
    parameters = {
        "PARAMS": str(params_file),
        "DATA_ROOT": str(Path(data_root).expanduser().resolve()) if data_root else "",
        "WORK_DIR": str(Path(work_dir or f"work/{cfg.data.name}").resolve()),
        "DEVICE": device or "",
        "FIGURES_DIR": str(figures),
    }
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    seconds = {}
    total = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        executed = out / f"{name}.ipynb"
        try:
            papermill.execute_notebook(str(source / f"{name}.ipynb"), str(executed),
                                       parameters={**parameters, **per_notebook[name]},
                                       cwd=str(source), progress_bar=_progress_on(), log_output=False,
                                       extra_arguments=["--log-level=ERROR"])   # the kernel's own log: errors only
        except PapermillExecutionError as err:
            first_line = next((line for line in err.source.splitlines() if line.strip()), "")
            raise NotebookError(
                f"notebook {name}.ipynb failed in cell {err.cell_index} (In [{err.exec_count}], starting "
                f"'{first_line[:80]}'): {err.ename}: {err.evalue}\nThe executed copy with the traceback is "
                f"{executed}") from None
        seconds[name] = time.perf_counter() - start
        print(f"{name:<18} {seconds[name]:6.1f} s   {executed}", flush=True)
    print(f"{'all notebooks':<18} {time.perf_counter() - total:6.1f} s   figures in {figures}", flush=True)
    return seconds


def commit_outputs(executed_dir, source_dir=None, names=NOTEBOOKS) -> None:
    """Copy executed notebooks over the committed ones: the injected-parameters cell and papermill's
    timing metadata removed, execution counts renumbered, so that the committed notebooks keep their
    default parameters and carry the outputs (which nbval then compares)."""
    import nbformat
    source = Path(source_dir) if source_dir else notebooks_dir()
    for name in names:
        nb = nbformat.read(Path(executed_dir) / f"{name}.ipynb", as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nb.metadata.pop("papermill", None)
        count = 0
        for cell in nb.cells:
            for key in ("papermill", "execution"):
                cell.metadata.pop(key, None)
            if cell.cell_type == "code":
                count += 1
                cell.execution_count = count
                for output in cell.outputs:
                    if "execution_count" in output:
                        output["execution_count"] = count
        with atomic_path(source / f"{name}.ipynb") as tmp:
            nbformat.write(nb, str(tmp))


# ---------------------------------------------------------------------------------------------
# the repository's address: Colab setup cell and badges

PLACEHOLDER_URL = "https://github.com/ORG/vpc"
SETUP_SCRIPT = "colab_setup.py"                  # in notebooks/: the source of every notebook's first cell


def repository_url(root=None) -> str:
    """The repository's public address: pyproject.toml [project.urls] Repository of the clone (or,
    installed from a wheel, the same field of the installed metadata)."""
    pyproject = Path(root or Path(__file__).resolve().parents[1]) / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
            return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]
        except ModuleNotFoundError:                                         # Python 3.10
            import re
            return re.search(r'^Repository\s*=\s*"([^"]*)"', pyproject.read_text(), re.M).group(1)
    from importlib.metadata import metadata
    urls = dict(u.split(", ", 1) for u in metadata("vpclib").get_all("Project-URL") or [])
    return urls["Repository"]


def colab_url(name: str, repo: str | None = None, branch: str = "main") -> str:
    """Colab's address of notebooks/<name>.ipynb in the GitHub repository `repo` (default: ours)."""
    repo = (repo or repository_url()).removesuffix(".git").rstrip("/")
    path = repo.split("github.com/", 1)[-1]
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{name}.ipynb"


def setup_cell_source(source_dir=None, repo: str | None = None) -> str:
    """notebooks/colab_setup.py with REPO set to `repo` (default: as it is in the file)."""
    import re
    text = (Path(source_dir) if source_dir else notebooks_dir()).joinpath(SETUP_SCRIPT).read_text().rstrip("\n")
    if repo is not None:
        text = re.sub(r'^REPO = "[^"]*"', f'REPO = "{repo}"', text, count=1, flags=re.M)
    return text


def sync_colab(root=None) -> list[str]:
    """Write the address of pyproject.toml into its consumers: REPO in notebooks/colab_setup.py, the
    first cell of every notebook (the setup script itself, outputs cleared) and the README's Colab
    badges. Returns the files changed."""
    import re
    import nbformat
    root = Path(root or Path(__file__).resolve().parents[1])
    repo = repository_url(root)
    changed = []
    script = root / "notebooks" / SETUP_SCRIPT
    text = setup_cell_source(root / "notebooks", repo)
    if script.read_text().rstrip("\n") != text:
        _write_text(script, text + "\n")
        changed.append(str(script.relative_to(root)))
    for name in NOTEBOOKS:
        path = root / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        first = nb.cells[0]
        if first.cell_type != "code" or first.source != text or first.outputs:
            first.cell_type, first.source, first.outputs = "code", text, []
            with atomic_path(path) as tmp:
                nbformat.write(nb, str(tmp))
            changed.append(str(path.relative_to(root)))
    readme = root / "README.md"
    old = readme.read_text()
    new = re.sub(r"https://colab\.research\.google\.com/github/[^)\s]*?/notebooks/(\w+)\.ipynb",
                 lambda m: colab_url(m.group(1), repo), old)
    if new != old:
        _write_text(readme, new)
        changed.append("README.md")
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vpclib.runner", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["refresh", "colab"], help="refresh: run the synthetic default and copy "
                   "its outputs into notebooks/ (what the committed notebooks carry); colab: write the "
                   "repository address of pyproject.toml into the notebooks' setup cell and the README's badges")
    p.add_argument("--params", default="params/synthetic.yaml")
    p.add_argument("--work-dir", default=None)
    args = p.parse_args(argv)
    if args.command == "colab":
        changed = sync_colab()
        print(f"repository address {repository_url()}: " + (", ".join(changed) + " updated" if changed else "all up to date"))
        if repository_url() == PLACEHOLDER_URL:
            print("note: it is still the placeholder; set [project.urls] Repository in pyproject.toml")
        return 0
    cfg = load_params(args.params)
    out = Path(f"runs/{cfg.data.name}")
    os.environ["VPC_PROGRESS"] = "0"                   # the kernels inherit it: no bars in the committed outputs
    global _PROGRESS_OFF
    _PROGRESS_OFF = True
    try:
        run_notebooks(args.params, work_dir=args.work_dir, out_dir=out)
    except VPCError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    commit_outputs(out)
    print(f"copied the executed notebooks into {notebooks_dir()}")
    return 0


def _write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
