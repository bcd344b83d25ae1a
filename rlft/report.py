"""`python -m rlft.report RUN_DIR`: a run's report.html, one self-contained page to look at.

The page holds the before/after showcase (images/before.png, images/after.png, showcase.json's
scores), the training and eval reward curves per epoch (metrics.csv, drawn as inline SVG) and each
logged epoch's images (images/epoch_XXXX.png) with their prompts and, where images/epoch_XXXX.json
lists them, their rewards. Images are embedded as data URIs and there is no external script, style
or font, so the file opens offline and can be mailed or copied on its own. A small inline script
marks each image as loaded or broken after the page loads (the line under the title says which).

rlft.train writes it after each epoch (ReportCallback, rank 0, so a killed run has one too) and
again at the end of the run, after the export and the "after" showcase.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image

log = logging.getLogger("rlft")

# Grids wider than this are scaled down to it, and a grid whose PNG is larger than MAX_PNG_BYTES is
# embedded as JPEG: a Stable Diffusion run's grids (8 images of 512 px) would otherwise make the page
# tens of megabytes after a few epochs.
MAX_WIDTH = 1600
MAX_PNG_BYTES = 400_000
# Logged epochs shown at most (one in a power of two, and the last: shown_epochs): bounds the page's size and
# the cost of refreshing it every epoch of a long run.
MAX_EPOCHS_SHOWN = 24
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


# -- reading a run directory ---------------------------------------------------------------------
def read_rows(run_dir: Path, history: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
    """One row of metrics per epoch: metrics.csv's, completed by `history` (the module's in-memory
    rows: during training, the epoch just finished is not yet in metrics.csv)."""
    rows: dict[int, dict[str, float]] = {}
    path = run_dir / "metrics.csv"
    if path.is_file():
        with path.open(newline="") as file:
            for raw in csv.DictReader(file):
                row = {k: _number(v) for k, v in raw.items() if k}
                if math.isfinite(row.get("epoch", math.nan)):
                    rows.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if math.isfinite(v)})
    for row in history or []:
        rows.setdefault(int(row["epoch"]), dict(row))
    return [rows[epoch] for epoch in sorted(rows)]


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


@dataclass
class Caption:
    prompt: str
    scores: dict[str, float] = field(default_factory=dict)  # "reward" and the eval rewards, by name


def read_captions(grid: Path) -> list[Caption] | None:
    """Per-image prompts and rewards of a saved grid: its .json ({"images": [{"index", "prompt",
    "reward", "eval_rewards"}]}) when there is one, else its .txt's prompts; None when neither is."""
    listing = grid.with_suffix(".json")
    if listing.is_file():
        try:
            images = sorted(json.loads(listing.read_text())["images"], key=lambda image: image["index"])
            return [
                Caption(
                    str(image.get("prompt", "")),
                    {
                        **({"reward": float(image["reward"])} if image.get("reward") is not None else {}),
                        **{str(k): float(v) for k, v in (image.get("eval_rewards") or {}).items()},
                    },
                )
                for image in images
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # half-written or another format
            log.warning("report: ignoring %s (%s); using the prompts in %s", listing, error, grid.with_suffix(".txt"))
    prompts = grid.with_suffix(".txt")
    if prompts.is_file():
        return [Caption(line) for line in prompts.read_text().splitlines()]
    return None


# -- images as data URIs ---------------------------------------------------------------------------
@lru_cache(maxsize=2 * MAX_EPOCHS_SHOWN)
def _encoded(path: str, modified_ns: int, size: int) -> tuple[str, int, int]:
    """The image at `path` as (data URI, width, height). Cached by file version: the page is
    rebuilt every epoch from mostly the same grids."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    kind = "png"
    if buffer.tell() > MAX_PNG_BYTES:  # photographs (Stable Diffusion samples) are far smaller as JPEG
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}", image.width, image.height


def image_tag(path: Path, alt: str) -> str:
    """An <img> of the PNG at `path`, embedded; a line saying why when it cannot be read (a run
    killed while writing it)."""
    try:
        stat = path.stat()
        uri, width, height = _encoded(str(path), stat.st_mtime_ns, stat.st_size)
    except OSError as error:
        return f"<p class='muted'>{html.escape(path.name)} could not be read ({html.escape(str(error))})</p>"
    small = ' class="pixels"' if height < 96 else ""  # an older run's 32 px samples, enlarged
    return f'<img src="{uri}" width="{width}" height="{height}" alt="{html.escape(alt)}"{small}>'


def captions_table(captions: list[Caption] | None) -> str:
    """The grid's images, one row each: index, prompt (or the .txt's caption) and each reward."""
    if not captions:
        return ""
    names = list(dict.fromkeys(name for c in captions for name in c.scores))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = [f"<table class='images'><tr><th>#</th><th>{'prompt' if names else 'caption'}</th>{head}</tr>"]
    for index, caption in enumerate(captions):
        cells = "".join(f"<td>{caption.scores[n]:.4g}</td>" if n in caption.scores else "<td></td>" for n in names)
        rows.append(f"<tr><td>{index}</td><td class='text'>{html.escape(caption.prompt)}</td>{cells}</tr>")
    return "".join(rows) + "</table>"


def grid_block(grid: Path, alt: str) -> str:
    return f'<div class="grid">{image_tag(grid, alt)}{captions_table(read_captions(grid))}</div>'


# -- curves ----------------------------------------------------------------------------------------
def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def curve_svg(metric: str, epochs: list[float], means: list[float], stds: list[float], colour: str) -> str:
    """An SVG chart of `metric` per epoch: the mean as a line with points, mean +- std as a band."""
    width, height, left, right, top, bottom = 440, 250, 62, 14, 30, 38
    points = [(e, m, s) for e, m, s in zip(epochs, means, stds, strict=True) if math.isfinite(m)]
    low = min(m - (s if math.isfinite(s) else 0) for _, m, s in points)
    high = max(m + (s if math.isfinite(s) else 0) for _, m, s in points)
    if high - low < 1e-12:
        low, high = low - max(abs(low) * 0.05, 1e-3), high + max(abs(high) * 0.05, 1e-3)
    pad = (high - low) * 0.06
    low, high = low - pad, high + pad
    first, last = points[0][0], points[-1][0]
    span = max(last - first, 1)

    def x(epoch: float) -> float:
        return left + (epoch - first) / span * (width - left - right) if last > first else (left + width - right) / 2

    def y(value: float) -> float:
        return top + (high - value) / (high - low) * (height - top - bottom)

    parts = [
        (
            f'<svg class="curve" data-metric="{html.escape(metric)}" data-points="{len(points)}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{html.escape(metric)} per epoch">'
        ),
        f'<text x="{left}" y="18" class="title">{html.escape(metric)}</text>',
    ]
    for value in _ticks(low, high):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" class="tick" text-anchor="end">{value:.4g}</text>'
        )
    for epoch in _ticks(first, max(last, first + 1), 6):
        if epoch == int(epoch) and first <= epoch <= last:
            parts.append(
                f'<text x="{x(epoch):.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">{int(epoch)}</text>'
            )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="tick" text-anchor="middle">epoch</text>'
    )
    band = [(e, m, s) for e, m, s in points if math.isfinite(s)]
    if band:
        outline = [(x(e), y(m + s)) for e, m, s in band] + [(x(e), y(m - s)) for e, m, s in reversed(band)]
        parts.append(
            f'<polygon class="band" fill="{colour}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in outline)}"/>'
        )
    line = " ".join(f"{x(e):.1f},{y(m):.1f}" for e, m, _ in points)
    parts.append(f'<polyline class="mean" stroke="{colour}" points="{line}"/>')
    for e, m, s in points:
        spread = f" \u00b1 {s:.4g}" if math.isfinite(s) else ""
        parts.append(
            f'<circle cx="{x(e):.1f}" cy="{y(m):.1f}" r="2.6" fill="{colour}">'
            f"<title>epoch {int(e)}: {m:.4g}{spread}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def reward_metrics(rows: list[dict[str, float]]) -> list[str]:
    """reward_mean first, then each eval reward's eval_<name>_mean, in the order they appear."""
    names = [name for row in rows for name in row]
    evals = [n for n in dict.fromkeys(names) if re.fullmatch(r"eval_.+_mean", n)]
    return (["reward_mean"] if "reward_mean" in names else []) + evals


