"""The trace of one training step: what each executed node did, forward and backward.

A ``TraceRecorder`` is a hook (see ``deltaprop.Hook``): it watches one real step as
the executor runs it and keeps numbers, never the arrays, so it holds little memory.
Per node, forward: input and output shapes, output statistics and histogram, the
share of saturated or dead units (``Layer.saturation``), the bytes its cache holds
for backward and what they are. Backward: the delta arriving on each output, and for
a value several nodes read, each reader's contribution and their sum; the delta
passed to each input; each parameter's gradient and, after the optimizer step, the
ratio of the update to the weight. Fused nodes list their parts; nodes run again in
backward (recomputation) are marked. ``deltaprop.Network.trace`` wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..execution.hooks import Hook
from ..execution.step import Step
from .report import cache_roles, fmt_bytes, step_layers

if TYPE_CHECKING:
    from ..loss import Loss
    from ..optimizer import Optimizer
    from .graph import Graph

#: bars of the histograms of outputs and deltas
BINS = 20


def statistics(a: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, minimum and maximum of an array (0 for an empty one)."""
    if not a.size:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": float(a.mean(dtype=np.float64)), "std": float(a.std(dtype=np.float64)),
            "min": float(a.min()), "max": float(a.max())}


def histogram(a: np.ndarray, low: float | None = None, high: float | None = None
              ) -> dict[str, Any]:
    """Counts of ``a``'s values in ``BINS`` equal bars between its minimum and maximum
    (``low`` and ``high`` when already known)."""
    if not a.size:
        return {"low": 0.0, "high": 0.0, "counts": []}
    low = float(a.min()) if low is None else low
    high = float(a.max()) if high is None else high
    if not (np.isfinite(low) and np.isfinite(high)):
        return {"low": low, "high": high, "counts": []}
    if high == low:
        return {"low": low, "high": high, "counts": [int(a.size)]}
    # the bar of each value by one multiply, then a count: several times np.histogram's speed
    scaled = (a.reshape(-1) - a.dtype.type(low)) * a.dtype.type(BINS / (high - low))
    bars = np.minimum(scaled.astype(np.intp), BINS - 1)
    counts = np.bincount(bars, minlength=BINS)
    return {"low": low, "high": high, "counts": counts.tolist()}


def norm(a: np.ndarray) -> float:
    """The Euclidean (Frobenius) norm of an array of any shape."""
    flat = a.reshape(-1)
    if flat.dtype in (np.float32, np.float64):  # a dot product: no squared copy
        return float(np.sqrt(np.dot(flat, flat)))
    return float(np.linalg.norm(flat.astype(np.float64)))


@dataclass
class NodeTrace:
    """What one executed node (one step of the plan) did in the traced step."""

    name: str
    layer: str  # "dense+sigmoid" for a fused node
    parts: list[dict[str, str]]  # the user nodes it runs: {"name", "layer"}
    input_shapes: list[list[int]] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    forward: dict[str, float] = field(default_factory=dict)  # mean, std, min, max
    output_histogram: dict[str, Any] = field(default_factory=dict)
    saturation: dict[str, Any] | None = None  # {"kind": "dead", "share": 0.3}
    cache_bytes: int = 0
    cache: list[dict[str, Any]] = field(default_factory=list)  # {"what", "shape", "bytes"}
    backward: dict[str, Any] = field(default_factory=dict)
    update_ratios: dict[str, float | None] = field(default_factory=dict)
    param_keys: dict[str, str] = field(default_factory=dict)  # "W" -> "hidden/W"
    param_shapes: dict[str, list[int]] = field(default_factory=dict)
    shared_with: list[str] = field(default_factory=list)  # nodes running the same layer
    fused: bool = False
    recomputed: bool = False  # run again in backward from kept segment boundaries
    ran: bool = False  # False when training left the node out (a fused loss)
    rule: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Record:
    """One step being recorded."""

    def __init__(self, nodes: list[NodeTrace], seeds: dict[int, str]) -> None:
        self.nodes = nodes
        self.seeds = seeds  # slot a loss delta enters -> output name
        self.loss: float | None = None
        self.losses: list[dict[str, Any]] = []  # {"output", "loss", "reads", ...}
        self.last_index = -1
        self.readers: dict[int, int] | None = None  # slot -> how many deltas arrive
        self.arriving: dict[int, list[dict[str, Any]]] = {}  # slot -> contributions
        self.sums: dict[int, np.ndarray] = {}  # slot -> sum of the contributions so far
        self.grad_sums: dict[str, np.ndarray] = {}  # a shared layer's summed gradients
        self.before: dict[str, np.ndarray] = {}  # weights before the update


