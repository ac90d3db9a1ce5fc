"""The graph: layer nodes from inputs to outputs, their parameters, and the plan that
runs them.

A ``Graph`` is a description. It orders and names its nodes once, compiles them into
a ``Plan`` for the options it is configured with, and runs that plan through an
``Executor`` per call; ``deltaprop.Network`` adds training on top. ``forward`` and
``backward`` are there to be looked at: a training forward keeps each node's cache
for the next ``backward`` of the same thread, which leaves the summed parameter
gradients in ``grads``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import GraphError
from ..execution.executor import Executor
from ..execution.hooks import Hook
from ..execution.plan import Plan
from ..execution.state import CarriedState
from ..execution.step import Step
from ..layer import Layer
from ..tensor import InputNode, Node, Shape, Tensor
from .describe import graph_to_spec
from .report import MemoryReport, build_report
from .topology import assign_names, order_nodes


class Summary(str):
    """The text of ``Graph.summary``, already printed: a REPL does not echo it again."""

    def __repr__(self) -> str:
        return ""


class Graph:
    """A directed acyclic graph of nodes from ``inputs`` to ``outputs``.

    ``fuse`` (default on) lets graph passes merge a layer and the element-wise
    activation after it, and a softmax with the cross-entropy after it in training;
    ``recompute`` keeps only segment boundaries in training and recomputes the rest in
    backward (True for segments of about sqrt(n) nodes, or an int for that many per
    segment); ``plan_memory`` (default on) drops forward values after their last
    reader and lets element-wise layers work in place on arrays nobody else holds.
    None of them changes results beyond float rounding.
    """

    def __init__(self, inputs: Tensor | Sequence[Tensor], outputs: Tensor | Sequence[Tensor],
                 *, name: str = "network", fuse: bool = True,
                 recompute: bool | int = False, plan_memory: bool = True) -> None:
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
        self.nodes: list[Node] = order_nodes(name, self.inputs, self.outputs)
        self.layers: list[Layer] = assign_names(name, self.inputs, self.nodes)
        #: hooks that watch every call on this network (see ``add_hook``)
        self.hooks: list[Hook] = []
        #: the ``[train]`` table of the spec the network came from (loss, optimizer, ...)
        self.train_config: dict[str, Any] = {}
        #: what the network was trained on, saved with it: ``name``, ``source`` (as
        #: given to ``--data``) and ``sample_shape`` (not the data itself)
        self.trained_on: dict[str, Any] = {}
        #: the last backward's summed parameter gradients, keyed like ``params``
        self.grads: dict[str, np.ndarray] = {}
        #: bytes the last training call's caches held now, and at most
        self.cache_bytes = 0
        self.peak_cache_bytes = 0
        self._pending = threading.local()  # per thread: the forward awaiting backward
        self.fuse, self.plan_memory = True, True
        self.recompute: int | None = None
        self.configure(fuse=fuse, recompute=recompute, plan_memory=plan_memory)

    def configure(self, *, fuse: bool | None = None, recompute: bool | int | None = None,
                  plan_memory: bool | None = None) -> Graph:
        """Switch graph passes on or off; the plan is compiled again. ``plan_memory``
        False keeps every forward value to the end of the forward and never works in
        place (for comparison)."""
        if fuse is not None:
            self.fuse = bool(fuse)
        if plan_memory is not None:
            self.plan_memory = bool(plan_memory)
        if recompute is not None:
            if isinstance(recompute, bool):
                self.recompute = 0 if recompute else None
            elif isinstance(recompute, int) and recompute > 0:
                self.recompute = recompute
            else:
                raise GraphError(f"network {self.name!r}: recompute must be a bool or a "
                                 f"positive number of nodes per segment, got {recompute!r}")
        self.plan = Plan(self.inputs, self.outputs, self.nodes, name=self.name,
                         fuse=self.fuse, recompute=self.recompute,
                         plan_memory=self.plan_memory)
        self._pending = threading.local()
        return self

    # -- what the graph holds ----------------------------------------------------------------
    @property
    def steps(self) -> list[Step]:
        """The user graph, one step per node (``plan`` is what executes)."""
        return self.plan.graph_steps

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"<layer label>/<param name>": array}``; a shared layer appears once."""
        return {key: layer.params[pname] for key, layer, pname in self.plan.param_index}

    @property
    def n_params(self) -> int:
        return sum(int(a.size) for a in self.params.values())

    @property
    def output_shapes(self) -> list[Shape]:
        return [t.shape for t in self.outputs]

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The name of each output: its node's name, with ``:k`` for output k of several."""
        return [f"{t.node.name}" if len(t.node.outputs) == 1 else f"{t.node.name}:{t.index}"
                for t in self.outputs]

    # -- hooks -------------------------------------------------------------------------------
    def add_hook(self, hook: Hook) -> Hook:
        """Let ``hook`` watch every later call on this network; returns it."""
        if not isinstance(hook, Hook):
            raise GraphError(f"network {self.name!r}: a hook must be a deltaprop.Hook, got "
                             f"{type(hook).__name__}")
        self.hooks.append(hook)
        return hook

    def remove_hook(self, hook: Hook) -> None:
        self.hooks.remove(hook)

    @contextlib.contextmanager
    def hooked(self, *hooks: Hook) -> Iterator[None]:
        """Within the block, ``hooks`` watch every call on this network."""
        for hook in hooks:
            self.add_hook(hook)
        try:
            yield
        finally:
            for hook in hooks:
                self.remove_hook(hook)

    # -- execution ---------------------------------------------------------------------------
    def executor(self, hooks: Sequence[Hook] = ()) -> Executor:
        """A fresh executor for one call on the current plan, watched by this network's
        hooks and ``hooks``."""
        return Executor(self.plan, [*self.hooks, *hooks] if self.hooks else hooks)

    def forward(self, arrays: Any, *, train: bool = False,
                state: CarriedState | None = None) -> list[np.ndarray]:
        """Run the network on input arrays (a list, one per input, or a single array).

        With ``train`` each node's cache is kept for this thread's next ``backward``;
        without, none is. ``state`` carries recurrent state from the previous call
        (see ``deltaprop.CarriedState``).
        """
        executor = self.executor()
        outputs = executor.forward(arrays, train=train, state=state)
        # a new forward on this thread ends the last one's wait for its backward
        self._pending.executor = executor if train else None
        self.cache_bytes = executor.cache_bytes
        if train:
            self.peak_cache_bytes = executor.peak_cache_bytes
        return outputs

    def backward(self, grad_outputs: Any, *, input_grads: bool = True
                 ) -> list[np.ndarray | None]:
        """Propagate output deltas back through this thread's last training forward;
        returns one delta per input (None where the input takes none) and leaves the
        summed parameter gradients in ``grads``, freeing each cache as it goes."""
        executor = getattr(self._pending, "executor", None)
        if executor is None:
            raise GraphError(f"network {self.name!r}: backward needs a forward(train=True) "
                             f"first (each forward's caches serve one backward)")
        self._pending.executor = None
        try:
            return executor.backward(grad_outputs, input_grads=input_grads)
        finally:
            self.keep_results(executor)

    def keep_results(self, executor: Executor) -> None:
        """What a finished call leaves to look at: its summed parameter gradients in
        ``grads`` and its cache byte counts."""
        self.grads = executor.grads
        self.cache_bytes = executor.cache_bytes
        self.peak_cache_bytes = executor.peak_cache_bytes

    def memory_report(self, x: Any = None, *, batch: int = 32) -> MemoryReport:
        """Run one training forward and backward (on ``x``, or zeros of ``batch`` samples)
        and list per executed node the bytes its cache holds and why, and the peak."""
        report = build_report(self, x, batch)
        self.cache_bytes, self.peak_cache_bytes = 0, report.peak_bytes
        return report

    # -- description -------------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        """The network as a spec dict; ``deltaprop.load_spec`` rebuilds it."""
        return graph_to_spec(self)

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """Print a Keras-style table (node, layer, output shape, parameters, a shared
        layer's counted at its first node, and the nodes each reads) with ``print_fn``
        (None: print nothing) and return its text."""
        rows = [("node", "layer", "output shape", "params", "inputs")]
        for t in self.inputs:
            rows.append((t.node.name or "", "input", str((None, *t.shape)), "", ""))
        first_use: dict[int, str] = {}
        for step in self.steps:
            layer = step.layer
            count = ""
            if id(layer) in first_use:
                count = f"shared with {first_use[id(layer)]}"
            else:
                first_use[id(layer)] = step.name
                n = sum(int(a.size) for a in layer.params.values())
                count = str(n) if n else ""
            shapes = ", ".join(str((None, *t.shape)) for t in step.node.outputs)
            sources = ", ".join(t.node.display_name if len(t.node.outputs) == 1
                                else f"{t.node.display_name}:{t.index}"
                                for t in step.node.inputs)
            rows.append((step.name, layer.name, shapes, count, sources))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.n_params}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return Summary(text)

    def __repr__(self) -> str:
        return (f"<Network {self.name!r}: {len(self.inputs)} input(s), {len(self.steps)} "
                f"node(s), {len(self.outputs)} output(s), {self.n_params} parameters>")
