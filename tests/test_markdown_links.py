"""Every relative link in every Markdown file of the repository resolves inside it: the
file exists, and a ``#anchor`` names one of its headings. A Markdown file named in
backticks exists too: the repository stands alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    """The repository's Markdown files (not those of tools: hidden directories, the venv,
    build output)."""
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not any(
            part.startswith(".") or part.endswith(".egg-info") or part in ("build", "dist")
            for part in path.relative_to(ROOT).parts[:-1]
        )
    )


def prose(text: str) -> str:
    """``text`` without fenced code blocks (links in code are not links)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, heading in _HEADING.findall(prose(path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", prose(path.read_text()))
    return _INLINE.findall(text) + _REFERENCE.findall(text)


def broken(path: Path, target: str) -> str | None:
    """Why the relative link ``target`` in ``path`` does not resolve, or None."""
    location, _, anchor = target.partition("#")
    resolved = (path.parent / location).resolve() if location else path
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if anchor:
        if resolved.suffix != ".md":
            return "an anchor into a file that is not Markdown"
        if anchor not in anchors(resolved):
            return f"no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


FILES = markdown_files()


def test_the_markdown_files_are_found() -> None:
    names = {str(path.relative_to(ROOT)) for path in FILES}
    assert {"README.md", "docs/design.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    problems = [
        f"{target}: {why}"
        for target in links(path)
        if not _SCHEME.match(target) and (why := broken(path, target)) is not None
    ]
    assert problems == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_file_named_in_backticks_is_in_the_repository(path: Path) -> None:
    named = re.findall(r"`([\w./-]+\.md)`", prose(path.read_text()))
    missing = [
        name
        for name in named
        if not any(
            (base / name).resolve().is_relative_to(ROOT) and (base / name).exists()
            for base in (path.parent, ROOT)
        )
    ]
    assert missing == []


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    """The checks above can fail: a missing file, a missing heading, a path outside."""
    page = ROOT / "docs" / "design.md"
    assert broken(page, "nowhere.md") == "no such file"
    assert broken(page, "#no-such-heading") == "no heading #no-such-heading in docs/design.md"
    assert broken(page, "../../elsewhere.md") == "points outside the repository"
    assert broken(page, "#targets") is None
    assert links(page) != []
    assert slug("Who may connect") == "who-may-connect"
    assert slug("`tickertape serve` options") == "tickertape-serve-options"
