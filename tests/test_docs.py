"""Every reference to a markdown file of the repository resolves.

A reference is a path ending in .md, optionally followed by #anchor, anywhere in a tracked text
file (relative to the repository root, or to the referencing file's folder; a bare file name, as in
`ROOT / "docs" / name`, may be any file of that name), and in markdown files also
a link `[text](target)`, relative to the file's folder (`[text](#anchor)`: the same file). It is
dead when the file does not exist or when no heading of it produces the anchor, by GitHub's rule
(lowercase; punctuation dropped; spaces to '-'; a repeated heading gets -1, -2, ...). The two spec
files that were never part of the repository and old section-number citations (a section sign and
a digit) count as dead too. Pure text scanning: well under a second.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MD = ".md"
SUFFIXES = (".py", ".yaml", ".yml", ".toml", MD)
NAMES = ("Makefile",)
# Built from parts so that this file does not itself mention them.
FORBIDDEN = re.compile("|".join(re.escape(name + MD) for name in ("ALGORITHMS", "DESIGN")))
SECTION_NUMBER = re.compile("\u00a7" + r"\s*\d")
REFERENCE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-][\w.-]*" + re.escape(MD) + r")(#[\w-]+)?(?![\w/-])")
LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or an image: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a markdown text's headings (outside code fences) and HTML anchors produce."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def dead_references(root: Path, files: list[str]) -> list[str]:
    """'file:line: problem' for every dead reference in `files` (paths relative to `root`)."""
    problems: list[str] = []
    by_name: dict[str, list[Path]] = {}
    for name in files:
        by_name.setdefault(Path(name).name, []).append(root / name)

    @cache
    def anchors_of(path: Path) -> set[str]:
        return anchors(path.read_text(encoding="utf-8", errors="replace"))

    def check(source: str, number: int, target: str, anchor: str | None, bases: list[Path]) -> None:
        where = f"{source}:{number}"
        candidates = [base / target for base in bases] if target else [root / source]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            problems.append(f"{where}: {target} does not exist")
        elif anchor and path.suffix == MD and anchor not in anchors_of(path.resolve()):
            shown = os.path.relpath(path.resolve(), root.resolve())
            problems.append(f"{where}: {target or source}#{anchor}: no heading of {shown} makes it")

    for name in files:
        path = root / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        folder = path.parent
        is_markdown = name.endswith(MD)
        fenced = False
        for number, line in enumerate(text.splitlines(), start=1):
            for match in FORBIDDEN.finditer(line):
                problems.append(f"{name}:{number}: {match.group(0)} is not in the repository; cite docs/ instead")
            if SECTION_NUMBER.search(line):
                problems.append(f"{name}:{number}: a section-number citation; cite a docs/ file and heading anchor")
            linked = set()
            if is_markdown:
                if FENCE.match(line):
                    fenced = not fenced
                for match in [] if fenced else LINK.finditer(line):
                    target = match.group(1)
                    linked.add(match.start(1))
                    if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # a URL, mailto:, ...
                        continue
                    file_part, _, anchor = target.partition("#")
                    base = root if file_part.startswith("/") else folder
                    check(name, number, file_part.lstrip("/"), anchor or None, [base])
            for match in REFERENCE.finditer(line):
                target = match.group(1)
                if match.start(1) in linked or FORBIDDEN.fullmatch(Path(target).name):
                    continue
                anchor = match.group(2)[1:] if match.group(2) else None
                elsewhere = [] if "/" in target else [p.parent for p in by_name.get(target, [])]
                check(name, number, target, anchor, [root, folder, *elsewhere])
    return problems


def repository_files() -> list[str]:
    """Tracked and not-ignored untracked text files of the kinds that cite documents."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return sorted(
        {name for name in listed if (name.endswith(SUFFIXES) or Path(name).name in NAMES) and (ROOT / name).is_file()}
    )


def test_every_document_reference_resolves():
    problems = dead_references(ROOT, repository_files())
    assert not problems, "dead document references:\n" + "\n".join(problems)


def test_slugs_follow_github():
    assert slug("Neuron reset (TDPO-R)") == "neuron-reset-tdpo-r"
    assert slug("The `clip` penalty, step 2") == "the-clip-penalty-step-2"
    assert slug("See [the docs](x" + MD + ") now") == "see-the-docs-now"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### B: c\n") == {"a", "a-1", "b-c"}


def test_the_checker_finds_each_kind_of_dead_reference(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / f"maths{MD}").write_text("# Maths\n\n## Some section\n\nSee [here](#maths).\n")
    (tmp_path / "docs" / f"other{MD}").write_text(
        f"[fine](maths{MD}#some-section) [gone](maths{MD}#no-such-section) [web](https://example.org/x{MD}#y)\n"
        "[missing](absent.png) [self](#nothing-here)\n"
    )
    (tmp_path / "code.py").write_text(
        f'"""docs/maths{MD}#some-section and docs/maths{MD}, fine."""\n'
        f"# docs/maths{MD}#no-such-section\n"
        f"# docs/gone{MD}\n"
        f'GUIDE = ROOT / "docs" / "maths{MD}"  # a bare name: any file of that name; but not "gone{MD}"\n'
        f"# see {'ALGORITHMS'}{MD} \u00a73.4\n"
    )
    files = ["code.py", f"docs/maths{MD}", f"docs/other{MD}"]
    problems = dead_references(tmp_path, files)
    assert problems == [
        f"code.py:2: docs/maths{MD}#no-such-section: no heading of docs/maths{MD} makes it",
        f"code.py:3: docs/gone{MD} does not exist",
        f"code.py:4: gone{MD} does not exist",
        f"code.py:5: ALGORITHMS{MD} is not in the repository; cite docs/ instead",
        "code.py:5: a section-number citation; cite a docs/ file and heading anchor",
        f"docs/other{MD}:1: maths{MD}#no-such-section: no heading of docs/maths{MD} makes it",
        f"docs/other{MD}:2: absent.png does not exist",
        f"docs/other{MD}:2: docs/other{MD}#nothing-here: no heading of docs/other{MD} makes it",
    ]
