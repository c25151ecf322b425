"""The README stays short and points into the docs; the docs keep up with the packages.

`make docs` (mkdocs build --strict, run by .ci/run) checks the site itself: links between pages, the nav,
the API reference. These tests check what the site build does not see: README.md, which lives outside
docs/, and that every layer of the import-linter contract has its API page and its place on the
architecture page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
README_LIMIT_BYTES = 12 * 1024  # issue 25: README.md under 12 KB; what does not fit goes into docs/
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a Markdown link's target: [text](target)


def readme_doc_links(text: str) -> list[str]:
    """The targets of the README's links into docs/, without their #anchor."""
    return [target.split("#")[0] for target in LINK.findall(text) if target.startswith(("docs/", "./docs/"))]


def contract_modules() -> list[str]:
    """The modules and packages named in pyproject.toml's import layers, e.g. ftbench.engine."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    return [name.strip() for layer in layers for name in layer.split("|")]


def test_the_readme_is_under_12_kb():
    size = len((REPO / "README.md").read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT_BYTES})"


def test_every_readme_link_into_the_docs_finds_its_page():
    links = readme_doc_links((REPO / "README.md").read_text())
    assert links, "the README links into docs/"
    missing = [link for link in links if not (REPO / link).is_file()]
    assert not missing, f"README links to pages that do not exist: {missing}"


def test_a_link_check_that_sees_a_missing_page():
    """The link reader finds what the README check relies on: docs/ targets, anchors dropped, others left."""
    text = "[a](docs/usage/runs.md#models) [b](https://example.org/docs/x.md) [c](docs/nope.md) [d](src/x.py)"
    assert readme_doc_links(text) == ["docs/usage/runs.md", "docs/nope.md"]


@pytest.mark.parametrize("module", [m for m in contract_modules() if m != "ftbench.__main__"])
def test_every_layer_has_its_api_page_and_its_place_on_the_architecture_page(module):
    """A package added to the import layers gets `docs/reference/<name>.md` (`::: ftbench.<name>`, which
    the strict build resolves) and a row on docs/architecture.md."""
    page = REPO / "docs" / "reference" / f"{module.removeprefix('ftbench.')}.md"
    assert page.is_file() and f"::: {module}" in page.read_text(), f"{page.relative_to(REPO)}: `::: {module}`"
    assert f"`{module}`" in (REPO / "docs" / "architecture.md").read_text(), f"docs/architecture.md: {module}"


def named_modules(text: str) -> set[str]:
    """The package files a text names (`ftbench/models/architecture.py`, `src/ftbench/cli.py`)."""
    return {match.group(1) for match in re.finditer(r"(?<![\w.-])(?:src/)?(ftbench/[\w/]+\.py)\b", text)}


def test_every_package_file_a_message_or_page_names_exists():
    """Adam-mini's GPT-2 refusal told the user to edit ftbench/architecture.py, which is not there (the table
    is ftbench/models/architecture.py): every file a message, config comment or page names is where it says."""
    texts = [*(REPO / "src").rglob("*.py"), *(REPO / "conf").rglob("*.yaml"), *(REPO / "docs").rglob("*.md"),
             REPO / "README.md"]
    missing = sorted({f"{text.relative_to(REPO)}: {name}" for text in texts
                      for name in named_modules(text.read_text()) if not (REPO / "src" / name).is_file()})
    assert not missing, missing


def test_a_path_check_that_sees_a_missing_file():
    assert named_modules("add the family to ftbench/architecture.py LAYOUTS (src/ftbench/cli.py)") == {
        "ftbench/architecture.py", "ftbench/cli.py"}
