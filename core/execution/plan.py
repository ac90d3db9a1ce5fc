"""The compiled plan: what runs, in which order, reading and writing which slots.

A network's nodes, already in topological order, are numbered into slots (one per
value: each input and each node output), turned into steps, and passed through the
graph passes (fusion, recomputation) and the memory planner (when values die, what
may work in place, which steps carry a gradient). A plan is immutable once built
and shared by every call on the network; an ``Executor`` holds one call's state.
A plan is the sequence of steps it executes; ``graph_steps`` is the user graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from ..errors import ShapeError
from ..layer import Layer
from ..loss import Loss
from ..tensor import Node, Shape, Tensor
from . import memory, passes
from .step import Step


class Plan(Sequence[Step]):
    """Steps in execution order with their slots, built for one set of options:
    ``fuse`` (graph passes that merge nodes), ``recompute`` (None, 0 for segments of
    about sqrt(n) steps, or steps per segment) and ``plan_memory`` (drop values after
    their last reader, work in place)."""

    def __init__(self, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                 nodes: Sequence[Node], *, name: str = "network", fuse: bool = True,
                 recompute: int | None = None, plan_memory: bool = True) -> None:
        self.name = name
        self.fuse, self.recompute, self.plan_memory = fuse, recompute, plan_memory
        self.inputs = list(inputs)
        slot_of: dict[tuple[int, int], int] = {}
        for t in inputs:
            slot_of[(id(t.node), 0)] = len(slot_of)
        for node in nodes:
            if node.layer is not None:
                for t in node.outputs:
                    slot_of[(id(node), t.index)] = len(slot_of)
        self.n_slots = len(slot_of)
        self.input_slots = [slot_of[(id(t.node), 0)] for t in inputs]
        self.output_slots = [slot_of[(id(t.node), t.index)] for t in outputs]
        self.slot_shapes: list[Shape] = [()] * self.n_slots
        self.slot_dtypes = [""] * self.n_slots
        for node in nodes:
            for t in node.outputs:
                self.slot_shapes[slot_of[(id(node), t.index)]] = t.shape
                self.slot_dtypes[slot_of[(id(node), t.index)]] = t.dtype
        self.float_inputs = [bool(np.issubdtype(np.dtype(t.dtype), np.floating))
                             for t in inputs]
        self.graph_steps = self._annotate([
            Step(node, node.layer, node.name or "",
                 tuple(slot_of[(id(t.node), t.index)] for t in node.inputs),
                 tuple(slot_of[(id(node), t.index)] for t in node.outputs))
            for node in nodes if node.layer is not None])
        #: (key in ``grads``, layer, parameter name) for each parameter, shared layers once
        self.param_index: list[tuple[str, Layer, str]] = []
        seen: set[str] = set()
        for step in self.graph_steps:
            for pname, key in step.param_keys.items():
                if key not in seen:
                    seen.add(key)
                    self.param_index.append((key, step.layer, pname))
        self.n_trainable = sum(1 for _, layer, pname in self.param_index
                               if pname not in layer.non_trainable)
        if fuse:
            steps = passes.fuse_activations(self.graph_steps, self.output_slots)
        else:
            steps = [Step(s.node, s.layer, s.name, s.in_slots, s.out_slots, nodes=s.nodes)
                     for s in self.graph_steps]
        self.steps = self._annotate(steps)
        if not plan_memory:
            for step in self.steps:
                step.free_after = ()
                step.in_place = False
                if isinstance(step.layer, passes.FusedActivation):
                    step.layer.in_place = False
        n = len(self.steps)
        self.segments: list[passes.Segment] | None = None
        self.keep_cache = [True] * n
        self.keep_values: list[tuple[int, ...]] = [()] * n
        self.keep_inputs: tuple[int, ...] = ()
        #: segment index -> kept values released once that segment's backward is done
        self.release_after: dict[int, list[int]] = {}
        if recompute is not None:
            self._plan_recomputation(recompute)
        #: input shapes -> (bytes each step caches, total): counted once, then reused
        self.layouts: dict[Any, tuple[list[int], int]] = {}
        #: (step index, batch size) whose backward result had the right structure and
        #: shapes once: a layer's gradient shapes follow from its inputs', so the check
        #: stays off the training step's hot path (docs/performance.md)
        self.backward_checked: set[tuple[int, int]] = set()
        self._loss_fusions: dict[tuple[int, int], tuple[Loss, passes.LossFusion]] = {}

    def _annotate(self, steps: list[Step]) -> list[Step]:
        """Fill in what the executor needs per step: when values die, which steps carry a
        gradient, which may work in place."""
        in_slots = [step.in_slots for step in steps]
        frees = memory.free_after(in_slots, self.output_slots)
        in_place = memory.in_place_candidates(in_slots, [s.layer for s in steps],
                                              (*self.input_slots, *self.output_slots))
        float_inputs = {s for s, f in zip(self.input_slots, self.float_inputs) if f}
        for k, step in enumerate(steps):
            step.index = k
            step.free_after = frees[k]
            step.in_place = in_place[k]
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

    def _plan_recomputation(self, every: int) -> None:
        self.segments = passes.checkpoint_segments(self.steps, every or None)
        needed = {s for seg in self.segments for s in seg.needs}
        for seg in self.segments:
            for k in seg.rerun:
                self.keep_cache[k] = False
        self.keep_values = [tuple(s for s in step.out_slots if s in needed)
                            for step in self.steps]
        self.keep_inputs = tuple(s for s in self.input_slots if s in needed)
        # a kept value is released once the earliest segment reading it is done
        released: set[int] = set()
        for i, seg in enumerate(self.segments):
            for s in seg.needs:
                if s not in released:
                    released.add(s)
                    self.release_after.setdefault(i, []).append(s)

    def check_inputs(self, arrays: Any) -> list[np.ndarray]:
        """Input arrays as the steps expect them (one per input, the inputs' dtypes), or a
        ShapeError naming the input at fault."""
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

    def loss_fusion(self, output: int, loss: Loss) -> passes.LossFusion:
        """How output ``output`` trains with ``loss`` (see ``passes.fuse_loss``),
        decided once per loss object."""
        key = (output, id(loss))
        entry = self._loss_fusions.get(key)
        if entry is None or entry[0] is not loss:  # the pair keeps the id from being reused
            if len(self._loss_fusions) > 64:
                self._loss_fusions.clear()
            fusion = (passes.fuse_loss(self.steps, self.output_slots, output, loss)
                      if self.fuse else passes.LossFusion(self.output_slots[output], loss))
            entry = self._loss_fusions[key] = (loss, fusion)
        return entry[1]

    # -- a plan is the sequence of steps it executes ----------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    @overload
    def __getitem__(self, index: int) -> Step: ...

    @overload
    def __getitem__(self, index: slice) -> list[Step]: ...

    def __getitem__(self, index: int | slice) -> Step | list[Step]:
        return self.steps[index]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return (f"<Plan of {len(self.steps)} steps for {len(self.graph_steps)} nodes "
                f"(fuse={self.fuse}, recompute={self.recompute}, "
                f"plan_memory={self.plan_memory})>")
