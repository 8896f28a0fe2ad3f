"""Every relative link of README.md and docs/*.md leads to a file that exists, and its #anchor, if any, to a
heading of that page (GitHub's heading ids); web links and code blocks are not followed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def links(text: str) -> list[str]:
    """The link targets of a page's prose. Inline code is dropped first: a link written in code is an example,
    and a link whose text is code (``[`path`](path)``) keeps its target."""
    return LINK.findall(INLINE_CODE.sub("", prose(text)))


def slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    ids, seen = set(), {}
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {shown(file)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {shown(file)}")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links((ROOT / "README.md").read_text())}
    assert [str(p.relative_to(ROOT)) for p in pages()[1:] if p not in linked] == []


def test_the_check_sees_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A heading: with `code`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/there.md) [ok](docs/there.md#a-heading-with-code) [ok](docs/there.md#twice-1) [ok](#top)\n"
        "# Top\n[web](https://example.org/none) `[not a link](nowhere.md)`\n"
        "```\n[in code](nowhere.md)\n```\n"
        "[gone](docs/missing.md) ![gone](docs/missing.png) [bad anchor](docs/there.md#nothing)\n"
    )
    assert [b.split(":")[0] for b in broken_links(page)] == ["docs/missing.md", "docs/missing.png", "docs/there.md#nothing"]


def test_the_cli_reference_is_generated_from_the_current_commands(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli.md"
    command = [sys.executable, "-m", "typer", "das_tune.cli", "utils", "docs", "--name", "das-tune", "--output", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, timeout=120)
    committed = (ROOT / "docs" / "cli.md").read_text().split("\n", 2)[2]  # below its "generated" comment
    assert committed == out.read_text(), "docs/cli.md is stale: regenerate it with the command in its first line"
