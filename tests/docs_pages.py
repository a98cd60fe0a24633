"""The documentation's pages and the commands in them, for the tests that run or check them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```|~~~)")


def pages() -> list[Path]:
    """README.md, ARCHITECTURE.md and every Markdown page of the site (docs/)."""
    return [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").rglob("*.md"))]


def code_lines(page: Path) -> list[str]:
    """The lines inside the page's fenced code blocks, backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((pending + line).strip())
        pending = ""
    return lines


def curl_lines() -> list[tuple[str, str]]:
    """(page, command) for every `curl` command in a code block of the pages."""
    return [
        (page.relative_to(REPO).as_posix(), line)
        for page in pages()
        for line in code_lines(page)
        if line.startswith("curl ")
    ]
