"""The graph: symbolic tensors, nodes (layer applications) and the network that
executes them.

The functional API records nodes as layers are called on symbolic tensors;
``Network`` orders them once (iteratively, so depth is not limited by recursion),
compiles the order into integer slots, and runs forward and backward over that
plan. In training mode each node's cache goes into an executor-owned store and is
freed as soon as that node's backward has run; deltas from several consumers are
summed into buffers the executor owns, never into an array a layer returned.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass
class Step:
    """One node of the compiled plan."""

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


class Network:
    """A directed acyclic graph of nodes from ``inputs`` to ``outputs``."""

    def __init__(self, inputs: Tensor | Sequence[Tensor], outputs: Tensor | Sequence[Tensor],
                 *, name: str = "network") -> None:
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
        self._caches: list[Any] = [None] * len(self.steps)
        self._cache_sizes = [0] * len(self.steps)
        self._has_forward = False
        self.cache_bytes = 0
        self.peak_cache_bytes = 0
        self.grads: dict[str, np.ndarray] = {}
        self._resolved: dict[tuple[str, str], Any] = {}
        #: the ``[train]`` table of the spec the network came from (loss, optimizer, ...)
        self.train_config: dict[str, Any] = {}

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
        steps: list[Step] = []
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
        last_use: dict[int, int] = {}
        for node in self.nodes:
            if node.layer is None:
                continue
            k = len(steps)
            in_slots = tuple(slot_of[(id(t.node), t.index)] for t in node.inputs)
            for s in in_slots:
                last_use[s] = k
            steps.append(Step(node, node.layer, node.name or "",
                              in_slots, tuple(slot_of[(id(node), t.index)] for t in node.outputs),
                              (), bool(node.layer.params)))
        keep = set(self.output_slots)
        for k, step in enumerate(steps):
            step.free_after = tuple(sorted({s for s in step.in_slots
                                            if last_use[s] == k and s not in keep}))
        # which slots carry a gradient back, with and without input gradients
        float_inputs = {slot_of[(id(t.node), 0)] for t in self.inputs
                        if np.issubdtype(np.dtype(t.dtype), np.floating)}
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
        self.steps = steps
        self._param_index = [(f"{layer.label}/{pname}", layer, pname)
                             for layer in self.layers for pname in layer.params]

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
        values: list[Any] = [None] * self.n_slots
        for slot, value in zip(self.input_slots, self._check_inputs(arrays)):
            values[slot] = value
        if train:
            self._release_caches()
            self.peak_cache_bytes = 0
        caches, sizes = self._caches, self._cache_sizes
        for k, step in enumerate(self.steps):
            try:
                outputs, cache = step.layer.forward(tuple(values[s] for s in step.in_slots),
                                                    train=train)
            except DeltapropError as exc:
                raise type(exc)(f"node {step.name!r} ({step.layer.name}): {exc}") from None
            if len(outputs) != len(step.out_slots):
                raise GraphError(f"node {step.name!r}: layer {step.layer.name!r} returned "
                                 f"{len(outputs)} outputs, declared {len(step.out_slots)}")
            for s, out in zip(step.out_slots, outputs):
                values[s] = out
            for s in step.free_after:
                values[s] = None
            if train and step.carries:
                caches[k] = cache
                size = sizes[k] = array_bytes(cache)
                self.cache_bytes += size
                if self.cache_bytes > self.peak_cache_bytes:
                    self.peak_cache_bytes = self.cache_bytes
        self._has_forward = train
        return [values[s] for s in self.output_slots]

    def _release_caches(self) -> None:
        for k in range(len(self.steps)):
            self._caches[k] = None
            self._cache_sizes[k] = 0
        self.cache_bytes = 0

    def backward(self, grad_outputs: Any, *, input_grads: bool = True
                 ) -> list[np.ndarray | None]:
        """Propagate output deltas back; returns one delta per input (None where the
        input takes none) and leaves the summed parameter gradients in ``grads``."""
        if not self._has_forward:
            raise GraphError(f"network {self.name!r}: backward needs a forward(train=True) "
                             f"first (each forward's caches serve one backward)")
        self._has_forward = False
        if isinstance(grad_outputs, np.ndarray) or not isinstance(grad_outputs, (list, tuple)):
            grad_outputs = [grad_outputs]
        if len(grad_outputs) != len(self.output_slots):
            raise ShapeError(f"network {self.name!r} has {len(self.output_slots)} outputs, "
                             f"got {len(grad_outputs)} output gradients")
        grads: list[Any] = [None] * self.n_slots
        owned = [False] * self.n_slots
        for slot, g in zip(self.output_slots, grad_outputs):
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape[1:] != self.slot_shapes[slot]:
                raise ShapeError(f"gradient for output {slot}: expected shape (batch, "
                                 f"{', '.join(map(str, self.slot_shapes[slot]))}), got {g.shape}")
            _accumulate(grads, owned, slot, g)
        param_grads: dict[str, np.ndarray] = {}
        owned_params: set[str] = set()
        caches, sizes = self._caches, self._cache_sizes
        for k in range(len(self.steps) - 1, -1, -1):
            step = self.steps[k]
            cache = caches[k]
            caches[k] = None
            self.cache_bytes -= sizes[k]
            sizes[k] = 0
            if not step.carries:
                continue
            outs = [grads[s] for s in step.out_slots]
            for s in step.out_slots:
                grads[s] = None
            if all(g is None for g in outs):
                continue
            grad_outs = tuple(g if g is not None else
                              np.zeros((_batch_of(outs), *self.slot_shapes[s]),
                                       dtype=self.slot_dtypes[s])
                              for g, s in zip(outs, step.out_slots))
            mask = step.needs_grad_inputs if input_grads else step.needs_grad
            try:
                grad_ins, grad_params = step.layer.backward(cache, grad_outs, needs_grad=mask)
            except DeltapropError as exc:
                raise type(exc)(f"node {step.name!r} ({step.layer.name}): {exc}") from None
            del cache
            if len(grad_ins) != len(step.in_slots):
                raise GraphError(f"node {step.name!r}: layer {step.layer.name!r} returned "
                                 f"{len(grad_ins)} input gradients for {len(step.in_slots)} "
                                 f"inputs")
            for s, g, need in zip(step.in_slots, grad_ins, mask):
                if need and g is not None:
                    _accumulate(grads, owned, s, g)
            label = step.layer.label
            for pname, g in grad_params.items():
                key = f"{label}/{pname}"
                if key not in param_grads:
                    param_grads[key] = g
                elif key in owned_params:
                    param_grads[key] += g
                else:
                    param_grads[key] = param_grads[key] + g
                    owned_params.add(key)
        for key, layer, pname in self._param_index:
            if key not in param_grads:
                param_grads[key] = np.zeros_like(layer.params[pname])
        self.grads = param_grads
        result: list[np.ndarray | None] = []
        for t, slot in zip(self.inputs, self.input_slots):
            if not input_grads or not np.issubdtype(np.dtype(t.dtype), np.floating):
                result.append(None)
            elif grads[slot] is None:
                result.append(np.zeros((_batch_of(grad_outputs), *t.shape), dtype=t.dtype))
            else:
                result.append(grads[slot])
        return result

    # -- training and inference (see train.py) ------------------------------------------
    def train_step(self, x: Any, y: Any, *, loss: Any, optimizer: Any) -> float:
        """One forward, backward and optimizer step on a batch; returns the loss."""
        from .train import train_step

        return train_step(self, x, y, loss=loss, optimizer=optimizer)

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
               input_dtype: str | None = None) -> Network:
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
    return Network(x, y, name=name)
