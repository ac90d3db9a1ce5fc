"""The graph: symbolic tensors, nodes (layer applications) and the network that
executes them.

The functional API records nodes as layers are called on symbolic tensors;
``Network`` orders them once (iteratively, so depth is not limited by recursion),
compiles the order into integer slots (``steps``: the user graph), runs the graph
passes of ``passes.py`` over it (``plan``: what executes, e.g. dense+relu as one
node), and runs forward and backward over that plan. In training mode each node's
cache goes into an executor-owned store and is freed as soon as that node's backward
has run; deltas from several consumers are summed into buffers the executor owns,
never into an array a layer returned. Memory planning (``memory.py``) decides when
forward values die and which element-wise layers may work in place; the hot loops
do no shape derivation and no registry lookups, and the bytes held are measured
once per input shape and reused.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import memory, passes
from . import train as _train
from .allocator import retain_freed_memory
from .errors import DeltapropError, GraphError, ShapeError
from .layer import Layer, Shape

_build_rng: contextvars.ContextVar[np.random.Generator | None] = contextvars.ContextVar(
    "deltaprop_build_rng", default=None)
_global_rng = np.random.default_rng()


def seed(value: int | None) -> None:
    """Seed the generator that initializes layers built through the functional API."""
    global _global_rng
    _global_rng = np.random.default_rng(value)


@contextlib.contextmanager
def seeded(value: int | None) -> Iterator[np.random.Generator]:
    """Within the block, layers are initialized from a generator seeded with ``value``."""
    rng = np.random.default_rng(value)
    token = _build_rng.set(rng)
    try:
        yield rng
    finally:
        _build_rng.reset(token)


class Tensor:
    """A symbolic value: output ``index`` of ``node``, with its shape (batch left out)."""

    __slots__ = ("dtype", "index", "node", "shape")

    def __init__(self, node: Node, index: int, shape: Shape, dtype: str) -> None:
        self.node = node
        self.index = index
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<Tensor {self.node.display_name}:{self.index} shape=(batch, *{self.shape})>"


class Node:
    """One application of a layer to symbolic inputs (or a network input)."""

    def __init__(self, layer: Layer | None, inputs: tuple[Tensor, ...],
                 output_shapes: Sequence[Shape], output_dtypes: Sequence[str],
                 name: str | None) -> None:
        self.layer = layer
        self.inputs = inputs
        self.name = name
        self.outputs = tuple(Tensor(self, i, s, d)
                             for i, (s, d) in enumerate(zip(output_shapes, output_dtypes)))

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.layer is not None:
            return self.layer.label or self.layer.name
        return "input"


class InputNode(Node):
    def __init__(self, shape: Shape, dtype: str, name: str | None) -> None:
        super().__init__(None, (), [shape], [dtype], name)


def Input(shape: int | Sequence[int], name: str | None = None, dtype: str = "float32"
          ) -> Tensor:
    """A network input of ``shape`` (batch dimension left out)."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"input {name or ''!r}: shape must be a list of integers, "
                         f"got {shape!r}") from None
    if any(d <= 0 for d in shape):
        raise ShapeError(f"input {name or ''!r}: shape entries must be positive, got {shape}")
    dtype = np.dtype(dtype).name
    return InputNode(shape, dtype, name).outputs[0]


def apply_layer(layer: Layer, inputs: Sequence[Any], node_name: str | None = None) -> Any:
    """Record a node applying ``layer`` to symbolic ``inputs``; build the layer on first use."""
    where = f"node {node_name or layer.label or layer.name!r} ({layer.name})"
    if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
        inputs = tuple(inputs[0])
    for value in inputs:
        if not isinstance(value, Tensor):
            raise GraphError(f"{where}: layers are called on symbolic tensors "
                             f"(deltaprop.Input or another layer's output), got "
                             f"{type(value).__name__}; use network.forward for arrays")
    shapes = tuple(t.shape for t in inputs)
    if not layer.built:
        rng = _build_rng.get() or _global_rng
        try:
            output_shapes = layer.build(shapes, rng=rng)
        except DeltapropError as exc:
            raise type(exc)(f"{where}: {exc} (input shapes {_fmt_shapes(shapes)})") from None
        layer.input_shapes = shapes
        layer.output_shapes = tuple(tuple(int(d) for d in s) for s in output_shapes)
    elif shapes != layer.input_shapes:
        raise ShapeError(f"{where}: this layer is shared and was built for input shapes "
                         f"{_fmt_shapes(layer.input_shapes)}, got {_fmt_shapes(shapes)}")
    assert layer.output_shapes is not None
    node = Node(layer, tuple(inputs), layer.output_shapes,
                [layer.dtype] * len(layer.output_shapes), node_name)
    return node.outputs[0] if len(node.outputs) == 1 else node.outputs


