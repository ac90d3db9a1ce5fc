"""The memory report: per executed node, the bytes its cache holds for backward and
why, the peak held, and the peak live in forward. It watches one real training
forward and backward through a hook, so it reports what the executor really did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..execution.hooks import Hook
from ..execution.memory import ByteTracker, arrays_in, root_of
from ..execution.plan import Plan
from ..execution.step import Step

if TYPE_CHECKING:
    from .graph import Graph


@dataclass
class CachedItem:
    what: str   # "input 0", "output 0", "intermediate", "checkpoint"
    nbytes: int  # bytes attributed to this node (0 when counted at an earlier node)
    shape: tuple[int, ...]
    why: str


@dataclass
class NodeMemory:
    node: str
    layer: str
    cached_bytes: int
    items: list[CachedItem] = field(default_factory=list)
    note: str = ""


@dataclass
class MemoryReport:
    """Per executed node: the bytes its cache holds for backward and why; and the peak."""

    batch: int
    nodes: list[NodeMemory]
    peak_bytes: int
    options: dict[str, Any]
    peak_live_bytes: int = 0  # caches plus forward values still referenced, in forward

    @property
    def total_cached_bytes(self) -> int:
        return sum(n.cached_bytes for n in self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "peak_bytes": self.peak_bytes,
                "peak_live_bytes": self.peak_live_bytes, "options": self.options,
                "nodes": [{"node": n.node, "layer": n.layer, "cached_bytes": n.cached_bytes,
                           "note": n.note,
                           "items": [{"what": i.what, "bytes": i.nbytes, "shape": list(i.shape),
                                      "why": i.why} for i in n.items]} for n in self.nodes]}

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [f"memory held for backward, batch {self.batch} ({opts})",
                 f"{'node':<24} {'layer':<20} {'cached':>12}  what (why)"]
        for n in self.nodes:
            detail = "; ".join(f"{i.what} {i.shape} {fmt_bytes(i.nbytes)} ({i.why})"
                               for i in n.items) or n.note
            lines.append(f"{n.node:<24} {n.layer:<20} {fmt_bytes(n.cached_bytes):>12}  {detail}")
        lines.append(f"peak bytes held for backward: {fmt_bytes(self.peak_bytes)} "
                     f"({self.peak_bytes} B)")
        lines.append(f"peak bytes live in forward (held for backward plus values not yet "
                     f"dropped): {fmt_bytes(self.peak_live_bytes)} ({self.peak_live_bytes} B)")
        return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def step_layers(step: Step) -> str:
    """``dense+relu`` for a fused step: the layers of the user nodes it runs."""
    return "+".join(node.layer.name for node in step.nodes if node.layer is not None)


class MemoryWatcher(Hook):
    """Names each cached array by what it is (an input, an output, or computed inside
    forward) and why backward keeps it; an array two caches share is counted at the
    first node that holds it."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.held = ByteTracker()  # what caches and kept values hold
        self.live = ByteTracker()  # the same plus forward values still referenced
        self.rows: list[NodeMemory] = []
        self.first_name: dict[int, str] = {}
        self.kept_slots = {s for slots in plan.keep_values for s in slots}

    def watch_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        """The network inputs kept as segment boundaries (recomputation)."""
        if not self.plan.keep_inputs:
            return
        row = NodeMemory("(inputs)", "input", 0)
        for s, value in zip(self.plan.input_slots, arrays):
            if s in self.plan.keep_inputs:
                nbytes = self.held.hold(("kept", s), value)
                self.live.hold(("kept", s), value)
                row.items.append(CachedItem("network input (kept)", nbytes, tuple(value.shape),
                                            "segment boundary kept for recomputation"))
                self.first_name.setdefault(id(root_of(value)), "(inputs)")
        row.cached_bytes = sum(i.nbytes for i in row.items)
        self.rows.append(row)

    def forward_node(self, step: Step, inputs: Sequence[np.ndarray | None],
                     outputs: Sequence[np.ndarray], cache: Any, cache_bytes: int) -> None:
        layer_name = step_layers(step)
        row = NodeMemory(step.name, layer_name, 0)
        keeps_cache = step.carries and self.plan.keep_cache[step.index]
        if not step.carries:
            row.note = "nothing cached: no gradient flows through this node"
        elif not keeps_cache:
            row.note = "recomputed in backward from the segment's kept values: nothing held"
        kept = [out for s, out in zip(step.out_slots, outputs) if s in self.kept_slots]
        for s, out in zip(step.out_slots, outputs):
            self.live.hold(("value", s), out)
        charged: set[int] = set()

        def charge(array: np.ndarray) -> int:
            key = id(root_of(array))
            if self.held.first_holder(array) != step.index or key in charged:
                return 0
            charged.add(key)
            return self.held.counted_bytes(array)

        held_objects = ([cache] if keeps_cache else []) + kept
        for obj in held_objects:
            self.held.hold(step.index, obj)
            self.live.hold(("cache", step.index), obj)
        if keeps_cache:
            row.items = self._describe(cache, inputs, outputs, layer_name, charge)
        for out in kept:
            row.items.append(CachedItem("output (kept)", charge(out), tuple(out.shape),
                                        "segment boundary kept for recomputation"))
        row.cached_bytes = sum(i.nbytes for i in row.items)
        for obj in held_objects:
            for a in arrays_in(obj):
                self.first_name.setdefault(id(root_of(a)), step.name)
        for s in step.free_after:
            self.live.release(("value", s))
        self.rows.append(row)

    def _describe(self, cache: Any, inputs: Sequence[Any], outputs: Sequence[Any],
                  layer_name: str, charge: Any) -> list[CachedItem]:
        items = []
        for array, root_id, role in cache_roles(cache, inputs, outputs):
            what, why = "intermediate", f"computed in forward, read by {layer_name} backward"
            if role.startswith("input"):
                what, why = role, f"{layer_name} backward needs its input"
            elif role.startswith("output"):
                what, why = role, f"{layer_name} derivative is written from its output"
            nbytes = charge(array)
            if not nbytes and root_id in self.first_name:
                why += f"; same memory as counted at {self.first_name[root_id]}"
            items.append(CachedItem(what, nbytes, tuple(array.shape), why))
        return items


