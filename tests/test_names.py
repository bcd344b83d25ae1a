"""Names that exist today: no tracked file points users at a retired hub repository or CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# SD 1.5's first hub repository is gone (its maintained copy: stable-diffusion-v1-5/stable-diffusion-v1-5),
# and the pinned huggingface_hub has no `huggingface-cli` (the command is `hf download`).
RETIRED = [b"huggingface-cli", b"runwayml/"]


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_names_a_retired_repository_or_command():
    this = Path(__file__).resolve()
    found = []
    for path in tracked_files():
        if path.resolve() == this or not path.is_file():
            continue
        text = path.read_bytes()
        found += [f"{path.relative_to(ROOT)}: {name.decode()}" for name in RETIRED if name in text]
    assert not found, "retired names (use stable-diffusion-v1-5/stable-diffusion-v1-5, `hf download`):\n" + "\n".join(
        found
    )
