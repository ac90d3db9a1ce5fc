"""A picture of a network as a standalone SVG, laid out here, without Graphviz.

One box per node (name, layer, output shape, parameter count), an arrow per tensor
labelled with its shape (batch left out), top to bottom from the inputs. The layout
is the classic layered one: a node's row is the longest path from an input to it,
and the boxes of a row are ordered by the mean position of the boxes feeding them
(a few sweeps down and up), which keeps fan-out and merges readable without a
crossing minimiser. A box whose layer also runs at another node (shared weights) is
drawn dashed and says with which. ``Network.to_svg()`` draws the user graph; a trace
page draws the executed plan (fused nodes as one box naming their parts).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from ..execution.step import Step
from ..graph.graph import Graph
from ..graph.trace import layer_users, sharing
from ..storage.files import atomic_write

BOX_WIDTH, BOX_HEIGHT = 176, 64
COLUMN_GAP, ROW_GAP = 36, 54
MARGIN = 16
CHARS_PER_LINE = 27  # at 11px sans-serif, what fits in a box
SWEEPS = 4
SLOT_WIDTH = 24  # what an arrow passing a row takes of it


@dataclass
class Box:
    """One drawn node: ``key`` names it uniquely; ``sources`` are (key of the box
    whose output it reads, label of that arrow)."""

    key: str
    title: str
    lines: list[str]
    sources: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "node"  # "input", "node" or "output"
    shared: str = ""  # the other nodes running the same layer
    element_id: str = ""  # the SVG id of the box's group


def shape_text(shape: Sequence[int]) -> str:
    """``(16, 8, 8)``; a vector as ``(64,)``."""
    return str(tuple(int(d) for d in shape))


def param_text(count: int) -> str:
    return f"{count:,} params" if count else "no params"


def boxes_of(graph: Graph, steps: Sequence[Step] | None = None) -> list[Box]:
    """The boxes of ``graph``'s inputs and ``steps`` (default: the user graph, one per
    node; the plan's steps draw fused nodes as one box)."""
    steps = list(graph.steps if steps is None else steps)
    plan = graph.plan
    producer: dict[int, str] = {}
    boxes = []
    for t, slot in zip(graph.inputs, plan.input_slots):
        key = t.node.name or "input"
        producer[slot] = key
        boxes.append(Box(key, key, ["input", shape_text(t.shape)], kind="input",
                         element_id=f"input-{key}"))
    users = layer_users(steps)
    outputs = set(plan.output_slots)
    for step in steps:
        layers = "+".join(n.layer.name for n in step.nodes if n.layer is not None)
        shapes = ", ".join(shape_text(plan.slot_shapes[s]) for s in step.out_slots)
        count = sum(int(a.size) for a in step.layer.params.values())
        others = sharing(step, users)
        lines = [layers, shapes, param_text(count) + (" (shared)" if others else "")]
        sources = [(producer.get(s, "?"), shape_text(plan.slot_shapes[s]))
                   for s in step.in_slots]
        kind = "output" if any(s in outputs for s in step.out_slots) else "node"
        boxes.append(Box(step.name, step.name, lines, sources, kind, ", ".join(others),
                         f"node-{step.index}"))
        for s in step.out_slots:
            producer[s] = step.name
    return boxes


@dataclass
class Layout:
    """Top-left corner of each box, and per arrow (box key, input index) the points
    where it crosses the rows between its ends (a long arrow goes around boxes)."""

    corners: dict[str, tuple[float, float]]
    bends: dict[tuple[str, int], list[float]]
    width: float
    height: float


def layout(boxes: Sequence[Box]) -> Layout:
    """Rows by longest path from an input; an arrow spanning several rows passes
    through a narrow slot in each row between; the slots of a row are ordered by the
    mean position of their neighbours, sweeping down and up."""
    row: dict[str, int] = {}
    for box in boxes:  # boxes come in topological order
        row[box.key] = 1 + max((row.get(src, 0) for src, _ in box.sources), default=-1)
    rows: list[list[str]] = [[] for _ in range(max(row.values(), default=0) + 1)]
    for box in boxes:
        rows[row[box.key]].append(box.key)
    preds: dict[str, list[str]] = {b.key: [] for b in boxes}
    succs: dict[str, list[str]] = {b.key: [] for b in boxes}
    chains: dict[tuple[str, int], list[str]] = {}
    for box in boxes:
        for i, (src, _) in enumerate(box.sources):
            if src not in row:
                continue
            chain = [src]
            for between in range(row[src] + 1, row[box.key]):
                dummy = f"\0{box.key}\0{i}\0{between}"
                rows[between].append(dummy)
                preds[dummy], succs[dummy] = [], []
                chain.append(dummy)
            chain.append(box.key)
            chains[(box.key, i)] = chain[1:-1]
            for a, b in itertools.pairwise(chain):
                succs[a].append(b)
                preds[b].append(a)
    position = {key: float(i) for r in rows for i, key in enumerate(r)}

    def reorder(r: list[str], neighbours: dict[str, list[str]]) -> None:
        def centre(key: str) -> float:
            near = neighbours[key]
            return (sum(position[k] for k in near) / len(near)) if near else position[key]
        r.sort(key=centre)
        for i, key in enumerate(r):
            position[key] = float(i)

    for _ in range(SWEEPS):
        for r in rows[1:]:
            reorder(r, preds)
        for r in reversed(rows[:-1]):
            reorder(r, succs)

    def width_of(key: str) -> float:
        return SLOT_WIDTH if key.startswith("\0") else BOX_WIDTH

    row_widths = [sum(width_of(k) for k in r) + COLUMN_GAP * (len(r) - 1) for r in rows]
    widest = max(row_widths, default=BOX_WIDTH)
    left: dict[str, float] = {}
    for r, total in zip(rows, row_widths):
        x = MARGIN + (widest - total) / 2
        for key in r:
            left[key] = x
            x += width_of(key) + COLUMN_GAP
    corners = {b.key: (left[b.key], float(MARGIN + row[b.key] * (BOX_HEIGHT + ROW_GAP)))
               for b in boxes}
    bends = {edge: [left[d] + SLOT_WIDTH / 2 for d in dummies]
             for edge, dummies in chains.items()}
    return Layout(corners, bends, widest + 2 * MARGIN,
                  len(rows) * (BOX_HEIGHT + ROW_GAP) - ROW_GAP + 2 * MARGIN)


