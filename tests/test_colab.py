"""Colab: one place holds the repository's address, every consumer agrees with it, and the notebooks'
setup cell works as a fresh Colab runtime runs it (simulated: a clean virtual environment that reuses
the heavy packages already installed, as Colab's preinstalled torch, and cannot import vpclib)."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from vpclib import runner

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "https://github.com/ORG/vpc"


def pyproject_url() -> str:
    """[project.urls] Repository, read here with a regular expression (not with vpclib's reader)."""
    text = (ROOT / "pyproject.toml").read_text()
    urls = text.split("[project.urls]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^Repository\s*=\s*"([^"]*)"', urls, re.M).group(1)


def script_repo(text: str) -> str:
    return re.search(r'^REPO = "([^"]*)"', text, re.M).group(1)


def test_one_address_and_every_consumer_agrees():
    url = pyproject_url()
    assert runner.repository_url() == url
    setup = (ROOT / "notebooks/colab_setup.py").read_text()
    assert script_repo(setup) == url
    assert url != PLACEHOLDER or "PLACEHOLDER" in setup                     # a placeholder says it is one
    for name in runner.NOTEBOOKS:                                         # the first cell IS the script
        first = nbformat.read(str(ROOT / f"notebooks/{name}.ipynb"), as_version=4).cells[0]
        assert first.cell_type == "code" and first.source == setup.rstrip("\n"), (
            f"{name}: first cell differs from notebooks/colab_setup.py; run python -m vpclib.notebooks colab")
        assert first.outputs == []
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"\(https://colab\.research\.google\.com/github/[^)]*\)", readme)
    assert sorted(badges) == sorted(f"({runner.colab_url(n)})" for n in runner.NOTEBOOKS)
    assert runner.colab_url("00_data", url).startswith("https://colab.research.google.com/github/")


def test_sync_writes_a_new_address_into_every_consumer(tmp_path):
    for part in ("notebooks", "README.md", "pyproject.toml"):
        src = ROOT / part
        shutil.copytree(src, tmp_path / part) if src.is_dir() else shutil.copy(src, tmp_path / part)
    text = (tmp_path / "pyproject.toml").read_text().replace(f'Repository = "{PLACEHOLDER}"',
                                                             'Repository = "https://github.com/someone/vpc-demo"')
    (tmp_path / "pyproject.toml").write_text(text)
    changed = runner.sync_colab(tmp_path)
    assert "README.md" in changed and "notebooks/colab_setup.py" in changed
    assert script_repo((tmp_path / "notebooks/colab_setup.py").read_text()) == "https://github.com/someone/vpc-demo"
    first = nbformat.read(str(tmp_path / "notebooks/03_inference.ipynb"), as_version=4).cells[0]
    assert 'REPO = "https://github.com/someone/vpc-demo"' in first.source
    assert ("https://colab.research.google.com/github/someone/vpc-demo/blob/main/notebooks/04_visualization.ipynb"
            in (tmp_path / "README.md").read_text())
    assert runner.sync_colab(tmp_path) == []                              # nothing left to change


def _run_cell(source: str, cwd, env=None, python=sys.executable, isolated=True):
    """Run the setup cell as a kernel runs it: the cell's code in one Python process. isolated: the
    standard library only (python -I -S), so vpclib is not importable."""
    args = [python, "-I", "-S", "-c", source] if isolated else [python, "-c", source]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COLAB", "VPC_", "PIP_"))}
    return subprocess.run(args, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_setup_cell_does_nothing_where_vpclib_is_importable(tmp_path):
    source = runner.setup_cell_source()
    done = _run_cell(source + "\nimport os; print(os.getcwd())", tmp_path, {"PYTHONPATH": str(ROOT)}, isolated=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}\n" and done.stderr == ""             # no output, the folder unchanged


def test_setup_cell_outside_colab_says_how_to_install(tmp_path):
    done = _run_cell(runner.setup_cell_source(), ROOT / "notebooks")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "vpclib setup: vpclib is not installed" in done.stderr and f"pip install -e '{ROOT}[notebooks]'" in done.stderr


def test_setup_cell_stops_clearly_when_the_address_is_a_placeholder(tmp_path):
    done = _run_cell(runner.setup_cell_source(repo=PLACEHOLDER), tmp_path,
                     {"COLAB_RELEASE_TAG": "test", "VPC_HOME": str(tmp_path / "vpc")})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the repository's address is not set (REPO in this cell is a placeholder)" in done.stderr
    assert "pip wheel --no-deps" in done.stderr and not (tmp_path / "vpc").exists()


def test_setup_cell_stops_clearly_when_the_repository_is_unreachable(tmp_path):
    missing = (tmp_path / "nowhere.git").as_uri()
    done = _run_cell(runner.setup_cell_source(repo=missing), tmp_path,
                     {"COLAB_RELEASE_TAG": "test", "VPC_HOME": str(tmp_path / "vpc")})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot reach the repository {missing}" in done.stderr and "Check REPO in this cell" in done.stderr


# ---------------------------------------------------------------------------------------------
# the fresh runtime

def _fresh_python(where: Path) -> str:
    """A new virtual environment that sees this one's packages (torch, ...) through a .pth line, as
    Colab's preinstalled ones, but not vpclib: an editable install's hook is not run from there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = str(where / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "colab-preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _working_tree(dest: Path) -> Path:
    """The repository's files as they are now (tracked and untracked, not ignored), as a git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + args, cwd=dest, check=True)
    return dest


def _first_cells_of_00_data(n_cells: int) -> str:
    """The code cells of 00_data after the setup cell, up to the table of videos, as one program."""
    nb = nbformat.read(str(ROOT / "notebooks/00_data.ipynb"), as_version=4)
    cells = [c.source for c in nb.cells[1:] if c.cell_type == "code"][:n_cells]
    return "\n".join(cells)


FRESH_ENV = {
    "COLAB_RELEASE_TAG": "simulated",      # what the cell takes for a Colab runtime
    "PIP_NO_INDEX": "1",                   # nothing downloaded: every dependency is already there
    "PIP_NO_BUILD_ISOLATION": "0",         # build with the setuptools at hand (no download)
    "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg",
}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["git clone", "uploaded wheel"])
def test_fresh_runtime_installs_vpclib_then_00_data_runs(tmp_path, source):
    python = _fresh_python(tmp_path / "venv")
    content = tmp_path / "content"                                           # Colab's /content
    content.mkdir()
    probe = _run_cell("import vpclib", content, python=python, isolated=False)   # the environment the cell gets
    assert probe.returncode != 0 and "No module named 'vpclib'" in probe.stderr
    repo = _working_tree(tmp_path / "repo")
    if source == "git clone":
        cell = runner.setup_cell_source(repo=repo.as_uri())
    else:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        str(repo), "-w", str(content)], check=True, capture_output=True)
        cell = runner.setup_cell_source()                                 # the placeholder address
    program = cell + "\n" + _first_cells_of_00_data(6) + "\nimport vpclib, os; print('from', vpclib.__file__, 'in', os.getcwd())"
    done = _run_cell(program, content, {**FRESH_ENV, "VPC_HOME": str(content / "vpc")}, python=python, isolated=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "vpclib setup: done" in out and "vpclib setup: working in the repository's notebooks/ folder" in out
    assert ("cloning" in out) == (source == "git clone")
    home = content / "vpc"
    installed = out.rsplit("from ", 1)[1]
    assert str(tmp_path / "venv") in installed and str(ROOT) not in installed   # the fresh install, not this tree
    assert installed.strip().endswith(f"in {home / 'notebooks'}")
    # what 00_data printed: the summary and the data check, as in the committed notebook
    committed = nbformat.read(str(ROOT / "notebooks/00_data.ipynb"), as_version=4)
    expected = [o["text"] for c in committed.cells if c.cell_type == "code" for o in c.outputs if "text" in o][:2]
    assert expected and all(text in out for text in expected)
    assert (home / "work/synthetic/synthetic-data/testing/frames/06").is_dir()


def test_the_notebooks_extra_brings_jupyterlab():
    """`pip install .[notebooks]` (and .[all]) brings JupyterLab, for `jupyter lab notebooks/`."""
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("notebooks", "all"):
        assert any(req.replace(" ", "").startswith("jupyterlab>=4") for req in extras[extra]), extra
    assert "jupyter lab notebooks/" in (ROOT / "README.md").read_text()