# -- the page ---------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1500px;padding:0 16px;
color:#222;background:#fafafa}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666;font-size:13px}#image-check{font-size:13px;color:#2a7a2a}#image-check.bad{color:#b00;font-weight:bold}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right;font-size:14px}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.curves{display:flex;flex-wrap:wrap;gap:12px}.curves svg{background:#fff;border:1px solid #e2e2e2}
svg .title{font-size:14px;font-weight:600}svg .tick{font-size:11px;fill:#555}svg .grid{stroke:#e6e6e6}
svg .band{opacity:.18}svg .mean{fill:none;stroke-width:2}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.grid img{max-width:100%;height:auto;
border:1px solid #e2e2e2;background:#fff}img.pixels{image-rendering:pixelated;height:128px;width:auto}
table.images th:nth-child(2){text-align:left}table.images td{font-size:12px;padding:2px 8px;font-variant-numeric:tabular-nums}table.images td.text{text-align:left;
max-width:420px;overflow-wrap:anywhere}
img[data-state=broken]{outline:3px solid #b00;min-height:40px}
details pre{background:#fff;border:1px solid #e2e2e2;padding:8px;font-size:12px;overflow:auto}
"""

# After load, each <img> gets data-state="loaded" or "broken" and #image-check says how many of
# each there are (tests/test_report.py reads the same marks from a headless browser).
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img"), broken = [];
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.dataset.state = ok ? "loaded" : "broken";
    if (!ok) broken.push(img.alt);
  });
  var check = document.getElementById("image-check");
  check.dataset.total = images.length;
  check.dataset.broken = broken.length;
  check.textContent = broken.length
    ? broken.length + " of " + images.length + " images failed to load: " + broken.join("; ")
    : "all " + images.length + " images loaded";
  check.className = broken.length ? "bad" : "ok";
});
"""


def showcase_section(run_dir: Path, showcase: dict[str, dict[str, float]] | None) -> str:
    images = run_dir / "images"
    scores = showcase
    if scores is None and (run_dir / "showcase.json").is_file():
        scores = json.loads((run_dir / "showcase.json").read_text())
    grids = {when: images / f"{when}.png" for when in ("before", "after") if (images / f"{when}.png").is_file()}
    if not grids and not scores:
        return ""
    out = [
        "<h2>Showcase: before and after training</h2>",
        "<p class='muted'>The same prompts and noise sampled before the first update and after the last one.</p>",
    ]
    if scores:
        names = list(dict.fromkeys(name for result in scores.values() for name in result))
        out.append("<table><tr><th>reward</th><th>before</th><th>after</th><th>change</th></tr>")
        for name in names:
            before, after = scores.get("before", {}).get(name), scores.get("after", {}).get(name)
            change = f"{after - before:+.4g}" if before is not None and after is not None else ""
            cells = [f"{v:.4g}" if v is not None else "" for v in (before, after)]
            out.append(f"<tr><td>{html.escape(name)}</td><td>{cells[0]}</td><td>{cells[1]}</td><td>{change}</td></tr>")
        out.append("</table>")
    for when, grid in grids.items():
        out.append(f"<h3>{when.capitalize()} training</h3>{grid_block(grid, f'showcase {when} training')}")
    if "after" not in grids:
        out.append("<p class='muted'>No images/after.png yet: the run has not finished.</p>")
    return "\n".join(out)


def curves_section(rows: list[dict[str, float]]) -> str:
    metrics = reward_metrics(rows)
    if not metrics:
        return ""
    out = [
        "<h2>Rewards per epoch</h2>",
        '<p class="muted">Mean over the epoch\'s samples; the band is \u00b1 one standard deviation.</p>',
        '<div class="curves">',
    ]
    for number, metric in enumerate(metrics):
        spread = metric.removesuffix("_mean") + "_std"
        epochs = [row["epoch"] for row in rows if metric in row]
        means = [row[metric] for row in rows if metric in row]
        stds = [row.get(spread, math.nan) for row in rows if metric in row]
        if means:
            out.append(curve_svg(metric, epochs, means, stds, COLOURS[number % len(COLOURS)]))
    out.append("</div>")
    if rows:
        last = rows[-1]
        out.append(
            f"<p class='muted'>Epoch {int(last['epoch'])}: "
            + ", ".join(f"{html.escape(m)} {last[m]:.4g}" for m in metrics if m in last)
            + "</p>"
        )
    return "\n".join(out)


def shown_epochs(epochs: list[int], limit: int = MAX_EPOCHS_SHOWN) -> list[int]:
    """At most `limit` of `epochs`: every stride-th one and the last, the stride the smallest power
    of two that fits. The choice only grows by the newest epoch, or halves, from one epoch to the
    next, so a refresh re-encodes no older grid (the cache keeps them)."""
    stride = 1
    while -(-len(epochs) // stride) + ((len(epochs) - 1) % stride != 0) > limit:
        stride *= 2
    picks = epochs[::stride]
    return picks if not epochs or picks[-1] == epochs[-1] else [*picks, epochs[-1]]


def epochs_section(run_dir: Path, rows: list[dict[str, float]]) -> str:
    grids = {
        int(match.group(1)): path
        for path in (run_dir / "images").glob("epoch_*.png")
        if (match := re.fullmatch(r"epoch_(\d+)\.png", path.name))
    }
    if not grids:
        return ""
    logged = sorted(grids)
    shown = shown_epochs(logged)
    by_epoch = {int(row["epoch"]): row for row in rows}
    out = ["<h2>Samples per epoch</h2>"]
    if len(shown) < len(logged):
        stride = logged.index(shown[1]) - logged.index(shown[0])
        out.append(
            f"<p class='muted'>{len(shown)} of the {len(logged)} logged epochs: one in {stride}, and the last.</p>"
        )
    for epoch in reversed(shown):  # the newest first
        row = by_epoch.get(epoch, {})
        summary = ", ".join(f"{m} {row[m]:.4g}" for m in reward_metrics([row]) if m in row)
        out.append(f"<h3>Epoch {epoch}</h3>" + (f"<p class='muted'>{html.escape(summary)}</p>" if summary else ""))
        out.append(grid_block(grids[epoch], f"epoch {epoch} samples"))
    return "\n".join(out)


def render(
    run_dir: Path,
    history: list[dict[str, float]] | None = None,
    showcase: dict[str, dict[str, float]] | None = None,
) -> str:
    """The report page of `run_dir` as HTML. `history` and `showcase` are the running module's
    metrics rows and showcase scores (the files hold them only once the run has written them)."""
    rows = read_rows(run_dir, history)
    body = [
        f"<h1>rlft run: {html.escape(run_dir.resolve().name)}</h1>",
        (
            f"<p class='muted'>{html.escape(str(run_dir.resolve()))} &middot; {len(rows)} epochs &middot; "
            f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
        ),
        '<p id="image-check">checking images\u2026</p>',
        showcase_section(run_dir, showcase or None),
        curves_section(rows),
        epochs_section(run_dir, rows),
    ]
    config = run_dir / "config.yaml"
    if config.is_file():
        body.append(
            f"<h2>Configuration</h2><details><summary>config.yaml</summary><pre>{html.escape(config.read_text())}</pre></details>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>rlft run {html.escape(run_dir.resolve().name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    history: list[dict[str, float]] | None = None,
    showcase: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Write <run_dir>/report.html (replaced whole: a reader never sees half a page)."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    partial = path.with_name(".report.html.partial")
    partial.write_text(render(run_dir, history, showcase), encoding="utf-8")
    os.replace(partial, path)
    return path


def refresh_report(module) -> None:
    """Rewrite a training run's report; a failure is logged, never allowed to stop the run."""
    try:
        start = time.perf_counter()
        path = write_report(module.run_dir, module.history, module.showcase_results)
        log.debug("report: wrote %s in %.2f s", path, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 (a report is not worth a run)
        log.warning("report: could not write %s/report.html: %s: %s", module.run_dir, type(error).__name__, error)


def __getattr__(name: str):
    """ReportCallback, a Lightning callback, is built on first use: `python -m rlft.report` and the
    page itself do not need Lightning (its import takes seconds)."""
    if name != "ReportCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import lightning.pytorch as pl

    class ReportCallback(pl.Callback):
        """Refresh report.html after every epoch on rank 0, so an interrupted run has an up-to-date one."""

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.is_global_zero:
                refresh_report(pl_module)

    ReportCallback.__qualname__ = name  # its repr, as if defined at module level
    globals()[name] = ReportCallback
    return ReportCallback


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.report", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (the one with metrics.csv and images/)")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise SystemExit(f"rlft.report: {run_dir} is not a directory; give a run directory (the one with metrics.csv)")
    if not (run_dir / "metrics.csv").is_file() and not (run_dir / "images").is_dir():
        raise SystemExit(
            f"rlft.report: {run_dir} has no metrics.csv and no images/; give a run directory of rlft.train"
        )
    path = write_report(run_dir)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
