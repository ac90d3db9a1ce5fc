"""Graph passes: rewrite the executed node list before anything runs, never changing
results beyond float rounding.

- Activation fusion: any single-output layer whose output feeds only an element-wise
  layer whose derivative is written from its output (``backward_from_output``) runs
  as one node: the activation works in place on the fresh pre-activation and the
  backward goes through both in one call. dense+relu/sigmoid/tanh today, conv2d+relu
  or any plugin's layer tomorrow, with no code per pair.
- Softmax with cross-entropy: a network ending in a softmax layer trained with
  ``cross_entropy`` is trained on the logits with the exact, fused softmax
  cross-entropy; a ``softmax_cross_entropy`` loss gets the same one-pass value and
  gradient.
- Recomputation (gradient checkpointing): only segment boundaries are kept in
  training; each segment's inner forward is run again during backward.

The user graph is untouched: ``Network.steps`` and ``to_spec()`` stay unfused; the
executor runs ``Network.plan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .layer import Layer
from .memory import sole_owner

if TYPE_CHECKING:
    from .graph import Step


# -- activation fusion -----------------------------------------------------------------
def derivative_from_output(layer: Layer) -> bool:
    """An element-wise, single-input layer whose backward needs only its output."""
    return (layer.elementwise and layer.n_inputs == 1
            and callable(getattr(layer, "backward_from_output", None)))


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
        self.in_place = bool(getattr(activation, "can_work_in_place", False))
        self.recomputable = layer.recomputable and activation.recomputable  # type: ignore[misc]

    def get_config(self) -> dict[str, Any]:
        return {"layer": self.layer.name, "activation": self.activation.name}

    def forward(self, inputs: tuple[np.ndarray, ...], *, train: bool) -> tuple[Any, Any]:
        outs, inner = self.layer.forward(inputs, train=train)
        z = outs[0]
        del outs
        if self.in_place and sole_owner(z):
            (y,), _ = self.activation.forward_in_place((z,), train=False)
        else:
            (y,), _ = self.activation.forward((z,), train=False)
        del z
        return (y,), ((inner, y) if train else None)

    def backward(self, cache: Any, grad_outputs: tuple[np.ndarray, ...], *,
                 needs_grad: Sequence[bool] | None = None
                 ) -> tuple[tuple[np.ndarray | None, ...], dict[str, np.ndarray]]:
        inner, y = cache
        gz = self.activation.backward_from_output(y, grad_outputs[0])  # type: ignore[attr-defined]
        return self.layer.backward(inner, (gz,), needs_grad=needs_grad)

    def __repr__(self) -> str:
        return f"<fused {self.layer.name}+{self.activation.name} {self.label!r}>"


def fuse_activations(steps: Sequence[Step], output_slots: Sequence[int]) -> list[Step]:
    """The plan with each (layer, element-wise activation) pair merged into one step.

    A pair fuses when the layer has one output, that output is read only by the
    activation (once) and is not a network output, and the layer offers a fused form
    (``Layer.fused_with``)."""
    from .graph import Step

    readers: dict[int, int] = {}
    for step in steps:
        for s in step.in_slots:
            readers[s] = readers.get(s, 0) + 1
    for s in output_slots:
        readers[s] = readers.get(s, 0) + 1
    producer_of = {step.out_slots[0]: i for i, step in enumerate(steps)
                   if len(step.out_slots) == 1}
    merged_into: dict[int, int] = {}  # index of activation step -> index of its layer step
    fused_layer: dict[int, Layer] = {}
    for j, step in enumerate(steps):
        if len(step.in_slots) != 1 or not derivative_from_output(step.layer):
            continue
        slot = step.in_slots[0]
        i = producer_of.get(slot)
        if i is None or readers.get(slot) != 1 or i in fused_layer or i in merged_into:
            continue
        fused = steps[i].layer.fused_with(step.layer)
        if fused is None:
            continue
        fused_layer[i] = fused
        merged_into[j] = i
    plan: list[Step] = []
    for i, step in enumerate(steps):
        if i in merged_into:
            continue
        if i in fused_layer:
            act = next(steps[j] for j, src in merged_into.items() if src == i)
            plan.append(Step(step.node, fused_layer[i], f"{step.name}+{act.name}",
                             step.in_slots, act.out_slots, (), bool(step.layer.params),
                             nodes=(*step.nodes, *act.nodes)))
        else:
            plan.append(Step(step.node, step.layer, step.name, step.in_slots,
                             step.out_slots, (), bool(step.layer.params), nodes=step.nodes))
    return plan


# -- softmax with cross-entropy ----------------------------------------------------------
#: a loss on probabilities -> the fused loss on logits that equals it after a softmax
LOSS_ON_LOGITS = {"cross_entropy": "softmax_cross_entropy"}


def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) and its gradient, in one pass: one exp,
    stable for large logits; ``target`` holds class labels or one-hot rows."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=-1, keepdims=True)
    n = len(logits)
    if target.ndim == 1:
        rows = np.arange(n)
        # log-sum-exp minus the target's logit, row by row: exact where log(p) would not be
        value = (float(np.log(total).sum()) - float(shifted[rows, target].sum())) / n
        e /= total
        e[rows, target] -= 1
    else:
        value = -float((target * (shifted - np.log(total))).sum()) / n
        e /= total
        e -= target
    e /= n
    return float(value), e


@dataclass
class LossFusion:
    """How a training step computes its loss: on which plan step it stops, from which
    slot backward starts, and the fused value-and-gradient function."""

    stop: int  # run plan[:stop] in forward
    slot: int  # the slot holding the logits
    value_and_grad: Any


def fuse_loss(net: Any, loss: Any) -> LossFusion | None:
    """The fused training loss for ``net`` and ``loss``, or None to use ``loss`` as is."""
    if not net.fuse or len(net.output_slots) != 1 or not net.plan:
        return None
    out = net.output_slots[0]
    if len(net.slot_shapes[out]) != 1:
        return None
    name = getattr(loss, "name", None)
    if name == "softmax_cross_entropy" and type(loss).__name__ == "SoftmaxCrossEntropy":
        return LossFusion(len(net.plan), out, softmax_cross_entropy)
    if LOSS_ON_LOGITS.get(name or "") == "softmax_cross_entropy":
        last = net.plan[-1]
        if (last.layer.name == "softmax" and last.out_slots == (out,)
                and getattr(last.layer, "axis", -1) in (-1, 1) and len(last.in_slots) == 1):
            return LossFusion(len(net.plan) - 1, last.in_slots[0], softmax_cross_entropy)
    return None


# -- recomputation -----------------------------------------------------------------------
@dataclass
class Segment:
    """Steps ``start..stop-1``; ``rerun`` are re-executed in backward (their caches are
    dropped in forward) from the values of ``needs``, kept since forward."""

    start: int
    stop: int
    rerun: tuple[int, ...]
    needs: tuple[int, ...]


def checkpoint_segments(plan: Sequence[Step], every: int | None = None,
                        input_slots: Sequence[int] = ()) -> list[Segment]:
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
