"""The extras tables in README.md and docs/install.md say what pyproject.toml installs: a renamed, added or
moved dependency that is not written into both tables fails here (they once listed `eval` = transformers
after transformers had moved into the core)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

CORE = "(core)"


def declared() -> dict[str, list[str]]:
    """Extra name ('(core)' for the core) -> the distribution names it adds, as written in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {CORE: project["dependencies"], **project["optional-dependencies"]}
    return {extra: [Requirement(r).name for r in reqs] for extra, reqs in groups.items()}


def table(doc: Path) -> dict[str, str]:
    """The rows of the table headed `| extra | adds | for |`: extra name -> its 'adds' cell."""
    lines = doc.read_text().splitlines()
    start = lines.index("| extra | adds | for |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        extra, adds = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows[extra.strip("`")] = adds
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_the_extras_table_has_one_row_per_extra_of_pyproject(doc):
    assert list(table(ROOT / doc)) == list(declared()), \
        f"{doc}: the extras table's rows differ from pyproject.toml [project.optional-dependencies]"


@pytest.mark.parametrize("doc", ["README.md", "docs/install.md"])
def test_each_extra_row_names_what_that_extra_installs(doc):
    """README abbreviates the core ('...'); docs/install.md names all of it."""
    rows = table(ROOT / doc)
    for extra, names in declared().items():
        if doc == "README.md" and extra == CORE:
            continue
        listed = {n.strip().split("[")[0].lower() for n in rows[extra].split(",")}
        missing = [n for n in names if n.lower() not in listed]
        assert not missing, f"{doc}: the `{extra}` row does not name {missing} (pyproject.toml installs them)"
