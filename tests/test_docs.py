"""The documentation stays true to the tree: the layout in docs/ARCHITECTURE.md names every module, every
relative link in the README and the docs pages points at a file that exists, the README links every docs
page, and the Table 3 blocks that tools fill are in place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
#: The README and every page it leads to.
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")])
#: [text](target) and ![alt](target); the target ends at the first blank or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def layout() -> str:
    """The code block of ARCHITECTURE.md's "## Layout" section."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)
    assert len(section) == 2, "docs/ARCHITECTURE.md: no '## Layout' section"
    block = re.search(r"```\n(.*?)\n```", section[1].split("\n## ", 1)[0], re.S)
    assert block, "docs/ARCHITECTURE.md: the Layout section has no code block"
    return block.group(1)


def modules() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for pattern in ("palbert/**/*.py", "stages/*.py")
                  for path in ROOT.glob(pattern))


def test_the_layout_names_every_module():
    named = {line.split()[0] for line in layout().splitlines() if line.strip()}
    missing = [module for module in modules() if module not in named]
    assert not missing, f"docs/ARCHITECTURE.md's Layout does not name {missing}; add a line for each"


def test_the_layout_names_no_module_that_is_gone():
    gone = [name for name in (line.split()[0] for line in layout().splitlines() if line.strip())
            if name.endswith(".py") and not (ROOT / name).is_file()]
    assert not gone, f"docs/ARCHITECTURE.md's Layout names modules that do not exist: {gone}"


def relative_links(page: Path) -> list[str]:
    """The page's link targets that point into the repository (not URLs, not anchors on the same page)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page):
    broken = [target for target in relative_links(page)
              if not (page.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files {broken}"


def test_relative_links_are_found():
    """The link pattern itself: a page with links yields them (so the test above cannot pass by finding none)."""
    assert "docs/table3.md" in relative_links(ROOT / "README.md")
    assert "../results/table3/reduced/figures/rows.png" in relative_links(ROOT / "docs" / "table3.md")


def test_the_readme_links_every_docs_page():
    linked = {target.split("#", 1)[0] for target in relative_links(ROOT / "README.md")}
    pages = {str(page.relative_to(ROOT)) for page in PAGES} - {"README.md"}
    assert not pages - linked, f"README.md does not link {sorted(pages - linked)}"


def block(text: str, name: str) -> str | None:
    """What sits between <!-- name:start --> and <!-- name:end -->, or None when the markers are not there once."""
    found = re.findall(rf"<!-- {re.escape(name)}:start -->\n(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
    return found[0] if len(found) == 1 else None


def test_the_table3_blocks_are_in_place():
    """The README has the block for the paper-scale Table 3; docs/table3.md holds the reduced table's two tables."""
    assert block((ROOT / "README.md").read_text(encoding="utf-8"), "table3:full") is not None, \
        "README.md: no single <!-- table3:full:start --> ... <!-- table3:full:end --> block"
    reduced = block((ROOT / "docs" / "table3.md").read_text(encoding="utf-8"), "table3:reduced")
    assert reduced is not None, "docs/table3.md: no single table3:reduced block"
    assert reduced.startswith("| row | model |") and "| the paper's claim |" in reduced, reduced[:200]
