"""Learning curves as a standalone SVG file: the loss per epoch (training, and held-out
when there is one) beside the held-out accuracy. A curve is read at a glance where a
column of numbers is not, and SVG needs no plotting library and opens in any browser.

    history = net.fit(x, y, validation=(x_test, y_test), epochs=20)
    deltaprop.plot.save_learning_curves(history, "curves.svg")

or ``deltaprop train ... --plot curves.svg``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

from ..storage.files import atomic_write

PANEL_WIDTH, PANEL_HEIGHT = 360, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 30, 42
COLORS = {"train": "#1f77b4", "held-out": "#ff7f0e", "accuracy": "#2ca02c"}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) that cover
    [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-12 * step:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def epoch_ticks(epochs: int) -> list[int]:
    """1, then the multiples of a round step (1, 2, 5, 10, 20...) up to ``epochs``: at
    most 11 labels."""
    step = 1
    while epochs / step > 10:
        step = _next_round(step)
    return [1, *range(step, epochs + 1, step)] if step > 1 else list(range(1, epochs + 1))


def _next_round(step: int) -> int:
    """The round number after ``step`` in 1, 2, 5, 10, 20, 50..."""
    digits = str(step)
    lead, zeros = int(digits[0]), len(digits) - 1
    return {1: 2, 2: 5, 5: 10}[lead] * 10 ** zeros


def _panel(x0: float, title: str, ylabel: str, series: Sequence[tuple[str, list[float]]],
           epochs: int) -> list[str]:
    """One panel: axes, ticks and a polyline (with dots) per named series."""
    values = [v for _, ys in series for v in ys if math.isfinite(v)]
    ticks = nice_ticks(min(values, default=0.0), max(values, default=1.0))
    lo, hi = ticks[0], ticks[-1]
    left, top = x0 + MARGIN_LEFT, MARGIN_TOP
    width = PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    height = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(epoch: int) -> float:  # epochs are 1-based
        return left + (width / 2 if epochs == 1 else (epoch - 1) / (epochs - 1) * width)

    def py(value: float) -> float:
        return top + height - (value - lo) / (hi - lo) * height

    out = [f'<text x="{left + width / 2:.1f}" y="18" text-anchor="middle" '
           f'font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" '
           f'stroke="#999"/>']
    for t in ticks:
        y = py(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{t:.4g}</text>')
    for e in epoch_ticks(epochs):
        out.append(f'<text x="{px(e):.1f}" y="{top + height + 16}" text-anchor="middle">'
                   f'{e}</text>')
    out.append(f'<text x="{left + width / 2:.1f}" y="{PANEL_HEIGHT - 6}" '
               f'text-anchor="middle">epoch</text>')
    out.append(f'<text transform="translate({x0 + 14},{top + height / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    for k, (name, ys) in enumerate(series):
        color = COLORS[name]
        # a shorter series (held-out figures switched on at a resume) is the last epochs
        first = epochs - len(ys) + 1
        points = [(px(first + i), py(v)) for i, v in enumerate(ys) if math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline class="{name}" points="{path}" fill="none" '
                       f'stroke="{color}" stroke-width="2"/>')
        out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>'
                   for x, y in points)
        if len(series) == 1:  # the panel's title names it
            continue
        legend_y = top + 14 + 16 * k
        out.append(f'<line x1="{left + width - 92}" y1="{legend_y - 4}" '
                   f'x2="{left + width - 76}" y2="{legend_y - 4}" stroke="{color}" '
                   f'stroke-width="2"/>')
        out.append(f'<text x="{left + width - 70}" y="{legend_y}">{escape(name)}</text>')
    return out


def learning_curves_svg(history: Any, title: str = "") -> str:
    """The SVG text of ``history``'s curves (a ``fit`` History, or anything with lists
    ``loss``, ``val_loss`` and ``val_accuracy``)."""
    loss = [float(v) for v in history.loss]
    val_loss = [float(v) for v in history.val_loss]
    val_accuracy = [float(v) for v in history.val_accuracy]
    epochs = max(len(loss), len(val_loss), len(val_accuracy), 1)
    loss_series = [("train", loss)] + ([("held-out", val_loss)] if val_loss else [])
    panels = [("loss", "loss", loss_series)]
    if val_accuracy:
        panels.append(("held-out accuracy", "accuracy", [("accuracy", val_accuracy)]))
    width = PANEL_WIDTH * len(panels)
    height = PANEL_HEIGHT + (20 if title else 0)
    body: list[str] = []
    for i, (panel_title, ylabel, series) in enumerate(panels):
        body.extend(_panel(i * PANEL_WIDTH, panel_title, ylabel, series, epochs))
    header = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">')
    lines = [header, f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        lines.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">'
                     f'{escape(title)}</text>')
        lines.append('<g transform="translate(0,20)">')
    lines.extend(body)
    if title:
        lines.append("</g>")
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def save_learning_curves(history: Any, path: str | os.PathLike[str], title: str = "") -> None:
    """Write ``learning_curves_svg`` to ``path`` atomically (an old file survives a
    failed write)."""

    with atomic_write(path) as handle:
        handle.write(learning_curves_svg(history, title).encode())
