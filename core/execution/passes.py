"""Graph passes: rewrite the executed step list before anything runs, never changing
results beyond float rounding. Each is linear in the number of steps.

- Activation fusion: any single-output layer whose output feeds only an element-wise
  layer whose derivative is written from its output (``Layer.backward_from_output``)
  runs as one step: the activation works in place on the fresh pre-activation and
  the backward goes through both in one call. A layer opts out with ``fusable =
  False`` or brings its own fused form through ``Layer.fused_with``.
- Loss fusion: when the layer producing an output declares, through
  ``Layer.loss_on_input``, a loss on its input that equals the training loss on its
  output (softmax then cross-entropy), training leaves that layer out and uses the
  declared loss; every loss computes its value and gradient through
  ``Loss.value_and_grad``, in one pass where it can.
- Recomputation (gradient checkpointing): only segment boundaries are kept in
  training; each segment's inner forward is run again during backward.

The user graph is untouched: ``Network.steps`` and ``to_spec()`` stay unfused; the
executor runs ``Network.plan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layer import Arrays, Grads, Layer, backward_takes_needs_grad, derivative_from_output
from ..loss import Loss
from .memory import sole_owner
from .step import Step


# -- activation fusion -----------------------------------------------------------------
class FusedActivation(Layer):
    """``activation(layer(x))`` as one node. Forward lets the activation overwrite the
    pre-activation when nothing else holds it; backward turns the delta of the output
    into that of the pre-activation (from the cached output) and hands it straight to
    the layer's backward. Parameters are the inner layer's (same arrays, same keys)."""

    name = "fused"

    def __init__(self, layer: Layer, activation: Layer) -> None:
        super().__init__(dtype=layer.dtype, label=layer.label)
        self.layer = layer
        self.activation = activation
        self.params = layer.params
        self.n_inputs = layer.n_inputs  # type: ignore[misc]
        self.input_shapes = layer.input_shapes
        self.output_shapes = activation.output_shapes
        self.in_place = activation.can_work_in_place
        self._pass_needs_grad = backward_takes_needs_grad(type(layer))
        self.recomputable = layer.recomputable and activation.recomputable  # type: ignore[misc]

    @property
    def parts(self) -> tuple[Layer, Layer]:
        """The layers this node runs, in order."""
        return (self.layer, self.activation)

    def get_config(self) -> dict[str, Any]:
        return {"layer": self.layer.name, "activation": self.activation.name}

    def _activate(self, z: np.ndarray, owned: bool) -> np.ndarray:
        if owned:
            (y,), _ = self.activation.forward_in_place((z,), train=False)
        else:
            (y,), _ = self.activation.forward((z,), train=False)
        return y

    def forward(self, inputs: Arrays, *, train: bool) -> tuple[Arrays, Any]:
        outs, inner = self.layer.forward(inputs, train=train)
        z = outs[0]
        del outs  # so that ``sole_owner`` sees only ``z``
        owned = self.in_place and sole_owner(z)  # before ``z`` is passed anywhere
        y = self._activate(z, owned)
        return (y,), ((inner, y) if train else None)

    def carries_state(self) -> bool:
        return self.layer.carries_state()

    def forward_with_state(self, inputs: Arrays, *, train: bool, state: Any
                           ) -> tuple[Arrays, Any, Any]:
        outs, inner, final = self.layer.forward_with_state(inputs, train=train, state=state)
        z = outs[0]
        del outs
        owned = self.in_place and sole_owner(z)  # before ``z`` is passed anywhere
        y = self._activate(z, owned)
        return (y,), ((inner, y) if train else None), final

    def backward(self, cache: Any, grad_outputs: Arrays, *,
                 needs_grad: Sequence[bool] | None = None) -> Grads:
        inner, y = cache
        gz = self.activation.backward_from_output(y, grad_outputs[0])
        if needs_grad is not None and self._pass_needs_grad:
            return self.layer.backward(inner, (gz,), needs_grad=needs_grad)
        return self.layer.backward(inner, (gz,))

    def __repr__(self) -> str:
        return f"<fused {self.layer.name}+{self.activation.name} {self.label!r}>"


def fuse_activations(steps: Sequence[Step], output_slots: Sequence[int]) -> list[Step]:
    """The steps with each (layer, element-wise activation) pair merged into one.

    A pair fuses when the layer has one output, that output is read only by the
    activation (once) and is not a network output, and the layer is ``fusable``."""
    readers: dict[int, int] = {}
    for step in steps:
        for s in step.in_slots:
            readers[s] = readers.get(s, 0) + 1
    for s in output_slots:
        readers[s] = readers.get(s, 0) + 1
    producer_of = {step.out_slots[0]: i for i, step in enumerate(steps)
                   if len(step.out_slots) == 1}
    activation_of: dict[int, int] = {}  # index of a layer step -> index of its activation
    merged: set[int] = set()  # indices of activation steps merged into their layer
    for j, step in enumerate(steps):
        if len(step.in_slots) != 1 or not derivative_from_output(step.layer):
            continue
        slot = step.in_slots[0]
        i = producer_of.get(slot)
        if i is None or readers.get(slot) != 1 or i in activation_of or i in merged:
            continue
        if not steps[i].layer.fusable:
            continue
        activation_of[i] = j
        merged.add(j)
    plan: list[Step] = []
    for i, step in enumerate(steps):
        if i in merged:
            continue
        if i not in activation_of:
            plan.append(Step(step.node, step.layer, step.name, step.in_slots, step.out_slots,
                             nodes=step.nodes))
            continue
        act = steps[activation_of[i]]
        fused = step.layer.fused_with(act.layer) or FusedActivation(step.layer, act.layer)
        plan.append(Step(step.node, fused, f"{step.name}+{act.name}", step.in_slots,
                         act.out_slots, nodes=(*step.nodes, *act.nodes)))
    return plan


# -- loss fusion ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LossFusion:
    """Where training computes the loss of one output: the loss applied to the value in
    ``slot``, and the plan step it replaces (None: the output's own loss, nothing left
    out)."""

    slot: int
    loss: Loss
    skip: int | None = None


def fuse_loss(steps: Sequence[Step], output_slots: Sequence[int], output: int,
              loss: Loss) -> LossFusion:
    """How output ``output`` trains with ``loss``: through the producing layer's
    ``loss_on_input`` when it declares one and nothing else reads its output."""
    slot = output_slots[output]
    producer = next((s for s in reversed(steps) if slot in s.out_slots), None)
    if (producer is None or len(producer.out_slots) != 1 or len(producer.in_slots) != 1
            or list(output_slots).count(slot) != 1
            or any(slot in s.in_slots for s in steps)):
        return LossFusion(slot, loss)
    on_input = producer.layer.loss_on_input(loss)
    if on_input is None:
        return LossFusion(slot, loss)
    return LossFusion(producer.in_slots[0], on_input, producer.index)


# -- recomputation -----------------------------------------------------------------------
@dataclass
class Segment:
    """Steps ``start..stop-1``; ``rerun`` are re-executed in backward (their caches are
    dropped in forward) from the values of ``needs``, kept since forward."""

    start: int
    stop: int
    rerun: tuple[int, ...]
    needs: tuple[int, ...]


def checkpoint_segments(plan: Sequence[Step], every: int | None = None) -> list[Segment]:
    """Cut the plan into segments of ``every`` steps (default about sqrt(n)). The last
    segment keeps its caches (it is run backward right away); a layer that declares
    ``recomputable = False`` (random or stateful forward) always keeps its cache and
    its outputs count as kept values."""
    n = len(plan)
    if n == 0:
        return []
    every = every or max(1, math.isqrt(n - 1) + 1)
    segments = []
    for start in range(0, n, every):
        stop = min(n, start + every)
        last = stop == n
        rerun = tuple(k for k in range(start, stop)
                      if not last and plan[k].carries and plan[k].layer.recomputable)
        produced = {s for k in rerun for s in plan[k].out_slots}
        needs = sorted({s for k in rerun for s in plan[k].in_slots if s not in produced})
        segments.append(Segment(start, stop, rerun, tuple(needs)))
    return segments