def _fit(text: str, chars: int = CHARS_PER_LINE) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def graph_svg(boxes: Sequence[Box], title: str = "") -> str:
    """The SVG text of ``boxes`` laid out by ``layout``."""
    placed = layout(boxes)
    corners = placed.corners
    width, height = placed.width, placed.height
    top = 22 if title else 0
    height += top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="deltaprop-graph" '
           f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} '
           f'{height:.0f}" font-family="sans-serif" font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
           'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
           '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" '
                   f'font-size="13">{escape(title)}</text>')
    out.append(f'<g transform="translate(0,{top})">')
    edges, labels = [], []
    for box in boxes:
        x1, y1 = corners[box.key]
        n = len(box.sources)
        for i, (src, label) in enumerate(box.sources):
            if src not in corners:
                continue
            x0, y0 = corners[src]
            points = [(x0 + BOX_WIDTH / 2, y0 + BOX_HEIGHT)]
            for k, x in enumerate(placed.bends.get((box.key, i), ())):
                row_top = y0 + (k + 1) * (BOX_HEIGHT + ROW_GAP)
                points += [(x, row_top), (x, row_top + BOX_HEIGHT)]
            points.append((x1 + BOX_WIDTH * (i + 1) / (n + 1), y1 - 1))
            path = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
            for (ax, ay), (bx, by) in itertools.pairwise(points):
                if ax == bx:
                    path.append(f"L{bx:.1f},{by:.1f}")
                else:
                    bend = (by - ay) / 2
                    path.append(f"C{ax:.1f},{ay + bend:.1f} {bx:.1f},{by - bend:.1f} "
                                f"{bx:.1f},{by:.1f}")
            edges.append(f'<path class="edge" d="{" ".join(path)}" fill="none" '
                         f'stroke="#555" marker-end="url(#arrow)"/>')
            (ax, ay), (bx, by) = points[0], points[1]
            mx, my = (ax + bx) / 2, (ay + by) / 2
            w = 6.2 * len(label) + 6
            labels.append(f'<g class="edge-label"><rect x="{mx - w / 2:.1f}" '
                          f'y="{my - 8:.1f}" width="{w:.1f}" height="14" fill="white" '
                          f'opacity="0.85"/><text x="{mx:.1f}" y="{my + 3:.1f}" '
                          f'text-anchor="middle" fill="#444">{escape(label)}</text></g>')
    out.extend(edges)
    out.extend(labels)
    fills = {"input": "#eef5e9", "node": "#eef3fb", "output": "#fdf1e4"}
    for box in boxes:
        x, y = corners[box.key]
        dash = ' stroke-dasharray="5,3"' if box.shared else ""
        tip = f"{box.title}: {box.lines[0]}" + (f"; shares its layer with {box.shared}"
                                                 if box.shared else "")
        out.append(f'<g class="node {box.kind}" id={quoteattr(box.element_id or box.key)} '
                   f'data-node={quoteattr(box.key)} transform="translate({x:.1f},{y:.1f})">'
                   f'<title>{escape(tip)}</title>'
                   f'<rect width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6" '
                   f'fill="{fills[box.kind]}" stroke="#345" '
                   f'stroke-width="{2 if box.kind == "output" else 1}"{dash}/>'
                   f'<text x="{BOX_WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold"'
                   f' font-size="12">{escape(_fit(box.title, 24))}</text>')
        for k, line in enumerate(box.lines[:3]):
            out.append(f'<text x="{BOX_WIDTH / 2}" y="{31 + 13 * k}" text-anchor="middle">'
                       f'{escape(_fit(line))}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def network_svg(graph: Graph, *, fused: bool = False) -> str:
    """The picture of ``graph``: its user graph, or with ``fused`` the plan it runs."""
    steps = graph.plan.steps if fused else None
    return graph_svg(boxes_of(graph, steps),
                     f"{graph.name}: {len(graph.steps)} nodes, {graph.n_params:,} parameters")


def save_network_svg(graph: Graph, path: str | os.PathLike[str], *, fused: bool = False
                     ) -> None:
    """Write ``network_svg`` to ``path`` atomically (an old file survives a failed write)."""
    with atomic_write(path) as handle:
        handle.write(network_svg(graph, fused=fused).encode())
