"""docs/method.md: every vpclib function it links exists, every notebook section it links is a heading
of that notebook, every other relative link points at a file; the README links to it."""

import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
LINK = re.compile(r"\]\((\.\./[^)#\s]+)(?:#([^)\s]+))?\)")


def github_slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links():
    return LINK.findall(METHOD.read_text())


def test_method_links_name_existing_functions():
    code = [(path, name) for path, name in links() if path.startswith("../vpclib/")]
    assert len(code) >= 60                                                 # every step is linked
    for path, name in code:
        assert name, f"{path}: a link into vpclib names the function (path#name)"
        module = importlib.import_module("vpclib." + Path(path).stem)
        target = module
        for part in name.split("."):
            assert hasattr(target, part), f"{path}#{name}: vpclib.{Path(path).stem} has no {name}"
            target = getattr(target, part)
        text = f"`{Path(path).stem}.{name}`"
        assert text in METHOD.read_text(), f"{path}#{name} is linked under another name"


def test_method_links_name_existing_notebook_sections():
    sections = [(path, name) for path, name in links() if path.endswith(".ipynb")]
    assert {Path(p).stem for p, _ in sections} == {"00_data", "01_detection", "02_memorization", "03_inference",
                                                    "04_visualization"}
    for path, anchor in sections:
        nb = nbformat.read(str(ROOT / "docs" / path), as_version=4)
        headings = {github_slug(line.lstrip("#")) for c in nb.cells if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("#")}
        assert anchor in headings, f"{path}#{anchor}: no such heading (there are {sorted(headings)})"


def test_method_links_point_at_files():
    for path, _ in links():
        assert (ROOT / "docs" / path).resolve().is_file(), path


@pytest.mark.parametrize("heading, slug", [("Open the box: s(Q, M) for one test clip", "open-the-box-sq-m-for-one-test-clip"),
                                           ("02 · Features and the three memories", "02--features-and-the-three-memories"),
                                           ("One object's features", "one-objects-features")])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_readme_links_the_method_document():
    readme = (ROOT / "README.md").read_text()
    assert "](docs/method.md)" in readme and "shared/docs/METHOD.md" not in readme
