"""report.html from a real tiny run, loaded in a real headless Chromium: every image renders and the
reward curves are there; a corrupt image is caught the same way."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlft.report import main, render, shown_epochs, write_report
from rlft.train import train
from tests.conftest import FAST, compose_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def need_browser() -> str:
    """Chromium's path; without one, skip, unless RLFT_REQUIRE_BROWSER=1 (CI, .ci/run) makes it a failure."""
    if CHROMIUM:
        return CHROMIUM
    message = "no chromium on PATH (Debian: apt-get install -y chromium)"
    if os.environ.get("RLFT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RLFT_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


class Page(HTMLParser):
    """What the loaded page's DOM holds: its <img> marks, #image-check and the curves."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.check: dict[str, str | None] = {}
        self.curves: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        elif attributes.get("id") == "image-check":
            self.check = attributes
        elif tag == "svg" and "curve" in (attributes.get("class") or ""):
            self.curves[str(attributes["data-metric"])] = int(attributes["data-points"] or 0)


def load_in_browser(path: Path) -> Page:
    """The DOM of `path` after Chromium has loaded it and the page's own script has run."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                need_browser(),
                "--headless",
                "--no-sandbox",  # as root (CI containers)
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0 and "</html>" in result.stdout, f"chromium failed: {result.stderr[-2000:]}"
    page = Page()
    page.feed(result.stdout)
    return page


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny two-epoch run with a showcase and an eval reward."""
    directory = tmp_path_factory.mktemp("run")
    overrides = [*FAST, "epochs=2", "showcase.samples=4", "showcase.grid=4", "showcase.batch_size=4"]
    train(compose_config([*overrides, "eval_rewards=[brightness]", "logger=csv"]), directory)
    return directory


def test_report_renders_in_a_browser(run_dir: Path) -> None:
    report = run_dir / "report.html"
    assert report.is_file(), "rlft.train did not write report.html"
    text = report.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", text), "the page links to something outside itself"
    page = load_in_browser(report)
    # before, after and the two epochs' grids, each marked by the page's script after load
    assert len(page.images) == 4, page.images
    assert all(image.get("data-state") == "loaded" for image in page.images), [i.get("alt") for i in page.images]
    assert page.check.get("data-total") == "4" and page.check.get("data-broken") == "0", page.check
    assert page.curves == {"reward_mean": 2, "eval_brightness_mean": 2}
    # each image's prompt and rewards, from images/epoch_XXXX.json (else the .txt's captions)
    listing = run_dir / "images" / "epoch_0001.json"
    if listing.is_file():
        for image in json.loads(listing.read_text())["images"]:
            row = f"<td>{image['index']}</td><td class='text'>{html.escape(image['prompt'])}</td><td>{image['reward']:.4g}</td>"
            assert row in text, row
    else:
        for caption in (run_dir / "images" / "epoch_0001.txt").read_text().splitlines():
            assert html.escape(caption) in text


def test_a_corrupt_image_is_reported_broken(run_dir: Path, tmp_path: Path) -> None:
    text = render(run_dir)
    first = text.index("data:image/")
    payload = text.index("base64,", first) + len("base64,")
    corrupt = tmp_path / "report.html"
    corrupt.write_text(text[:payload] + "bm90IGFuIGltYWdl" + text[payload + 200 :])  # "not an image"
    page = load_in_browser(corrupt)
    states = [image.get("data-state") for image in page.images]
    assert states.count("broken") == 1 and states.count("loaded") == 3, states
    assert page.check.get("data-broken") == "1", page.check


def test_killed_run_has_a_report_and_the_cli_rebuilds_it(run_dir: Path, tmp_path: Path, capsys) -> None:
    # What a run killed during epoch 1 leaves: epoch 0's row and grid, no after showcase, no showcase.json.
    killed = tmp_path / "killed"
    (killed / "images").mkdir(parents=True)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    (killed / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")
    for name in ("before.png", "before.txt", "epoch_0000.png", "epoch_0000.txt", "epoch_0000.json"):
        if (run_dir / "images" / name).is_file():
            shutil.copy(run_dir / "images" / name, killed / "images" / name)
    (killed / "images" / "epoch_0001.png").write_bytes(b"\x89PNG\r\n")  # cut off while being written
    main([str(killed)])
    assert "wrote" in capsys.readouterr().out
    text = (killed / "report.html").read_text()
    assert "No images/after.png yet" in text and "epoch_0001.png could not be read" in text
    assert text.count("<img ") == 2 and 'data-metric="reward_mean" data-points="1"' in text
    # the epoch that has just ended, not yet in metrics.csv, comes from the module's history
    assert 'data-points="2"' in write_report(killed, history=[{"epoch": 1, "reward_mean": -1.4}]).read_text()
    with pytest.raises(SystemExit, match="no metrics.csv and no images/"):
        main([str(tmp_path)])


def test_long_runs_show_a_bounded_subset_of_epochs_that_only_grows_by_the_newest() -> None:
    assert shown_epochs(list(range(5)), limit=24) == [0, 1, 2, 3, 4]
    previous: set[int] = set()
    for count in range(1, 400):
        shown = set(shown_epochs(list(range(count)), limit=24))
        assert len(shown) <= 24 and {0, count - 1} <= shown
        assert shown - previous <= {count - 1}, count  # no older grid to encode again
        previous = shown
