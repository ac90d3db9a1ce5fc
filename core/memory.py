"""Memory planning: which forward values die when, which arrays may be overwritten in
place, how many bytes the caches really hold, and a per-node report of why.

Three ideas, each measurable through ``Network.memory_report()``:

- Liveness: a forward value is dropped right after its last forward reader, unless a
  backward needs it, in which case only the cache that needs it keeps it alive.
- In place: an element-wise layer may overwrite its input when the executor can prove
  that nobody else holds that array (the producer's cache, a view, the caller...).
  The proof is the array's reference count, compared with a count calibrated here
  through the very same call pattern, so it stays exact across Python versions.
- Accounting: an array referenced by two caches (a ReLU's output, which the next
  dense layer also caches as its input) is counted once, against the first node
  that holds it; that node is freed last in backward, so the running figure is exact.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


# -- liveness -----------------------------------------------------------------------------
def last_forward_use(in_slots: Sequence[Sequence[int]]) -> dict[int, int]:
    """Slot -> index of the last step that reads it in forward."""
    last: dict[int, int] = {}
    for k, slots in enumerate(in_slots):
        for s in slots:
            last[s] = k
    return last


def free_after(in_slots: Sequence[Sequence[int]], keep: Iterable[int]) -> list[tuple[int, ...]]:
    """For each step, the slots no later forward step reads (and that are not kept, i.e.
    network outputs): the executor drops its reference to them right after the step."""
    last = last_forward_use(in_slots)
    kept = set(keep)
    return [tuple(sorted({s for s in slots if last[s] == k and s not in kept}))
            for k, slots in enumerate(in_slots)]


def in_place_candidates(in_slots: Sequence[Sequence[int]], layers: Sequence[Any],
                        protected: Iterable[int]) -> list[bool]:
    """Steps whose layer may work in place on its single input, as far as the graph can
    tell: the layer says it can, and no later forward step reads the input, which is
    neither a network input (the caller holds it) nor a network output. The executor
    still checks at run time that no cache or view holds the array (``sole_owner``)."""
    last = last_forward_use(in_slots)
    protected = set(protected)
    return [bool(getattr(layer, "can_work_in_place", False)) and len(slots) == 1
            and last[slots[0]] == k and slots[0] not in protected
            for k, (slots, layer) in enumerate(zip(in_slots, layers))]


def _refcount_of(array: Any) -> int:
    return sys.getrefcount(array)


def _calibrate() -> int:
    array = np.empty(1)
    return _refcount_of(array)


#: references to an array held by exactly one local variable of the calling function
_SOLE = _calibrate()


def sole_owner(array: Any) -> bool:
    """True when the caller's single local variable is the only reference to ``array``,
    the array owns its memory and may be written: overwriting it cannot be seen by
    anyone else. Call as ``sole_owner(x)`` with ``x`` a plain local variable."""
    return (sys.getrefcount(array) <= _SOLE and type(array) is np.ndarray
            and array.base is None and array.flags.writeable)


# -- accounting ---------------------------------------------------------------------------
def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def arrays_in(obj: Any) -> list[np.ndarray]:
    """The arrays inside a cache: tuples, lists and dicts of arrays, walked iteratively."""
    found: list[np.ndarray] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


class ByteTracker:
    """Bytes held by live holders (caches, kept values), each memory block counted once
    however many hold it, and freed when its last holder lets go. ``hold(k, obj)``
    returns the bytes newly held because of ``k`` (the first holder is charged)."""

    def __init__(self) -> None:
        self._blocks: dict[int, list[Any]] = {}  # root id -> [root, bytes, holders, first]
        self._by_holder: dict[Any, list[int]] = {}
        self.current = 0
        self.peak = 0

    def hold(self, k: Any, obj: Any) -> int:
        added = 0
        keys = self._by_holder.setdefault(k, [])
        for array in arrays_in(obj):
            root = _root(array)
            key = id(root)
            nbytes = min(array.nbytes, root.nbytes)
            block = self._blocks.get(key)
            if block is None:
                self._blocks[key] = [root, nbytes, {k}, k]
                added += nbytes
            else:
                if nbytes > block[1]:  # a larger view of the same memory
                    added += nbytes - block[1]
                    block[1] = nbytes
                block[2].add(k)
            keys.append(key)
        self.current += added
        self.peak = max(self.peak, self.current)
        return added

    def release(self, k: Any) -> int:
        freed = 0
        for key in self._by_holder.pop(k, ()):
            block = self._blocks.get(key)
            if block is None:
                continue
            block[2].discard(k)
            if not block[2]:
                del self._blocks[key]
                freed += block[1]
        self.current -= freed
        return freed

    def first_holder(self, array: np.ndarray) -> Any:
        block = self._blocks.get(id(_root(array)))
        return None if block is None else block[3]


# -- the report ---------------------------------------------------------------------------
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


def describe_cache(cache: Any, inputs: Sequence[Any], outputs: Sequence[Any], layer_name: str,
                   charge: Any, first_name: dict[int, str]) -> list[CachedItem]:
    """Name each array of a cache by what it is (an input, an output, or computed
    inside forward) and say why backward keeps it; ``charge(array)`` gives the bytes
    counted at this node (0 when an earlier node already holds that memory)."""
    items = []
    seen: set[int] = set()
    for array in arrays_in(cache):
        root_id = id(_root(array))
        if root_id in seen:
            continue
        seen.add(root_id)
        what, why = "intermediate", f"computed in forward, read by {layer_name} backward"
        for i, x in enumerate(inputs):
            if isinstance(x, np.ndarray) and id(_root(x)) == root_id:
                what, why = f"input {i}", f"{layer_name} backward needs its input"
        for i, y in enumerate(outputs):
            if isinstance(y, np.ndarray) and id(_root(y)) == root_id:
                what, why = f"output {i}", f"{layer_name} derivative is written from its output"
        nbytes = charge(array)
        if not nbytes and root_id in first_name:
            why += f"; same memory as counted at {first_name[root_id]}"
        items.append(CachedItem(what, nbytes, tuple(array.shape), why))
    return items


def build_report(net: Any, x: Any, batch: int) -> MemoryReport:
    """One training forward (watched step by step) and backward of ``net``. Per node:
    the bytes its cache holds; the peak held for backward comes from the executor's own
    accounting (which includes recomputed segments during backward); the peak live
    bytes add the forward values still referenced at each step (what liveness, in-place
    work and fusion lower)."""
    if x is None:
        x = [np.zeros((batch, *t.shape), dtype=t.dtype) for t in net.inputs]
    held = ByteTracker()  # what caches and kept values hold
    live = ByteTracker()  # the same plus forward values still referenced
    rows: list[NodeMemory] = []
    first_name: dict[int, str] = {}
    kept_slots = {s for slots in net._keep_values for s in slots}

    def probe(step: Any, inputs: tuple[Any, ...], outputs: tuple[Any, ...], cache: Any) -> None:
        layer = step.layer
        layer_name = (f"{layer.layer.name}+{layer.activation.name}"
                      if hasattr(layer, "activation") else layer.name)
        row = NodeMemory(step.name, layer_name, 0)
        keeps_cache = step.carries and net._keep_cache[step.index]
        if not step.carries:
            row.note = "nothing cached: no gradient flows through this node"
        elif not keeps_cache:
            row.note = "recomputed in backward from the segment's kept values: nothing held"
        kept = [out for s, out in zip(step.out_slots, outputs) if s in kept_slots]
        for s, out in zip(step.out_slots, outputs):
            live.hold(("value", s), out)
        charged: set[int] = set()

        def charge(array: np.ndarray) -> int:
            key = id(_root(array))
            block = held._blocks.get(key)
            if block is None or block[3] != step.index or key in charged:
                return 0
            charged.add(key)
            return int(block[1])

        for obj in ([cache] if keeps_cache else []) + kept:
            held.hold(step.index, obj)
            live.hold(("cache", step.index), obj)
        if keeps_cache:
            row.items = describe_cache(cache, inputs, outputs, layer_name, charge, first_name)
        for out in kept:
            row.items.append(CachedItem("output (kept)", charge(out), tuple(out.shape),
                                        "segment boundary kept for recomputation"))
        row.cached_bytes = sum(i.nbytes for i in row.items)
        for obj in ([cache] if keeps_cache else []) + kept:
            for a in arrays_in(obj):
                first_name.setdefault(id(_root(a)), step.name)
        for s in step.free_after:
            live.release(("value", s))
        rows.append(row)

    x = net._check_inputs(x)
    if net._keep_inputs:
        row = NodeMemory("(inputs)", "input", 0)
        for s, value in zip(net.input_slots, x):
            if s in net._keep_inputs:
                nbytes = held.hold(("kept", s), value)
                live.hold(("kept", s), value)
                row.items.append(CachedItem("network input (kept)", nbytes, tuple(value.shape),
                                            "segment boundary kept for recomputation"))
                first_name.setdefault(id(_root(value)), "(inputs)")
        row.cached_bytes = sum(i.nbytes for i in row.items)
        rows.append(row)
    saved_grads = net.grads
    outs = net._forward(x, True, len(net.plan), net.output_slots, probe=probe)
    batch = len(outs[0])
    net.backward([np.ones_like(out) for out in outs], input_grads=False)
    net.grads = saved_grads
    options = {"fuse": net.fuse, "plan_memory": net.plan_memory,
               "recompute": net.recompute is not None}
    return MemoryReport(batch, rows, net.peak_cache_bytes, options, live.peak)
