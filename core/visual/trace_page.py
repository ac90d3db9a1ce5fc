"""The trace of a training step as one self-contained HTML page, and the ``Trace``
object ``Network.trace()`` yields.

The page needs nothing but the file: the network's picture (inline SVG, each box
clickable), a panel per executed node with its numbers, histograms of its outputs
and deltas (inline SVG) and its backward rule, and the loss at the top. The data
itself is embedded as JSON too, for scripts.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ..graph.report import fmt_bytes
from ..graph.trace import NodeTrace, TraceRecorder
from ..storage.files import atomic_write
from .graph_svg import boxes_of, graph_svg

HIST_WIDTH, HIST_HEIGHT = 220, 56

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 0; color: #222; }
header { padding: 10px 16px; background: #f4f6f8; border-bottom: 1px solid #ccd; }
header h1 { font-size: 17px; margin: 0 0 4px 0; }
main { display: flex; align-items: flex-start; }
#picture { flex: 0 0 auto; padding: 8px; position: sticky; top: 0; max-height: 100vh;
           overflow: auto; }
#panels { flex: 1 1 auto; padding: 8px 16px; min-width: 420px; }
.panel { border: 1px solid #ccd; border-radius: 6px; padding: 8px 12px; margin: 0 0 12px 0; }
.panel.selected { border: 2px solid #d2691e; background: #fffaf4; }
.panel h2 { font-size: 15px; margin: 0 0 4px 0; }
.panel h3 { font-size: 13px; margin: 8px 0 2px 0; color: #345; }
.panel table { border-collapse: collapse; }
.panel td, .panel th { padding: 1px 8px 1px 0; text-align: left; vertical-align: top; }
.rule { background: #f6f6f0; padding: 4px 6px; white-space: pre-wrap; font-size: 13px; }
.note { color: #a33; }
g.node { cursor: pointer; }
g.node.selected rect { stroke: #d2691e; stroke-width: 3; }
.hists { display: flex; gap: 16px; flex-wrap: wrap; }
"""

SCRIPT = """
function selectNode(key) {
  document.querySelectorAll('.selected').forEach(function (e) {
    e.classList.remove('selected'); });
  var panel = document.getElementById('panel-' + key);
  var box = document.getElementById('node-' + key);
  if (box) box.classList.add('selected');
  if (panel) { panel.classList.add('selected'); panel.scrollIntoView({block: 'start'}); }
}
document.querySelectorAll('g.node').forEach(function (box) {
  var key = box.id.replace(/^node-/, '');
  if (document.getElementById('panel-' + key)) {
    box.addEventListener('click', function () { selectNode(key); });
  }
});
"""


class Trace:
    """A recorded training step: ``table()`` for the terminal, ``to_dict()`` as plain
    data, ``save(path)`` as a page, ``node(name)`` for one node's numbers."""

    def __init__(self, recorder: TraceRecorder) -> None:
        self.recorder = recorder

    @property
    def loss(self) -> float | None:
        return self.recorder.loss

    @property
    def nodes(self) -> list[NodeTrace]:
        return self.recorder.nodes

    def node(self, name: str) -> NodeTrace:
        return self.recorder.node(name)

    def to_dict(self) -> dict[str, Any]:
        return self.recorder.to_dict()

    def table(self) -> str:
        return self.recorder.table()

    def to_html(self) -> str:
        return trace_html(self.recorder)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the page to ``path`` atomically (an old file survives a failed write)."""
        with atomic_write(path) as handle:
            handle.write(self.to_html().encode())

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``to_dict()`` as JSON to ``path`` atomically."""
        with atomic_write(path) as handle:
            handle.write(json.dumps(self.to_dict(), indent=1).encode())

    def __str__(self) -> str:
        return self.table()


def histogram_svg(hist: dict[str, Any], color: str) -> str:
    """Bars of a histogram from ``deltaprop.graph.trace.histogram``, with its range."""
    counts = hist.get("counts") or []
    top = max(counts, default=0) or 1
    n = max(len(counts), 1)
    bar = HIST_WIDTH / n
    plot = HIST_HEIGHT - 14
    out = [f'<svg class="histogram" width="{HIST_WIDTH}" height="{HIST_HEIGHT}" '
           f'viewBox="0 0 {HIST_WIDTH} {HIST_HEIGHT}" font-size="10" '
           f'font-family="sans-serif"><rect width="{HIST_WIDTH}" height="{plot}" '
           f'fill="#fafafa" stroke="#ddd"/>']
    for i, c in enumerate(counts):
        h = plot * c / top
        out.append(f'<rect x="{i * bar + 0.5:.1f}" y="{plot - h:.1f}" width="{bar - 1:.1f}" '
                   f'height="{h:.1f}" fill="{color}"><title>{c}</title></rect>')
    out.append(f'<text x="0" y="{HIST_HEIGHT - 2}">{_num(hist.get("low"))}</text>')
    out.append(f'<text x="{HIST_WIDTH}" y="{HIST_HEIGHT - 2}" text-anchor="end">'
               f'{_num(hist.get("high"))}</text></svg>')
    return "".join(out)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _shapes(shapes: list[list[int]]) -> str:
    return ", ".join(str(tuple(s)) for s in shapes) or "–"


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>"
                               for k, v in pairs) + "</table>"