def cache_roles(cache: Any, inputs: Sequence[Any], outputs: Sequence[Any]
                ) -> list[tuple[np.ndarray, int, str]]:
    """Each distinct buffer of a cache once, with the id of its base array and what it
    is: ``input i``, ``output i`` (the same memory as that value) or ``computed``."""
    roles = []
    seen: set[int] = set()
    for array in arrays_in(cache):
        root_id = id(root_of(array))
        if root_id in seen:
            continue
        seen.add(root_id)
        role = "computed"
        for i, x in enumerate(inputs):
            if isinstance(x, np.ndarray) and id(root_of(x)) == root_id:
                role = f"input {i}"
        for i, y in enumerate(outputs):
            if isinstance(y, np.ndarray) and id(root_of(y)) == root_id:
                role = f"output {i}"
        roles.append((array, root_id, role))
    return roles


def build_report(graph: Graph, x: Any, batch: int) -> MemoryReport:
    """One training forward and backward of ``graph`` (on ``x``, or zeros of ``batch``
    samples), watched node by node. The peak held for backward is the executor's own
    figure (which includes recomputed segments during backward); the peak live bytes
    add the forward values still referenced at each step (what liveness, in-place work
    and fusion lower). The network's gradients are left as they were."""
    plan = graph.plan
    if x is None:
        x = [np.zeros((batch, *t.shape), dtype=t.dtype) for t in graph.inputs]
    arrays = plan.check_inputs(x)
    watcher = MemoryWatcher(plan)
    watcher.watch_inputs(arrays)
    executor = graph.executor(hooks=[watcher])
    outs = executor.forward(arrays, train=True)
    executor.backward([np.ones_like(out) for out in outs], input_grads=False)
    options = {"fuse": plan.fuse, "plan_memory": plan.plan_memory,
               "recompute": plan.recompute is not None}
    return MemoryReport(len(outs[0]), watcher.rows, executor.peak_cache_bytes, options,
                        watcher.live.peak)
