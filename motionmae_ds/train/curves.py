"""``curves.png``: how a run went, drawn from its log.jsonl, beside the run's other files.

One panel per quantity a task names (``Task.curve_panels``: losses per head, lr, clips/s, and for finetuning
train and validation top-1), step on the x axis. Drawn with Pillow, which the reconstruction figures use too
(no plotting library in the requirements); a line is drawn in one flat colour without antialiasing, so the
picture can be read back. Rank 0 writes it after every checkpoint and at the end of the run, under a temporary
name renamed over the old picture, so a reader never sees half a PNG.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw

CURVES = "curves.png"
LOG = "log.jsonl"

# what a task asks for: (panel title, the log keys drawn in it)
PanelSpec = tuple[str, Sequence[str]]

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
FRAME = (128, 128, 128)
INK = (0, 0, 0)
PLOT_W, PLOT_H = 480, 220          # the plotting area of one panel, pixels
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 30, 30
COLUMNS = 2
PAD = 0.05                         # share of the value range left free above and below the data
LOG_RATIO = 20.0                   # positive values spanning more than this factor get a log axis
MARKER_MAX_POINTS = 50             # series this short get a marker at every point (one val point is visible)


@dataclass
class Series:
    key: str
    colour: tuple[int, int, int]
    steps: list[float]
    values: list[float]


@dataclass
class Panel:
    title: str
    series: list[Series]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)    # the plotting area: left, top, right, bottom (inclusive)
    xlim: tuple[float, float] = (0.0, 1.0)
    ylim: tuple[float, float] = (0.0, 1.0)           # in log10 units when log_y
    log_y: bool = False

    def to_pixel(self, step: float, value: float) -> tuple[int, int]:
        """Where (step, value) lands in the picture."""
        left, top, right, bottom = self.box
        y = math.log10(value) if self.log_y else value
        px = left + (step - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (right - left)
        py = bottom - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (bottom - top)
        return round(px), round(py)


def read_rows(path: str | Path) -> list[dict]:
    """The records of a log.jsonl; a line cut by a kill is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_panels(rows: list[dict], specs: Sequence[PanelSpec]) -> list[Panel]:
    """The panels of ``specs`` with each key's (step, value) pairs from ``rows``; a key that is absent or always 0
    (a head the run does not train) is left out, and so is a panel left with no series."""
    panels = []
    for title, keys in specs:
        series = []
        for i, key in enumerate(keys):
            points = [(float(r["step"]), float(r[key])) for r in rows if _finite(r.get(key)) and "step" in r]
            if not points or all(v == 0 for _, v in points):
                continue
            series.append(Series(key, COLOURS[i % len(COLOURS)], [s for s, _ in points], [v for _, v in points]))
        if series:
            panels.append(Panel(title, series))
    return panels


def _limits(low: float, high: float) -> tuple[float, float]:
    if high == low:
        spread = abs(low) * 0.1 or 1.0
        return low - spread, high + spread
    pad = (high - low) * PAD
    return low - pad, high + pad


def _layout(panel: Panel, index: int) -> None:
    col, row = index % COLUMNS, index // COLUMNS
    cell_w, cell_h = MARGIN_L + PLOT_W + MARGIN_R, MARGIN_T + PLOT_H + MARGIN_B
    left, top = col * cell_w + MARGIN_L, row * cell_h + MARGIN_T
    panel.box = (left, top, left + PLOT_W - 1, top + PLOT_H - 1)
    steps = [s for se in panel.series for s in se.steps]
    values = [v for se in panel.series for v in se.values]
    lo, hi = min(steps), max(steps)
    panel.xlim = (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)
    panel.log_y = min(values) > 0 and max(values) / min(values) > LOG_RATIO
    if panel.log_y:
        panel.ylim = _limits(math.log10(min(values)), math.log10(max(values)))
    else:
        panel.ylim = _limits(min(values), max(values))


def _label(value: float, log_y: bool) -> str:
    return f"{10 ** value:.3g}" if log_y else f"{value:.3g}"


def _draw(draw: ImageDraw.ImageDraw, panel: Panel) -> None:
    left, top, right, bottom = panel.box
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=FRAME)
    # title and legend above the plotting area, tick labels beside it: nothing is drawn over a curve
    x = left
    draw.text((x, top - 24), panel.title + ("  (log scale)" if panel.log_y else ""), fill=INK)
    x += 8 * len(panel.title) + 90
    for se in panel.series:
        draw.rectangle((x, top - 20, x + 8, top - 12), fill=se.colour)
        draw.text((x + 12, top - 24), se.key, fill=INK)
        x += 12 + 7 * len(se.key) + 16
    for value, y in ((panel.ylim[1], top), (panel.ylim[0], bottom - 10)):
        draw.text((left - MARGIN_L + 4, y), _label(value, panel.log_y), fill=INK)
    draw.text((left, bottom + 6), f"step {panel.xlim[0]:g}", fill=INK)
    draw.text((right - 70, bottom + 6), f"step {panel.xlim[1]:g}", fill=INK)
    for se in panel.series:
        points = [panel.to_pixel(s, v) for s, v in zip(se.steps, se.values)]
        if len(points) > 1:
            draw.line(points, fill=se.colour, width=2)
        if len(points) <= MARKER_MAX_POINTS:
            for px, py in points:
                draw.rectangle((px - 2, py - 2, px + 2, py + 2), fill=se.colour)


def render(rows: list[dict], specs: Sequence[PanelSpec]) -> tuple[Image.Image, list[Panel]]:
    """The picture of ``rows`` and its panels (boxes and axis limits: where each value was drawn)."""
    panels = build_panels(rows, specs)
    for i, panel in enumerate(panels):
        _layout(panel, i)
    cols = min(COLUMNS, max(1, len(panels)))
    grid_rows = max(1, math.ceil(len(panels) / COLUMNS))
    size = (cols * (MARGIN_L + PLOT_W + MARGIN_R), grid_rows * (MARGIN_T + PLOT_H + MARGIN_B))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if not panels:
        draw.text((10, 10), "nothing logged yet", fill=INK)
    for panel in panels:
        _draw(draw, panel)
    return image, panels


def save_curves(run_dir: str | Path, specs: Sequence[PanelSpec]) -> Optional[list[Panel]]:
    """Draw ``run_dir/log.jsonl`` into ``run_dir/curves.png`` (temporary name, then a rename); the panels drawn,
    or None when the run has no log yet."""
    run_dir = Path(run_dir)
    if not (run_dir / LOG).is_file():
        return None
    image, panels = render(read_rows(run_dir / LOG), specs)
    tmp = run_dir / f".{CURVES}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, run_dir / CURVES)
    return panels