def panel_html(node: dict[str, Any], index: int) -> str:
    """The panel of one node of a trace's ``to_dict()``."""
    parts = " + ".join(f"{p['name']} ({p['layer']})" for p in node["parts"])
    out = [f'<section class="panel" id="panel-{index}" data-node={quoteattr(node["name"])}>',
           f'<h2>{escape(node["name"])} <small>{escape(node["layer"])}</small></h2>']
    notes = []
    if node["fused"]:
        notes.append(f"fused node: {parts}, run as one step")
    if node["shared_with"]:
        notes.append("shares its layer (and weights) with " + ", ".join(node["shared_with"]))
    if node["recomputed"]:
        notes.append("recomputed in backward from the segment's kept values")
    if not node["ran"]:
        notes.append("left out of the training step: the loss reads this node's input")
    if node["note"] and node["note"] not in notes:
        notes.append(node["note"])
    out.extend(f'<p class="note">{escape(n)}</p>' for n in notes)
    fwd = node["forward"]
    sat = node["saturation"]
    pairs = [("input shapes", escape(_shapes(node["input_shapes"]))),
             ("output shapes", escape(_shapes(node["output_shapes"])))]
    if fwd:
        pairs.append(("output", " ".join(f"{k} {_num(fwd[k])}" for k in
                                         ("mean", "std", "min", "max"))))
    if sat:
        pairs.append((sat["kind"], f"{100 * sat['share']:.1f}% of the units"))
    out.append("<h3>forward</h3>" + _rows(pairs))
    cache = "; ".join(f"{c['what']} {tuple(c['shape'])} {fmt_bytes(c['bytes'])}"
                      for c in node["cache"]) or "nothing"
    out.append("<h3>cached for backward</h3>" + _rows([
        ("newly held", escape(fmt_bytes(node["cache_bytes"]))), ("what", escape(cache))]))
    back = node["backward"]
    if back.get("delta_norms") is not None:
        pairs = [("|Δ| arriving", " ".join(_num(v) for v in back["delta_norms"]))]
        for k, (arrived, total) in enumerate(zip(back.get("contributions", []),
                                                 back.get("contribution_sum_norms", []))):
            if len(arrived) > 1:
                terms = " + ".join(f"{escape(a['from'])} {_num(a['norm'])}" for a in arrived)
                pairs.append((f"output {k}: sum of", f"{terms} → |Σ| {_num(total)}"))
        pairs.append(("|Δ| to inputs", " ".join(
            "–" if v is None else _num(v) for v in back.get("input_delta_norms", []))))
        for p, v in back.get("param_grad_norms", {}).items():
            ratio = node["update_ratios"].get(p)
            shape = tuple(node["param_shapes"].get(p, ()))
            pairs.append((f"|∂L/∂{p}| {shape}", _num(v) + (
                f"; update/weight {_num(ratio)}" if p in node["update_ratios"] else "")))
        out.append("<h3>backward</h3>" + _rows(pairs))
    hists = []
    if node["output_histogram"]:
        hists.append("<div><div>outputs</div>"
                     + histogram_svg(node["output_histogram"], "#4a7fb5") + "</div>")
    if back.get("delta_histogram"):
        hists.append("<div><div>deltas arriving (Δ')</div>"
                     + histogram_svg(back["delta_histogram"], "#c0504d") + "</div>")
    if hists:
        out.append('<div class="hists">' + "".join(hists) + "</div>")
    out.append("<h3>backward rule</h3>" + (
        f'<div class="rule">{escape(node["rule"])}</div>' if node["rule"]
        else "<p>this layer does not describe its rule; the numbers above are recorded "
             "all the same</p>"))
    out.append("</section>")
    return "\n".join(out)


def trace_html(recorder: TraceRecorder) -> str:
    """The page of a recorded step."""
    data = recorder.to_dict()
    graph = recorder.graph
    boxes = boxes_of(graph, recorder.plan.steps)
    picture = graph_svg(boxes)
    loss = "no loss recorded (a forward and backward without a training step)"
    if data["loss"] is not None:
        loss = f"loss {data['loss']:.6g}"
    rules = "".join(
        f"<div>{escape(e['output'])}: {escape(e['loss'])} on {escape(e['reads'])}"
        f"{', |Δ| ' + _num(e['delta_norm']) if e['delta_norm'] is not None else ''}"
        + (f' <span class="rule">{escape(e["rule"])}</span>' if e["rule"] else "")
        + "</div>" for e in data["losses"])
    options = ", ".join(f"{k}={v}" for k, v in data["options"].items())
    panels = "\n".join(panel_html(n, i) for i, n in enumerate(data["nodes"]))
    embedded = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>deltaprop trace: {escape(graph.name)}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>{escape(graph.name)}: one training step, batch {data['batch']}</h1>
<div id="loss"><b>{escape(loss)}</b></div>{rules}
<div>{len(data['nodes'])} executed nodes ({escape(options)}); click a node for its panel.
Δ' is the delta arriving on a node's output, ⊙ the element-wise product.</div></header>
<main><div id="picture">{picture}</div>
<div id="panels">
{panels}
</div></main>
<script type="application/json" id="trace-data">{embedded}</script>
<script>{SCRIPT}</script>
</body></html>
"""