class TraceRecorder(Hook):
    """Records the last training step (or training forward and backward) run on
    ``graph`` while it watches: ``nodes`` in execution order, ``loss`` and ``losses``.
    A forward that no backward follows (an evaluation) leaves the record as it was."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plan = graph.plan
        self.steps_recorded = 0  # backward passes watched; the last one is shown
        self._current: _Record | None = None
        self._done: _Record | None = None
        self._producer: dict[int, tuple[int, int]] = {}

    @property
    def _shown(self) -> _Record | None:
        return self._done or self._current

    @property
    def nodes(self) -> list[NodeTrace]:
        return self._shown.nodes if self._shown else []

    @property
    def loss(self) -> float | None:
        return self._shown.loss if self._shown else None

    @property
    def losses(self) -> list[dict[str, Any]]:
        return self._shown.losses if self._shown else []

    # -- starting a step ----------------------------------------------------------------
    def _start(self, seeds: dict[int, str]) -> _Record:
        plan = self.plan = self.graph.plan
        rerun = {k for seg in plan.segments or () for k in seg.rerun}
        users = layer_users(plan.steps)
        nodes, self._producer = [], {}
        for step in plan.steps:
            parts = [{"name": n.name or "", "layer": n.layer.name}
                     for n in step.nodes if n.layer is not None]
            layer = step.layer
            nodes.append(NodeTrace(
                step.name, step_layers(step), parts, fused=len(parts) > 1,
                recomputed=step.index in rerun, param_keys=dict(step.param_keys),
                param_shapes={p: list(a.shape) for p, a in layer.params.items()},
                shared_with=sharing(step, users),
                rule=describe_rule(step)))
            for k, s in enumerate(step.out_slots):
                self._producer[s] = (step.index, k)
        self._current = _Record(nodes, seeds)
        return self._current

    def _readers(self, record: _Record) -> dict[int, int]:
        """Per slot, how many deltas arrive on it: one per reader that ran and carries
        a delta, and one from each loss that starts there."""
        if record.readers is None:
            readers: dict[int, int] = {}
            for step in self.plan.steps:
                if not record.nodes[step.index].ran or not step.carries:
                    continue
                for s, need in zip(step.in_slots, step.needs_grad):
                    if need:
                        readers[s] = readers.get(s, 0) + 1
            for s in record.seeds:
                readers[s] = readers.get(s, 0) + 1
            record.readers = readers
        return record.readers

    # -- the training step ----------------------------------------------------------------
    def losses_chosen(self, losses: Sequence[tuple[str, Loss, int]]) -> None:
        record = self._start({slot: name for name, _, slot in losses})
        for name, loss, slot in losses:
            shape = self.plan.slot_shapes[slot]
            record.losses.append({"output": name, "loss": loss.name,
                                  "reads": self._slot_name(slot), "delta_norm": None,
                                  "rule": loss.describe_backward(shape)})

    def loss_computed(self, value: float, grads: Sequence[tuple[str, np.ndarray]]) -> None:
        record = self._current
        if record is None:
            return
        record.loss = float(value)
        by_name = {entry["output"]: entry for entry in record.losses}
        slots = {name: slot for slot, name in record.seeds.items()}
        for name, delta in grads:
            entry = by_name.get(name)
            if entry is not None:
                entry["delta_norm"] = norm(delta)
            if name in slots:
                self._contribute(record, slots[name],
                                 f"loss ({entry['loss']})" if entry else "loss", delta)

    def before_update(self, grads: dict[str, np.ndarray]) -> None:
        """The gradients the optimizer applies (reduced across processes): their norms,
        and the weights before the update."""
        record = self._done
        if record is None:
            return
        params = self.graph.params
        for node in record.nodes:
            for pname, key in node.param_keys.items():
                if key in grads:
                    node.backward.setdefault("param_grad_norms", {})[pname] = norm(grads[key])
        record.before = {key: params[key].copy() for key in grads if key in params}

    def after_update(self, params: dict[str, np.ndarray], optimizer: Optimizer) -> None:
        record = self._done
        if record is None:
            return
        for node in record.nodes:
            for pname, key in node.param_keys.items():
                before = record.before.get(key)
                if before is None or key not in params:
                    continue
                weight = norm(before)
                change = norm(params[key] - before)
                # a weight of zeros (a fresh bias) has no ratio
                node.update_ratios[pname] = change / weight if weight else None
        record.before = {}

    # -- the executor -----------------------------------------------------------------
    def forward_node(self, step: Step, inputs: Sequence[np.ndarray | None],
                     outputs: Sequence[np.ndarray], cache: Any, cache_bytes: int) -> None:
        record = self._current
        if record is None or self.plan is not self.graph.plan or step.index <= record.last_index:
            record = self._start({})
        record.last_index = step.index
        node = record.nodes[step.index]
        node.ran = True
        slot_shapes = self.plan.slot_shapes
        batch = len(outputs[0]) if outputs and np.ndim(outputs[0]) else 0
        node.input_shapes = [list(x.shape) if x is not None else [batch, *slot_shapes[s]]
                             for x, s in zip(inputs, step.in_slots)]
        node.output_shapes = [list(y.shape) for y in outputs]
        main = np.asarray(outputs[0])
        if main.dtype.kind == "f":
            node.forward = statistics(main)
            node.output_histogram = histogram(main, node.forward["min"], node.forward["max"])
            last = step.nodes[-1].layer
            found = last.saturation(main) if last is not None else None
            if found is not None:
                node.saturation = {"kind": found[0], "share": float(found[1])}
        node.cache_bytes = int(cache_bytes)
        node.cache = describe_cache(cache, inputs, outputs)
        if not step.carries:
            node.note = "no delta flows through this node: nothing cached"
        elif node.recomputed:
            node.note = "recomputed in backward from the segment's kept values"

    def backward_node(self, step: Step, grad_outputs: Sequence[np.ndarray],
                      grad_inputs: Sequence[np.ndarray | None],
                      grad_params: dict[str, np.ndarray]) -> None:
        record = self._current
        if record is None:
            return
        if record is not self._done:  # the first backward: this step is the one shown
            self._done = record
            self.steps_recorded += 1
        readers = self._readers(record)
        node = record.nodes[step.index]
        back = node.backward
        back["delta_norms"] = [norm(g) for g in grad_outputs]
        back["delta_histogram"] = histogram(np.asarray(grad_outputs[0]))
        contributions, sums = [], []
        for s in step.out_slots:
            arrived = record.arriving.pop(s, [])
            total = record.sums.pop(s, None)
            contributions.append(arrived)
            sums.append(norm(total) if total is not None and readers.get(s, 0) > 1 else None)
        back["contributions"] = contributions
        back["contribution_sum_norms"] = sums
        back["input_delta_norms"] = [None if g is None else norm(g) for g in grad_inputs]
        for s, g, need in zip(step.in_slots, grad_inputs, step.needs_grad):
            if g is not None and need:
                self._contribute(record, s, step.name, g)
        here = {p: norm(g) for p, g in grad_params.items()}
        back["param_grad_norms_here"] = here
        grad_norms = back.setdefault("param_grad_norms", {})
        for pname, g in grad_params.items():
            if node.shared_with:  # the sum over every node using the layer
                key = node.param_keys.get(pname, pname)
                total = record.grad_sums.get(key)
                total = g.astype(np.float64) if total is None else total + g
                record.grad_sums[key] = total
                for other in record.nodes:
                    if other.param_keys.get(pname) == key:
                        other.backward.setdefault("param_grad_norms", {})[pname] = norm(total)
            else:
                grad_norms[pname] = here[pname]

    def _contribute(self, record: _Record, slot: int, source: str, delta: np.ndarray
                    ) -> None:
        """One reader's delta for ``slot``; summed when the slot has several readers."""
        record.arriving.setdefault(slot, []).append({"from": source, "norm": norm(delta)})
        if self._readers(record).get(slot, 1) > 1:
            total = record.sums.get(slot)
            record.sums[slot] = delta.astype(np.float64) if total is None else total + delta

    def _slot_name(self, slot: int) -> str:
        found = self._producer.get(slot)
        if found is None:
            return "input"
        step = self.plan.steps[found[0]]
        return step.name if len(step.out_slots) == 1 else f"{step.name}:{found[1]}"

    # -- reading it -------------------------------------------------------------------
    def node(self, name: str) -> NodeTrace:
        """The trace of node ``name``, or of the fused node it is part of."""
        for node in self.nodes:
            if node.name == name or any(p["name"] == name for p in node.parts):
                return node
        raise KeyError(f"no node {name!r} in the trace (nodes: "
                       f"{', '.join(n.name for n in self.nodes)})")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data: the network, the loss and every node."""
        return {"network": self.graph.name, "loss": self.loss, "losses": list(self.losses),
                "steps_recorded": self.steps_recorded,
                "batch": self.nodes[0].output_shapes[0][0] if self.nodes
                and self.nodes[0].output_shapes and self.nodes[0].output_shapes[0] else None,
                "options": {"fuse": self.plan.fuse, "plan_memory": self.plan.plan_memory,
                            "recompute": self.plan.recompute is not None},
                "nodes": [n.to_dict() for n in self.nodes]}

    def table(self) -> str:
        """A text table of the step, one line per node, for the terminal."""
        return trace_table(self.to_dict())


def layer_users(steps: Sequence[Step]) -> dict[int, list[str]]:
    """id of each layer -> the steps running it (a fused step runs its parts' layers)."""
    users: dict[int, list[str]] = {}
    for step in steps:
        for node in step.nodes:
            if node.layer is not None:
                users.setdefault(id(node.layer), []).append(step.name)
    return users


def sharing(step: Step, users: dict[int, list[str]]) -> list[str]:
    """The other steps that run a layer of ``step`` (shared weights)."""
    found = [name for node in step.nodes if node.layer is not None
             for name in users[id(node.layer)] if name != step.name]
    return list(dict.fromkeys(found))


def describe_rule(step: Step) -> str | None:
    """The backward rule of a step: its layer's, or for a fused node each part's, the
    later part first (backward runs it first)."""
    lines = []
    for node in reversed(step.nodes):
        layer = node.layer
        if layer is None:
            continue
        shapes = [t.shape for t in node.inputs]
        rule = layer.describe_backward(shapes)
        if rule:
            lines.append(f"{node.name} ({layer.name}): {rule}")
    if not lines:
        return None
    return lines[0].split(": ", 1)[1] if len(lines) == 1 else "\n".join(lines)


def describe_cache(cache: Any, inputs: Sequence[Any], outputs: Sequence[Any]
                   ) -> list[dict[str, Any]]:
    """Each array of a cache: what it is (an input, an output, or computed in forward),
    its shape and bytes."""
    return [{"what": "computed in forward" if role == "computed" else role,
             "shape": list(array.shape), "bytes": int(array.nbytes)}
            for array, _, role in cache_roles(cache, inputs, outputs)]


def _g(value: Any) -> str:
    return "" if value is None else f"{value:.3g}"


def trace_table(data: dict[str, Any]) -> str:
    """The text table of a trace's ``to_dict()``."""
    head = ("node", "layer", "output", "mean", "std", "sat/dead", "cache", "|Δ out|",
            "|Δ in|", "|∂L/∂θ|", "update/θ")
    rows = [head]
    for n in data["nodes"]:
        back = n["backward"]
        sat = n["saturation"]
        grads = back.get("param_grad_norms", {})
        rows.append((
            n["name"] + (" (shared)" if n["shared_with"] else "")
            + (" (recomputed)" if n["recomputed"] else ""),
            n["layer"],
            " ".join(str(tuple(s[1:])) for s in n["output_shapes"]) or "-",
            _g(n["forward"].get("mean")), _g(n["forward"].get("std")),
            f"{100 * sat['share']:.0f}% {sat['kind']}" if sat else "",
            fmt_bytes(n["cache_bytes"]) if n["cache_bytes"] else "",
            " ".join(_g(v) for v in back.get("delta_norms", [])),
            " ".join("-" if v is None else _g(v) for v in back.get("input_delta_norms", [])),
            " ".join(f"{p}:{_g(v)}" for p, v in grads.items()),
            " ".join(f"{p}:{_g(v) or '-'}" for p, v in n["update_ratios"].items()),
        ) if n["ran"] else (n["name"], n["layer"], "", "", "", "", "", "", "", "",
                            "left out: the loss reads its input"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    if data["loss"] is not None:
        losses = ", ".join(f"{e['output']}: {e['loss']}" for e in data["losses"])
        lines.append(f"loss {data['loss']:.6g} ({losses})")
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join(lines)