def _fmt_shapes(shapes: Any) -> str:
    return ", ".join(f"(batch, {', '.join(map(str, s))})" if s else "(batch,)"
                     for s in shapes or ())


def array_bytes(obj: Any) -> int:
    """Bytes of the arrays held (once each) in a cache: tuples, lists and dicts of arrays."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            if id(item) not in seen:
                seen.add(id(item))
                total += item.nbytes
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return total


@dataclass(eq=False, slots=True)
class Step:
    """One executed node of the compiled plan (a user node, or several fused into one)."""

    node: Node
    layer: Layer
    name: str
    in_slots: tuple[int, ...]
    out_slots: tuple[int, ...]
    free_after: tuple[int, ...]  # forward values no later forward step reads
    has_params: bool
    carries: bool = False  # some gradient flows through or into this node
    needs_grad: tuple[bool, ...] = ()
    needs_grad_inputs: tuple[bool, ...] = ()  # the same when input gradients are wanted
    nodes: tuple[Node, ...] = ()  # the user nodes this step runs
    index: int = 0  # position in the plan: caches[index] is this step's cache
    in_place: bool = False  # may overwrite its input when the executor proves it unshared
    param_keys: dict[str, str] = field(default_factory=dict)  # param name -> grads key

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = (self.node,)


class Network:
    """A directed acyclic graph of nodes from ``inputs`` to ``outputs``.

    ``fuse`` (default on) lets graph passes merge a layer and the element-wise
    activation after it, and softmax with cross-entropy at the loss; ``recompute``
    keeps only segment boundaries in training and recomputes the rest in backward
    (True for segments of about sqrt(n) nodes, or an int for that many per segment);
    ``plan_memory`` (default on) drops forward values after their last reader and lets
    element-wise layers work in place on arrays nobody else holds. None of them
    changes results beyond float rounding.
    """

    #: an ``anomaly.AnomalyDetector`` that sees every node's outputs and gradients, or None
    anomaly: Any = None

    def __init__(self, inputs: Tensor | Sequence[Tensor], outputs: Tensor | Sequence[Tensor],
                 *, name: str = "network", fuse: bool = True,
                 recompute: bool | int = False, plan_memory: bool = True) -> None:
        retain_freed_memory()  # every training step reuses the last one's pages
        self.name = name
        self.inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        self.outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        for t in (*self.inputs, *self.outputs):
            if not isinstance(t, Tensor):
                raise GraphError(f"network {name!r}: inputs and outputs must be symbolic "
                                 f"tensors, got {type(t).__name__}")
        for t in self.inputs:
            if not isinstance(t.node, InputNode):
                raise GraphError(f"network {name!r}: {t!r} is not a deltaprop.Input")
        if not self.outputs:
            raise GraphError(f"network {name!r} has no outputs")
        self.nodes = self._order()
        self.layers = self._assign_names()
        self._compile()
        self.cache_bytes = 0
        self.peak_cache_bytes = 0
        self.grads: dict[str, np.ndarray] = {}
        self._resolved: dict[tuple[str, str], Any] = {}
        #: the ``[train]`` table of the spec the network came from (loss, optimizer, ...)
        self.train_config: dict[str, Any] = {}
        self.configure(fuse=fuse, recompute=recompute, plan_memory=plan_memory)

    def configure(self, *, fuse: bool | None = None, recompute: bool | int | None = None,
                  plan_memory: bool | None = None) -> Network:
        """Switch graph passes on or off; the plan is rebuilt (caches are dropped).
        ``plan_memory`` False keeps every forward value to the end of the forward and
        never works in place (for comparison)."""
        if fuse is not None:
            self.fuse = bool(fuse)
        if plan_memory is not None:
            self.plan_memory = bool(plan_memory)
        if recompute is not None:
            if isinstance(recompute, bool):
                self.recompute: int | None = 0 if recompute else None
            elif isinstance(recompute, int) and recompute > 0:
                self.recompute = recompute
            else:
                raise GraphError(f"network {self.name!r}: recompute must be a bool or a "
                                 f"positive number of nodes per segment, got {recompute!r}")
        self._make_plan()
        return self

    # -- construction ------------------------------------------------------------------
    def _order(self) -> list[Node]:
        """Topological order of the nodes the outputs depend on, by iterative DFS."""
        allowed = {id(t.node) for t in self.inputs}
        if len(allowed) != len(self.inputs):
            raise GraphError(f"network {self.name!r}: an input is listed twice")
        order: list[Node] = []
        state: dict[int, int] = {}  # 1 = on the stack, 2 = done
        for out in self.outputs:
            stack: list[tuple[Node, int]] = [(out.node, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if state.get(id(node)) == 2:
                        continue
                    if isinstance(node, InputNode) and id(node) not in allowed:
                        raise GraphError(
                            f"network {self.name!r}: output {out.node.display_name!r} is not "
                            f"connected to the network's inputs: it depends on input "
                            f"{node.display_name!r}, which is not among them")
                    state[id(node)] = 1
                if i < len(node.inputs):
                    stack.append((node, i + 1))
                    child = node.inputs[i].node
                    if state.get(id(child)) == 1:
                        raise GraphError(f"network {self.name!r}: cycle through node "
                                         f"{child.display_name!r}")
                    if state.get(id(child)) != 2:
                        stack.append((child, 0))
                else:
                    state[id(node)] = 2
                    order.append(node)
        return order

    def _assign_names(self) -> list[Layer]:
        """Give unlabelled layers, inputs and nodes unique names, in graph order."""
        layers: list[Layer] = []
        seen_layers: set[int] = set()
        for node in self.nodes:
            if node.layer is not None and id(node.layer) not in seen_layers:
                seen_layers.add(id(node.layer))
                layers.append(node.layer)
        labels: dict[str, Layer] = {}
        for layer in layers:
            if layer.label:
                if layer.label in labels:
                    raise GraphError(f"network {self.name!r}: two different layers are "
                                     f"labelled {layer.label!r}")
                labels[layer.label] = layer
        names: set[str] = set(labels)
        for t in self.inputs:
            if t.node.name:
                if t.node.name in names:
                    raise GraphError(f"network {self.name!r}: duplicate name {t.node.name!r}")
                names.add(t.node.name)

        def fresh(base: str) -> str:
            if base not in names:
                names.add(base)
                return base
            k = 1
            while f"{base}_{k}" in names:
                k += 1
            names.add(f"{base}_{k}")
            return f"{base}_{k}"

        for t in self.inputs:
            if not t.node.name:
                t.node.name = fresh("input")
        for layer in layers:
            if not layer.label:
                layer.label = fresh(layer.name)
        uses: dict[int, int] = {}
        node_names: set[str] = {t.node.name for t in self.inputs if t.node.name}
        for node in self.nodes:
            if node.layer is None:
                continue
            k = uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
            if node.name is None:
                assert node.layer.label is not None
                node.name = node.layer.label if k == 1 else f"{node.layer.label}@{k}"
            if node.name in node_names:
                raise GraphError(f"network {self.name!r}: duplicate node name {node.name!r}")
            node_names.add(node.name)
        return layers

    def _compile(self) -> None:
        slot_of: dict[tuple[int, int], int] = {}
        for t in self.inputs:
            slot_of[(id(t.node), 0)] = len(slot_of)
        for node in self.nodes:
            if node.layer is None:
                continue
            for t in node.outputs:
                slot_of[(id(node), t.index)] = len(slot_of)
        self.n_slots = len(slot_of)
        self.input_slots = [slot_of[(id(t.node), 0)] for t in self.inputs]
        self.output_slots = [slot_of[(id(t.node), t.index)] for t in self.outputs]
        self.slot_shapes: list[Shape] = [()] * self.n_slots
        self.slot_dtypes = [""] * self.n_slots
        for node in self.nodes:
            for t in node.outputs:
                self.slot_shapes[slot_of[(id(node), t.index)]] = t.shape
                self.slot_dtypes[slot_of[(id(node), t.index)]] = t.dtype
        steps: list[Step] = []
        for node in self.nodes:
            if node.layer is None:
                continue
            steps.append(Step(node, node.layer, node.name or "",
                              tuple(slot_of[(id(t.node), t.index)] for t in node.inputs),
                              tuple(slot_of[(id(node), t.index)] for t in node.outputs),
                              (), bool(node.layer.params)))
        self._float_inputs = [np.issubdtype(np.dtype(t.dtype), np.floating)
                               for t in self.inputs]
        #: the user graph, one step per node (``to_spec`` and ``summary`` read it)
        self.steps = self._annotate(steps)
        self._param_index = [(f"{layer.label}/{pname}", layer, pname)
                             for layer in self.layers for pname in layer.params]

    def _annotate(self, steps: list[Step]) -> list[Step]:
        """Fill in what the executor needs per step: when values die, which steps carry a
        gradient, which may work in place, and the keys of their parameter gradients."""
        in_slots = [step.in_slots for step in steps]
        frees = memory.free_after(in_slots, self.output_slots)
        in_place = memory.in_place_candidates(in_slots, [s.layer for s in steps],
                                              (*self.input_slots, *self.output_slots))
        float_inputs = {s for s, f in zip(self.input_slots, self._float_inputs) if f}
        for k, step in enumerate(steps):
            step.index = k
            step.free_after = frees[k]
            step.in_place = in_place[k]
            step.param_keys = {p: f"{step.layer.label}/{p}" for p in step.layer.params}
        for with_inputs in (False, True):
            carrying = set(float_inputs) if with_inputs else set()
            for step in steps:
                mask = tuple(s in carrying for s in step.in_slots)
                if with_inputs:
                    step.needs_grad_inputs = mask
                    step.carries = step.carries or any(mask) or step.has_params
                else:
                    step.needs_grad = mask
                    step.carries = any(mask) or step.has_params
                if any(mask) or step.has_params:
                    carrying.update(step.out_slots)
        return steps

    def _make_plan(self) -> None:
        """Run the graph passes over the user steps: the plan the executor runs."""
        if self.fuse:
            plan = passes.fuse_activations(self.steps, self.output_slots)
        else:
            plan = [Step(s.node, s.layer, s.name, s.in_slots, s.out_slots, (), s.has_params,
                         nodes=s.nodes) for s in self.steps]
        self.plan = self._annotate(plan)
        if not self.plan_memory:
            for step in self.plan:
                step.free_after = ()
                step.in_place = False
                if isinstance(step.layer, passes.FusedActivation):
                    step.layer.in_place = False
        n = len(self.plan)
        self._caches: list[Any] = [None] * n
        self._cache_sizes = [0] * n
        self._layouts: dict[Any, tuple[list[int], int]] = {}
        self._loss_fusions: dict[int, Any] = {}
        self._has_forward = False
        self._holding = False
        self._stop = n
        self._tracker: memory.ByteTracker | None = None
        self._checkpoints: dict[int, np.ndarray] = {}
        self._segments: list[passes.Segment] | None = None
        self._keep_cache = [True] * n
        self._keep_values: list[tuple[int, ...]] = [()] * n
        self._keep_inputs: tuple[int, ...] = ()
        self.cache_bytes = 0
        if self.recompute is not None:
            self._segments = passes.checkpoint_segments(self.plan, self.recompute or None,
                                                        self.input_slots)
            needed = {s for seg in self._segments for s in seg.needs}
            for seg in self._segments:
                for k in seg.rerun:
                    self._keep_cache[k] = False
            self._keep_values = [tuple(s for s in step.out_slots if s in needed)
                                 for step in self.plan]
            self._keep_inputs = tuple(s for s in self.input_slots if s in needed)
            # a kept value is released once the earliest segment reading it is done
            self._release_after: dict[int, list[int]] = {}
            for s in needed:
                first = min(i for i, seg in enumerate(self._segments) if s in seg.needs)
                self._release_after.setdefault(first, []).append(s)

    # -- parameters ----------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"<layer label>/<param name>": array}``; a shared layer appears once."""
        return {key: layer.params[pname] for key, layer, pname in self._param_index}

    @property
    def n_params(self) -> int:
        return sum(int(a.size) for a in self.params.values())

    @property
    def output_shapes(self) -> list[Shape]:
        return [t.shape for t in self.outputs]

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    # -- execution -------------------------------------------------------------------------
    def _check_inputs(self, arrays: Any) -> list[np.ndarray]:
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
            arrays = [arrays]
        if len(arrays) != len(self.inputs):
            names = ", ".join(repr(t.node.name) for t in self.inputs)
            raise ShapeError(f"network {self.name!r} takes {len(self.inputs)} input array(s) "
                             f"({names}), got {len(arrays)}")
        checked = []
        batch = None
        for t, value in zip(self.inputs, arrays):
            if (type(value) is np.ndarray and value.dtype == t.dtype and value.ndim
                    and value.shape[1:] == t.shape and batch in (None, value.shape[0])):
                batch = value.shape[0]  # the common case, checked without conversions
                checked.append(value)
                continue
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[1:] != t.shape:
                raise ShapeError(f"input {t.node.name!r} expects arrays of shape "
                                 f"(batch, {', '.join(map(str, t.shape))}), got {value.shape}")
            if batch is not None and value.shape[0] != batch:
                raise ShapeError(f"input {t.node.name!r} has batch size {value.shape[0]}, "
                                 f"the other inputs {batch}")
            batch = value.shape[0]
            if np.issubdtype(np.dtype(t.dtype), np.floating):
                if not np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_:
                    raise ShapeError(f"input {t.node.name!r} expects numbers, got {value.dtype}")
                value = value.astype(t.dtype, copy=False)
            elif not np.issubdtype(value.dtype, np.integer):
                raise ShapeError(f"input {t.node.name!r} expects integers, got {value.dtype}")
            checked.append(value)
        return checked

    def forward(self, arrays: Any, *, train: bool = False) -> list[np.ndarray]:
        """Run the network on input arrays (a list, one per input, or a single array).

        With ``train`` each node's cache is kept for ``backward``; without, none is.
        """
        return self._forward(arrays, train, len(self.plan), self.output_slots)

    def _forward(self, arrays: Any, train: bool, stop: int, out_slots: Sequence[int],
                 probe: Any = None) -> list[np.ndarray]:
        """Run ``plan[:stop]`` and return the values of ``out_slots``. ``probe(step, inputs,
        outputs, cache)`` sees every step (the memory report uses it)."""
        checked = self._check_inputs(arrays)
        values: list[Any] = [None] * self.n_slots
        for slot, value in zip(self.input_slots, checked):
            values[slot] = value
        caches = self._caches
        tracker = None
        if not train and self._holding:  # the last training forward's caches are dead now
            self._release_caches()
            self._holding = False
        if train:
            if self._holding:
                self._release_caches()
            self._holding = True
            self.peak_cache_bytes = 0
            layout_key = (stop, checked[0].shape) if len(checked) == 1 else (
                stop, *(v.shape for v in checked))
            layout = self._layouts.get(layout_key)
            if layout is None or self._segments is not None or probe is not None:
                tracker = self._tracker = memory.ByteTracker()
                for s in self._keep_inputs:
                    self._checkpoints[s] = values[s]
                    tracker.hold(("kept", s), values[s])
        keep_cache, keep_values = self._keep_cache, self._keep_values
        recomputing = self._segments is not None
        for step in self.plan[:stop]:
            ins = step.in_slots
            try:
                if step.in_place:
                    x = values[ins[0]]
                    values[ins[0]] = None  # so that the proof below sees only ``x``
                    if memory.sole_owner(x):
                        outputs, cache = step.layer.forward_in_place((x,), train=train)
                    else:
                        outputs, cache = step.layer.forward((x,), train=train)
                    del x
                elif len(ins) == 1:
                    outputs, cache = step.layer.forward((values[ins[0]],), train=train)
                else:
                    outputs, cache = step.layer.forward(tuple(values[s] for s in ins),
                                                        train=train)
            except DeltapropError as exc:
                raise type(exc)(f"node {step.name!r} ({step.layer.name}): {exc}") from None
            if len(outputs) != len(step.out_slots):
                raise GraphError(f"node {step.name!r}: layer {step.layer.name!r} returned "
                                 f"{len(outputs)} outputs, declared {len(step.out_slots)}")
            if self.anomaly is not None:
                self.anomaly.check_forward(step, outputs)
            if probe is not None:
                probe(step, tuple(values[s] for s in ins), outputs, cache)
            if len(outputs) == 1:
                values[step.out_slots[0]] = outputs[0]
            else:
                for s, out in zip(step.out_slots, outputs):
                    values[s] = out
                out = None  # type: ignore[assignment]
            for s in step.free_after:
                values[s] = None
            outputs = None  # type: ignore[assignment]  # hold no reference that would defeat an in-place proof
            if train and step.carries:
                k = step.index
                if keep_cache[k]:
                    caches[k] = cache
                    if tracker is not None:
                        self._cache_sizes[k] = tracker.hold(k, cache)
                if recomputing:
                    for s in keep_values[k]:
                        self._checkpoints[s] = values[s]
                        if tracker is not None:
                            tracker.hold(("kept", s), values[s])
        if train:
            if tracker is None:  # the same shapes as before: the same bytes
                self._cache_sizes[:], self.cache_bytes = layout  # type: ignore[misc]
            else:
                self.cache_bytes = tracker.current
                if self._segments is None:
                    self._layouts[layout_key] = (list(self._cache_sizes), tracker.current)
                    self._tracker = None
            self.peak_cache_bytes = self.cache_bytes
            self._stop = stop
        self._has_forward = train
        return [values[s] for s in out_slots]

    def _release_caches(self) -> None:
        n = len(self.plan)
        self._caches[:] = [None] * n
        self._cache_sizes[:] = [0] * n
        self._checkpoints.clear()
        self._tracker = None
        self.cache_bytes = 0

    def backward(self, grad_outputs: Any, *, input_grads: bool = True
                 ) -> list[np.ndarray | None]:
        """Propagate output deltas back; returns one delta per input (None where the
        input takes none) and leaves the summed parameter gradients in ``grads``."""
        if not self._has_forward:
            raise GraphError(f"network {self.name!r}: backward needs a forward(train=True) "
                             f"first (each forward's caches serve one backward)")
        if self._stop != len(self.plan):
            raise GraphError(f"network {self.name!r}: the last forward stopped early (a "
                             f"fused loss); run forward(train=True) again")
        if isinstance(grad_outputs, np.ndarray) or not isinstance(grad_outputs, (list, tuple)):
            grad_outputs = [grad_outputs]
        if len(grad_outputs) != len(self.output_slots):
            raise ShapeError(f"network {self.name!r} has {len(self.output_slots)} outputs, "
                             f"got {len(grad_outputs)} output gradients")
        seeds = []
        for slot, g in zip(self.output_slots, grad_outputs):
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape[1:] != self.slot_shapes[slot]:
                raise ShapeError(f"gradient for output {slot}: expected shape (batch, "
                                 f"{', '.join(map(str, self.slot_shapes[slot]))}), got {g.shape}")
            seeds.append((slot, g))
        return self._backward(seeds, input_grads, _batch_of(grad_outputs))

    def _backward(self, seeds: Sequence[tuple[int, np.ndarray]], input_grads: bool, batch: int
                  ) -> list[np.ndarray | None]:
        """Backward from the deltas ``seeds`` (slot, delta) over the last forward's plan."""
        self._has_forward = False
        grads: list[Any] = [None] * self.n_slots
        owned = [False] * self.n_slots
        if len(seeds) == 1:
            grads[seeds[0][0]] = seeds[0][1]
        else:
            for slot, g in seeds:
                _accumulate(grads, owned, slot, g)
        param_grads: dict[str, np.ndarray] = {}
        stop = self._stop
        if self._segments is None:
            self._backward_steps(range(stop - 1, -1, -1), grads, owned, param_grads,
                                 input_grads)
        else:
            self._backward_checkpointed(grads, owned, param_grads, input_grads, stop)
        if len(param_grads) != len(self._param_index):
            for key, layer, pname in self._param_index:
                if key not in param_grads and pname not in layer.non_trainable:
                    param_grads[key] = np.zeros_like(layer.params[pname])
        self.grads = param_grads
        self._holding = bool(self._checkpoints)
        result: list[np.ndarray | None] = []
        for t, slot, is_float in zip(self.inputs, self.input_slots, self._float_inputs):
            if not input_grads or not is_float:
                result.append(None)
            elif grads[slot] is None:
                result.append(np.zeros((batch, *t.shape), dtype=t.dtype))
            else:
                result.append(grads[slot])
        return result

    def _backward_steps(self, order: Iterable[int], grads: list[Any], owned: list[bool],
                        param_grads: dict[str, np.ndarray], input_grads: bool) -> None:
        """Backward through the plan steps ``order`` (reverse order), freeing each cache."""
        plan, caches, sizes, tracker = self.plan, self._caches, self._cache_sizes, self._tracker
        for k in order:
            step = plan[k]
            cache = caches[k]
            caches[k] = None
            if tracker is not None:
                tracker.release(k)
                self.cache_bytes = tracker.current
            else:
                self.cache_bytes -= sizes[k]
                sizes[k] = 0
            if not step.carries:
                continue
            out_slots = step.out_slots
            if len(out_slots) == 1:
                g = grads[out_slots[0]]
                if g is None:
                    continue
                grads[out_slots[0]] = None
                grad_outs: tuple[np.ndarray, ...] = (g,)
            else:
                outs = [grads[s] for s in out_slots]
                for s in out_slots:
                    grads[s] = None
                if all(g is None for g in outs):
                    continue
                grad_outs = tuple(g if g is not None else
                                  np.zeros((_batch_of(outs), *self.slot_shapes[s]),
                                           dtype=self.slot_dtypes[s])
                                  for g, s in zip(outs, out_slots))
            mask = step.needs_grad_inputs if input_grads else step.needs_grad
            try:
                grad_ins, grad_params = step.layer.backward(cache, grad_outs, needs_grad=mask)
            except DeltapropError as exc:
                raise type(exc)(f"node {step.name!r} ({step.layer.name}): {exc}") from None
            del cache
            if self.anomaly is not None:
                self.anomaly.check_backward(step, grad_ins, grad_params)
            if len(grad_ins) != len(step.in_slots):
                raise GraphError(f"node {step.name!r}: layer {step.layer.name!r} returned "
                                 f"{len(grad_ins)} input gradients for {len(step.in_slots)} "
                                 f"inputs")
            if len(grad_ins) == 1:  # the common case, without the zip
                s, g = step.in_slots[0], grad_ins[0]
                if mask[0] and g is not None:
                    if grads[s] is None:
                        grads[s] = g
                    elif owned[s]:
                        grads[s] += g
                    else:
                        grads[s] = grads[s] + g
                        owned[s] = True
                grad_ins = ()
            for s, g, need in zip(step.in_slots, grad_ins, mask):
                if need and g is not None:
                    current = grads[s]
                    if current is None:
                        grads[s] = g
                    elif owned[s]:  # a buffer this backward made: add in place
                        current += g
                    else:  # never write into an array a layer returned
                        grads[s] = current + g
                        owned[s] = True
            keys = step.param_keys
            for pname, g in grad_params.items():
                key = keys.get(pname) or f"{step.layer.label}/{pname}"
                current = param_grads.get(key)
                if current is None:
                    param_grads[key] = g
                else:  # a shared layer: sum into a new array, never into the layer's
                    param_grads[key] = current + g

    def _backward_checkpointed(self, grads: list[Any], owned: list[bool],
                               param_grads: dict[str, np.ndarray], input_grads: bool,
                               stop: int) -> None:
        """Segment by segment from the last: recompute the inner forward values from the
        kept boundary values, then run the segment's backward."""
        assert self._segments is not None
        tracker = self._tracker
        assert tracker is not None
        for i in range(len(self._segments) - 1, -1, -1):
            seg = self._segments[i]
            if seg.rerun:
                values: list[Any] = [None] * self.n_slots
                for s in seg.needs:
                    values[s] = self._checkpoints[s]
                for k in seg.rerun:
                    step = self.plan[k]
                    ins = tuple(values[s] for s in step.in_slots)
                    outputs, cache = step.layer.forward(ins, train=True)
                    for s, out in zip(step.out_slots, outputs):
                        values[s] = out
                    self._caches[k] = cache
                    tracker.hold(k, cache)
                del values, ins, outputs, cache
                self.cache_bytes = tracker.current
                self.peak_cache_bytes = max(self.peak_cache_bytes, tracker.peak)
            self._backward_steps(range(min(seg.stop, stop) - 1, seg.start - 1, -1), grads,
                                 owned, param_grads, input_grads)
            for s in self._release_after.get(i, ()):
                self._checkpoints.pop(s, None)
                tracker.release(("kept", s))
            self.cache_bytes = tracker.current

    def memory_report(self, x: Any = None, *, batch: int = 32) -> memory.MemoryReport:
        """Run one training forward and backward (on ``x``, or zeros of ``batch`` samples)
        and list per executed node the bytes its cache holds and why, and the peak."""
        return memory.build_report(self, x, batch)

    # -- training and inference (see train.py) ------------------------------------------
    def train_step(self, x: Any, y: Any, *, loss: Any, optimizer: Any) -> float:
        """One forward, backward and optimizer step on a batch; returns the loss."""
        return _train.train_step(self, x, y, loss=loss, optimizer=optimizer)

    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``(x, y)``; see ``deltaprop.train.fit`` for the options."""
        from .train import fit

        return fit(self, x, y, **kwargs)

    def predict(self, x: Any, *, batch_size: int = 256) -> Any:
        from .train import predict

        return predict(self, x, batch_size=batch_size)

    def evaluate(self, x: Any, y: Any, *, loss: Any = "softmax_cross_entropy",
                 batch_size: int = 256) -> dict[str, float]:
        from .train import evaluate

        return evaluate(self, x, y, loss=loss, batch_size=batch_size)

    def to_spec(self) -> dict[str, Any]:
        """The network as a spec dict (see ``deltaprop.spec``); ``load_spec`` rebuilds it."""
        from .spec import network_to_spec

        return network_to_spec(self)

    def summary(self) -> str:
        """A table of nodes, output shapes and parameter counts."""
        rows = [("node", "layer", "output shape", "params")]
        for t in self.inputs:
            rows.append((t.node.name or "", "input", str((None, *t.shape)), ""))
        counted: set[int] = set()
        for step in self.steps:
            n = 0
            if id(step.layer) not in counted:
                counted.add(id(step.layer))
                n = sum(int(a.size) for a in step.layer.params.values())
            shapes = ", ".join(str((None, *t.shape)) for t in step.node.outputs)
            rows.append((step.name, step.layer.name, shapes, str(n) if n else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"total parameters: {self.n_params}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<Network {self.name!r}: {len(self.inputs)} input(s), {len(self.steps)} "
                f"node(s), {len(self.outputs)} output(s), {self.n_params} parameters>")


def _batch_of(arrays: Sequence[Any]) -> int:
    for a in arrays:
        if a is not None:
            return int(np.shape(a)[0])
    return 0


def _accumulate(grads: list[Any], owned: list[bool], slot: int, g: np.ndarray) -> None:
    """Sum deltas of several consumers without writing into an array a layer returned."""
    current = grads[slot]
    if current is None:
        grads[slot] = g
    elif owned[slot]:
        current += g
    else:
        grads[slot] = current + g
        owned[slot] = True


def Sequential(layers: Sequence[Layer], input_shape: int | Sequence[int], *,
               seed: int | None = None, name: str = "sequential",
               input_dtype: str | None = None, fuse: bool = True,
               recompute: bool | int = False, plan_memory: bool = True) -> Network:
    """A chain of single-input, single-output layers, over the same graph machinery."""
    if not layers:
        raise GraphError("Sequential needs at least one layer")
    dtype = input_dtype or layers[0].dtype
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        x = Input(input_shape, name="input", dtype=dtype)
        y = x
        for layer in layers:
            if not isinstance(layer, Layer):
                raise GraphError(f"Sequential takes layers, got {type(layer).__name__}")
            y = layer(y)
            if not isinstance(y, Tensor):
                raise GraphError(f"Sequential: layer {layer.name!r} has several outputs; "
                                 f"use the functional API")
    return Network(x, y, name=name, fuse=fuse, recompute=recompute, plan_memory=plan_memory)
