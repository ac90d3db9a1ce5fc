"""Gradient flow as a standalone SVG: each layer's gradient norm per epoch (left) and
across the layers, from input to output, at the first and last epoch (right), both
on a log scale, where a vanishing gradient is a gap of decades between layers.

    flow = GradientFlow(net); net.fit(x, y, hooks=[flow])
    save_gradient_flow(flow, "gradients.svg")

or ``deltaprop train ... --plot-gradients gradients.svg``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from xml.sax.saxutils import escape

from ..storage.files import atomic_write
from ..training.gradient_flow import GradientFlow
from .curves import epoch_ticks

WIDTH, HEIGHT = 400, 280
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 30, 44
LEGEND_WIDTH = 150


def colour(i: int, n: int) -> str:
    """From blue (the first layer) to red (the last)."""
    t = i / max(n - 1, 1)
    return f"rgb({int(40 + 200 * t)},{int(90 + 30 * (1 - abs(2 * t - 1)))},{int(220 - 190 * t)})"


def decades(values: Sequence[float]) -> tuple[int, int]:
    """The powers of ten that bracket the positive ``values``."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return -1, 0
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    return low, max(high, low + 1)


def _frame(x0: float, title: str, xlabel: str, low: int, high: int) -> list[str]:
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [f'<text x="{x0 + LEFT + width / 2:.1f}" y="18" text-anchor="middle" '
           f'font-weight="bold">{escape(title)}</text>',
           f'<rect x="{x0 + LEFT}" y="{TOP}" width="{width}" height="{height}" fill="none" '
           f'stroke="#999"/>']
    step = max(1, (high - low + 5) // 6)
    for power in range(low, high + 1, step):
        y = TOP + height - (power - low) / (high - low) * height
        out.append(f'<line x1="{x0 + LEFT}" y1="{y:.1f}" x2="{x0 + LEFT + width}" '
                   f'y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'1e{power}</text>')
    out.append(f'<text x="{x0 + LEFT + width / 2:.1f}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate({x0 + 14},{TOP + height / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">gradient norm</text>')
    return out


def _line(points: list[tuple[float, float]], color: str, cls: str, dash: str = "") -> list[str]:
    out = []
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline class="{cls}" points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
    out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in points)
    return out


def gradient_flow_svg(flow: GradientFlow, title: str = "") -> str:
    """The SVG text of ``flow``'s figure."""
    layers = flow.layers
    epochs = max((len(v) for v in flow.norms.values()), default=0)
    low, high = decades([v for vs in flow.norms.values() for v in vs])
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def py(value: float) -> float | None:
        if not (value > 0 and math.isfinite(value)):
            return None
        return TOP + height - (math.log10(value) - low) / (high - low) * height

    body = _frame(0, "per epoch", "epoch", low, high)

    def px(epoch: int) -> float:
        return LEFT + (width / 2 if epochs <= 1 else (epoch - 1) / (epochs - 1) * width)

    for e in epoch_ticks(max(epochs, 1)):
        body.append(f'<text x="{px(e):.1f}" y="{TOP + height + 16}" text-anchor="middle">'
                    f'{e}</text>')
    for i, layer in enumerate(layers):
        points = [(px(e + 1), y) for e, v in enumerate(flow.norms[layer])
                  if (y := py(v)) is not None]
        body.extend(_line(points, colour(i, len(layers)), "layer"))
    # across the layers: the first and the last epoch
    x0 = WIDTH + LEGEND_WIDTH
    body.extend(_frame(x0, "across the layers", "layer, input to output", low, high))

    def qx(i: int) -> float:
        return x0 + LEFT + (width / 2 if len(layers) <= 1 else i / (len(layers) - 1) * width)

    every = max(1, math.ceil(len(layers) / 12))  # at most about 12 labels
    for i in range(0, len(layers), every):
        body.append(f'<text x="{qx(i):.1f}" y="{TOP + height + 16}" text-anchor="middle">'
                    f'{i + 1}</text>')
    for which, dash in ((0, ' stroke-dasharray="5,3"'), (-1, "")):
        if not epochs:
            break
        points = [(qx(i), y) for i, layer in enumerate(layers)
                  if len(flow.norms[layer]) and (y := py(flow.norms[layer][which])) is not None]
        body.extend(_line(points, "#444", "across", dash))
    body.append(f'<line x1="{x0 + LEFT + 8}" y1="{TOP + 12}" x2="{x0 + LEFT + 26}" '
                f'y2="{TOP + 12}" stroke="#444" stroke-dasharray="5,3" stroke-width="2"/>'
                f'<text x="{x0 + LEFT + 30}" y="{TOP + 16}">epoch 1</text>'
                f'<line x1="{x0 + LEFT + 8}" y1="{TOP + 28}" x2="{x0 + LEFT + 26}" '
                f'y2="{TOP + 28}" stroke="#444" stroke-width="2"/>'
                f'<text x="{x0 + LEFT + 30}" y="{TOP + 32}">epoch {max(epochs, 1)}</text>')
    # the legend: one colour per layer, numbered as on the right; closer for many layers
    spacing = min(15.0, (height + BOTTOM - 12) / max(len(layers), 1))
    size = min(11.0, spacing - 1)
    for i, layer in enumerate(layers):
        y = TOP + 8 + spacing * i
        body.append(f'<line x1="{WIDTH + 6}" y1="{y - size / 3:.1f}" x2="{WIDTH + 22}" '
                    f'y2="{y - size / 3:.1f}" stroke="{colour(i, len(layers))}" '
                    f'stroke-width="3"/><text x="{WIDTH + 26}" y="{y:.1f}" '
                    f'font-size="{size:.1f}">{i + 1} {escape(layer[:18])}</text>')
    total_width = 2 * WIDTH + LEGEND_WIDTH
    total_height = HEIGHT + (20 if title else 0)
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" '
             f'height="{total_height}" viewBox="0 0 {total_width} {total_height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{total_width}" height="{total_height}" fill="white"/>']
    if title:
        lines.append(f'<text x="{total_width / 2}" y="14" text-anchor="middle" '
                     f'font-size="13">{escape(title)}</text><g transform="translate(0,20)">')
    lines.extend(body)
    if title:
        lines.append("</g>")
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def save_gradient_flow(flow: GradientFlow, path: str | os.PathLike[str],
                       title: str = "") -> None:
    """Write ``gradient_flow_svg`` to ``path`` atomically."""
    with atomic_write(path) as handle:
        handle.write(gradient_flow_svg(flow, title).encode())
